//! `orch rollout status|history|undo SERVICE`: a service's numbered rollouts through the
//! control API (`GET /api/rollouts/{service}`, `POST /api/rollouts/{service}/undo`), and the
//! wait that `orch rollout status` and `orch apply --wait` share.

use std::process::ExitCode;
use std::time::Duration;

use kit::orch_api::{Cluster, Rollout, RolloutHistory, RolloutState, UndoRequest};

use super::{Client, Failure, Outcome, Output, print_json, table};

/// How often a wait asks.
const POLL: Duration = Duration::from_millis(200);

#[derive(clap::Subcommand)]
pub enum Command {
    /// Follow the latest rollout until it completes (exit 0) or fails (exit 1).
    Status { service: String },
    /// The service's rollouts: number, when, what changed, how it ended.
    History {
        service: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run an earlier rollout's spec again (default: the last one that completed).
    Undo {
        service: String,
        /// The rollout number to go back to (see `orch rollout history`).
        #[arg(long, value_name = "N")]
        to: Option<u32>,
    },
}

pub async fn verb(client: &Client, command: Command) -> Outcome {
    match command {
        Command::Status { service } => {
            let history = history(client, &service).await?;
            let Some(latest) = history.rollouts.last() else {
                return Err(Failure::Runtime(format!("{service} has no rollouts")));
            };
            let ok = wait(client, &service, latest.number).await?;
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::History { service, output } => {
            let history = history(client, &service).await?;
            if output == Output::Json {
                print_json(&history);
            } else {
                print!("{}", history_table(&history));
                if history.pinned {
                    println!("{}", pinned_note(&history));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Undo { service, to } => {
            let path = format!("/api/rollouts/{service}/undo");
            let history: RolloutHistory = client.call(&path, &UndoRequest { to }).await?;
            if let Some(latest) = history.rollouts.last() {
                println!("{service}: rollout #{} started ({})", latest.number, latest.change);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn history(client: &Client, service: &str) -> Result<RolloutHistory, Failure> {
    client.read(&format!("/api/rollouts/{service}")).await
}

/// Follows rollout `number` of `service` (and what supersedes it) until it ends, printing
/// its progress: `Ok(true)` when complete, `Ok(false)` when it failed.
pub async fn wait(client: &Client, service: &str, mut number: u32) -> Result<bool, Failure> {
    let mut shown = String::new();
    loop {
        let history = history(client, service).await?;
        let Some(r) = history.rollouts.iter().find(|r| r.number == number) else {
            return Err(Failure::Runtime(format!("rollout #{number} of {service} is no longer in its history")));
        };
        let line = progress_line(service, r);
        if line != shown {
            println!("{line}");
            shown = line;
        }
        match r.state {
            RolloutState::Progressing => {}
            RolloutState::Complete => return Ok(true),
            RolloutState::Superseded => match history.rollouts.last() {
                Some(latest) if latest.number != number => number = latest.number,
                _ => return Ok(false),
            },
            RolloutState::Failed => {
                if let Some(latest) = history.rollouts.last().filter(|l| l.number != number) {
                    println!("{service}: rollout #{} under way: {}", latest.number, latest.change);
                }
                return Ok(false);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn progress_line(service: &str, r: &Rollout) -> String {
    let n = r.number;
    match r.state {
        RolloutState::Progressing => {
            format!("{service}: rollout #{n}: {}/{} ready on the new spec", r.ready, r.replicas)
        }
        RolloutState::Complete => format!("{service}: rollout #{n} complete: {}/{} ready", r.ready, r.replicas),
        RolloutState::Superseded => format!("{service}: rollout #{n} superseded by a newer one"),
        RolloutState::Failed => {
            format!("{service}: rollout #{n} failed: {}", r.cause.as_deref().unwrap_or("no cause given"))
        }
    }
}

fn history_table(h: &RolloutHistory) -> String {
    let rows: Vec<Vec<String>> = h
        .rollouts
        .iter()
        .map(|r| {
            let mark = if r.number == h.current { "*" } else { "" };
            let state = match (&r.state, &r.cause) {
                (RolloutState::Failed, Some(cause)) => format!("failed: {cause}"),
                (state, _) => {
                    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
                }
            };
            vec![format!("{}{mark}", r.number), r.started_at.clone(), r.revision.clone(), r.change.clone(), state]
        })
        .collect();
    table(&["ROLLOUT", "STARTED", "REVISION", "CHANGE", "STATE"], &rows)
}

fn pinned_note(h: &RolloutHistory) -> String {
    format!(
        "note: {} runs the spec of an earlier rollout (#{}), not the manifest file's; the file's spec runs again when the file changes",
        h.service, h.current
    )
}

/// `orch get`'s notes: the services pinned to an earlier spec than the file's.
pub async fn pinned_notes(client: &Client, cluster: &Cluster) -> Vec<String> {
    let mut notes = Vec::new();
    for s in &cluster.services {
        if let Ok(h) = history(client, &s.name).await
            && h.pinned
        {
            notes.push(pinned_note(&h));
        }
    }
    notes
}

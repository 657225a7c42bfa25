//! `orch chaos ...`: the verbs that start, list and stop chaos experiments through the
//! control API, and how their answers are printed. A request is checked here first
//! ([`Spec::parse`] in the CLI's words), so a mistake is told before anything is sent.

use std::process::ExitCode;
use std::time::Duration;

use kit::orch_api::{Experiment, ExperimentList, StoppedExperiments};

use super::{Client, Failure, Outcome, Output, print_json, table};
use crate::chaos::{Action, Names, Request, Spec, parse_duration, show};

#[derive(clap::Subcommand)]
pub enum Command {
    /// SIGKILL an instance, or a random running instance of a service (orch restarts it).
    Kill {
        /// An instance (data-2), or a service (data): a random running instance of it each time.
        #[arg(value_name = "INSTANCE|SERVICE")]
        target: String,
        /// Again every DUR (like 500ms, 2s, 1m) until --for ends.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        every: Option<Duration>,
        /// How long to repeat (with --every; at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Option<Duration>,
    },
    /// SIGSTOP an instance (a hung process) and SIGCONT it after --duration.
    Pause(ForAWhile),
    /// Cut an instance off from the registry for --duration, then heal it: the registry
    /// expires it and the balancer routes around it (needs orch started with ORCH_PARTITIONS=1).
    Partition(ForAWhile),
    /// Added latency for P% (default all) of the requests the balancer routes to SERVICE.
    Latency {
        /// A service the balancer routes to.
        service: String,
        /// The delay in milliseconds.
        #[arg(long, value_name = "N")]
        ms: u64,
        /// The share of requests delayed (above 0, at most 100; default 100).
        #[arg(long, value_name = "P")]
        percent: Option<f64>,
        /// How long the fault lasts (at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Duration,
    },
    /// Injected HTTP errors, answered by the balancer, for P% of SERVICE's requests.
    Errors {
        /// A service the balancer routes to.
        service: String,
        /// The share of requests that fail (above 0, at most 100).
        #[arg(long, value_name = "P")]
        percent: f64,
        /// The status they get (400-599; default 503).
        #[arg(long, value_name = "CODE")]
        status: Option<u16>,
        /// How long the fault lasts (at most 1h).
        #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
        span: Duration,
    },
    /// The active experiments.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End an experiment (no ID: all of them); balancer faults are removed, paused
    /// processes resumed.
    Stop {
        id: Option<String>,
        /// Every experiment (the same as no ID).
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

/// The arguments of a fault that lasts a while on an instance: pause and partition.
#[derive(clap::Args)]
pub struct ForAWhile {
    /// An instance (data-2), or a service (data): a random running instance of it each time.
    #[arg(value_name = "INSTANCE|SERVICE")]
    target: String,
    /// How long each one lasts.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    duration: Duration,
    /// Again every DUR until --for ends.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    every: Option<Duration>,
    /// How long to repeat (with --every; at most 1h).
    #[arg(long = "for", value_name = "DUR", value_parser = parse_duration)]
    span: Option<Duration>,
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// The API request for a verb that starts an experiment.
fn request(command: &Command) -> Option<Request> {
    let ms = |d: &Option<Duration>| d.map(millis);
    Some(match command {
        Command::Kill { target, every, span } => Request {
            action: Some(Action::Kill),
            target: target.clone(),
            every_ms: ms(every),
            for_ms: ms(span),
            ..Request::default()
        },
        Command::Pause(a) | Command::Partition(a) => Request {
            action: Some(if matches!(command, Command::Pause(_)) { Action::Pause } else { Action::Partition }),
            target: a.target.clone(),
            every_ms: ms(&a.every),
            for_ms: ms(&a.span),
            duration_ms: Some(millis(a.duration)),
            ..Request::default()
        },
        Command::Latency { service, ms: latency, percent, span } => Request {
            action: Some(Action::Latency),
            target: service.clone(),
            for_ms: Some(millis(*span)),
            latency_ms: Some(*latency),
            percent: *percent,
            ..Request::default()
        },
        Command::Errors { service, percent, status, span } => Request {
            action: Some(Action::Errors),
            target: service.clone(),
            for_ms: Some(millis(*span)),
            percent: Some(*percent),
            status: *status,
            ..Request::default()
        },
        Command::List { .. } | Command::Stop { .. } => return None,
    })
}

/// `orch chaos ...`.
pub async fn verb(client: &Client, command: Command) -> Outcome {
    if let Some(req) = request(&command) {
        // Checked here first, so a mistake is told in the CLI's words and nothing is sent.
        Spec::parse(&req, Names::CLI).map_err(Failure::Usage)?;
        let e: Experiment = client.call("/api/chaos", &req).await?;
        if e.ends_at.is_none() {
            println!("chaos: {}", e.last.as_deref().unwrap_or("-"));
        } else {
            println!(
                "chaos experiment {} started: {}; ends in {} (`orch chaos stop {}` ends it sooner)",
                e.id,
                e.description,
                until(e.ends_at.as_deref()),
                e.id,
            );
            if let Some(last) = &e.last {
                println!("chaos: {last}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        Command::List { output } => {
            let list: ExperimentList = client.read("/api/chaos").await?;
            if output == Output::Json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let list = list.experiments;
            if list.is_empty() {
                println!("no chaos experiment is running");
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.action.as_str().to_owned(),
                        e.target.clone(),
                        e.injected.to_string(),
                        until(e.ends_at.as_deref()),
                        e.description.clone(),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "ACTION", "TARGET", "INJECTED", "ENDS IN", "WHAT"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { id, all: _ } => {
            let path = id.as_deref().map_or_else(|| "/api/chaos".to_owned(), |id| format!("/api/chaos/{id}"));
            let StoppedExperiments { stopped } = client.delete(&path).await?;
            if stopped.is_empty() {
                println!("no chaos experiment was running");
            }
            for e in stopped {
                println!("chaos experiment {} stopped ({}; {} injected)", e.id, e.description, e.injected);
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("experiments are started above"),
    }
}

/// `4s` until an ISO timestamp.
fn until(iso: Option<&str>) -> String {
    let Some(iso) = iso else { return "-".into() };
    let Ok(at) = time::OffsetDateTime::parse(iso, &time::format_description::well_known::Iso8601::DEFAULT) else {
        return "-".into();
    };
    let left = (at - time::OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64;
    // Rounded up to whole seconds past a second.
    let ms = if left >= 1000 { left.div_ceil(1000) * 1000 } else { left };
    show(Duration::from_millis(ms))
}

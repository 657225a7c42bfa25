//! `orch`: a declarative orchestrator for a local microservices cluster.
//!
//! Modules, from the bottom up:
//! - [`manifest`]: the YAML manifest, parsed strictly and validated, errors located;
//! - [`reconcile`]: the pure function from (desired, observed) to actions;
//! - [`supervisor`]: processes — spawn with socket activation, logs, probes, drains;
//! - [`controller`]: the event loop that owns the state and executes the plan;
//! - [`events`], [`state`]: the event log, and what orch keeps in its data dir;
//! - [`access`]: the control and registry tokens, and how the CLI finds the control token;
//! - [`api`]: the control API; [`plane`]: the control plane (`orch apply`);
//! - [`cli`], [`display`]: the verbs that talk to a running orch, and the console;
//! - [`run`]: `orch run COMPONENT`, one component in the foreground;
//! - [`export`]: `orch export kubernetes`, the manifest as Kubernetes objects;
//! - [`chaos`]: what an `orch chaos` experiment asks for (its experiments run in
//!   [`controller::chaos`], its verbs are [`cli::chaos`]);
//! - [`verify`]: `orch verify`, a workload under faults, its history checked.

mod access;
mod api;
mod chaos;
mod cli;
mod controller;
mod display;
mod events;
mod export;
mod manifest;
mod plane;
mod reconcile;
mod run;
mod state;
mod supervisor;
mod tick;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::{Client, Failure, Output};

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "A declarative orchestrator for a local microservices cluster",
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid manifest, 3 orch not reachable."
)]
struct Cli {
    /// The control API of the running orch (default: the manifest's, else http://127.0.0.1:3006).
    #[arg(long, global = true, env = "ORCH_CONTROL_URL", value_name = "URL")]
    control: Option<String>,
    /// The control token, for verbs that change the cluster or show an instance's details
    /// or logs (default: ORCH_CONTROL_TOKEN, else the manifest's data dir, else the record
    /// `orch apply` keeps in ~/.orch/clusters/).
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The manifest of the running cluster: its control port and its data dir (where the
    /// control token is).
    #[arg(short = 'm', long, global = true, value_name = "FILE")]
    manifest: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster of FILE and keep it as declared (or hand FILE to the orch that runs it).
    Apply {
        file: PathBuf,
        /// Run in the background; return once every instance is ready.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Run the control plane here, never hand over (what `-d` starts).
        #[arg(long, hide = true)]
        serve: bool,
        /// Handing FILE to a running orch: wait for the rollouts it starts (exit 1 if one fails).
        #[arg(long)]
        wait: bool,
    },
    /// List instances: name, pid, port, status, ready, restarts, age.
    Get {
        service: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One instance: its spec, state and recent events.
    Describe {
        instance: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The captured stdout and stderr of an instance; with --trace, the lines of one request
    /// across every instance's log (or one service's, or one instance's).
    Logs {
        #[arg(value_name = "INSTANCE", required_unless_present = "trace")]
        instance: Option<String>,
        /// Keep printing as the log grows.
        #[arg(short, long, conflicts_with = "trace")]
        follow: bool,
        /// The last N lines (default 200, at most 100000).
        #[arg(long, value_name = "N", conflicts_with = "trace")]
        tail: Option<usize>,
        /// The lines carrying this trace id (32 hex digits, or a whole traceparent), each
        /// prefixed by its instance, in time order; INSTANCE may then name a service.
        #[arg(long, value_name = "ID")]
        trace: Option<String>,
    },
    /// What applying FILE would change (exit 0: nothing, 1: changes).
    Diff {
        file: PathBuf,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Change the replicas of a running service: `orch scale data=5`.
    Scale {
        #[arg(value_name = "SERVICE=REPLICAS")]
        target: String,
    },
    /// Rolling restart of a service, or restart of one instance.
    Restart {
        #[arg(value_name = "SERVICE|INSTANCE")]
        target: String,
    },
    /// Stop every instance, dependents first, and the control plane.
    Down,
    /// The same as `down`.
    Delete,
    /// The event stream.
    Events {
        #[arg(short, long)]
        follow: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// A service's rollouts: `orch rollout status|history|undo SERVICE`.
    Rollout {
        #[command(subcommand)]
        command: cli::rollout::Command,
    },
    /// Break things on purpose: kill, pause, or slow down and fail requests at the balancer.
    Chaos {
        #[command(subcommand)]
        command: cli::chaos::Command,
    },
    /// Write the cluster as another system's configuration: `orch export kubernetes FILE -o DIR`.
    Export {
        #[command(subcommand)]
        command: cli::export::Command,
    },
    /// Check the running cluster stays correct under faults: clients through the balancer,
    /// faults through orch's chaos API, the history checked (exit 0 valid, 1 invalid, 3 unknown,
    /// 4 the run failed).
    Verify(verify::Options),
    /// Run one component in the foreground (what `orch apply` launches for each instance).
    Run {
        /// registry, balancer, detector, auth, data or compute
        component: run::Component,
    },
}

fn main() -> ExitCode {
    kit::alloc::init();
    private_files();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Command::Run { component } = cli.command {
        return match run::run(component) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !matches!(cli.command, Command::Apply { .. }) {
        die_quietly_on_closed_stdout();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(cli.command, Command::Apply { .. }) {
        runtime.spawn(kit::alloc::trim_after_bursts());
    }
    // On a worker, not in `block_on` on this thread: the control plane's timers and
    // connections then wake one thread, not this one and a worker (see `run`).
    match run::on_worker_any(&runtime, dispatch(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(failure)) => failure.exit(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything orch creates — the data dir's databases, logs, events and tokens, by orch
/// and by the children that inherit the mask — is private to the user (mode 0600/0700).
fn private_files() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
}

/// `orch events | head` ends like any Unix tool when `head` has read enough: killed by
/// SIGPIPE, silently, instead of a panic in `println!` (Rust ignores SIGPIPE by default).
/// Not for `apply`, whose control plane writes to sockets that clients may close.
#[allow(unsafe_code)]
fn die_quietly_on_closed_stdout() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called before any other thread exists, and SIG_DFL runs no code of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

async fn dispatch(cli: Cli) -> cli::Outcome {
    let given = match &cli.manifest {
        Some(file) => Some(manifest::load(file).map_err(|e| Failure::Usage(e.to_string()))?),
        None => None,
    };
    let control = cli.control.clone().or_else(|| given.as_ref().and_then(cli::control_url_of));
    let control = control.as_deref();
    let sources = access::Sources::from_env(cli.token_file.clone(), given.as_ref().map(|m| m.data_dir.clone()));
    let client = || Client::new(control.unwrap_or(cli::DEFAULT_CONTROL_URL), sources.clone());
    match cli.command {
        Command::Apply { file, detach, serve, wait } => apply(control, &sources, &file, detach, serve, wait).await,
        Command::Get { service, output } => cli::get(&client(), service.as_deref(), output == Output::Json).await,
        Command::Describe { instance, output } => cli::describe(&client(), &instance, output == Output::Json).await,
        Command::Logs { instance, trace: Some(id), .. } => cli::trace_logs(&client(), instance.as_deref(), &id).await,
        Command::Logs { instance, follow, tail, trace: None } => {
            cli::logs(&client(), &instance.unwrap_or_default(), follow, tail).await
        }
        Command::Diff { file, output } => cli::diff(control, &sources, &file, output == Output::Json).await,
        Command::Scale { target } => cli::scale(&client(), &target).await,
        Command::Restart { target } => cli::restart(&client(), &target).await,
        Command::Down | Command::Delete => cli::down(&client()).await,
        Command::Events { follow, output } => cli::events(&client(), follow, output == Output::Json).await,
        Command::Chaos { command } => cli::chaos::verb(&client(), command).await,
        Command::Rollout { command } => cli::rollout::verb(&client(), command).await,
        Command::Export { command } => cli::export::verb(command),
        Command::Verify(options) => verify::verify(&client(), options).await,
        Command::Run { .. } => unreachable!("handled before the runtime starts"),
    }
}

async fn apply(
    control: Option<&str>,
    sources: &access::Sources,
    file: &std::path::Path,
    detach: bool,
    serve: bool,
    wait: bool,
) -> cli::Outcome {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("{}: cannot read the manifest: {e}", file.display())))?;
    let manifest = manifest::parse(file, &text).map_err(|e| Failure::Usage(e.to_string()))?;
    if !serve {
        if let Some(code) = cli::hand_over(control, sources, &manifest, wait).await? {
            return Ok(code);
        }
        if detach {
            return cli::detach(file, &manifest).await;
        }
    }
    init_logging();
    match plane::run(manifest, text).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(plane::PlaneError::Invalid(mut e)) => {
            // Name the file as the user did.
            e.file = file.display().to_string();
            Err(Failure::Usage(e.to_string()))
        }
        Err(plane::PlaneError::Runtime(e)) => Err(Failure::Runtime(format!("{e:#}"))),
    }
}

/// orch's own log lines (warnings by default; `RUST_LOG` for more) go to stderr.
fn init_logging() {
    kit::telemetry::init_with(kit::telemetry::LogFormat::Text, std::io::stderr, "warn");
}

//! `orch`: a declarative orchestrator for a local microservices cluster.
#![allow(dead_code)]

mod manifest;
mod reconcile;
mod run;
mod supervisor;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "orch", version, about = "A declarative orchestrator for a local microservices cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one component in the foreground (what `orch apply` launches for each instance).
    Run {
        /// registry, balancer, detector, auth, data or compute
        component: run::Component,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { component } => run::run(component),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `orch run COMPONENT`: one component in the foreground.
//!
//! This is what the reconciler launches for `component:` services, and what a person uses
//! to start one by hand the way the original system did
//! (`PORT=3001 SERVICE_NAME=auth-service-1 orch run auth`). It is thin dispatch: read the
//! component's config from the environment, set up logging, take the listener (inherited
//! or bound), trigger shutdown on SIGTERM/SIGINT, and call the component's `serve`.

use std::future::Future;

use anyhow::Context;
use kit::{ConfigError, Shutdown, Vars};
use tokio::net::TcpListener;

/// The built-in components.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    Registry,
    Balancer,
    Detector,
    Auth,
    Data,
    Compute,
}

impl Component {
    pub const ALL: [Component; 6] =
        [Self::Registry, Self::Balancer, Self::Detector, Self::Auth, Self::Data, Self::Compute];

    /// The component called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Balancer => "balancer",
            Self::Detector => "detector",
            Self::Auth => "auth",
            Self::Data => "data",
            Self::Compute => "compute",
        }
    }
}

pub fn run(component: Component) -> anyhow::Result<()> {
    let vars = Vars::from_env();
    match component {
        Component::Registry => start(&vars, registry::Config::from_vars, |c| &c.kit, registry::serve),
        Component::Balancer => start(&vars, balancer::Config::from_vars, |c| &c.kit, balancer::serve),
        Component::Detector => start(&vars, detector::Config::from_vars, |c| &c.kit, detector::serve),
        Component::Auth => start(&vars, auth::Config::from_vars, |c| &c.kit, auth::serve),
        Component::Data => start(&vars, data::Config::from_vars, |c| &c.kit, data::serve),
        Component::Compute => start(&vars, compute::Config::from_vars, |c| &c.kit, compute::serve),
    }
    .with_context(|| format!("orch run {}", component.name()))
}

fn start<C, E, Fut>(
    vars: &Vars,
    config: fn(&Vars) -> Result<C, ConfigError>,
    kit_of: fn(&C) -> &kit::Config,
    serve: fn(C, TcpListener, Shutdown) -> Fut,
) -> anyhow::Result<()>
where
    Fut: Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let config = config(vars)?;
    let kit = kit_of(&config).clone();
    kit::telemetry::init(kit.log_format, std::io::stderr);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = kit::listen::listener(&kit, vars).await?;
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        tokio::spawn(kit::alloc::trim_after_bursts());
        serve(config, listener, shutdown).await?;
        Ok(())
    })
}

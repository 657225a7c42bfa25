//! `orch run COMPONENT`: one component in the foreground.
//!
//! This is what the reconciler launches for `component:` services, and what a person uses
//! to start one by hand the way the original system did
//! (`PORT=3001 SERVICE_NAME=auth-service-1 orch run auth`). It is thin dispatch: read the
//! component's config from the environment, set up logging, take the listener (inherited
//! or bound), trigger shutdown on SIGTERM/SIGINT, and call the component's `serve`.
//!
//! **Invariant:** the component runs as a task on the runtime's workers, never inside
//! `block_on` on the main thread: there, every accepted connection would be handed from
//! the main thread to a worker (an extra wake-up and context switch per connection).

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
    C: Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let config = config(vars)?;
    let kit = kit_of(&config).clone();
    kit::telemetry::init(kit.log_format, std::io::stderr);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(kit.runtime_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime.block_on(kit::listen::listener(&kit, vars))?;
    on_worker(&runtime, async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals();
        tokio::spawn(kit::alloc::trim_after_bursts());
        serve(config, listener, shutdown).await?;
        Ok(())
    })
}

/// Runs `work` as a task on `runtime`'s workers and waits for it on this thread (a panic
/// in it goes on here).
fn on_worker<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    on_worker_any(runtime, work).and_then(|outcome| outcome)
}

/// [`on_worker`] for any outcome; `Err` if the task was cancelled (the runtime shut down).
pub fn on_worker_any<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let task = runtime.spawn(work);
    match runtime.block_on(task) {
        Ok(outcome) => Ok(outcome),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the task ended early: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_component_runs_on_a_worker_thread_not_the_calling_one() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let caller = std::thread::current().id();
        let (inside, after_accept) = on_worker(&runtime, async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let inside = std::thread::current().id();
            let connect = tokio::spawn(tokio::net::TcpStream::connect(addr));
            listener.accept().await?;
            connect.await??;
            Ok((inside, std::thread::current().id()))
        })
        .unwrap();
        assert_ne!(inside, caller);
        assert_ne!(after_accept, caller);
    }

    #[test]
    fn an_error_of_the_component_is_returned() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let err = on_worker::<()>(&runtime, async { anyhow::bail!("no such thing") }).unwrap_err();
        assert_eq!(err.to_string(), "no such thing");
    }
}

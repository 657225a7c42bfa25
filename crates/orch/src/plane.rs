//! The control plane: what `orch apply FILE` runs when no orch runs yet.
//!
//! It takes the data dir (lock, strays of a crashed orch, cluster token), binds the control
//! API, binds every instance's socket (a port taken by another program stops it here,
//! before anything starts), then runs the controller until the cluster has stopped, with
//! the API and the console display beside it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::api::{ApiState, router};
use crate::controller::{Controller, Event, Setup};
use crate::display;
use crate::events::EventLog;
use crate::manifest::{self, Manifest, ManifestError, NodePath, Problem};
use crate::state::{self, StateFile};
use crate::supervisor::spawn::Spawner;

/// Why the control plane did not run.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The manifest cannot be applied (exit code 2).
    #[error("{0}")]
    Invalid(ManifestError),
    /// Anything else (exit code 1).
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for PlaneError {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

/// Runs the cluster of `manifest` (whose file holds `text`) until it is stopped.
pub async fn run(manifest: Manifest, text: String) -> Result<(), PlaneError> {
    let data_dir = manifest.data_dir.clone();
    std::fs::create_dir_all(data_dir.join("logs"))
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let _lock = state::lock(&data_dir).map_err(anyhow::Error::msg)?;
    let strays = state::clean_strays(&data_dir);
    if !strays.is_empty() {
        eprintln!("orch: killed {} process(es) left by an orch that did not stop cleanly: {strays:?}", strays.len());
    }
    let token = kit::secret::load_or_create(&data_dir.join("cluster-token")).context("creating the cluster token")?;

    let control = match std::net::TcpListener::bind(("127.0.0.1", manifest.control_port)) {
        Ok(l) => l,
        Err(e) => {
            let at = manifest::locate(&text, &NodePath::root().key("spec").key("controlPort"));
            return Err(PlaneError::Invalid(ManifestError {
                file: manifest.path.display().to_string(),
                problems: vec![Problem {
                    at,
                    message: format!("orch's control port {} is not free: {e}", manifest.control_port),
                    fix: "stop whatever uses it, or set spec.controlPort to another port (0 = any free port)".into(),
                }],
            }));
        }
    };
    control.set_nonblocking(true).context("configuring the control socket")?;
    let control_url = format!("http://127.0.0.1:{}", control.local_addr().context("control socket")?.port());
    let events = Arc::new(EventLog::open(Some(&data_dir.join("events.jsonl"))).context("opening events.jsonl")?);
    let spawner = Spawner::start(tokio::runtime::Handle::current()).context("starting the spawner thread")?;
    let state = StateFile::new(&data_dir, control_url.clone(), manifest.path.clone());
    let name = manifest.name.clone();
    let path: PathBuf = manifest.path.clone();
    let (controller, handle, rx) = Controller::new(Setup {
        manifest,
        manifest_text: text,
        token: kit::secret::Secret::new(token.clone()),
        control_url: control_url.clone(),
        events: events.clone(),
        spawner,
        state,
    })
    .map_err(PlaneError::Invalid)?;

    let api =
        router(ApiState { handle: handle.clone(), events: events.clone(), token: kit::secret::Secret::new(token) });
    let listener = tokio::net::TcpListener::from_std(control).context("control socket")?;
    let limits = kit::serve::Limits::from_vars(&kit::Vars::from_env()).context("orch's control API")?;
    tokio::spawn(async move {
        let serving = kit::http::serve(listener, api, kit::Shutdown::new(), limits, std::time::Duration::ZERO);
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the control API stopped");
        }
    });
    let signals = handle.clone();
    tokio::spawn(async move {
        loop {
            kit::shutdown::signal().await;
            signals.send(Event::Signal);
        }
    });
    let display = tokio::spawn(display::run(
        display::Header { name, manifest: path, data_dir, control_url },
        events,
        controller.progress(),
        std::io::stdout().is_terminal(),
    ));
    controller.run(rx).await;
    let _ = display.await;
    Ok(())
}

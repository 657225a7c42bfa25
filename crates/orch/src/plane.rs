//! The control plane: what `orch apply FILE` runs when no orch runs yet.
//!
//! It takes the data dir (made private, 0700; lock; strays of a crashed orch; new tokens),
//! binds the control API and records it for the user (see [`crate::access`]), binds every
//! instance's socket (a port taken by another program stops it here, before anything
//! starts), then runs the controller until the cluster has stopped, with the API and the
//! console display beside it. SIGTERM, SIGINT and SIGHUP (the terminal closed) all stop
//! the cluster gracefully.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::access;
use crate::api::{ApiState, router};
use crate::controller::{Controller, Event, Setup};
use crate::display;
use crate::events::EventLog;
use crate::manifest::{self, Manifest, ManifestError, NodePath, Problem};
use crate::state::{self, StateFile};
use crate::supervisor::cgroup;
use crate::supervisor::spawn::SpawnThread;

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
    prepare_data_dir(&data_dir)?;
    let _lock = state::lock(&data_dir).map_err(anyhow::Error::msg)?;
    let strays = state::clean_strays(&data_dir);
    if !strays.is_empty() {
        eprintln!("orch: killed {} process(es) left by an orch that did not stop cleanly: {strays:?}", strays.len());
    }
    let tokens = access::rotate_tokens(&data_dir).context("creating the tokens")?;
    let cluster_id = kit::secret::random_hex(16);

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
    let control_port = control.local_addr().context("control socket")?.port();
    let control_url = format!("http://127.0.0.1:{control_port}");
    let events = Arc::new(
        EventLog::open(Some(&data_dir.join("events.jsonl")), manifest.log_max_bytes).context("opening events.jsonl")?,
    );
    let spawner =
        Arc::new(SpawnThread::start(tokio::runtime::Handle::current()).context("starting the spawner thread")?);
    let state = StateFile::new(&data_dir, control_url.clone(), manifest.path.clone(), cluster_id.clone());
    let home = access::home();
    if let Some(home) = &home
        && let Err(e) = access::write_record(home, control_port, &data_dir, &control_url, &manifest.path)
    {
        eprintln!("orch: warning: cannot record the cluster in {}/.orch/clusters: {e}", home.display());
    }
    let own_log = OwnLog::of(&data_dir, manifest.log_max_bytes);
    let name = manifest.name.clone();
    let path: PathBuf = manifest.path.clone();
    let (controller, handle, rx) = Controller::new(Setup {
        manifest,
        manifest_text: text,
        token: tokens.registry,
        cluster_id,
        control_url: control_url.clone(),
        events: events.clone(),
        spawner,
        state,
        cgroups: cgroups_for(&data_dir),
    })
    .map_err(PlaneError::Invalid)?;

    let api = router(ApiState { handle: handle.clone(), events: events.clone(), token: tokens.control });
    let listener = tokio::net::TcpListener::from_std(control).context("control socket")?;
    let limits = kit::serve::Limits::from_vars(&kit::Vars::from_env()).context("orch's control API")?;
    tokio::spawn(async move {
        let serving = kit::http::serve(listener, api, kit::Shutdown::new(), limits, std::time::Duration::ZERO);
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the control API stopped");
        }
    });
    let signals = handle.clone();
    // The handlers are installed here, before anything starts, not when the task first runs.
    let mut signalled = kit::shutdown::signal();
    tokio::spawn(async move {
        loop {
            signalled.await;
            signals.send(Event::Signal);
            signalled = kit::shutdown::signal();
        }
    });
    let display = tokio::spawn(display::run(
        display::Header { name, manifest: path, data_dir, control_url },
        events,
        controller.progress(),
        std::io::stdout().is_terminal(),
    ));
    if let Some(own_log) = own_log {
        tokio::spawn(own_log.run());
    }
    controller.run(rx).await;
    let _ = display.await;
    if let Some(home) = &home {
        access::remove_record(home, control_port);
    }
    Ok(())
}

/// Creates the data dir (and `logs/` in it) 0700, or makes an existing one private,
/// saying so.
pub fn prepare_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    for dir in [data_dir.to_owned(), data_dir.join("logs")] {
        let old = access::private_dir(&dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        if let Some(mode) = old {
            eprintln!("orch: warning: {} was mode {mode:04o}, readable by other users; now 0700", dir.display());
        }
    }
    Ok(())
}

/// `DATA_DIR/orch.log`, when it is this process's stdout (a detached orch): rotated to
/// `orch.log.1` when it grows past the cap, like the instances' logs.
struct OwnLog {
    path: PathBuf,
    max_bytes: u64,
}

impl OwnLog {
    fn of(data_dir: &Path, max_bytes: u64) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let path = data_dir.join("orch.log");
        let file = std::fs::metadata(&path).ok()?;
        let stdout = std::fs::metadata("/proc/self/fd/1").ok()?;
        (file.dev() == stdout.dev() && file.ino() == stdout.ino()).then_some(Self { path, max_bytes })
    }

    async fn run(self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        loop {
            tokio::time::sleep_until(crate::tick::next_after(tokio::time::Instant::now(), EVERY)).await;
            let len = std::fs::metadata("/proc/self/fd/1").map(|m| m.len()).unwrap_or(0);
            if len > self.max_bytes
                && let Err(e) = self.rotate()
            {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate orch's log");
                return;
            }
        }
    }

    /// Moves the log to `orch.log.1` and points stdout and stderr at a new `orch.log`.
    fn rotate(&self) -> std::io::Result<()> {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        nix::unistd::dup2_stdout(&file)?;
        nix::unistd::dup2_stderr(&file)?;
        Ok(())
    }
}

/// The cgroups that hold instances to their `resources:` (see [`cgroup`]); none when no
/// hierarchy is writable, or when `ORCH_CGROUPS=off` (then the rss watchdog stands in).
fn cgroups_for(data_dir: &std::path::Path) -> Option<Arc<cgroup::Cgroups>> {
    if std::env::var_os("ORCH_CGROUPS").is_some_and(|v| v == "off") {
        return None;
    }
    cgroup::Cgroups::discover(&cgroup::tag_of(data_dir)).map(Arc::new)
}

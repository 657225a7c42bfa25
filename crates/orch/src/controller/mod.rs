//! The controller: one event loop that owns the cluster's state.
//!
//! Theory of operation (rust-analyzer's main loop, kube's controller). Every trigger is an
//! [`Event`] on one channel: a manifest edit (from the file watcher, debounced), a child's
//! exit, a probe result, a signal, or a call from the control API (a closure run on the
//! controller, so reads and writes see one consistent state). The loop takes a batch of
//! events, folds them into the observed state, then runs the pure
//! [`reconcile`](crate::reconcile::reconcile) on (desired, observed) and executes its
//! actions. Nothing else changes the state, so duplicate triggers collapse and there is
//! never more than one decision about an instance at a time. The loop also wakes at the
//! plan's requeue time (a backoff ends), at the chaos experiments' deadlines (see
//! [`chaos`]), and on a tick, the safety net.
//!
//! Executing an action never blocks the loop for long: starting a process is a fork on
//! the spawner thread; a planned stop (deregister, wait for the balancer, SIGTERM, SIGKILL
//! after the grace period) runs as a task of its own, and the process's exit comes back
//! as an event.
//!
//! The files: [`event_loop`] (the loop, `step`, the one wake time), [`apply`] (the
//! manifest's way in, the diff, the slots, the calls that change what is desired),
//! [`lifecycle`] (actions and each instance's transitions), [`launch`] (the pure
//! `launch_spec`), [`instance`] (an instance and its [`State`](instance::State)), `views`
//! and `change` (the API's wire types), [`chaos`] (the experiments). Processes are
//! started and signalled through a [`Spawner`], so the lifecycle rules are tested on a
//! double (see `tests`).

mod apply;
mod autoscale;
mod change;
pub mod chaos;
mod error;
mod event_loop;
mod instance;
mod launch;
mod lifecycle;
mod metrics;
pub mod partition;
mod resources;
mod rollback;
mod rollout;
mod rollout_file;
#[cfg(test)]
mod tests;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::secret::Secret;
use tokio::sync::{mpsc, oneshot, watch};

pub use change::diff;
pub use error::CallError;
pub use instance::{Instance, LastExit, Proc, Slot, Status};

use crate::events::{EventLog, Kind as EventKind};
use crate::manifest::{Manifest, ManifestError};
use crate::reconcile::InstanceId;
use crate::state::StateFile;
use crate::supervisor::logs::LogFile;
use crate::supervisor::probe;
use crate::supervisor::spawn::Spawner;

/// The safety net: reconcile at least this often.
const TICK: Duration = Duration::from_secs(1);
/// Quiet time after the last file event before the manifest is read.
const DEBOUNCE: Duration = Duration::from_millis(40);

/// Everything that makes the controller act.
pub enum Event {
    /// The manifest file changed on disk.
    ManifestChanged,
    /// A child exited.
    Exited { id: InstanceId, generation: u64, status: std::io::Result<std::process::ExitStatus> },
    /// A probe changed its mind.
    Probe { id: InstanceId, generation: u64, kind: ProbeKind, ok: bool, detail: String },
    /// SIGINT or SIGTERM: stop everything (a second one: kill everything).
    Signal,
    /// The autoscaler's figures of this round (see [`autoscale`]).
    Autoscale(Vec<autoscale::sampler::Measured>),
    /// A control API call, run on the controller.
    Call(Box<dyn FnOnce(&mut Controller) + Send>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Readiness,
    Liveness,
}

/// A way to reach the controller from elsewhere (the API, signal handlers).
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Event>,
}

impl Handle {
    /// Runs `f` on the controller and returns its result; `None` once the controller is gone.
    pub async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut Controller) -> R + Send + 'static) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Call(Box::new(move |c| {
                let _ = reply.send(f(c));
            })))
            .ok()?;
        rx.await.ok()
    }

    pub fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

/// How far the cluster is: what the foreground `orch apply` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub ready: usize,
    pub total: usize,
    pub stopping: bool,
}

/// What the controller starts from.
pub struct Setup {
    pub manifest: Manifest,
    pub manifest_text: String,
    /// The registry token (see [`crate::access`]).
    pub token: Secret,
    /// `ORCH_CLUSTER_ID`, the mark of this run's children (see [`crate::state`]).
    pub cluster_id: String,
    pub control_url: String,
    pub events: Arc<EventLog>,
    /// Starts and signals the processes: a
    /// [`SpawnThread`](crate::supervisor::spawn::SpawnThread), or a test double.
    pub spawner: Arc<dyn Spawner>,
    pub state: StateFile,
    /// Where instances get their cgroups (see [`resources`]); `None`: the rss watchdog.
    pub cgroups: Option<Arc<crate::supervisor::cgroup::Cgroups>>,
}

pub struct Controller {
    manifest: Manifest,
    /// Hash of the manifest text last read from disk (applied or rejected).
    seen_text: u64,
    /// What every process starts from; its token is also the controller's own for the
    /// registry and the balancer's admin API.
    base: launch::Base,
    started_at: String,
    events: Arc<EventLog>,
    spawner: Arc<dyn Spawner>,
    state: StateFile,
    http: reqwest::Client,
    tx: mpsc::UnboundedSender<Event>,
    watcher: Option<notify::RecommendedWatcher>,
    instances: BTreeMap<InstanceId, Instance>,
    slots: BTreeMap<InstanceId, Slot>,
    logs: HashMap<String, Arc<LogFile>>,
    rolling: HashSet<String>,
    next_generation: u64,
    shutting_down: bool,
    signals: u32,
    last_error: Option<String>,
    reload_at: Option<tokio::time::Instant>,
    /// When the loop must reconcile again at the latest: the plan's requeue, or now.
    requeue: Option<Instant>,
    progress: watch::Sender<Progress>,
    finished: bool,
    /// `orch chaos` experiments (see [`chaos`]).
    chaos: chaos::experiments::Experiments,
    /// The instances' links to the registry, with `ORCH_PARTITIONS=1` (see [`partition`]).
    links: partition::Links,
    /// `autoscale:` (see [`autoscale`]).
    autoscaler: autoscale::Autoscaler,
    /// `resources:`: cgroups, OOM kills, the watchdog (see [`resources`]).
    resources: resources::Books,
    /// Every service's numbered rollouts (see [`rollback`]).
    rollouts: rollout::Book,
}

impl Controller {
    /// A controller for `setup.manifest`, with every instance's socket already bound: a port
    /// taken by another program is an error here, before anything starts.
    pub fn new(setup: Setup) -> Result<(Self, Handle, mpsc::UnboundedReceiver<Event>), ManifestError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (progress, _) = watch::channel(Progress::default());
        let mut controller = Self {
            seen_text: hash_text(&setup.manifest_text),
            manifest: setup.manifest.clone(),
            base: launch::Base {
                env: launch::base_env(std::env::vars()),
                token: setup.token,
                cluster_id: setup.cluster_id,
                control_url: setup.control_url,
                exe: std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "orch".into()),
            },
            started_at: kit::time::now_iso(),
            events: setup.events,
            spawner: setup.spawner,
            state: setup.state,
            http: probe::client(),
            tx: tx.clone(),
            watcher: None,
            instances: BTreeMap::new(),
            slots: BTreeMap::new(),
            logs: HashMap::new(),
            rolling: HashSet::new(),
            next_generation: 0,
            shutting_down: false,
            signals: 0,
            last_error: None,
            reload_at: None,
            requeue: None,
            progress,
            finished: false,
            chaos: chaos::experiments::Experiments::default(),
            links: partition::Links::new(std::env::var(partition::VAR).is_ok_and(|v| v == "1")),
            autoscaler: autoscale::Autoscaler::new(),
            resources: resources::Books::new(setup.cgroups),
            rollouts: rollout::Book::default(),
        };
        controller.slots = controller.prepare_slots(&setup.manifest, Some(&setup.manifest_text))?;
        controller.watch_manifest();
        controller.start_rollouts();
        controller.state.save();
        let summary = setup.manifest.services.iter().map(|s| format!("{} x{}", s.name, s.replicas)).collect::<Vec<_>>();
        controller.events.emit(
            EventKind::ManifestApplied,
            None,
            None,
            format!("applied {}: {}", setup.manifest.path.display(), summary.join(", ")),
        );
        controller.resources_announce();
        controller.update_progress();
        Ok((controller, Handle { tx }, rx))
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }
}

fn hash_text(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

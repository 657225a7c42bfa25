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

mod change;
pub mod chaos;
mod error;
mod instance;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kit::orch_api::{ApplyResult, Change, ChangeKind, Message, Scaled};
use kit::secret::Secret;
use nix::sys::signal::Signal;
use notify::Watcher;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use change::diff;
pub use error::CallError;
pub use instance::{Instance, LastExit, Proc, Slot, Status};

use crate::events::{EventLog, Kind as EventKind};
use crate::manifest::{self, Check, Kind, Manifest, ManifestError, NodePath, Problem, Service};
use crate::reconcile::{self, Action, Desired, InstanceId, Phase, StopReason};
use crate::run::Component;
use crate::state::StateFile;
use crate::supervisor::drain::{self, DrainPlan};
use crate::supervisor::logs::{self, LogFile};
use crate::supervisor::spawn::{self, LaunchSpec, Spawner};
use crate::supervisor::{exit_parts, probe, signal_group};

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
    pub spawner: Spawner,
    pub state: StateFile,
}

pub struct Controller {
    manifest: Manifest,
    /// Hash of the manifest text last read from disk (applied or rejected).
    seen_text: u64,
    /// The registry token: for the registry, the balancer's admin API, and the instances
    /// that register themselves. Never the control token.
    token: Secret,
    cluster_id: String,
    control_url: String,
    started_at: String,
    events: Arc<EventLog>,
    spawner: Spawner,
    state: StateFile,
    http: reqwest::Client,
    tx: mpsc::UnboundedSender<Event>,
    watcher: Option<notify::RecommendedWatcher>,
    instances: BTreeMap<InstanceId, Instance>,
    slots: BTreeMap<InstanceId, Slot>,
    logs: HashMap<String, Arc<LogFile>>,
    restart_generations: HashMap<String, u64>,
    rolling: HashSet<String>,
    next_generation: u64,
    shutting_down: bool,
    signals: u32,
    last_error: Option<String>,
    reload_at: Option<tokio::time::Instant>,
    requeue: Option<Instant>,
    progress: watch::Sender<Progress>,
    finished: bool,
    /// `orch chaos` experiments (see [`chaos`]).
    chaos: chaos::experiments::Experiments,
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
            token: setup.token,
            cluster_id: setup.cluster_id,
            control_url: setup.control_url,
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
            restart_generations: HashMap::new(),
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
        };
        controller.slots = controller.prepare_slots(&setup.manifest, Some(&setup.manifest_text))?;
        controller.watch_manifest();
        controller.state.save();
        let summary = setup.manifest.services.iter().map(|s| format!("{} x{}", s.name, s.replicas)).collect::<Vec<_>>();
        controller.events.emit(
            EventKind::ManifestApplied,
            None,
            None,
            format!("applied {}: {}", setup.manifest.path.display(), summary.join(", ")),
        );
        controller.update_progress();
        Ok((controller, Handle { tx }, rx))
    }

    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until the cluster has stopped (signal or `orch down`).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        loop {
            self.step().await;
            if self.finished || (self.shutting_down && self.instances.is_empty()) {
                break;
            }
            let mut wake = tokio::time::Instant::now() + TICK;
            if let Some(at) = self.requeue {
                wake = wake.min(tokio::time::Instant::from_std(at));
            }
            if let Some(at) = self.reload_at {
                wake = wake.min(at);
            }
            if let Some(at) = self.chaos_deadline() {
                wake = wake.min(at);
            }
            tokio::select! {
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    self.handle(event);
                    while let Ok(event) = rx.try_recv() {
                        self.handle(event);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if self.reload_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                self.reload_at = None;
                self.reload();
            }
            self.chaos_due(tokio::time::Instant::now());
        }
        self.events.emit(EventKind::Stopped, None, None, "cluster stopped");
        self.update_progress();
        self.state.remove();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::ManifestChanged => {
                self.reload_at = Some(tokio::time::Instant::now() + DEBOUNCE);
            }
            Event::Exited { id, generation, status } => self.on_exit(&id, generation, status),
            Event::Probe { id, generation, kind, ok, detail } => self.on_probe(&id, generation, kind, ok, detail),
            Event::Signal => {
                self.signals += 1;
                if self.signals == 1 {
                    self.begin_shutdown("signal");
                } else {
                    self.kill_everything();
                }
            }
            Event::Call(f) => f(self),
        }
    }

    // -----------------------------------------------------------------------------------
    // Reconcile and act
    // -----------------------------------------------------------------------------------

    fn revision_of(&self, service: &Service) -> u64 {
        let generation = self.restart_generations.get(&service.name).copied().unwrap_or(0);
        reconcile::revision(&self.manifest, service).wrapping_add(generation.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn desired(&self) -> Desired {
        Desired {
            services: reconcile::goals(&self.manifest, |s| self.revision_of(s)),
            shutting_down: self.shutting_down,
        }
    }

    async fn step(&mut self) {
        // A start that fails at once (the program vanished) needs another look right away.
        for _ in 0..4 {
            let observed: Vec<_> = self.instances.values().map(Instance::observed).collect();
            let plan = reconcile::reconcile(&self.desired(), &observed, Instant::now());
            self.requeue = plan.requeue;
            let mut again = false;
            for action in plan.actions {
                again |= self.execute(action).await;
            }
            if !again {
                break;
            }
        }
        self.check_rollouts();
        self.update_progress();
    }

    /// Carries out one action; true if the state changed so that reconciling again now
    /// would do more.
    async fn execute(&mut self, action: Action) -> bool {
        match action {
            Action::Create(id) => {
                if let Some(slot) = self.slots.get(&id).cloned() {
                    let revision = self.manifest.service(&id.service).map(|s| self.revision_of(s)).unwrap_or(0);
                    let mut instance = Instance::new(id.clone(), slot);
                    instance.revision = revision;
                    self.instances.insert(id, instance);
                }
                false
            }
            Action::Start(id) => !self.start(id).await,
            Action::Backoff { id, until, crashloop } => {
                self.backoff(&id, until, crashloop);
                false
            }
            Action::Finish { id, success } => {
                if let Some(i) = self.instances.get_mut(&id) {
                    i.phase = Phase::Done { success };
                    i.status = if success { Status::Stopped } else { Status::Failed };
                    let policy = self.manifest.service(&id.service).map(|s| s.restart.policy);
                    self.events.emit(
                        EventKind::Stopped,
                        Some(&id.service),
                        Some(&i.name),
                        format!("{} stays down (restart policy {policy:?})", i.name),
                    );
                }
                false
            }
            Action::Kill(id) => {
                self.kill_for_liveness(&id);
                false
            }
            Action::Drain { id, reason } => {
                self.drain(&id, reason);
                false
            }
            Action::Forget(id) => {
                if let Some(i) = self.instances.remove(&id)
                    && let Some(p) = i.proc
                {
                    p.probes.cancel();
                }
                false
            }
            Action::ResetBackoff(id) => {
                if let Some(i) = self.instances.get_mut(&id) {
                    i.crash_streak = 0;
                }
                false
            }
        }
    }

    fn log_for(&mut self, name: &str) -> Arc<LogFile> {
        let dir = self.manifest.data_dir.join("logs");
        let max = self.manifest.log_max_bytes;
        self.logs
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(LogFile::new(dir.join(format!("{name}.log")), max)))
            .clone()
    }

    /// Starts a process for `id`; false if it could not be started.
    async fn start(&mut self, id: InstanceId) -> bool {
        let Some(service) = self.manifest.service(&id.service).cloned() else { return true };
        let Some(slot) = self.slots.get(&id).cloned() else {
            tracing::warn!(instance = %id, "no socket for the instance");
            return true;
        };
        let revision = self.revision_of(&service);
        let spec = self.launch_spec(&service, &id, &slot);
        let name = id.to_string();
        let log = self.log_for(&name);
        let instance = self.instances.entry(id.clone()).or_insert_with(|| Instance::new(id.clone(), slot.clone()));
        let after_crash =
            matches!(instance.phase, Phase::Exited { planned: false, .. }) && instance.revision == revision;
        if instance.revision != revision {
            instance.crash_streak = 0;
        }
        instance.slot = slot;
        instance.revision = revision;
        instance.spec = Some(service.clone());
        instance.backoff_until = None;
        instance.ready = false;
        instance.ready_since = None;
        instance.liveness_failures = 0;

        let spawned = self.spawner.spawn(spec).await;
        let instance = self.instances.get_mut(&id).expect("inserted above");
        let mut spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                instance.phase = Phase::Exited { at: Instant::now(), success: false, planned: false };
                instance.crash_streak += 1;
                instance.status = Status::Failed;
                instance.last_exit =
                    Some(LastExit { code: None, signal: None, at: kit::time::now_iso(), error: Some(e.to_string()) });
                log.note(&format!("failed to start: {e}"));
                self.events.emit(
                    EventKind::Exited,
                    Some(&id.service),
                    Some(&name),
                    format!("{name} failed to start: {e}"),
                );
                return false;
            }
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        let pid = spawned.pid;
        let probes = CancellationToken::new();
        let exited = CancellationToken::new();
        if let Some(out) = spawned.child.stdout.take() {
            tokio::spawn(logs::pump(out, log.clone()));
        }
        if let Some(err) = spawned.child.stderr.take() {
            tokio::spawn(logs::pump(err, log.clone()));
        }
        {
            let tx = self.tx.clone();
            let exited = exited.clone();
            let id = id.clone();
            let mut child = spawned.child;
            tokio::spawn(async move {
                let status = child.wait().await;
                exited.cancel();
                let _ = tx.send(Event::Exited { id, generation, status });
            });
        }
        instance.generation = generation;
        instance.proc = Some(Proc { pid, probes: probes.clone(), exited, registration: None });
        instance.phase = Phase::Starting;
        instance.status = Status::Starting;
        instance.started_at = Some(SystemTime::now());
        instance.spawned_at = Some(Instant::now());
        if after_crash {
            instance.restarts += 1;
        }
        let restarts = instance.restarts;
        log.note(&format!("started {name} (pid {pid}, port {})", instance.slot.port));
        self.state.child_started(&name, pid);
        if after_crash {
            self.events.emit(
                EventKind::Restarted,
                Some(&id.service),
                Some(&name),
                format!("{name} restarted (pid {pid}, restart {restarts})"),
            );
        } else {
            self.events.emit(
                EventKind::Started,
                Some(&id.service),
                Some(&name),
                format!("{name} started (pid {pid}, port {})", self.instances[&id].slot.port),
            );
        }
        let port = self.instances[&id].slot.port;
        if service.readiness.check == Check::None {
            self.on_probe(&id, generation, ProbeKind::Readiness, true, String::new());
        } else {
            let tx = self.tx.clone();
            let report_id = id.clone();
            tokio::spawn(probe::readiness(
                self.http.clone(),
                port,
                service.readiness.clone(),
                probes,
                move |ok, detail| {
                    let _ = tx.send(Event::Probe {
                        id: report_id.clone(),
                        generation,
                        kind: ProbeKind::Readiness,
                        ok,
                        detail,
                    });
                },
            ));
        }
        true
    }

    fn launch_spec(&self, service: &Service, id: &InstanceId, slot: &Slot) -> LaunchSpec {
        let m = &self.manifest;
        // orch's own environment (PATH, HOME, RUST_LOG...), minus what names orch's sockets
        // and the tokens a user may have exported for the CLI.
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                !k.starts_with("LISTEN_")
                    && !["NOTIFY_SOCKET", "ORCH_CONTROL_TOKEN", "ORCH_CLUSTER_TOKEN"].contains(&k.as_str())
            })
            .collect();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        // Log files are not terminals.
        set("NO_COLOR", "1".into());
        set("SERVICE_NAME", id.to_string());
        set("SERVICE_TYPE", service.name.clone());
        set("PORT", slot.port.to_string());
        set("SERVICE_HOST", "localhost".into());
        match self.component_port(Component::Registry) {
            Some(p) => set("SERVICE_REGISTRY_URL", format!("http://localhost:{p}")),
            None => set("REGISTER", "false".into()),
        }
        if service.registers {
            set("ORCH_CLUSTER_TOKEN", self.token.expose().to_owned());
        }
        set(crate::state::CLUSTER_ID_VAR, self.cluster_id.clone());
        set("ORCH_MANAGED", "1".into());
        set("ORCH_CONTROL_URL", self.control_url.clone());
        set("DATA_DIR", m.data_dir.display().to_string());
        set("DATABASE_URL", format!("sqlite://{}", m.data_dir.join(format!("{}.sqlite", service.name)).display()));
        if let Some(url) = &m.database
            && matches!(service.component(), Some(Component::Auth | Component::Data | Component::Compute))
        {
            set("DATABASE_URL", url.clone());
        }
        set("AUTH_REQUIRED", m.auth_required.to_string());
        if let Some(p) = self.component_port(Component::Balancer) {
            set("LOAD_BALANCER_URL", format!("http://localhost:{p}"));
        }
        if service.component() == Some(Component::Balancer) && !service.routes.is_empty() {
            let routes: Vec<String> = service.routes.iter().map(|(prefix, to)| format!("{prefix}={to}")).collect();
            set("ROUTES", routes.join(","));
        }
        for (k, v) in m.env.iter().chain(&service.env) {
            env.insert(k.clone(), v.clone());
        }
        let (program, argv0, args) = match &service.kind {
            // The running orch's own image, even if the file was replaced by a rebuild.
            Kind::Component(c) => {
                let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "orch".into());
                (PathBuf::from("/proc/self/exe"), exe, vec!["run".to_owned(), c.name().to_owned()])
            }
            Kind::Command { program, args } => {
                let args = args
                    .iter()
                    .map(|a| {
                        a.replace("{port}", &slot.port.to_string())
                            .replace("{name}", &id.to_string())
                            .replace("{service}", &service.name)
                            .replace("{ordinal}", &id.ordinal.to_string())
                            .replace("{dataDir}", &m.data_dir.display().to_string())
                    })
                    .collect();
                (program.clone(), program.display().to_string(), args)
            }
        };
        LaunchSpec {
            program,
            argv0,
            args,
            env: env.into_iter().collect(),
            cwd: service.working_dir.clone(),
            socket: slot.socket.clone(),
        }
    }

    /// The port of the first instance of the service running `component`.
    fn component_port(&self, component: Component) -> Option<u16> {
        let service = self.manifest.component(component)?;
        if service.replicas == 0 {
            return None;
        }
        self.slots.get(&InstanceId::new(&service.name, 1)).map(|s| s.port)
    }

    fn registry_client(&self) -> Option<kit::registry::RegistryClient> {
        let port = self.component_port(Component::Registry)?;
        Some(kit::registry::RegistryClient::new(&format!("http://127.0.0.1:{port}"), Some(self.token.clone())))
    }

    fn on_probe(&mut self, id: &InstanceId, generation: u64, kind: ProbeKind, ok: bool, detail: String) {
        let Some(service) = self.manifest.service(&id.service).cloned() else { return };
        let registry = self.registry_client();
        let http = self.http.clone();
        let tx = self.tx.clone();
        let Some(instance) = self.instances.get_mut(id) else { return };
        if instance.generation != generation || instance.proc.is_none() || matches!(instance.phase, Phase::Stopping(_))
        {
            return;
        }
        let name = instance.name.clone();
        match (kind, ok) {
            (ProbeKind::Readiness, true) => {
                instance.ready = true;
                instance.ready_since = Some(Instant::now());
                instance.status = Status::Running;
                let message = if instance.phase == Phase::Starting {
                    instance.phase = Phase::Running;
                    let took = instance.spawned_at.map(|t| t.elapsed().as_millis()).unwrap_or(0);
                    // Liveness probing starts once the instance has been ready.
                    if service.liveness.check != Check::None {
                        let proc = instance.proc.as_ref().expect("checked above");
                        let probes = proc.probes.clone();
                        let report_id = id.clone();
                        let port = instance.slot.port;
                        let tx = tx.clone();
                        tokio::spawn(probe::liveness(
                            http,
                            port,
                            service.liveness.clone(),
                            probes,
                            move |ok, detail| {
                                let _ = tx.send(Event::Probe {
                                    id: report_id.clone(),
                                    generation,
                                    kind: ProbeKind::Liveness,
                                    ok,
                                    detail,
                                });
                            },
                        ));
                    }
                    format!("{name} ready ({took} ms after start)")
                } else {
                    format!("{name} ready again")
                };
                if service.register
                    && let (Some(registry), Some(proc)) = (registry, instance.proc.as_mut())
                {
                    let interval = service
                        .env
                        .get("HEARTBEAT_INTERVAL_MS")
                        .or(self.manifest.env.get("HEARTBEAT_INTERVAL_MS"))
                        .and_then(|v| v.parse().ok())
                        .map_or(Duration::from_secs(10), Duration::from_millis);
                    proc.registration =
                        Some(register(registry, &service, &name, instance.slot.port, proc.pid, interval));
                }
                self.events.emit(EventKind::Ready, Some(&id.service), Some(&name), message);
                self.chaos_balancer_ready(id);
            }
            (ProbeKind::Readiness, false) => {
                instance.ready = false;
                instance.ready_since = None;
                if let Some(proc) = instance.proc.as_mut()
                    && let Some(reg) = proc.registration.take()
                {
                    reg.trigger();
                    if let Some(registry) = registry {
                        let name = name.clone();
                        tokio::spawn(async move { registry.deregister(&name).await });
                    }
                }
                self.events.emit(
                    EventKind::NotReady,
                    Some(&id.service),
                    Some(&name),
                    format!("{name} not ready: {detail}"),
                );
            }
            (ProbeKind::Liveness, false) => {
                instance.liveness_failures += 1;
                instance.liveness_detail = detail;
            }
            (ProbeKind::Liveness, true) => {
                instance.liveness_failures = 0;
            }
        }
    }

    fn on_exit(&mut self, id: &InstanceId, generation: u64, status: std::io::Result<std::process::ExitStatus>) {
        let registry = self.registry_client();
        let Some(instance) = self.instances.get_mut(id) else { return };
        if instance.generation != generation {
            return;
        }
        let Some(proc) = instance.proc.take() else { return };
        proc.probes.cancel();
        if let Some(reg) = proc.registration {
            reg.trigger();
            if let Some(registry) = registry {
                let name = instance.name.clone();
                tokio::spawn(async move { registry.deregister(&name).await });
            }
        }
        let (code, signal, success) = match &status {
            Ok(s) => {
                let (code, signal) = exit_parts(s);
                (code, signal, s.success())
            }
            Err(_) => (None, None, false),
        };
        let planned =
            matches!(instance.phase, Phase::Stopping(StopReason::Remove | StopReason::Replace | StopReason::Shutdown));
        instance.phase = Phase::Exited { at: Instant::now(), success, planned };
        instance.ready = false;
        instance.ready_since = None;
        instance.liveness_failures = 0;
        if !planned {
            instance.crash_streak += 1;
        }
        let last = LastExit { code, signal, at: kit::time::now_iso(), error: status.err().map(|e| e.to_string()) };
        let how = last.describe();
        instance.last_exit = Some(last);
        instance.status = if planned { Status::Stopped } else { Status::Backoff };
        let name = instance.name.clone();
        if let Some(log) = self.logs.get(&name) {
            log.note(&format!("exited ({how})"));
        }
        self.state.child_gone(&name);
        if planned {
            self.events.emit(EventKind::Stopped, Some(&id.service), Some(&name), format!("{name} stopped ({how})"));
        } else {
            self.events.emit(EventKind::Exited, Some(&id.service), Some(&name), format!("{name} exited ({how})"));
        }
    }

    fn backoff(&mut self, id: &InstanceId, until: Instant, crashloop: bool) {
        let Some(instance) = self.instances.get_mut(id) else { return };
        let status = if crashloop { Status::Crashloop } else { Status::Backoff };
        if instance.backoff_until == Some(until) && instance.status == status {
            return;
        }
        instance.backoff_until = Some(until);
        let was = instance.status;
        instance.status = status;
        let wait = until.saturating_duration_since(Instant::now()).as_millis();
        let (name, streak) = (instance.name.clone(), instance.crash_streak);
        if crashloop && was != Status::Crashloop {
            self.events.emit(
                EventKind::Crashloop,
                Some(&id.service),
                Some(&name),
                format!("{name} is crash-looping ({streak} crashes in a row); next restart in {wait} ms"),
            );
        } else {
            self.events.emit(
                EventKind::Backoff,
                Some(&id.service),
                Some(&name),
                format!("{name} restarts in {wait} ms ({streak} crashes in a row)"),
            );
        }
    }

    fn kill_for_liveness(&mut self, id: &InstanceId) {
        let Some(instance) = self.instances.get_mut(id) else { return };
        let Some(proc) = instance.proc.as_mut() else { return };
        proc.probes.cancel();
        let pid = proc.pid;
        instance.phase = Phase::Stopping(StopReason::Liveness);
        instance.status = Status::Stopping;
        instance.ready = false;
        let name = instance.name.clone();
        let message = format!(
            "{name} failed its liveness probe {} times in a row ({}): killing it",
            instance.liveness_failures, instance.liveness_detail
        );
        signal_group(pid, Signal::SIGKILL);
        self.events.emit(EventKind::LivenessFailed, Some(&id.service), Some(&name), message);
    }

    /// Starts the planned-stop sequence of `id` (see [`drain`]).
    fn drain(&mut self, id: &InstanceId, reason: StopReason) {
        let is_registry = self.manifest.service(&id.service).and_then(Service::component) == Some(Component::Registry);
        // Balancers that route now, other than the instance itself.
        let balancers: Vec<String> = if self.shutting_down && reason != StopReason::Shutdown {
            Vec::new()
        } else {
            self.instances
                .values()
                .filter(|i| {
                    i.id != *id
                        && i.phase == Phase::Running
                        && i.ready
                        && self.manifest.service(&i.id.service).and_then(Service::component)
                            == Some(Component::Balancer)
                })
                .map(|i| format!("http://127.0.0.1:{}", i.slot.port))
                .collect()
        };
        let registry = if is_registry { None } else { self.registry_client() };
        let grace = self.manifest.service(&id.service).map_or(5000, |s| s.grace_period_ms);
        let Some(instance) = self.instances.get_mut(id) else { return };
        let Some(proc) = instance.proc.as_mut() else { return };
        proc.probes.cancel();
        if let Some(reg) = proc.registration.take() {
            reg.trigger();
        }
        instance.phase = Phase::Stopping(reason);
        instance.status = Status::Stopping;
        instance.ready = false;
        instance.ready_since = None;
        let why = match reason {
            StopReason::Remove => "scaled down",
            StopReason::Replace => "replaced",
            StopReason::Shutdown => "the cluster stops",
            StopReason::Liveness => "liveness",
        };
        let plan = DrainPlan {
            instance: instance.name.clone(),
            service: id.service.clone(),
            pid: proc.pid,
            registry,
            balancers,
            grace: Duration::from_millis(grace),
            exited: proc.exited.clone(),
            http: self.http.clone(),
        };
        let name = instance.name.clone();
        self.events.emit(EventKind::Stopping, Some(&id.service), Some(&name), format!("{name} stopping ({why})"));
        tokio::spawn(drain::drain(plan));
    }

    fn begin_shutdown(&mut self, why: &str) {
        if !self.shutting_down {
            self.shutting_down = true;
            self.chaos_shutdown();
            self.events.emit(EventKind::Stopping, None, None, format!("stopping the cluster ({why})"));
        }
    }

    /// The second Ctrl-C: SIGKILL every process and stop now.
    fn kill_everything(&mut self) {
        for instance in self.instances.values() {
            if let Some(proc) = &instance.proc {
                signal_group(proc.pid, Signal::SIGKILL);
            }
        }
        self.events.emit(EventKind::Stopped, None, None, "killed every instance (second signal)");
        self.finished = true;
    }

    /// Emits `rolled` for services whose rollout has finished.
    fn check_rollouts(&mut self) {
        let done: Vec<String> = self
            .rolling
            .iter()
            .filter(|name| {
                let Some(service) = self.manifest.service(name) else { return true };
                let revision = self.revision_of(service);
                let current: Vec<&Instance> = self
                    .instances
                    .values()
                    .filter(|i| i.id.service == **name && i.id.ordinal <= service.replicas)
                    .collect();
                current.len() == service.replicas as usize
                    && current.iter().all(|i| i.revision == revision && i.phase == Phase::Running && i.ready)
            })
            .cloned()
            .collect();
        for name in done {
            self.rolling.remove(&name);
            if let Some(service) = self.manifest.service(&name) {
                let n = service.replicas;
                self.events.emit(
                    EventKind::Rolled,
                    Some(&name),
                    None,
                    format!("{name} rolled out: {n} instances on the new spec"),
                );
            }
        }
    }

    fn update_progress(&self) {
        let total: usize = self.manifest.services.iter().map(|s| s.replicas as usize).sum();
        let ready = self
            .instances
            .values()
            .filter(|i| {
                self.manifest.service(&i.id.service).is_some_and(|s| i.id.ordinal <= s.replicas)
                    && i.ready
                    && i.phase.is_live()
            })
            .count();
        self.progress.send_if_modified(|p| {
            let next = Progress { ready, total, stopping: self.shutting_down };
            let changed = *p != next;
            *p = next;
            changed
        });
    }

    // -----------------------------------------------------------------------------------
    // The manifest
    // -----------------------------------------------------------------------------------

    /// Every instance's socket (or port) for `manifest`: kept where the port stays, bound
    /// where it is new. Fails, binding nothing, if a port is taken by another program.
    fn prepare_slots(&self, m: &Manifest, text: Option<&str>) -> Result<BTreeMap<InstanceId, Slot>, ManifestError> {
        let mut ours: HashMap<u16, Slot> = HashMap::new();
        for slot in self.slots.values().chain(self.instances.values().map(|i| &i.slot)) {
            ours.insert(slot.port, slot.clone());
        }
        let mut slots = BTreeMap::new();
        let mut reserved = Vec::new();
        for (i, s) in m.services.iter().enumerate() {
            for n in 1..=s.replicas {
                let id = InstanceId::new(&s.name, n);
                let fixed = s.port_of(n);
                let activated = s.socket_activation;
                let kept = self.slots.get(&id).filter(|old| {
                    old.socket.is_some() == activated
                        && match fixed {
                            Some(p) => old.port == p,
                            None => !old.fixed,
                        }
                });
                let reused = fixed.and_then(|p| ours.get(&p)).filter(|o| o.socket.is_some() == activated);
                let slot = match (kept, reused) {
                    (Some(old), _) => old.clone(),
                    (None, Some(existing)) => Slot { fixed: true, ..existing.clone() },
                    (None, None) => match spawn::bind_listener(fixed.unwrap_or(0)) {
                        Ok(listener) => {
                            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                            if activated {
                                Slot { port, socket: Some(Arc::new(listener)), fixed: fixed.is_some() }
                            } else {
                                // The program binds it; keep it reserved until all are chosen.
                                reserved.push(listener);
                                Slot { port, socket: None, fixed: fixed.is_some() }
                            }
                        }
                        Err(e) => {
                            let (message, fix) = match fixed {
                                Some(p) if e.kind() == std::io::ErrorKind::AddrInUse => (
                                    format!("port {p} ({id}) is already in use by another program"),
                                    "stop that program, or choose another port (omit port for automatic ports)"
                                        .to_owned(),
                                ),
                                Some(p) => {
                                    (format!("cannot listen on port {p} ({id}): {e}"), "choose another port".to_owned())
                                }
                                None => {
                                    (format!("cannot find a free port for {id}: {e}"), "free some ports".to_owned())
                                }
                            };
                            let node = NodePath::root().key("spec").key("services").index(i).key("port");
                            let at = text.and_then(|t| manifest::locate(t, &node));
                            return Err(ManifestError {
                                file: m.path.display().to_string(),
                                problems: vec![Problem { at, message, fix }],
                            });
                        }
                    },
                };
                slots.insert(id, slot);
            }
        }
        Ok(slots)
    }

    fn watch_manifest(&mut self) {
        let path = self.manifest.path.clone();
        let Some(dir) = path.parent().map(Path::to_path_buf) else { return };
        let file_name = path.file_name().map(|f| f.to_owned());
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && event.paths.iter().any(|p| p.file_name() == file_name.as_deref())
            {
                let _ = tx.send(Event::ManifestChanged);
            }
        });
        match watcher {
            Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => self.watcher = Some(w),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifest"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch the manifest"),
        }
    }

    /// The manifest file changed: apply it, or report why not and change nothing.
    fn reload(&mut self) {
        let path = self.manifest.path.clone();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // Mid-save (an editor's rename): the next event brings the new file.
            Err(_) => return,
        };
        let hash = hash_text(&text);
        if hash == self.seen_text {
            return;
        }
        self.seen_text = hash;
        let result = manifest::parse(&path, &text).and_then(|m| self.apply(m, &text, false));
        if let Err(e) = result {
            self.reject(&e);
        }
    }

    fn reject(&mut self, error: &ManifestError) {
        // The console shows it as an event (see `display`).
        let message = error.to_string();
        self.last_error = Some(message.clone());
        self.events.emit(EventKind::ManifestRejected, None, None, message);
    }

    /// Applies a valid manifest (or, `dry_run`, only says what would change).
    fn apply(&mut self, new: Manifest, text: &str, dry_run: bool) -> Result<Vec<Change>, ManifestError> {
        if new.data_dir != self.manifest.data_dir {
            return Err(ManifestError::new(
                &new.path,
                format!(
                    "spec.dataDir cannot change while the cluster runs ({} -> {})",
                    self.manifest.data_dir.display(),
                    new.data_dir.display()
                ),
                "run `orch down` first, then apply",
            ));
        }
        if new.control_port != self.manifest.control_port {
            return Err(ManifestError::new(
                &new.path,
                format!(
                    "spec.controlPort cannot change while the cluster runs ({} -> {})",
                    self.manifest.control_port, new.control_port
                ),
                "run `orch down` first, then apply",
            ));
        }
        let old = std::mem::replace(&mut self.manifest, new.clone());
        let new_revisions: HashMap<String, u64> =
            new.services.iter().map(|s| (s.name.clone(), self.revision_of(s))).collect();
        self.manifest = old;
        let changes = diff(&self.manifest, &new, |s| self.revision_of(s), |s| new_revisions[&s.name]);
        if dry_run {
            return Ok(changes);
        }
        let slots = self.prepare_slots(&new, Some(text))?;
        let path_changed = new.path != self.manifest.path;
        for change in &changes {
            let service = change.service.as_str();
            match change.change {
                ChangeKind::Scale => {
                    let (from, to) = (count(change.from), count(change.to));
                    self.events.emit(
                        EventKind::Scaled,
                        Some(service),
                        None,
                        format!("{service} scaled {from} -> {to}"),
                    );
                }
                ChangeKind::Roll => {
                    self.rolling.insert(service.to_owned());
                }
                ChangeKind::Create | ChangeKind::Update | ChangeKind::Delete => {}
            }
        }
        self.manifest = new;
        self.slots = slots;
        self.seen_text = hash_text(text);
        self.last_error = None;
        if path_changed {
            self.watch_manifest();
            self.state.record.manifest = self.manifest.path.clone();
            self.state.save();
        }
        let summary: Vec<&str> = changes.iter().map(|c| c.summary.as_str()).collect();
        let summary = if summary.is_empty() { "no changes".to_owned() } else { summary.join("; ") };
        self.events.emit(
            EventKind::ManifestApplied,
            None,
            None,
            format!("applied {}: {summary}", self.manifest.path.display()),
        );
        Ok(changes)
    }

    // -----------------------------------------------------------------------------------
    // The control API's calls
    // -----------------------------------------------------------------------------------

    /// `POST /api/apply`: the file at `path` (default: the current manifest).
    pub fn call_apply(&mut self, path: Option<PathBuf>, dry_run: bool) -> Result<ApplyResult, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        let path = path.unwrap_or_else(|| self.manifest.path.clone());
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CallError::Manifest(format!("{}: cannot read the manifest: {e}", path.display())))?;
        let result = manifest::parse(&path, &text).and_then(|m| self.apply(m, &text, dry_run));
        match result {
            Ok(changes) => Ok(ApplyResult { applied: !dry_run, manifest: self.manifest.path.clone(), changes }),
            Err(e) => {
                if !dry_run {
                    self.seen_text = hash_text(&text);
                    self.reject(&e);
                }
                Err(CallError::Manifest(e.to_string()))
            }
        }
    }

    /// `POST /api/scale`: replicas of the running cluster (until the next manifest edit).
    pub fn call_scale(&mut self, service: &str, replicas: i64) -> Result<Scaled, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        let Some(index) = self.manifest.services.iter().position(|s| s.name == service) else {
            return Err(CallError::NotFound(format!("no service {service:?} in the cluster")));
        };
        let max = manifest::MAX_REPLICAS;
        let replicas = u32::try_from(replicas)
            .ok()
            .filter(|r| *r <= max)
            .ok_or_else(|| CallError::Invalid(format!("replicas must be from 0 to {max}, got {replicas}")))?;
        let mut new = self.manifest.clone();
        let from = new.services[index].replicas;
        new.services[index].replicas = replicas;
        manifest::check_ports(&new).map_err(CallError::Conflict)?;
        let slots = self.prepare_slots(&new, None).map_err(|e| CallError::Conflict(e.problems[0].message.clone()))?;
        self.manifest = new;
        self.slots = slots;
        if from != replicas {
            self.events.emit(
                EventKind::Scaled,
                Some(service),
                None,
                format!("{service} scaled {from} -> {replicas} (orch scale)"),
            );
        }
        Ok(Scaled { service: service.to_owned(), from, replicas })
    }

    /// `POST /api/restart`: a rolling restart of a service, or of one instance.
    pub fn call_restart(&mut self, target: &str) -> Result<Message, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        if self.manifest.service(target).is_some() {
            *self.restart_generations.entry(target.to_owned()).or_default() += 1;
            self.rolling.insert(target.to_owned());
            return Ok(Message { message: format!("rolling restart of {target}") });
        }
        let Some(instance) = self.instances.values_mut().find(|i| i.name == target) else {
            return Err(CallError::NotFound(format!("no service or instance {target:?} in the cluster")));
        };
        instance.revision = 0;
        self.rolling.insert(instance.id.service.clone());
        Ok(Message { message: format!("restarting {target}") })
    }

    /// `POST /api/down`: stop everything, dependents first, then exit.
    pub fn call_down(&mut self) -> Message {
        self.begin_shutdown("orch down");
        Message { message: "stopping the cluster".to_owned() }
    }

    /// Whether `name` is (or was) an instance with a log file.
    pub fn log_path(&self, name: &str) -> Option<PathBuf> {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return None;
        }
        let path = self.manifest.data_dir.join("logs").join(format!("{name}.log"));
        (self.instances.values().any(|i| i.name == name) || path.exists()).then_some(path)
    }
}

/// A replica count of a [`Change`] as an event tells it.
fn count(n: Option<u32>) -> String {
    n.map_or_else(|| "null".to_owned(), |n| n.to_string())
}

fn hash_text(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Registers a command instance in the registry for as long as the returned shutdown is
/// not triggered (heartbeats included).
fn register(
    registry: kit::registry::RegistryClient,
    service: &Service,
    name: &str,
    port: u16,
    pid: u32,
    interval: Duration,
) -> kit::Shutdown {
    let mut metadata = serde_json::Map::new();
    metadata.insert("pid".into(), pid.into());
    metadata.insert("port".into(), port.into());
    metadata.insert("registeredBy".into(), "orch".into());
    let registration = kit::registry::Registration {
        service_id: name.to_owned(),
        service_type: service.name.clone(),
        url: format!("http://localhost:{port}"),
        name: Some(name.to_owned()),
        metadata,
    };
    let shutdown = kit::Shutdown::new();
    tokio::spawn(kit::registry::maintain(registry, registration, interval, shutdown.clone(), false));
    shutdown
}

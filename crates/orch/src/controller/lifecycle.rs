//! Lifecycle: carrying out the reconciler's actions, and each instance's transitions (see
//! [`State`]) on its process's start, probes and exit: backoff, liveness kill, drain,
//! shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::instance::{Exit, Liveness, State};
use super::{Controller, Event, Instance, LastExit, ProbeKind, Proc, Status, launch};
use crate::events::Kind as EventKind;
use crate::manifest::{Check, Probe, Service};
use crate::reconcile::{self, Action, InstanceId, Phase, StopReason};
use crate::run::Component;
use crate::supervisor::drain::{self, DrainPlan};
use crate::supervisor::logs::{self, LogFile};
use crate::supervisor::spawn::Child;
use crate::supervisor::{exit_parts, probe};

impl Controller {
    /// Carries out one action.
    pub(super) async fn execute(&mut self, action: Action) {
        match action {
            Action::Create(id) => {
                if let Some(slot) = self.slots.get(&id).cloned() {
                    let revision = self.manifest.service(&id.service).map(|s| reconcile::revision(&self.manifest, s));
                    let mut instance = Instance::new(id.clone(), slot);
                    instance.revision = revision.unwrap_or(0);
                    self.instances.insert(id, instance);
                }
            }
            Action::Start(id) => self.start(id).await,
            Action::Backoff { id, until, crashloop } => self.backoff(&id, until, crashloop),
            Action::Finish { id, success } => {
                if let Some(i) = self.instances.get_mut(&id) {
                    i.state = State::Done { success };
                    let policy = self.manifest.service(&id.service).map(|s| s.restart.policy);
                    self.events.emit(
                        EventKind::Stopped,
                        Some(&id.service),
                        Some(&i.name),
                        format!("{} stays down (restart policy {policy:?})", i.name),
                    );
                }
            }
            Action::Kill(id) => self.kill_for_liveness(&id),
            Action::Drain { id, reason } => self.drain(&id, reason),
            Action::Forget(id) => {
                if let Some(i) = self.instances.remove(&id)
                    && let Some(p) = i.state.proc()
                {
                    p.probes.cancel();
                }
            }
            Action::ResetBackoff(id) => {
                if let Some(i) = self.instances.get_mut(&id) {
                    i.crash_streak = 0;
                }
            }
        }
    }

    pub(super) fn log_for(&mut self, name: &str) -> Arc<LogFile> {
        let dir = self.manifest.data_dir.join("logs");
        let max = self.manifest.log_max_bytes;
        self.logs
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(LogFile::new(dir.join(format!("{name}.log")), max)))
            .clone()
    }

    /// With partitions on, an instance that talks to the registry does so through its link
    /// (see [`super::partition`]): its `SERVICE_REGISTRY_URL` names the link.
    fn link_to_registry(&mut self, id: &InstanceId, service: &Service, env: &mut [(String, String)]) {
        if !self.links.enabled() || service.component() == Some(Component::Registry) {
            return;
        }
        let Some(registry) = launch::component_port(&self.manifest, &self.slots, Component::Registry) else { return };
        let Some(url) = self.links.url_for(id, registry) else { return };
        for (k, v) in env.iter_mut().filter(|(k, _)| k == "SERVICE_REGISTRY_URL") {
            tracing::debug!(instance = %id, variable = %k, %url, "registry through the instance's link");
            *v = url.clone();
        }
    }

    /// Starts a process for `id`. A start that fails at once (the program vanished) asks
    /// the loop for another look right away (see [`Controller::wake_now`]).
    async fn start(&mut self, id: InstanceId) {
        let Some(service) = self.manifest.service(&id.service).cloned() else { return };
        let spec = launch::launch_spec(&self.manifest, &self.slots, &id, &self.base);
        let Some((slot, mut spec)) = self.slots.get(&id).cloned().zip(spec) else {
            tracing::warn!(instance = %id, "no socket for the instance");
            return;
        };
        self.link_to_registry(&id, &service, &mut spec.env);
        let revision = reconcile::revision(&self.manifest, &service);
        let name = id.to_string();
        let log = self.log_for(&name);
        let instance = self.instances.entry(id.clone()).or_insert_with(|| Instance::new(id.clone(), slot.clone()));
        let same_spec = instance.revision == revision && !instance.replace;
        let after_crash = matches!(instance.phase(), Phase::Exited { planned: false, .. }) && same_spec;
        if !same_spec {
            instance.crash_streak = 0;
        }
        instance.slot = slot;
        instance.revision = revision;
        instance.replace = false;
        instance.spec = Some(service.clone());

        spec.cgroups = self.resources_before_start(&id, service.resources);
        let spawned = self.spawner.spawn(spec).await;
        let Some(instance) = self.instances.get_mut(&id) else { return };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                instance.state = State::Exited {
                    exit: Exit { at: Instant::now(), success: false, planned: false },
                    start_failed: true,
                };
                instance.crash_streak += 1;
                instance.last_exit = Some(LastExit {
                    code: None,
                    signal: None,
                    at: kit::time::now_iso(),
                    error: Some(e.to_string()),
                    reason: None,
                });
                log.note(&format!("failed to start: {e}"));
                self.events.emit(
                    EventKind::Exited,
                    Some(&id.service),
                    Some(&name),
                    format!("{name} failed to start: {e}"),
                );
                self.wake_now();
                return;
            }
        };
        self.next_generation += 1;
        let generation = self.next_generation;
        let Child { pid, stdout, stderr, exit } = child;
        let probes = CancellationToken::new();
        let exited = CancellationToken::new();
        for output in [stdout, stderr].into_iter().flatten() {
            tokio::spawn(logs::pump(output, log.clone()));
        }
        {
            let tx = self.tx.clone();
            let exited = exited.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let status = exit.await;
                exited.cancel();
                let _ = tx.send(Event::Exited { id, generation, status });
            });
        }
        instance.generation = generation;
        let session = probe::Session::new(instance.slot.port);
        let proc = Proc { pid, probes: probes.clone(), exited, session: session.clone(), registration: None };
        instance.state = State::Starting { proc, since: Instant::now() };
        instance.started_at = Some(SystemTime::now());
        if after_crash {
            instance.restarts += 1;
            super::metrics::restarted(&instance.name, instance.last_exit.as_ref());
        }
        let (restarts, port) = (instance.restarts, instance.slot.port);
        log.note(&format!("started {name} (pid {pid}, port {port})"));
        self.state.child_started(&name, pid);
        self.resources_started(&id, generation, pid);
        let (kind, message) = if after_crash {
            (EventKind::Restarted, format!("{name} restarted (pid {pid}, restart {restarts})"))
        } else {
            (EventKind::Started, format!("{name} started (pid {pid}, port {port})"))
        };
        self.events.emit(kind, Some(&id.service), Some(&name), message);
        if service.readiness.check == Check::None {
            self.on_probe(&id, generation, ProbeKind::Readiness, true, String::new());
        } else {
            let probe = service.readiness.clone();
            spawn_probe(&self.tx, &id, generation, ProbeKind::Readiness, probe, session, probes);
        }
    }

    pub(super) fn registry_client(&self) -> Option<kit::registry::RegistryClient> {
        let port = launch::component_port(&self.manifest, &self.slots, Component::Registry)?;
        Some(kit::registry::RegistryClient::new(&format!("http://127.0.0.1:{port}"), Some(self.base.token.clone())))
    }

    /// A probe of process `generation` of `id` changed its mind. Only a starting or
    /// running process is probed; reports about any other are late and ignored.
    pub(super) fn on_probe(&mut self, id: &InstanceId, generation: u64, kind: ProbeKind, ok: bool, detail: String) {
        let Some(service) = self.manifest.service(&id.service).cloned() else { return };
        let registry = self.registry_client();
        let Some(instance) = self.instances.get_mut(id) else { return };
        let probed = matches!(instance.state, State::Starting { .. } | State::Running { .. });
        if instance.generation != generation || !probed {
            return;
        }
        let (name, port) = (instance.name.clone(), instance.slot.port);
        if !ok {
            let probe = if kind == ProbeKind::Readiness { "readiness" } else { "liveness" };
            super::metrics::probe_failed(&name, probe);
        }
        match (kind, ok) {
            (ProbeKind::Readiness, true) => {
                let message = match std::mem::replace(&mut instance.state, State::Pending) {
                    State::Starting { proc, since } => {
                        // Liveness probing starts once the instance has been ready.
                        if service.liveness.check != Check::None {
                            let (probe, session) = (service.liveness.clone(), proc.session.clone());
                            let probes = proc.probes.clone();
                            spawn_probe(&self.tx, id, generation, ProbeKind::Liveness, probe, session, probes);
                        }
                        let liveness = Liveness::default();
                        instance.state = State::Running { proc, ready_since: Some(Instant::now()), liveness };
                        format!("{name} ready ({} ms after start)", since.elapsed().as_millis())
                    }
                    State::Running { proc, liveness, .. } => {
                        instance.state = State::Running { proc, ready_since: Some(Instant::now()), liveness };
                        format!("{name} ready again")
                    }
                    other => {
                        instance.state = other;
                        return;
                    }
                };
                if service.register
                    && let (Some(registry), Some(proc)) = (registry, instance.state.proc_mut())
                {
                    let interval = service
                        .env
                        .get("HEARTBEAT_INTERVAL_MS")
                        .or(self.manifest.env.get("HEARTBEAT_INTERVAL_MS"))
                        .and_then(|v| v.parse().ok())
                        .map_or(Duration::from_secs(10), Duration::from_millis);
                    proc.registration = Some(register(registry, &service, &name, port, proc.pid, interval));
                }
                self.events.emit(EventKind::Ready, Some(&id.service), Some(&name), message);
                self.chaos_balancer_ready(id);
            }
            (ProbeKind::Readiness, false) => {
                if let State::Running { ready_since, .. } = &mut instance.state {
                    *ready_since = None;
                }
                if let Some(reg) = instance.state.proc_mut().and_then(|p| p.registration.take()) {
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
            (ProbeKind::Liveness, ok) => {
                if let State::Running { liveness, .. } = &mut instance.state {
                    if ok {
                        liveness.failures = 0;
                    } else {
                        liveness.failures += 1;
                        liveness.detail = detail;
                    }
                }
            }
        }
    }

    /// Process `generation` of `id` exited.
    pub(super) fn on_exit(
        &mut self,
        id: &InstanceId,
        generation: u64,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        let registry = self.registry_client();
        let reason = self.resources_exited(id, generation);
        let Some(instance) = self.instances.get_mut(id) else { return };
        if instance.generation != generation {
            return;
        }
        let stopping = match instance.state {
            State::Stopping { reason, .. } => Some(reason),
            _ => None,
        };
        let Some(proc) = instance.state.take_proc() else { return };
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
        let planned = matches!(stopping, Some(StopReason::Remove | StopReason::Replace | StopReason::Shutdown));
        instance.state = State::Exited { exit: Exit { at: Instant::now(), success, planned }, start_failed: false };
        if !planned {
            instance.crash_streak += 1;
        }
        let last =
            LastExit { code, signal, at: kit::time::now_iso(), error: status.err().map(|e| e.to_string()), reason };
        let how = last.describe();
        instance.last_exit = Some(last);
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

    /// An exited instance waits until `until` before its next start.
    fn backoff(&mut self, id: &InstanceId, until: Instant, crashloop: bool) {
        let Some(instance) = self.instances.get_mut(id) else { return };
        let was = instance.status();
        let exit = match instance.state {
            State::Backoff { until: u, crashloop: c, .. } if u == until && c == crashloop => return,
            State::Exited { exit, .. } | State::Backoff { exit, .. } => exit,
            _ => return,
        };
        instance.state = State::Backoff { exit, until, crashloop };
        let wait = until.saturating_duration_since(Instant::now()).as_millis();
        let (name, streak) = (instance.name.clone(), instance.crash_streak);
        let (kind, message) = if crashloop && was != Status::Crashloop {
            (
                EventKind::Crashloop,
                format!("{name} is crash-looping ({streak} crashes in a row); next restart in {wait} ms"),
            )
        } else {
            (EventKind::Backoff, format!("{name} restarts in {wait} ms ({streak} crashes in a row)"))
        };
        self.events.emit(kind, Some(&id.service), Some(&name), message);
    }

    /// SIGKILL for a process that failed its liveness probe (the restart policy brings it back).
    fn kill_for_liveness(&mut self, id: &InstanceId) {
        let Some(instance) = self.instances.get_mut(id) else { return };
        let liveness = match &instance.state {
            State::Running { liveness, .. } => liveness.clone(),
            _ => Liveness::default(),
        };
        let Some(proc) = instance.state.take_proc() else { return };
        proc.probes.cancel();
        let pid = proc.pid;
        instance.state = State::Stopping { proc, reason: StopReason::Liveness };
        let name = instance.name.clone();
        let message = format!(
            "{name} failed its liveness probe {} times in a row ({}): killing it",
            liveness.failures, liveness.detail
        );
        self.spawner.signal(pid, Signal::SIGKILL);
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
                        && i.ready()
                        && self.manifest.service(&i.id.service).and_then(Service::component)
                            == Some(Component::Balancer)
                })
                .map(|i| format!("http://127.0.0.1:{}", i.slot.port))
                .collect()
        };
        let registry = if is_registry { None } else { self.registry_client() };
        let grace = self.manifest.service(&id.service).map_or(5000, |s| s.grace_period_ms);
        let Some(instance) = self.instances.get_mut(id) else { return };
        let Some(mut proc) = instance.state.take_proc() else { return };
        proc.probes.cancel();
        if let Some(reg) = proc.registration.take() {
            reg.trigger();
        }
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
            spawner: self.spawner.clone(),
        };
        instance.state = State::Stopping { proc, reason };
        let name = instance.name.clone();
        self.events.emit(EventKind::Stopping, Some(&id.service), Some(&name), format!("{name} stopping ({why})"));
        tokio::spawn(drain::drain(plan));
    }

    pub(super) fn begin_shutdown(&mut self, why: &str) {
        if !self.shutting_down {
            self.shutting_down = true;
            self.chaos_shutdown();
            self.events.emit(EventKind::Stopping, None, None, format!("stopping the cluster ({why})"));
        }
    }

    /// The second Ctrl-C: SIGKILL every process and stop now.
    pub(super) fn kill_everything(&mut self) {
        for proc in self.instances.values().filter_map(|i| i.state.proc()) {
            self.spawner.signal(proc.pid, Signal::SIGKILL);
        }
        self.events.emit(EventKind::Stopped, None, None, "killed every instance (second signal)");
        self.finished = true;
    }
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

/// Runs the `kind` probe of process `generation` of `id` until `probes` is
/// cancelled, in the process's probe `session` (one connection kept from probe to probe);
/// its reports come back to the controller as events. It runs on the probe thread.
fn spawn_probe(
    tx: &mpsc::UnboundedSender<Event>,
    id: &InstanceId,
    generation: u64,
    kind: ProbeKind,
    probe: Probe,
    session: probe::Session,
    probes: CancellationToken,
) {
    let (tx, id) = (tx.clone(), id.clone());
    let report = move |ok, detail| {
        let _ = tx.send(Event::Probe { id: id.clone(), generation, kind, ok, detail });
    };
    match kind {
        ProbeKind::Readiness => probe::spawn(probe::readiness(session, probe, probes, report)),
        ProbeKind::Liveness => probe::spawn(probe::liveness(session, probe, probes, report)),
    }
}

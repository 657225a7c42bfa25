//! Apply: the manifest's way in (the file watcher, a reload, `POST /api/apply`), the diff
//! and its effects, the instances' sockets (slots), and the control API's other calls that
//! change the desired state (scale, restart, down).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kit::orch_api::{ApplyResult, Change, ChangeKind, Message, Scaled};
use notify::Watcher;

use super::{CallError, Controller, Event, Slot, diff, hash_text};
use crate::events::Kind as EventKind;
use crate::manifest::{self, Manifest, ManifestError, NodePath, Problem};
use crate::reconcile::InstanceId;
use crate::supervisor::{capacity, spawn};

impl Controller {
    /// Every instance's socket (or port) for `manifest`: kept where the port stays, bound
    /// where it is new. Fails, binding nothing, if a port is taken by another program.
    pub(super) fn prepare_slots(
        &self,
        m: &Manifest,
        text: Option<&str>,
    ) -> Result<BTreeMap<InstanceId, Slot>, ManifestError> {
        let count = |automatic_only: bool| {
            let wanted = m.services.iter().filter(|s| !automatic_only || s.port.is_none());
            wanted.map(|s| u64::from(s.replicas + s.rollout.max_surge)).sum::<u64>()
        };
        if let Err((message, fix)) = capacity::check(count(false), count(true), capacity::Limits::of_machine()) {
            return Err(ManifestError::new(&m.path, message, fix));
        }
        let mut ours: HashMap<u16, Slot> = HashMap::new();
        for slot in self.slots.values().chain(self.instances.values().map(|i| &i.slot)) {
            ours.insert(slot.port, slot.clone());
        }
        let mut slots = BTreeMap::new();
        let mut reserved = Vec::new();
        for (i, s) in m.services.iter().enumerate() {
            for n in 1..=s.replicas + s.rollout.max_surge {
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

    pub(super) fn watch_manifest(&mut self) {
        let path = self.manifest.path.clone();
        let Some(dir) = path.parent().map(Path::to_path_buf) else { return };
        let file_name = path.file_name().map(|f| f.to_owned());
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && may_change(&event.kind)
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
    pub(super) fn reload(&mut self) {
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

    pub(super) fn reject(&mut self, error: &ManifestError) {
        // The console shows it as an event (see `display`).
        let message = error.to_string();
        self.last_error = Some(message.clone());
        self.events.emit(EventKind::ManifestRejected, None, None, message);
    }

    /// Applies a valid manifest (or, `dry_run`, only says what would change).
    pub(super) fn apply(&mut self, mut new: Manifest, text: &str, dry_run: bool) -> Result<Vec<Change>, ManifestError> {
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
        self.keep_autoscaled(&mut new);
        let changes = diff(&self.manifest, &new);
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
        self.unpin_rollouts();
        for change in changes.iter().filter(|c| matches!(c.change, ChangeKind::Roll | ChangeKind::Create)) {
            self.begin_rollout(&change.service, change.summary.clone(), None);
        }
        self.resources_applied();
        self.resources_announce();
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
        let from = self.set_replicas(index, replicas)?;
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

    /// Sets the replicas of service `index` of the running cluster (`orch scale`, the
    /// autoscaler): ports checked and bound first, nothing changed if that fails. The
    /// replicas it had.
    pub(super) fn set_replicas(&mut self, index: usize, replicas: u32) -> Result<u32, CallError> {
        let mut new = self.manifest.clone();
        let from = new.services[index].replicas;
        new.services[index].replicas = replicas;
        manifest::check_ports(&new).map_err(CallError::Conflict)?;
        let slots = self.prepare_slots(&new, None).map_err(|e| CallError::Conflict(e.problems[0].message.clone()))?;
        self.manifest = new;
        self.slots = slots;
        Ok(from)
    }

    /// `POST /api/restart`: a rolling restart of a service, or of one instance.
    pub fn call_restart(&mut self, target: &str) -> Result<Message, CallError> {
        if self.shutting_down {
            return Err(CallError::Stopping);
        }
        if self.manifest.service(target).is_some() {
            for instance in self.instances.values_mut().filter(|i| i.id.service == target) {
                instance.replace = true;
            }
            self.rolling.insert(target.to_owned());
            return Ok(Message { message: format!("rolling restart of {target}") });
        }
        let Some(instance) = self.instances.values_mut().find(|i| i.name == target) else {
            return Err(CallError::NotFound(format!("no service or instance {target:?} in the cluster")));
        };
        instance.replace = true;
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
        if !crate::supervisor::logs::is_log_name(name) {
            return None;
        }
        let path = self.manifest.data_dir.join("logs").join(format!("{name}.log"));
        (self.instances.values().any(|i| i.name == name) || path.exists()).then_some(path)
    }

    /// Where the instance logs are (`DATA_DIR/logs`).
    pub fn logs_dir(&self) -> PathBuf {
        self.manifest.data_dir.join("logs")
    }
}

/// A replica count of a [`Change`] as an event tells it.
fn count(n: Option<u32>) -> String {
    n.map_or_else(|| "null".to_owned(), |n| n.to_string())
}

/// Whether a file event may be a change of the manifest: opening or reading it is none (and
/// `reload` opens it, so counting that would read it over and over while idle).
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    !matches!(
        kind,
        notify::EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read))
    )
}

#[cfg(test)]
mod tests {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reading_the_manifest_is_no_change_writing_it_is() {
        let table = [
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (EventKind::Access(AccessKind::Close(AccessMode::Read)), false),
            (EventKind::Access(AccessKind::Close(AccessMode::Write)), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Remove(RemoveKind::File), true),
        ];
        for (kind, change) in table {
            assert_eq!(super::may_change(&kind), change, "{kind:?}");
        }
    }
}

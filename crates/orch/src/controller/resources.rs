//! `resources:` in the controller: each instance's cgroup before its process starts, the
//! limits changed in place when a rollout changes only them (an instance whose cgroup
//! refuses them is replaced instead), OOM kills told apart from other SIGKILLs,
//! usage for the API; and, where no cgroup hierarchy is writable, the RSS watchdog that
//! stands in for the kernel's memory limit (said once at apply; cpu and pids are then not
//! enforced, and said so too).
//!
//! The kernel does the enforcing (see [`cgroup`](crate::supervisor::cgroup)); this file
//! only keeps the books: which cgroup belongs to which process, and the OOM-kill count it
//! had when that process started, so a later increase names this process's death.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::orch_api::{ExitReason, Usage};
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use super::{Controller, Event};
use crate::events::Kind as EventKind;
use crate::manifest::Resources;
use crate::reconcile::{self, InstanceId};
use crate::supervisor::cgroup::{Cgroups, InstanceCgroup};

/// How often the watchdog samples a process's resident memory.
pub const WATCHDOG_PERIOD: Duration = Duration::from_millis(500);

/// The controller's books on resources.
#[derive(Default)]
pub struct Books {
    /// `None`: no writable hierarchy, the watchdog enforces memory.
    cgroups: Option<Arc<Cgroups>>,
    /// The instances with limits whose process runs (or is about to start).
    live: HashMap<InstanceId, Live>,
    /// Instances the watchdog killed, until their exit is seen.
    watchdog_kills: HashSet<InstanceId>,
    /// The last CPU sample of each instance (when, µs used), for a rate.
    samples: Mutex<HashMap<InstanceId, Sample>>,
}

/// A CPU sample: when, µs used then, and the rate it gave (millicores).
type Sample = (Instant, u64, Option<u64>);

struct Live {
    generation: u64,
    cgroup: Option<InstanceCgroup>,
    /// The cgroup's OOM-kill count when this process started.
    oom_base: u64,
    limits: Resources,
    /// The memory limit the watchdog holds (without a cgroup); `u64::MAX`: none.
    watched: Arc<AtomicU64>,
}

impl Books {
    pub fn new(cgroups: Option<Arc<Cgroups>>) -> Self {
        Self { cgroups, ..Self::default() }
    }

    fn enforced_by(&self) -> String {
        self.cgroups.as_ref().map_or_else(|| "rss watchdog".to_owned(), |c| c.describe())
    }
}

impl Controller {
    /// Says, at apply, how `resources:` are enforced where it is not all by cgroups.
    pub(super) fn resources_announce(&self) {
        for s in self.manifest.services.iter().filter(|s| !s.resources.is_empty()) {
            let message = match &self.resources.cgroups {
                None => {
                    let mut m = format!(
                        "{}: no cgroup hierarchy is writable here: memory is held by an rss watchdog (every {} ms)",
                        s.name,
                        WATCHDOG_PERIOD.as_millis()
                    );
                    if s.resources.cpu.is_some() || s.resources.pids.is_some() {
                        m.push_str("; cpu and pids limits are NOT enforced");
                    }
                    m
                }
                Some(c) => {
                    let missing = c.unenforced(&s.resources);
                    if missing.is_empty() {
                        continue;
                    }
                    format!(
                        "{}: {} has no {} controller: those limits are NOT enforced",
                        s.name,
                        c.describe(),
                        missing.join(", ")
                    )
                }
            };
            self.events.emit(EventKind::Resources, Some(&s.name), None, message);
        }
    }

    /// Before `id`'s process starts: its cgroup with `limits`, and the `cgroup.procs` files it
    /// joins (none without limits, or where there are no cgroups).
    pub(super) fn resources_before_start(&mut self, id: &InstanceId, limits: Resources) -> Vec<PathBuf> {
        self.resources.live.remove(id);
        self.resources.watchdog_kills.remove(id);
        if limits.is_empty() {
            return Vec::new();
        }
        let name = id.to_string();
        let cgroup = match self.resources.cgroups.as_ref().map(|c| c.prepare(&name, &limits)) {
            None => None,
            Some(Ok(cgroup)) => Some(cgroup),
            Some(Err(e)) => {
                let message = format!("{name}: cannot set up its cgroup ({e}): starting it without limits");
                self.events.emit(EventKind::Resources, Some(&id.service), Some(&name), message);
                None
            }
        };
        if let Some(cg) = &cgroup {
            // Left behind by the last process (they could not outlive it unseen otherwise).
            for pid in cg.pids() {
                self.spawner.signal(pid, Signal::SIGKILL);
            }
        }
        let files = cgroup.as_ref().map(InstanceCgroup::procs_files).unwrap_or_default();
        let oom_base = cgroup.as_ref().map_or(0, InstanceCgroup::oom_kills);
        self.resources.live.insert(
            id.clone(),
            Live {
                generation: 0,
                cgroup,
                oom_base,
                limits,
                watched: Arc::new(AtomicU64::new(limits.memory.unwrap_or(u64::MAX))),
            },
        );
        files
    }

    /// `id`'s process `generation` (pid `pid`) started; without a cgroup, its memory is
    /// watched until `exited` (against no limit until one is set in place).
    pub(super) fn resources_started(&mut self, id: &InstanceId, generation: u64, pid: u32) {
        let exited = self.instances.get(id).and_then(|i| i.state.proc()).map(|p| p.exited.clone());
        let (Some(live), Some(exited)) = (self.resources.live.get_mut(id), exited) else { return };
        live.generation = generation;
        if live.cgroup.is_none() {
            tokio::spawn(watchdog(self.tx.clone(), id.clone(), generation, pid, live.watched.clone(), exited));
        }
    }

    /// `id`'s process `generation` exited: whether it was killed for memory. Its cgroup is
    /// emptied and removed.
    pub(super) fn resources_exited(&mut self, id: &InstanceId, generation: u64) -> Option<ExitReason> {
        if self.resources.live.get(id).is_none_or(|l| l.generation != generation) {
            return None;
        }
        let live = self.resources.live.remove(id)?;
        self.resources.samples.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let mut oom = self.resources.watchdog_kills.remove(id);
        if let Some(cg) = &live.cgroup {
            oom |= cg.oom_kills() > live.oom_base;
            for pid in cg.pids() {
                self.spawner.signal(pid, Signal::SIGKILL);
            }
            cg.remove();
        }
        oom.then_some(ExitReason::OomKilled)
    }

    /// The watchdog saw `id`'s process `generation` past its memory limit.
    fn watchdog_kill(&mut self, id: &InstanceId, generation: u64, rss: u64, limit: u64) {
        let Some(instance) = self.instances.get(id).filter(|i| i.generation == generation) else { return };
        let Some(pid) = instance.state.proc().map(|p| p.pid) else { return };
        self.resources.watchdog_kills.insert(id.clone());
        self.spawner.signal(pid, Signal::SIGKILL);
        let name = instance.name.clone();
        let message = format!("{name} uses {rss} bytes, past its memory limit of {limit}: killing it (rss watchdog)");
        self.events.emit(EventKind::Resources, Some(&id.service), Some(&name), message);
    }

    /// After an apply or an undo: every running instance that stays (its revision is its
    /// service's: only limits changed) takes its service's limits in place, as Kubernetes
    /// resizes a pod in place; without a cgroup the watchdog takes the new memory limit.
    /// Where that cannot be done (the kernel refuses a write, e.g. a memory limit below what
    /// is in use, or the process started without limits) the instance is replaced instead,
    /// its new process starting with the new limits, and the rollout waits for it.
    pub(super) fn resources_applied(&mut self) {
        let manifest = &self.manifest;
        let staying: Vec<(InstanceId, Resources)> = self
            .instances
            .values()
            .filter(|i| i.state.proc().is_some() && !i.replace)
            .filter_map(|i| {
                let s = manifest.service(&i.id.service)?;
                (reconcile::revision(manifest, s) == i.revision).then(|| (i.id.clone(), s.resources))
            })
            .collect();
        let mut messages = Vec::new();
        for (id, new) in staying {
            let text = serde_json::to_string(&new).unwrap_or_default();
            let refused = match self.resources.live.get_mut(&id) {
                Some(live) if new == live.limits => continue,
                None if new.is_empty() => continue,
                None => "it started without any".to_owned(),
                Some(live) => match live.cgroup.as_ref().map(|cg| cg.set_limits(&new)) {
                    Some(Err(e)) => e,
                    set => {
                        live.limits = new;
                        live.watched.store(new.memory.unwrap_or(u64::MAX), Ordering::Relaxed);
                        let by = if set.is_none() { " (the rss watchdog holds memory only)" } else { "" };
                        messages.push((id, format!("limits changed in place: {text}{by}")));
                        continue;
                    }
                },
            };
            if let Some(instance) = self.instances.get_mut(&id) {
                instance.replace = true;
            }
            self.rolling.insert(id.service.clone());
            messages.push((id, format!("limits {text} not set in place ({refused}): replacing it")));
        }
        for (id, message) in messages {
            let name = id.to_string();
            self.events.emit(EventKind::Resources, Some(&id.service), Some(&name), format!("{name} {message}"));
        }
    }

    /// What `id` uses against its limits; `None` when its service has no `resources:`.
    pub(super) fn usage_of(&self, id: &InstanceId) -> Option<Usage> {
        let limits = match self.resources.live.get(id) {
            Some(live) => live.limits,
            None => self.manifest.service(&id.service)?.resources,
        };
        let limits = Some(limits).filter(|r| !r.is_empty())?;
        let mut usage = Usage {
            enforced_by: self.resources.enforced_by(),
            memory_limit_bytes: limits.memory,
            cpu_limit_millis: limits.cpu,
            pids_limit: limits.pids,
            ..Usage::default()
        };
        let cgroup = self.resources.live.get(id).map(|l| l.cgroup.as_ref());
        match cgroup {
            None => {}
            Some(Some(cg)) => {
                let c = cg.counters();
                usage.memory_bytes = c.memory_bytes;
                usage.cpu_usec = c.cpu_usec;
                usage.pids = c.pids;
                if let Some(used) = c.cpu_usec {
                    usage.cpu_millis = self.cpu_rate(id, used);
                }
            }
            Some(None) => {
                let pid = self.instances.get(id).and_then(|i| i.state.proc()).map(|p| p.pid);
                usage.memory_bytes = pid.and_then(rss);
            }
        }
        Some(usage)
    }
}

impl Controller {
    /// CPU use in millicores between the last sample (at least 200 ms old) and `used` µs now;
    /// the first time, the average since the process started.
    fn cpu_rate(&self, id: &InstanceId, used: u64) -> Option<u64> {
        let now = Instant::now();
        let mut samples = self.resources.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (at, before) = match samples.get(id).copied() {
            Some((at, _, rate)) if now.duration_since(at) < Duration::from_millis(200) => return rate,
            Some((at, before, _)) => (at, before),
            None => {
                let started = self.instances.get(id)?.started_at?;
                (now.checked_sub(started.elapsed().ok()?)?, 0)
            }
        };
        let wall = now.duration_since(at).as_micros() as u64;
        let rate = (wall > 0).then(|| used.saturating_sub(before) * 1000 / wall);
        samples.insert(id.clone(), (now, used, rate));
        rate
    }
}

/// Samples `pid`'s resident memory every [`WATCHDOG_PERIOD`]; past `limit`, asks the
/// controller to kill it (the controller signals, through its spawner).
async fn watchdog(
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    id: InstanceId,
    generation: u64,
    pid: u32,
    limit: Arc<AtomicU64>,
    exited: CancellationToken,
) {
    let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
    loop {
        tokio::select! {
            () = exited.cancelled() => return,
            _ = tick.tick() => {}
        }
        let limit = limit.load(Ordering::Relaxed);
        if let Some(used) = rss(pid).filter(|used| *used > limit) {
            let kill = move |c: &mut Controller| c.watchdog_kill(&id, generation, used, limit);
            let _ = tx.send(Event::Call(Box::new(kill)));
            return;
        }
    }
}

/// The resident memory of process `pid`, bytes (`VmRSS` in `/proc/PID/status`).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

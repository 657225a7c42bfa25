//! The reconciler: one pure function from (desired, observed, now) to actions.
//!
//! [`reconcile`] does not know why it runs (a manifest edit, a child's exit, a probe, a
//! tick): it looks at what should be and what is, and says what to do next. It is
//! idempotent — run twice on the same input, it returns the same plan — so duplicate
//! triggers are harmless, and the controller runs it after every batch of events. Waiting
//! (a restart backoff, the end of a healthy stretch) is expressed as a requeue time, as in
//! kube's `Action::requeue`; the caller runs it again then.
//!
//! The rules, per service in dependency order:
//! - ordinals `1..=replicas` must exist: a missing one is started once every service it
//!   depends on has a ready instance, and recorded as pending until then;
//! - instances beyond `replicas` (and of services no longer in the manifest) are drained
//!   and removed, highest ordinals first;
//! - an instance whose revision is not the service's, or that is marked for replacement
//!   (`orch restart`), is replaced within the rollout's budgets (Kubernetes' rolling update):
//!   at most `max_surge + max_unavailable` replacements under way at once, and never fewer
//!   than `replicas - max_unavailable` instances ready; while old instances remain,
//!   `max_surge` extra instances of the new revision (ordinals `replicas + 1..`) run, and go
//!   once every instance is replaced and ready (a crashing new revision halts the rollout);
//! - an unplanned exit restarts per the policy: the first restart at once, then after a
//!   backoff doubling from `backoffInitialMs` to `backoffMaxMs`; [`CRASHLOOP_AFTER`]
//!   crashes in a row make it a crash loop; a healthy stretch of `resetAfterMs` forgives;
//! - a running instance whose liveness probe failed `failureThreshold` times is killed;
//! - shutting down, an instance is drained once nothing that depends on its service runs.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use crate::manifest::{Check, Manifest, RestartPolicy, Service};

/// Crashes in a row after which an instance is shown as crash-looping.
pub const CRASHLOOP_AFTER: u32 = 5;

/// One instance: `<service>-<ordinal>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub service: String,
    pub ordinal: u32,
}

impl InstanceId {
    pub fn new(service: &str, ordinal: u32) -> Self {
        Self { service: service.to_owned(), ordinal }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.service, self.ordinal)
    }
}

/// What should run.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// In dependency order.
    pub services: Vec<Goal>,
    /// Everything stops, dependents first.
    pub shutting_down: bool,
}

/// What should run of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    pub name: String,
    pub replicas: u32,
    /// Instances of another revision are replaced.
    pub revision: u64,
    pub depends_on: Vec<String>,
    pub policy: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub reset_after: Duration,
    /// Consecutive liveness failures that get an instance killed; `None`: no liveness probe.
    pub liveness_threshold: Option<u32>,
    /// Extra instances of the new revision while a rollout replaces the old ones.
    pub max_surge: u32,
    /// Instances that may be unready at once because of a rollout.
    pub max_unavailable: u32,
}

impl Goal {
    fn outdated(&self, o: &Observed) -> bool {
        o.revision != self.revision || o.replace
    }

    /// Whether `o`, a surge ordinal (`replicas < ordinal <= replicas + max_surge`), stays:
    /// while old instances remain, or while it is ready and the others are not all ready yet.
    fn keeps_surge(&self, o: &Observed, observed: &[Observed]) -> bool {
        let regular = || observed.iter().filter(|r| r.id.service == self.name && r.id.ordinal <= self.replicas);
        let outdated_left = regular().any(|r| self.outdated(r));
        let settled = regular().count() == self.replicas as usize
            && regular().all(|r| r.phase == Phase::Running && r.ready && !self.outdated(r));
        o.id.ordinal > self.replicas
            && o.id.ordinal <= self.replicas + self.max_surge
            && (outdated_left || (!settled && o.phase == Phase::Running && o.ready && !self.outdated(o)))
    }
}

/// What is known about one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub id: InstanceId,
    /// The revision its process was started with.
    pub revision: u64,
    /// Asked to be replaced (a restart) whatever its revision.
    pub replace: bool,
    pub phase: Phase,
    pub ready: bool,
    /// Since when it has been ready without interruption.
    pub ready_since: Option<Instant>,
    /// Unplanned exits in a row (no healthy stretch in between).
    pub crash_streak: u32,
    pub liveness_failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Recorded, never started: waiting for its dependencies.
    Pending,
    /// Its process runs and has not been ready yet.
    Starting,
    /// Its process runs and has been ready (it may be not ready for a while now).
    Running,
    /// Being stopped on purpose.
    Stopping(StopReason),
    /// Its process is gone; `planned` when orch stopped it to replace it.
    Exited { at: Instant, success: bool, planned: bool },
    /// Exited, and the restart policy says it stays down.
    Done { success: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Scaled down or removed from the manifest.
    Remove,
    /// Replaced by a new revision (rolling update or restart).
    Replace,
    /// The whole cluster stops.
    Shutdown,
    /// Killed after failing its liveness probe (comes back through the restart policy).
    Liveness,
}

impl Phase {
    /// Whether a process runs.
    pub fn is_live(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Stopping(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Record the instance as pending: its dependencies are not ready yet.
    Create(InstanceId),
    /// Start its process: new, restarted, or replaced (same socket, current revision).
    Start(InstanceId),
    /// Wait before restarting; `crashloop` when it keeps crashing.
    Backoff { id: InstanceId, until: Instant, crashloop: bool },
    /// The restart policy keeps it down.
    Finish { id: InstanceId, success: bool },
    /// Liveness failed: kill it now (the restart policy brings it back).
    Kill(InstanceId),
    /// Planned stop: deregister, wait until no longer routed, SIGTERM, SIGKILL after grace.
    Drain { id: InstanceId, reason: StopReason },
    /// Drop the record of an instance that has no process.
    Forget(InstanceId),
    /// It stayed healthy long enough: the next crash restarts at once again.
    ResetBackoff(InstanceId),
}

/// What to do now, and when to look again at the latest (besides new events).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue: Option<Instant>,
}

impl Plan {
    fn requeue_at(&mut self, at: Instant) {
        self.requeue = Some(self.requeue.map_or(at, |r| r.min(at)));
    }
}

/// The delay before restarting after the `streak`-th crash in a row: none for the first,
/// then `initial`, doubling up to `max`.
pub fn backoff_delay(streak: u32, initial: Duration, max: Duration) -> Duration {
    if streak <= 1 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(streak - 2).unwrap_or(u32::MAX);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

/// The next steps from `observed` towards `desired`; see the module docs.
pub fn reconcile(desired: &Desired, observed: &[Observed], now: Instant) -> Plan {
    let mut plan = Plan::default();
    let goals: HashMap<&str, &Goal> = desired.services.iter().map(|g| (g.name.as_str(), g)).collect();
    let has_ready = |service: &str| observed.iter().any(|o| o.id.service == service && o.phase.is_live() && o.ready);

    if desired.shutting_down {
        for o in observed {
            match o.phase {
                Phase::Stopping(_) => {}
                Phase::Starting | Phase::Running => {
                    let dependents_run = observed.iter().any(|other| {
                        other.phase.is_live()
                            && goals
                                .get(other.id.service.as_str())
                                .is_some_and(|g| g.depends_on.contains(&o.id.service))
                    });
                    if !dependents_run {
                        plan.actions.push(Action::Drain { id: o.id.clone(), reason: StopReason::Shutdown });
                    }
                }
                Phase::Pending | Phase::Exited { .. } | Phase::Done { .. } => {
                    plan.actions.push(Action::Forget(o.id.clone()))
                }
            }
        }
        return plan;
    }

    // Instances no longer wanted, highest ordinals first.
    let mut unwanted: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            goals.get(o.id.service.as_str()).is_none_or(|g| o.id.ordinal > g.replicas && !g.keeps_surge(o, observed))
        })
        .collect();
    unwanted.sort_by(|a, b| a.id.service.cmp(&b.id.service).then(b.id.ordinal.cmp(&a.id.ordinal)));
    for o in unwanted {
        match o.phase {
            Phase::Starting | Phase::Running => {
                plan.actions.push(Action::Drain { id: o.id.clone(), reason: StopReason::Remove })
            }
            Phase::Stopping(_) => {}
            Phase::Pending | Phase::Exited { .. } | Phase::Done { .. } => {
                plan.actions.push(Action::Forget(o.id.clone()))
            }
        }
    }

    for goal in &desired.services {
        let outdated = |o: &Observed| goal.outdated(o);
        let deps_ready =
            goal.depends_on.iter().all(|d| goals.get(d.as_str()).is_none_or(|g| g.replicas == 0) || has_ready(d));
        let mut current: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.id.service == goal.name && (o.id.ordinal <= goal.replicas || goal.keeps_surge(o, observed)))
            .collect();
        current.sort_by_key(|o| o.id.ordinal);
        let outdated_left = current.iter().any(|o| o.id.ordinal <= goal.replicas && outdated(o));
        let surge = if outdated_left { goal.max_surge } else { 0 };

        // Replacements under way: missing instances (started now), processes stopping or
        // about to start, instances of the new revision not ready yet.
        let mut in_flight = 0;
        for n in 1..=goal.replicas + surge {
            if !current.iter().any(|o| o.id.ordinal == n) {
                let id = InstanceId::new(&goal.name, n);
                plan.actions.push(if deps_ready { Action::Start(id) } else { Action::Create(id) });
                in_flight += 1;
            }
        }
        in_flight += current
            .iter()
            .filter(|o| match o.phase {
                Phase::Stopping(_) | Phase::Exited { .. } | Phase::Pending => true,
                Phase::Starting => !outdated(o),
                Phase::Running => !outdated(o) && !o.ready,
                Phase::Done { .. } => outdated(o),
            })
            .count() as u32;
        // The rollout's budgets: replacements at once, and instances ready throughout.
        let max_in_flight = (goal.max_surge + goal.max_unavailable).max(1);
        let min_ready = goal.replicas.saturating_sub(goal.max_unavailable);
        let mut ready_now = current.iter().filter(|o| o.phase == Phase::Running && o.ready).count() as u32;

        for o in current {
            let id = o.id.clone();
            let changed = outdated(o);
            match o.phase {
                Phase::Pending => {
                    if deps_ready {
                        plan.actions.push(Action::Start(id));
                    }
                }
                Phase::Starting | Phase::Running => {
                    if o.phase == Phase::Running && goal.liveness_threshold.is_some_and(|t| o.liveness_failures >= t) {
                        plan.actions.push(Action::Kill(id));
                    } else if changed {
                        let ready = o.phase == Phase::Running && o.ready;
                        if in_flight < max_in_flight && (!ready || ready_now > min_ready) {
                            plan.actions.push(Action::Drain { id, reason: StopReason::Replace });
                            in_flight += 1;
                            ready_now -= u32::from(ready);
                        }
                    } else if o.phase == Phase::Running && o.ready && o.crash_streak > 0 {
                        let healthy_at = o.ready_since.unwrap_or(now) + goal.reset_after;
                        if healthy_at <= now {
                            plan.actions.push(Action::ResetBackoff(id));
                        } else {
                            plan.requeue_at(healthy_at);
                        }
                    }
                }
                Phase::Stopping(_) => {}
                Phase::Exited { at, success, planned } => {
                    let stays_down = match goal.policy {
                        RestartPolicy::Always => false,
                        RestartPolicy::OnFailure => success,
                        RestartPolicy::Never => true,
                    };
                    if planned || changed {
                        plan.actions.push(Action::Start(id));
                    } else if stays_down {
                        plan.actions.push(Action::Finish { id, success });
                    } else {
                        let until = at + backoff_delay(o.crash_streak, goal.backoff_initial, goal.backoff_max);
                        if until <= now {
                            plan.actions.push(Action::Start(id));
                        } else {
                            let crashloop = o.crash_streak >= CRASHLOOP_AFTER;
                            plan.actions.push(Action::Backoff { id, until, crashloop });
                            plan.requeue_at(until);
                        }
                    }
                }
                Phase::Done { .. } => {
                    if changed {
                        plan.actions.push(Action::Start(id));
                    }
                }
            }
        }
    }
    plan
}

/// The goals of `manifest`; `revision` gives each service's revision.
pub fn goals(manifest: &Manifest, revision: impl Fn(&Service) -> u64) -> Vec<Goal> {
    manifest
        .start_order()
        .into_iter()
        .map(|s| Goal {
            name: s.name.clone(),
            replicas: s.replicas,
            revision: revision(s),
            depends_on: s.depends_on.clone(),
            policy: s.restart.policy,
            backoff_initial: Duration::from_millis(s.restart.backoff_initial_ms),
            backoff_max: Duration::from_millis(s.restart.backoff_max_ms),
            reset_after: Duration::from_millis(s.restart.reset_after_ms),
            liveness_threshold: (s.liveness.check != Check::None).then_some(s.liveness.failure_threshold),
            max_surge: s.rollout.max_surge,
            max_unavailable: s.rollout.max_unavailable,
        })
        .collect()
}

/// What the instances of `service` are started and watched with, part by part, each named
/// as the manifest names it: the program and its arguments, environment, ports, probes,
/// resources, and the cluster settings that reach them as variables. A change of any part is
/// a new rollout ([`rollout_revision`]); of any but the [`IN_PLACE`] ones, a new revision of
/// the instances ([`revision`]), which replaces them. Replicas, restart policy, grace period
/// and the rollout's own settings take effect without a rollout.
pub fn revision_parts(manifest: &Manifest, service: &Service) -> [(&'static str, String); 16] {
    fn text<T: serde::Serialize + ?Sized>(value: &T) -> String {
        serde_json::to_string(value).unwrap_or_default()
    }
    let what = if service.component().is_some() { "component" } else { "command" };
    // The registry's and balancer's addresses reach every instance as URLs.
    let addresses: Vec<_> = [crate::run::Component::Registry, crate::run::Component::Balancer]
        .into_iter()
        .map(|c| manifest.component(c).map(|s| (&s.name, s.port)))
        .collect();
    [
        (what, text(&service.kind)),
        ("port", text(&service.port)),
        ("env", text(&service.env)),
        ("routes", text(&service.routes)),
        ("socketActivation", text(&service.socket_activation)),
        ("register", text(&service.register)),
        ("registers", text(&service.registers)),
        ("workingDir", text(&service.working_dir)),
        ("readiness", text(&service.readiness)),
        ("liveness", text(&service.liveness)),
        ("resources", text(&service.resources)),
        ("spec.env", text(&manifest.env)),
        ("spec.authRequired", text(&manifest.auth_required)),
        ("spec.dataDir", text(&manifest.data_dir)),
        ("spec.database", text(&manifest.database)),
        ("the registry's or balancer's address", text(&addresses)),
    ]
}

/// The parts of [`revision_parts`] that running instances take in place (their cgroups'
/// limits are rewritten, as Kubernetes resizes a pod in place): a change of only these is a
/// rollout that replaces nothing.
pub const IN_PLACE: [&str; 1] = ["resources"];

/// The revision of `service`'s instances: a hash of its [`revision_parts`] but the
/// [`IN_PLACE`] ones. An instance of another revision is replaced.
pub fn revision(manifest: &Manifest, service: &Service) -> u64 {
    hash_parts(manifest, service, |name| !IN_PLACE.contains(&name))
}

/// The revision of `service`'s rollouts, as the history shows it: a hash of all its
/// [`revision_parts`], so a change of limits is a numbered rollout too.
pub fn rollout_revision(manifest: &Manifest, service: &Service) -> u64 {
    hash_parts(manifest, service, |_| true)
}

fn hash_parts(manifest: &Manifest, service: &Service, keep: impl Fn(&str) -> bool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, part) in revision_parts(manifest, service).into_iter().filter(|(name, _)| keep(name)) {
        part.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests;

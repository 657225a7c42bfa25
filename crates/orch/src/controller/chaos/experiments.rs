//! The experiments a cluster runs, as the controller keeps them: what each acts on, what
//! it has done so far (kills, pauses, faults posted), how the API shows it, and its
//! deadlines: the next repeat, the end, each pause's end. The controller's loop wakes at
//! the earliest ([`Experiments::next_deadline`]) and takes what is due
//! ([`Experiment::take_due`]); there is no timer task. Records only: the controller
//! changes them ([`super`]), nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use kit::orch_api;
use tokio::time::Instant;

use crate::chaos::{Action, Spec, show};
use crate::reconcile::InstanceId;

/// Experiments at once.
pub const MAX_EXPERIMENTS: usize = 100;

/// What an experiment acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One instance.
    Instance(InstanceId),
    /// A random running instance of the service each time (kill, pause), or the service at
    /// the balancer (latency, errors).
    Service(String),
}

impl Target {
    pub fn service(&self) -> &str {
        match self {
            Target::Instance(id) => &id.service,
            Target::Service(s) => s,
        }
    }

    pub fn instance(&self) -> Option<String> {
        match self {
            Target::Instance(id) => Some(id.to_string()),
            Target::Service(_) => None,
        }
    }
}

/// A process an experiment stopped, to be resumed if it still runs; or (`cut`) an
/// instance it cut off from the registry, to be healed whatever its process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub instance: InstanceId,
    pub generation: u64,
    /// When the pause is over.
    pub until: Instant,
    /// A partition: the instance's link is cut, its process runs.
    pub cut: bool,
}

/// A fault an experiment injected at one balancer instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostedFault {
    /// The balancer instance, and the process generation that holds the fault.
    pub balancer: InstanceId,
    pub generation: u64,
    pub url: String,
    pub id: String,
}

pub struct Experiment {
    pub id: u64,
    pub spec: Spec,
    pub target: Target,
    pub started_at: SystemTime,
    pub ends_at: Option<SystemTime>,
    /// Injections so far: kills, pauses, faults posted.
    pub injected: u64,
    /// What the latest injection did.
    pub last: Option<String>,
    /// The next repeat (kill, pause), always before `end`.
    pub next: Option<Instant>,
    /// When its time is up (set once it is under way: a balancer fault's once posted).
    pub end: Option<Instant>,
    pub paused: Vec<Paused>,
    pub faults: Vec<PostedFault>,
    /// Being ended (its balancer faults are being removed).
    pub ending: bool,
}

impl Experiment {
    /// A new experiment, started at `started_at`, over after `lasts` (`None`: at once).
    pub fn new(id: u64, spec: Spec, target: Target, started_at: SystemTime, lasts: Option<Duration>) -> Self {
        Self {
            id,
            spec,
            target,
            started_at,
            ends_at: lasts.map(|d| started_at + d),
            injected: 0,
            last: None,
            next: None,
            end: None,
            paused: Vec::new(),
            faults: Vec::new(),
            ending: false,
        }
    }

    /// Sets its deadlines from `now`: a repeat every `every` while before the end, the end
    /// after `lasts`.
    pub fn arm(&mut self, now: Instant, every: Option<Duration>, lasts: Duration) {
        let end = now + lasts;
        self.end = Some(end);
        self.next = every.map(|every| now + every).filter(|&next| next < end);
    }

    /// When it next has something to do; `None` once it is ending.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.ending {
            return None;
        }
        [self.next, self.end].into_iter().flatten().chain(self.paused.iter().map(|p| p.until)).min()
    }

    /// Takes what is due at `now` (the next repeat moves on by `every`).
    pub fn take_due(&mut self, now: Instant) -> Due {
        if self.ending {
            return Due::default();
        }
        let (resume, paused) = std::mem::take(&mut self.paused).into_iter().partition(|p| p.until <= now);
        self.paused = paused;
        let strike = self.next.is_some_and(|next| next <= now);
        if let (true, Some(next), Some(every)) = (strike, self.next, self.spec.every) {
            self.next = Some(next + every).filter(|&next| self.end.is_some_and(|end| next < end));
        }
        Due { resume, strike, end: self.end.is_some_and(|end| end <= now) }
    }

    /// `kill a random instance of data every 1s for 10s`.
    pub fn description(&self) -> String {
        let s = &self.spec;
        let who = match &self.target {
            Target::Instance(id) => id.to_string(),
            Target::Service(name) => format!("a random instance of {name}"),
        };
        let mut text = match s.action {
            Action::Kill => format!("kill {who}"),
            Action::Pause => format!("pause {who} for {}", s.pause.map(show).unwrap_or_default()),
            Action::Partition => {
                format!("cut {who} off from the registry for {}", s.pause.map(show).unwrap_or_default())
            }
            Action::Latency | Action::Errors => return s.fault_effect(self.target.service()),
        };
        if let (Some(every), Some(span)) = (s.every, s.span) {
            let _ = write!(text, " every {} for {}", show(every), show(span));
        }
        text
    }

    /// The API's experiment object.
    pub fn view(&self) -> orch_api::Experiment {
        let s = &self.spec;
        let ms = |d: Duration| d.as_millis() as u64;
        let names = |ids: Vec<&InstanceId>| ids.into_iter().map(InstanceId::to_string).collect::<Vec<_>>();
        orch_api::Experiment {
            id: self.id.to_string(),
            action: s.action,
            target: s.target.clone(),
            service: self.target.service().to_owned(),
            description: self.description(),
            started_at: kit::time::iso(self.started_at),
            ends_at: self.ends_at.map(kit::time::iso),
            injected: self.injected,
            last: self.last.clone(),
            every_ms: s.every.map(ms),
            for_ms: s.span.map(ms),
            duration_ms: s.pause.map(ms),
            paused: s.pause.map(|_| names(self.paused.iter().map(|p| &p.instance).collect())),
            latency_ms: (s.action == Action::Latency).then_some(s.latency_ms),
            percent: (s.action == Action::Errors).then_some(s.percent),
            status: (s.action == Action::Errors).then_some(s.status),
            balancers: (!s.action.on_processes()).then(|| names(self.faults.iter().map(|f| &f.balancer).collect())),
        }
    }
}

/// What is due of an experiment, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Pauses that are over: their processes are resumed (if still the ones paused).
    pub resume: Vec<Paused>,
    /// A repeat: the next kill or pause.
    pub strike: bool,
    /// Its time is up.
    pub end: bool,
}

/// The experiments of a cluster.
#[derive(Default)]
pub struct Experiments {
    pub next_id: u64,
    pub active: BTreeMap<u64, Experiment>,
}

impl Experiments {
    /// Whether some experiment holds `instance`'s process `generation` stopped.
    pub fn is_paused(&self, instance: &InstanceId, generation: u64) -> bool {
        self.active
            .values()
            .any(|e| e.paused.iter().any(|p| !p.cut && p.instance == *instance && p.generation == generation))
    }

    /// Whether some experiment holds `instance` cut off from the registry.
    pub fn is_cut(&self, instance: &InstanceId) -> bool {
        self.active.values().any(|e| e.paused.iter().any(|p| p.cut && p.instance == *instance))
    }

    /// The earliest deadline of any experiment: when the controller's loop must wake.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().filter_map(Experiment::next_deadline).min()
    }

    /// `GET /api/chaos`.
    pub fn view(&self) -> orch_api::ExperimentList {
        orch_api::ExperimentList { experiments: self.active.values().map(Experiment::view).collect() }
    }
}

/// Why an experiment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its time is up.
    Expired,
    /// `orch chaos stop`.
    Stopped,
    /// The cluster stops.
    Shutdown,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Expired => "its time is up",
            Why::Stopped => "stopped",
            Why::Shutdown => "the cluster stops",
        }
    }
}

/// A random index below `n` (n > 0), without a dependency: std's hasher keys are random.
pub fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::chaos::{Names, Request};

    fn spec(json: Value) -> Spec {
        let request: Request = serde_json::from_value(json).unwrap();
        Spec::parse(&request, Names::API).unwrap()
    }

    #[test]
    fn experiments_describe_themselves() {
        let repeat = spec(json!({"action": "kill", "target": "data", "everyMs": 1000, "forMs": 10_000}));
        let pause = spec(json!({"action": "pause", "target": "compute-1", "durationMs": 3000}));
        let experiment = |spec: Spec, target: Target| Experiment::new(3, spec, target, SystemTime::UNIX_EPOCH, None);
        let e = experiment(repeat, Target::Service("data".into()));
        assert_eq!(e.description(), "kill a random instance of data every 1s for 10s");
        let v = e.view();
        assert_eq!((v.id.as_str(), v.every_ms, v.for_ms), ("3", Some(1000), Some(10_000)));
        assert_eq!(v.action, Action::Kill);
        assert!(v.ends_at.is_none() && v.duration_ms.is_none() && v.paused.is_none() && v.balancers.is_none());
        let e = experiment(pause, Target::Instance(InstanceId::new("compute", 1)));
        assert_eq!(e.description(), "pause compute-1 for 3s");
        assert_eq!(e.view().paused, Some(vec![]));
    }

    /// A repeating pause: its repeats, each pause's end and its own end are deadlines, taken
    /// when due and not before; an ending experiment has none.
    #[test]
    fn deadlines_come_due_in_turn() {
        let ms = Duration::from_millis;
        let spec =
            spec(json!({"action": "pause", "target": "data", "durationMs": 300, "everyMs": 1000, "forMs": 2500}));
        let t0 = Instant::now();
        let mut e = Experiment::new(1, spec, Target::Service("data".into()), SystemTime::UNIX_EPOCH, None);
        assert_eq!(e.next_deadline(), None, "not armed yet");
        let paused = |at: Instant| Paused {
            instance: InstanceId::new("data", 1),
            generation: 7,
            until: at + ms(300),
            cut: false,
        };
        e.paused.push(paused(t0));
        e.arm(t0, e.spec.every, ms(2500));
        assert_eq!((e.next, e.end), (Some(t0 + ms(1000)), Some(t0 + ms(2500))));
        let mut experiments = Experiments::default();
        experiments.active.insert(1, e);
        assert_eq!(experiments.next_deadline(), Some(t0 + ms(300)), "the first pause ends first");
        let e = experiments.active.get_mut(&1).unwrap();

        assert_eq!(e.take_due(t0 + ms(299)), Due::default(), "nothing before its time");
        assert_eq!(e.take_due(t0 + ms(300)), Due { resume: vec![paused(t0)], ..Due::default() });
        assert_eq!(e.next_deadline(), Some(t0 + ms(1000)));
        assert_eq!(e.take_due(t0 + ms(1000)), Due { strike: true, ..Due::default() });
        assert_eq!(e.next, Some(t0 + ms(2000)), "the next repeat");
        // Late: the repeat at 2s and the end at 2.5s at once; no repeat at 3s (past the end).
        let due = e.take_due(t0 + ms(2600));
        assert_eq!((due.strike, due.end), (true, true));
        assert_eq!(e.next, None);

        e.arm(t0, e.spec.every, ms(2500));
        e.ending = true;
        assert_eq!(e.next_deadline(), None, "an ending experiment has no deadline");
        assert_eq!(e.take_due(t0 + ms(5000)), Due::default());
        assert_eq!(experiments.next_deadline(), None);
    }

    #[test]
    fn random_indices_stay_below() {
        let seen: std::collections::HashSet<usize> = (0..200).map(|_| random_below(3)).collect();
        assert!(seen.iter().all(|&i| i < 3));
        assert!(seen.len() > 1, "not always the same");
        assert_eq!(random_below(1), 0);
    }
}

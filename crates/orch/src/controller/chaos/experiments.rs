//! The experiments a cluster runs, as the controller keeps them: what each acts on, what
//! it has done so far (kills, pauses, faults posted), when it ends, and how the API shows
//! it. Records only: the controller changes them ([`super`]), nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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

/// A process an experiment stopped, to be resumed if it still runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paused {
    pub instance: InstanceId,
    pub generation: u64,
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
    /// Cancelled when it ends: stops its timers.
    pub stop: CancellationToken,
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
            stop: CancellationToken::new(),
            paused: Vec::new(),
            faults: Vec::new(),
            ending: false,
        }
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
            Action::Latency | Action::Errors => return s.fault_effect(self.target.service()),
        };
        if let (Some(every), Some(span)) = (s.every, s.span) {
            let _ = write!(text, " every {} for {}", show(every), show(span));
        }
        text
    }

    /// The API's experiment object.
    pub fn to_json(&self) -> Value {
        let s = &self.spec;
        let mut v = json!({
            "id": self.id.to_string(),
            "action": s.action,
            "target": s.target,
            "service": self.target.service(),
            "description": self.description(),
            "startedAt": kit::time::iso(self.started_at),
            "endsAt": self.ends_at.map(kit::time::iso),
            "injected": self.injected,
            "last": self.last,
        });
        let ms = |d: Duration| d.as_millis() as u64;
        if let Some(d) = s.every {
            v["everyMs"] = json!(ms(d));
        }
        if let Some(d) = s.span {
            v["forMs"] = json!(ms(d));
        }
        if let Some(d) = s.pause {
            v["durationMs"] = json!(ms(d));
            v["paused"] = json!(self.paused.iter().map(|p| p.instance.to_string()).collect::<Vec<_>>());
        }
        match s.action {
            Action::Latency => v["latencyMs"] = json!(s.latency_ms),
            Action::Errors => {
                v["percent"] = json!(s.percent);
                v["status"] = json!(s.status);
            }
            _ => {}
        }
        if !s.action.on_processes() {
            v["balancers"] = json!(self.faults.iter().map(|f| f.balancer.to_string()).collect::<Vec<_>>());
        }
        v
    }
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
        self.active.values().any(|e| e.paused.iter().any(|p| p.instance == *instance && p.generation == generation))
    }

    pub fn to_json(&self) -> Value {
        json!({ "experiments": self.active.values().map(Experiment::to_json).collect::<Vec<_>>() })
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
        let v = e.to_json();
        assert_eq!(
            (v["id"].as_str(), v["everyMs"].as_u64(), v["forMs"].as_u64()),
            (Some("3"), Some(1000), Some(10_000))
        );
        assert_eq!(v["action"], "kill");
        assert!(v["endsAt"].is_null() && v["durationMs"].is_null());
        let e = experiment(pause, Target::Instance(InstanceId::new("compute", 1)));
        assert_eq!(e.description(), "pause compute-1 for 3s");
        assert_eq!(e.to_json()["paused"], json!([]));
    }

    #[test]
    fn random_indices_stay_below() {
        let seen: std::collections::HashSet<usize> = (0..200).map(|_| random_below(3)).collect();
        assert!(seen.iter().all(|&i| i < 3));
        assert!(seen.len() > 1, "not always the same");
        assert_eq!(random_below(1), 0);
    }
}

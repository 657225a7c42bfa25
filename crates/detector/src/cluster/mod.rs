//! Everything the detector knows about the cluster, as one plain value.
//!
//! [`Cluster`] holds a [`Machine`] per checked target (every registered instance, plus the
//! balancer and the registry themselves), what orch says about each process, the alert
//! feed, orch's recent events and the balancer's traffic. It does no I/O: the loops in the
//! other modules feed it what they learnt, with the time they learnt it, and publish the
//! alerts it returns. That keeps every decision testable without a network.
//!
//! A target's health is its last check, vetoed by better knowledge: an instance the
//! registry marks unhealthy, or whose process orch reports not running, is down whatever
//! its socket answered (under orch a dead instance's socket stays open, held by orch).

mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};

use kit::orch_api::EventKind;
use kit::registry::ServiceRecord;
use serde::Serialize;

use crate::machine::{Change, Machine, Millis, Observation, Status};
use crate::orch::{LastExit, OrchEvent, OrchInstance, ProcessStatus};
use crate::traffic::Traffic;
use crate::urls::{display_url, health_url, url_key};
pub use view::{History, MemberView, ServiceView, StatusView, Summary};

/// Alerts kept for `GET /api/alerts` and the dashboard (newest first).
pub const ALERTS_KEPT: usize = 200;
/// Orch events kept for the dashboard.
pub const EVENTS_KEPT: usize = 100;

/// Which target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A registered instance, by its `serviceId`.
    Instance(String),
    Balancer,
    Registry,
}

/// One checked target.
#[derive(Clone, Debug)]
struct Member {
    id: String,
    service_type: String,
    name: String,
    /// The URL as registered (shown).
    url: String,
    machine: Machine,
    /// The registry's `healthy` flag (always true for the balancer and the registry).
    registry_healthy: bool,
    orch: Option<OrchInfo>,
    /// The report epoch of the last report that turned it down: checks of rounds that
    /// began before it are stale.
    reported: u64,
}

impl Member {
    fn new(id: &str, service_type: &str, name: &str, url: &str, history: usize) -> Self {
        Self {
            id: id.to_owned(),
            service_type: service_type.to_owned(),
            name: name.to_owned(),
            url: display_url(url),
            machine: Machine::new(history),
            registry_healthy: true,
            orch: None,
            reported: 0,
        }
    }

    /// Why this target is down whatever a check says, if it is.
    fn veto(&self) -> Option<String> {
        self.orch_veto().or_else(|| (!self.registry_healthy).then(|| "the registry marks it unhealthy".to_owned()))
    }

    /// orch says the process is not running.
    fn orch_veto(&self) -> Option<String> {
        let orch = self.orch.as_ref().filter(|o| o.status.is_not_running())?;
        Some(format!("orch reports it {}", orch.status))
    }

    fn observe(&mut self, at: Millis, observation: Observation, alerts: &mut Alerts) -> Option<Alert> {
        let change = self.machine.observe(at, observation)?;
        Some(alerts.raise(self, change, at))
    }
}

/// What orch says about the process behind a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrchInfo {
    pub name: String,
    pub status: ProcessStatus,
    pub pid: Option<u32>,
    pub ready: bool,
    pub restarts: u32,
    pub started_at: Option<String>,
    pub last_exit: Option<LastExit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Down,
    Recovered,
    /// orch says a rollout failed or was rolled back.
    Rollout,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: AlertKind,
    pub service_id: String,
    pub service_type: String,
    pub message: String,
    pub at: String,
}

#[derive(Debug, Default)]
struct Alerts {
    feed: VecDeque<Alert>,
    next_id: u64,
}

impl Alerts {
    fn raise(&mut self, member: &Member, change: Change, at: Millis) -> Alert {
        self.next_id += 1;
        let who = format!("{} ({})", member.id, member.service_type);
        let (kind, message) = match change {
            Change::Down => {
                let why = member.machine.last_error().unwrap_or("health check failed");
                (AlertKind::Down, format!("{who} is down: {why}"))
            }
            Change::Recovered { down_for } => {
                (AlertKind::Recovered, format!("{who} recovered after {}", human_duration(down_for)))
            }
        };
        self.push(kind, member.id.clone(), member.service_type.clone(), message, at)
    }

    /// An alert about a service as a whole: orch's word that its rollout failed or was
    /// rolled back.
    fn raise_rollout(&mut self, event: &OrchEvent, at: Millis) -> Alert {
        self.next_id += 1;
        let service = event.service.clone().unwrap_or_default();
        self.push(AlertKind::Rollout, service.clone(), service, format!("orch: {}", event.message), at)
    }

    fn push(
        &mut self,
        kind: AlertKind,
        service_id: String,
        service_type: String,
        message: String,
        at: Millis,
    ) -> Alert {
        let alert =
            Alert { id: self.next_id, kind, service_id, service_type, message, at: kit::time::iso_from_millis(at) };
        if self.feed.len() == ALERTS_KEPT {
            self.feed.pop_back();
        }
        self.feed.push_front(alert.clone());
        alert
    }
}

/// The result of one health check.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckOutcome {
    Healthy { ms: f64 },
    Failed { ms: Option<f64>, error: String },
}

#[derive(Debug)]
pub struct Cluster {
    history: usize,
    instances: BTreeMap<String, Member>,
    balancer: Member,
    registry: Member,
    alerts: Alerts,
    events: VecDeque<OrchEvent>,
    /// Counts reports (orch, registry): a round remembers the count it began at.
    reports: u64,
    pub traffic: Traffic,
    pub autoscaling: crate::autoscale::Autoscaling,
}

/// The targets of one round of checks.
#[derive(Debug)]
pub struct Round {
    /// The report count when the round began.
    pub epoch: u64,
    pub targets: Vec<(Key, String)>,
}

impl Cluster {
    /// An empty cluster whose balancer and registry are at these URLs.
    pub fn new(history: usize, balancer_url: &str, registry_url: &str) -> Self {
        Self {
            history,
            instances: BTreeMap::new(),
            balancer: Member::new("balancer", "balancer", "balancer", balancer_url, history),
            registry: Member::new("registry", "registry", "registry", registry_url, history),
            alerts: Alerts::default(),
            events: VecDeque::new(),
            reports: 0,
            traffic: Traffic::default(),
            autoscaling: crate::autoscale::Autoscaling::default(),
        }
    }

    /// The target `key` and the alert feed, borrowed together.
    fn member_mut(&mut self, key: &Key) -> Option<(&mut Member, &mut Alerts)> {
        let member = match key {
            Key::Instance(id) => self.instances.get_mut(id)?,
            Key::Balancer => &mut self.balancer,
            Key::Registry => &mut self.registry,
        };
        Some((member, &mut self.alerts))
    }

    /// Every target to check, with its health-check URL (`localhost` as 127.0.0.1).
    pub fn round(&self) -> Round {
        let infra = [(Key::Balancer, &self.balancer), (Key::Registry, &self.registry)];
        let instances = self.instances.values().map(|m| (Key::Instance(m.id.clone()), m));
        let targets = infra.into_iter().chain(instances).map(|(key, m)| (key, health_url(&m.url))).collect();
        Round { epoch: self.reports, targets }
    }

    /// `member` is reported down: stamps it so checks already under way cannot undo it.
    fn report(reports: &mut u64, member: &mut Member) {
        *reports += 1;
        member.reported = *reports;
    }

    /// Takes in the registry's list of instances. Returns whether the set of targets
    /// changed (new ones want a check now) and the alerts raised by instances the registry
    /// now marks unhealthy.
    pub fn sync_registry(&mut self, records: &[ServiceRecord], at: Millis) -> (bool, Vec<Alert>) {
        let mut changed = false;
        let mut alerts = Vec::new();
        let listed: HashMap<&str, &ServiceRecord> = records.iter().map(|r| (r.service_id.as_str(), r)).collect();
        let before = self.instances.len();
        self.instances.retain(|id, _| listed.contains_key(id.as_str()));
        changed |= self.instances.len() != before;
        for record in records {
            let member = match self.instances.get_mut(&record.service_id) {
                Some(m) if m.url == display_url(&record.url) && m.service_type == record.service_type => m,
                _ => {
                    // New, or the same id now somewhere else: start over.
                    let name = if record.name.is_empty() { &record.service_id } else { &record.name };
                    let fresh = Member::new(&record.service_id, &record.service_type, name, &record.url, self.history);
                    changed = true;
                    self.instances.insert(record.service_id.clone(), fresh);
                    self.instances.get_mut(&record.service_id).expect("just inserted")
                }
            };
            let was = std::mem::replace(&mut member.registry_healthy, record.healthy);
            if was && !record.healthy {
                Self::report(&mut self.reports, member);
                alerts.extend(member.observe(
                    at,
                    Observation::reported("the registry marks it unhealthy"),
                    &mut self.alerts,
                ));
            } else if !was && record.healthy {
                changed = true; // worth a check now
            }
        }
        (changed, alerts)
    }

    /// Records a check of `key`, ended `at`, of the round that began at report count
    /// `epoch`. A check of a round that began before the target was last reported down is
    /// stale and ignored.
    pub fn record(&mut self, key: &Key, epoch: u64, at: Millis, outcome: CheckOutcome) -> Option<Alert> {
        let (member, alerts) = self.member_mut(key)?;
        if epoch < member.reported {
            return None;
        }
        let observation = match (outcome, member.veto()) {
            (CheckOutcome::Healthy { ms }, None) => Observation::healthy(ms),
            (CheckOutcome::Healthy { ms }, Some(veto)) => Observation::failed(Some(ms), veto),
            (CheckOutcome::Failed { ms, error }, _) => Observation::failed(ms, error),
        };
        member.observe(at, observation, alerts)
    }

    /// Takes in orch's list of instances: restart counts, pids, and processes that are not
    /// running (down at once).
    /// Returns whether anything shown changed, and the alerts raised.
    pub fn sync_orch(&mut self, instances: &[OrchInstance], at: Millis) -> (bool, Vec<Alert>) {
        let by_name: HashMap<&str, &OrchInstance> = instances.iter().map(|i| (i.name.as_str(), i)).collect();
        let by_url: HashMap<String, &OrchInstance> =
            instances.iter().filter_map(|i| Some((url_key(&i.url)?, i))).collect();
        let mut alerts = Vec::new();
        let mut changed = false;
        let Self { instances: members, balancer, registry, alerts: feed, reports, .. } = self;
        for member in members.values_mut().chain([balancer, registry]) {
            let found = by_name.get(member.id.as_str()).or_else(|| url_key(&member.url).and_then(|u| by_url.get(&u)));
            let orch = found.map(|i| OrchInfo {
                name: i.name.clone(),
                status: ProcessStatus::Orch(i.status),
                pid: i.pid,
                ready: i.ready,
                restarts: i.restarts,
                started_at: i.started_at.clone(),
                // Why a process could not start stays with orch, as before.
                last_exit: i.last_exit.clone().map(|e| LastExit { error: None, ..e }),
            });
            changed |= orch != member.orch;
            member.orch = orch;
            if let Some(veto) = member.orch_veto() {
                if member.machine.status() != Status::Down {
                    changed = true;
                    Self::report(reports, member);
                }
                alerts.extend(member.observe(at, Observation::reported(veto), feed));
            }
        }
        (changed, alerts)
    }

    /// Takes in an event from orch. A `live` event (not part of the history read at
    /// start) about a process going away turns its target down at once.
    pub fn orch_event(&mut self, event: OrchEvent, live: bool, at: Millis) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if live && let Some(status) = ProcessStatus::after(event.kind) {
            if let Some(name) = event.instance.as_deref() {
                let Self { instances, balancer, registry, alerts: feed, reports, .. } = self;
                let target = instances
                    .values_mut()
                    .chain([balancer, registry])
                    .find(|m| m.id == name || m.orch.as_ref().is_some_and(|o| o.name == name));
                if let Some(member) = target {
                    if let Some(orch) = member.orch.as_mut() {
                        orch.status = status;
                    }
                    Self::report(reports, member);
                    let reason = format!("orch: {}", event.message);
                    alerts.extend(member.observe(at, Observation::reported(reason), feed));
                }
            }
        }
        if live && matches!(event.kind, EventKind::RolloutFailed | EventKind::RolledBack) {
            alerts.push(self.alerts.raise_rollout(&event, at));
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_back();
        }
        self.events.push_front(event);
        alerts
    }

    /// Reports `key` down at once (not through a check).
    pub fn report_down(&mut self, key: &Key, at: Millis, reason: &str) -> Option<Alert> {
        self.reports += 1;
        let epoch = self.reports;
        let (member, alerts) = self.member_mut(key)?;
        member.reported = epoch;
        member.observe(at, Observation::reported(reason), alerts)
    }

    /// The alert feed, newest first.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.feed.iter()
    }

    /// How many alerts were ever raised (the feed keeps the newest [`ALERTS_KEPT`]).
    pub fn alerts_total(&self) -> u64 {
        self.alerts.next_id
    }

    /// orch's recent events, newest first.
    pub fn events(&self) -> impl Iterator<Item = &OrchEvent> {
        self.events.iter()
    }

    pub fn has_service_type(&self, service_type: &str) -> bool {
        self.instances.values().any(|m| m.service_type == service_type)
            || matches!(service_type, "balancer" | "registry")
    }
}

fn human_duration(ms: Millis) -> String {
    match ms {
        ..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests;

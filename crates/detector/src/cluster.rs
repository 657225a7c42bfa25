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

use std::collections::{BTreeMap, HashMap, VecDeque};

use kit::registry::ServiceRecord;
use serde::Serialize;

use crate::machine::{Change, Machine, Millis, Observation, Sample, Status};
use crate::orch::{LastExit, OrchEvent, OrchInstance, ProcessStatus};
use crate::traffic::Traffic;
use crate::urls::{display_url, health_url, url_key};

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
        let alert = Alert {
            id: self.next_id,
            kind,
            service_id: member.id.clone(),
            service_type: member.service_type.clone(),
            message,
            at: kit::time::iso_from_millis(at),
        };
        if self.feed.len() == ALERTS_KEPT {
            self.feed.pop_back();
        }
        self.feed.push_front(alert.clone());
        alert
    }
}

/// How much history a status view carries per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    None,
    /// The newest sample only (the dashboard's updates: it keeps its own history).
    Last,
    All,
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

    /// The status of everything (`GET /api/status`, the dashboard).
    pub fn status(&self, history: History) -> StatusView<'_> {
        let mut services: BTreeMap<&str, Vec<MemberView<'_>>> = BTreeMap::new();
        for member in self.instances.values() {
            services.entry(&member.service_type).or_default().push(MemberView::of(member, history, true));
        }
        StatusView {
            timestamp: kit::time::now_iso(),
            summary: Summary::of(self.instances.values()),
            services,
            balancer: MemberView::of(&self.balancer, history, false),
            registry: MemberView::of(&self.registry, history, false),
        }
    }

    /// One service type's instances (`GET /api/status/:type`), or `None` if unknown.
    /// `balancer` and `registry` name the infrastructure targets unless instances of that
    /// type are registered.
    pub fn service_status(&self, service_type: &str, history: History) -> Option<ServiceView<'_>> {
        let members: Vec<&Member> = self.instances.values().filter(|m| m.service_type == service_type).collect();
        let members = match (members.is_empty(), service_type) {
            (false, _) => members,
            (true, "balancer") => vec![&self.balancer],
            (true, "registry") => vec![&self.registry],
            (true, _) => return None,
        };
        let registered = members.iter().all(|m| self.instances.contains_key(&m.id));
        Some(ServiceView {
            timestamp: kit::time::now_iso(),
            service_type: service_type.to_owned(),
            summary: Summary::of(members.iter().copied()),
            instances: members.into_iter().map(|m| MemberView::of(m, history, registered)).collect(),
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView<'a> {
    pub timestamp: String,
    pub summary: Summary,
    pub services: BTreeMap<&'a str, Vec<MemberView<'a>>>,
    pub balancer: MemberView<'a>,
    pub registry: MemberView<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView<'a> {
    pub timestamp: String,
    pub service_type: String,
    pub summary: Summary,
    pub instances: Vec<MemberView<'a>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    pub unknown: usize,
}

impl Summary {
    fn of<'a>(members: impl Iterator<Item = &'a Member>) -> Self {
        let mut summary = Self::default();
        for member in members {
            summary.total += 1;
            match member.machine.status() {
                Status::Up => summary.healthy += 1,
                Status::Down => summary.unhealthy += 1,
                Status::Unknown => summary.unknown += 1,
            }
        }
        summary
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView<'a> {
    pub service_id: &'a str,
    pub service_type: &'a str,
    pub name: &'a str,
    pub url: &'a str,
    pub port: Option<u16>,
    pub healthy: bool,
    pub status: Status,
    pub since: Option<String>,
    pub last_check: Option<String>,
    pub response_time_ms: Option<f64>,
    pub consecutive_failures: u32,
    pub last_error: Option<&'a str>,
    /// The registry's flag; absent for the balancer and the registry themselves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_healthy: Option<bool>,
    pub orch: Option<&'a OrchInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Sample>>,
}

impl<'a> MemberView<'a> {
    fn of(m: &'a Member, history: History, registered: bool) -> Self {
        let samples = match history {
            History::None => None,
            History::Last => Some(m.machine.history().last().copied().into_iter().collect()),
            History::All => Some(m.machine.history().copied().collect()),
        };
        Self {
            service_id: &m.id,
            service_type: &m.service_type,
            name: &m.name,
            url: &m.url,
            port: reqwest::Url::parse(&m.url).ok().and_then(|u| u.port_or_known_default()),
            healthy: m.machine.status() == Status::Up,
            status: m.machine.status(),
            since: m.machine.since().map(kit::time::iso_from_millis),
            last_check: m.machine.last_check().map(kit::time::iso_from_millis),
            response_time_ms: m.machine.response_ms().map(|ms| (ms * 1000.0).round() / 1000.0),
            consecutive_failures: m.machine.consecutive_failures(),
            last_error: m.machine.last_error(),
            registry_healthy: registered.then_some(m.registry_healthy),
            orch: m.orch.as_ref(),
            history: samples,
        }
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
mod tests {
    use super::*;

    fn record(id: &str, ty: &str, port: u16, healthy: bool) -> ServiceRecord {
        ServiceRecord {
            service_id: id.into(),
            service_type: ty.into(),
            url: format!("http://localhost:{port}"),
            name: id.into(),
            metadata: Default::default(),
            registered_at: String::new(),
            last_heartbeat: String::new(),
            healthy,
        }
    }

    fn orch_instance(name: &str, port: u16, status: &str, restarts: u32) -> OrchInstance {
        serde_json::from_value(serde_json::json!({
            "name": name, "service": name.rsplit_once('-').map_or(name, |(s, _)| s), "ordinal": 1,
            "pid": 42, "port": port, "url": format!("http://localhost:{port}"), "status": status,
            "ready": status == "running", "restarts": restarts, "startedAt": null, "lastExit": null,
        }))
        .unwrap()
    }

    fn event(seq: u64, kind: &str, instance: &str) -> OrchEvent {
        serde_json::from_value(serde_json::json!({
            "seq": seq, "time": "2026-01-01T00:00:00.000Z", "type": kind, "service": "auth",
            "instance": instance, "message": format!("{instance} {kind}"),
        }))
        .unwrap()
    }

    /// Records a check of a round that begins now.
    fn check(cluster: &mut Cluster, id: &str, at: Millis, outcome: CheckOutcome) -> Option<Alert> {
        let epoch = cluster.round().epoch;
        cluster.record(&Key::Instance(id.into()), epoch, at, outcome)
    }

    fn healthy() -> CheckOutcome {
        CheckOutcome::Healthy { ms: 1.0 }
    }

    fn cluster() -> Cluster {
        let mut cluster = Cluster::new(10, "http://localhost:3000", "http://localhost:3005");
        let (changed, alerts) =
            cluster.sync_registry(&[record("auth-1", "auth", 3001, true), record("auth-2", "auth", 3002, true)], 0);
        assert!(changed && alerts.is_empty());
        cluster
    }

    fn status_of(cluster: &Cluster, id: &str) -> Status {
        cluster.instances[id].machine.status()
    }

    #[test]
    fn targets_are_instances_plus_balancer_and_registry() {
        let cluster = cluster();
        let targets = cluster.round().targets;
        assert_eq!(targets.len(), 4);
        assert_eq!(targets[0], (Key::Balancer, "http://127.0.0.1:3000/health".to_owned()));
        assert_eq!(targets[1], (Key::Registry, "http://127.0.0.1:3005/health".to_owned()));
        assert_eq!(targets[2], (Key::Instance("auth-1".into()), "http://127.0.0.1:3001/health".to_owned()));
    }

    #[test]
    fn down_and_recovery_alerts() {
        let mut cluster = cluster();
        assert_eq!(check(&mut cluster, "auth-1", 1, healthy()), None);
        let failed = CheckOutcome::Failed { ms: None, error: "timeout after 2000 ms".into() };
        let alert = check(&mut cluster, "auth-1", 2, failed).unwrap();
        assert_eq!((alert.id, alert.kind, alert.service_id.as_str()), (1, AlertKind::Down, "auth-1"));
        assert_eq!(alert.message, "auth-1 (auth) is down: timeout after 2000 ms");
        let alert = check(&mut cluster, "auth-1", 2_502, healthy()).unwrap();
        assert_eq!(alert.kind, AlertKind::Recovered);
        assert_eq!(alert.message, "auth-1 (auth) recovered after 2.5 s");
        let feed: Vec<u64> = cluster.alerts().map(|a| a.id).collect();
        assert_eq!(feed, [2, 1], "newest first");
    }

    #[test]
    fn registry_changes() {
        let mut cluster = cluster();
        check(&mut cluster, "auth-1", 1, healthy());
        // Unhealthy in the registry: down at once, with an alert, and checks cannot undo it.
        let (_, alerts) =
            cluster.sync_registry(&[record("auth-1", "auth", 3001, false), record("auth-2", "auth", 3002, true)], 5);
        assert_eq!(alerts.len(), 1);
        assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
        assert_eq!(check(&mut cluster, "auth-1", 7, healthy()), None);
        assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
        // Healthy again: a check now, which recovers it.
        let (changed, _) =
            cluster.sync_registry(&[record("auth-1", "auth", 3001, true), record("auth-2", "auth", 3002, true)], 8);
        assert!(changed);
        let alert = check(&mut cluster, "auth-1", 10, healthy()).unwrap();
        assert_eq!(alert.kind, AlertKind::Recovered);
        // Removed: gone from the targets, no alert.
        let (changed, alerts) = cluster.sync_registry(&[record("auth-2", "auth", 3002, true)], 11);
        assert!(changed && alerts.is_empty());
        assert_eq!(cluster.round().targets.len(), 3);
        assert_eq!(check(&mut cluster, "auth-1", 13, healthy()), None);
        // Nothing changed: not a change.
        let (changed, _) = cluster.sync_registry(&[record("auth-2", "auth", 3002, true)], 14);
        assert!(!changed);
    }

    #[test]
    fn an_orch_exit_is_down_at_once_and_stale_checks_do_not_undo_it() {
        let mut cluster = cluster();
        assert!(cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 0)], 0).0);
        assert!(!cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 0)], 0).0, "nothing new");
        check(&mut cluster, "auth-1", 1, healthy());
        let before = cluster.round();
        let alerts = cluster.orch_event(event(7, "exited", "auth-1"), true, 10);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].message, "auth-1 (auth) is down: orch: auth-1 exited");
        assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
        // A check of a round that began before the exit and ends after it says nothing.
        assert_eq!(cluster.record(&Key::Instance("auth-1".into()), before.epoch, 11, healthy()), None);
        assert_eq!(status_of(&cluster, "auth-1"), Status::Down);
        // orch restarted it: a fresh check recovers it, and the restart count shows.
        cluster.orch_event(event(8, "restarted", "auth-1"), true, 12);
        cluster.sync_orch(&[orch_instance("auth-1", 3001, "running", 1)], 12);
        assert_eq!(check(&mut cluster, "auth-1", 14, healthy()).unwrap().kind, AlertKind::Recovered);
        assert_eq!(cluster.instances["auth-1"].orch.as_ref().unwrap().restarts, 1);
        let kinds: Vec<&str> = cluster.events().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["restarted", "exited"]);
    }

    #[test]
    fn history_events_do_not_alert() {
        let mut cluster = cluster();
        check(&mut cluster, "auth-1", 1, healthy());
        assert!(cluster.orch_event(event(1, "exited", "auth-1"), false, 2).is_empty());
        assert_eq!(status_of(&cluster, "auth-1"), Status::Up);
    }

    #[test]
    fn orch_says_not_running() {
        let mut cluster = cluster();
        check(&mut cluster, "auth-2", 1, healthy());
        let (_, alerts) = cluster.sync_orch(&[orch_instance("auth-2", 3002, "crashloop", 5)], 2);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].message, "auth-2 (auth) is down: orch reports it crashloop");
        // The held socket may still answer: a check cannot bring it back while orch says so.
        assert_eq!(check(&mut cluster, "auth-2", 4, healthy()), None);
        assert_eq!(status_of(&cluster, "auth-2"), Status::Down);
        // The same report again is no new alert.
        assert!(cluster.sync_orch(&[orch_instance("auth-2", 3002, "crashloop", 6)], 5).1.is_empty());
    }

    #[test]
    fn infrastructure_is_matched_to_orch_by_url() {
        let mut cluster = cluster();
        cluster.sync_orch(&[orch_instance("registry-1", 3005, "running", 2)], 0);
        assert_eq!(cluster.registry.orch.as_ref().unwrap().restarts, 2);
        let alerts = cluster.orch_event(event(3, "exited", "registry-1"), true, 1);
        assert_eq!(alerts.len(), 0, "never seen up: down without an alert");
        assert_eq!(cluster.registry.machine.status(), Status::Down);
    }

    #[test]
    fn status_views() {
        let mut cluster = cluster();
        check(&mut cluster, "auth-1", 1, healthy());
        check(&mut cluster, "auth-2", 1, CheckOutcome::Failed { ms: Some(2.0), error: "status 503".into() });
        let status = serde_json::to_value(cluster.status(History::All)).unwrap();
        assert_eq!(status["summary"], serde_json::json!({"total": 2, "healthy": 1, "unhealthy": 1, "unknown": 0}));
        let auth1 = &status["services"]["auth"][0];
        assert_eq!(auth1["serviceId"], "auth-1");
        assert_eq!(auth1["status"], "up");
        assert_eq!(auth1["healthy"], true);
        assert_eq!(auth1["port"], 3001);
        assert_eq!(auth1["url"], "http://localhost:3001");
        assert_eq!(auth1["history"], serde_json::json!([{"t": 1, "ms": 1.0, "ok": true}]));
        assert_eq!(status["services"]["auth"][1]["lastError"], "status 503");
        assert_eq!(status["balancer"]["status"], "unknown");
        assert!(status["balancer"].get("registryHealthy").is_none());

        let view = serde_json::to_value(cluster.service_status("auth", History::None).unwrap()).unwrap();
        assert_eq!(view["instances"].as_array().unwrap().len(), 2);
        assert!(view["instances"][0].get("history").is_none());
        assert!(cluster.service_status("nope", History::None).is_none());
        assert_eq!(cluster.service_status("balancer", History::None).unwrap().instances[0].service_id, "balancer");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(250), "250 ms");
        assert_eq!(human_duration(61_000), "1m 1s");
    }
}

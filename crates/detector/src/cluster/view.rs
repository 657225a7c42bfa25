//! The cluster as the API and the dashboard show it: `StatusView` (everything),
//! `ServiceView` (one service type), each target a `MemberView` with as much `History` as
//! asked for. Borrowed views of the `Cluster`, serialized as they are.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Cluster, Member, OrchInfo};
use crate::machine::{Sample, Status};

/// How much history a status view carries per target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum History {
    None,
    /// The newest sample only (the dashboard's updates: it keeps its own history).
    Last,
    All,
}

impl Cluster {
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

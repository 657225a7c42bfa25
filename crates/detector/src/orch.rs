//! Following orch's control API (`ORCH_CONTROL_URL`): restart counts, pids and process
//! states from `GET /api/instances`, the autoscaled services' figures and replicas from
//! `GET /api/cluster` (read with the instances), and orch's events from `GET /api/events`.
//!
//! Two loops. [`follow_events`] first reads the events orch already has (they fill the
//! dashboard's feed and alert nobody), then long-polls `?since=SEQ&wait=30s`: each new event
//! goes to the dashboard at once, an instance that exited is down at once, and the
//! instance list is read again and every target checked, so a restart shows within
//! milliseconds even though orch keeps the socket open. [`poll_instances`] reads the list
//! every [`INSTANCES_PERIOD`] (calmer while it stays the same and no dashboard is connected)
//! and whenever an event or a dashboard's connecting asks for it.
//!
//! What orch answers is read as its wire types ([`kit::orch_api`]), which carry no
//! environment values; the dashboard shows the fields of [`crate::cluster::OrchInfo`] only:
//! nothing else orch knows (its token, the environment of its children) can reach it.

use std::time::Duration;

use serde::Serialize;

use crate::AppState;
use crate::traffic::Pace;
use crate::urls::loopback;

/// How often the instance list is read when no event asks for it sooner.
pub const INSTANCES_PERIOD: Duration = Duration::from_secs(2);
/// How long one long poll of the events waits.
const EVENTS_WAIT: Duration = Duration::from_secs(30);
/// Events asked for per page while catching up.
const PAGE: usize = 500;

/// orch's wire types, under the names the detector gives them.
pub use kit::orch_api::{Event as OrchEvent, Instance as OrchInstance, LastExit};
use kit::orch_api::{EventKind, EventPage, InstanceList, Status};

/// A process's status as the dashboard shows it: what orch's instance list says, or,
/// between two reads of that list, what an event just told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessStatus {
    /// The process exited (orch has not yet said what it does about it).
    Exited,
    #[serde(untagged)]
    Orch(Status),
}

impl ProcessStatus {
    /// The status after an event of `kind`, if the event says the process went away.
    pub fn after(kind: EventKind) -> Option<Self> {
        match kind {
            EventKind::Exited => Some(Self::Exited),
            EventKind::Backoff => Some(Self::Orch(Status::Backoff)),
            EventKind::Crashloop => Some(Self::Orch(Status::Crashloop)),
            EventKind::Stopped => Some(Self::Orch(Status::Stopped)),
            _ => None,
        }
    }

    /// orch says no process runs behind the instance (an exit alone does not: orch may
    /// have restarted it already).
    pub fn is_not_running(self) -> bool {
        matches!(self, Self::Orch(status) if status.is_not_running())
    }
}

impl std::fmt::Display for ProcessStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited => f.write_str("exited"),
            Self::Orch(status) => status.fmt(f),
        }
    }
}

/// A reader of orch's control API.
#[derive(Clone, Debug)]
pub struct OrchClient {
    http: reqwest::Client,
    base: String,
}

impl OrchClient {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self { http, base: loopback(base_url) }
    }

    pub async fn instances(&self) -> Result<Vec<OrchInstance>, reqwest::Error> {
        let res = self.http.get(format!("{}/api/instances", self.base)).timeout(Duration::from_secs(5)).send().await?;
        Ok(res.error_for_status()?.json::<InstanceList>().await?.instances)
    }

    /// `GET /api/cluster`: the services, with their autoscalers.
    pub async fn cluster(&self) -> Result<kit::orch_api::Cluster, reqwest::Error> {
        let res = self.http.get(format!("{}/api/cluster", self.base)).timeout(Duration::from_secs(5)).send().await?;
        res.error_for_status()?.json().await
    }

    async fn events(&self, since: u64, wait: Option<Duration>) -> Result<EventPage, reqwest::Error> {
        let mut query = vec![("since", since.to_string()), ("limit", PAGE.to_string())];
        if let Some(wait) = wait {
            query.push(("wait", format!("{}ms", wait.as_millis())));
        }
        let timeout = wait.unwrap_or_default() + Duration::from_secs(10);
        let res = self.http.get(format!("{}/api/events", self.base)).query(&query).timeout(timeout).send().await?;
        res.error_for_status()?.json().await
    }
}

/// Follows orch's events until shutdown; see the module docs.
pub async fn follow_events(state: AppState, client: OrchClient, shutdown: kit::Shutdown) {
    let mut since = 0;
    let mut caught_up = false;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = caught_up.then_some(EVENTS_WAIT);
        let page = tokio::select! {
            _ = shutdown.requested() => return,
            page = client.events(since, wait) => page,
        };
        match page {
            Ok(page) => {
                if failing {
                    tracing::info!("orch's events are readable again");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                let newest = page.events.iter().map(|e| e.seq).max().unwrap_or(0);
                let count = page.events.len();
                if count == 0 && page.next < since {
                    // orch's numbering went back: a new orch. Read its history afresh.
                    tracing::info!("orch's events start over, reading them again");
                    since = 0;
                    caught_up = false;
                    continue;
                }
                for event in page.events {
                    state.orch_event(event, caught_up);
                }
                since = since.max(page.next).max(newest);
                if caught_up && count > 0 {
                    // Something happened: restart counts and process states now, then a check.
                    state.wake_orch_poll();
                    state.request_round();
                }
                // A page short of the limit is the end of the history: what follows is news.
                if count < PAGE {
                    caught_up = true;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e.without_url(), "cannot read orch's events, retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Reads orch's instance list (and the autoscalers of `GET /api/cluster`) every
/// [`INSTANCES_PERIOD`], calmer while nothing changes and no dashboard is connected
/// ([`Pace`]: orch's events wake it at once), and when woken, until shutdown.
pub async fn poll_instances(state: AppState, client: OrchClient, shutdown: kit::Shutdown) {
    let mut failing = false;
    let mut pace = Pace::new(INSTANCES_PERIOD, false);
    loop {
        let seen = match client.instances().await {
            Ok(instances) => {
                if failing {
                    tracing::info!("orch's instance list is readable again");
                    failing = false;
                }
                state.sync_orch(&instances);
                let services = client.cluster().await.ok().map(|cluster| cluster.services);
                if let Some(services) = &services {
                    state.sync_autoscale(services);
                }
                Some((instances, services))
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e.without_url(), "cannot read orch's instances, retrying");
                    failing = true;
                }
                None
            }
        };
        let wait = pace.next(seen, state.dashboard_clients() > 0);
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = state.orch_poll_woken() => {}
        }
    }
}

//! The wire types of orch's control API: what `GET /api/cluster`, `GET /api/instances`,
//! `GET /api/events`, `POST /api/apply`, `POST /api/scale` and friends answer. orch's
//! server builds them, its CLI and the detector read them, so the three agree by
//! construction: fields are camelCase, statuses and event types are closed enums.
//! `orch chaos` too: `POST /api/chaos` takes a [`ChaosRequest`] and answers an
//! [`Experiment`], `GET /api/chaos` an [`ExperimentList`], `DELETE /api/chaos[/{id}]`
//! [`StoppedExperiments`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An instance's status, as the API and `orch get` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Backoff,
    Crashloop,
    Failed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Starting,
        Status::Running,
        Status::Stopping,
        Status::Stopped,
        Status::Backoff,
        Status::Crashloop,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Backoff => "backoff",
            Status::Crashloop => "crashloop",
            Status::Failed => "failed",
        }
    }

    /// No process runs behind the instance (whatever its socket, held by orch, answers).
    pub fn is_not_running(self) -> bool {
        matches!(self, Status::Stopped | Status::Backoff | Status::Crashloop | Status::Failed)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an instance's last process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub at: String,
    /// Why the process could not be started (then `code` and `signal` are null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the process was killed, when orch knows better than the signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExitReason>,
}

/// Why orch or the kernel ended a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Past its memory limit: killed by the kernel's OOM killer (or orch's RSS watchdog).
    #[serde(rename = "OOMKilled")]
    OomKilled,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::OomKilled => "OOMKilled",
        }
    }
}

/// An instance's use of its `resources:` and its limits (`None`: not measured, or no limit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// What enforces the limits: "cgroup v2", "cgroup v1 (...)" or "rss watchdog".
    pub enforced_by: String,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// CPU use over the last sample, in millicores (1000: one core busy).
    pub cpu_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    /// CPU time used by the instance's current process, µs.
    pub cpu_usec: Option<u64>,
    pub pids: Option<u64>,
    pub pids_limit: Option<u64>,
}

impl LastExit {
    pub fn describe(&self) -> String {
        if let Some(reason) = self.reason {
            let mut copy = self.clone();
            copy.reason = None;
            return format!("{}: {}", reason.as_str(), copy.describe());
        }
        match (&self.error, self.code, &self.signal) {
            (Some(e), _, _) => format!("failed to start: {e}"),
            (None, Some(code), _) => format!("code {code}"),
            (None, None, Some(sig)) => format!("signal {sig}"),
            (None, None, None) => "unknown status".to_owned(),
        }
    }
}

/// The contract's Instance object (`GET /api/instances`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    pub service: String,
    pub ordinal: u32,
    pub pid: Option<u32>,
    pub port: u16,
    pub url: String,
    pub status: Status,
    pub ready: bool,
    pub restarts: u32,
    pub started_at: Option<String>,
    pub last_exit: Option<LastExit>,
    /// Present when the service has `resources:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `GET /api/instances`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    pub instances: Vec<Instance>,
}

/// `GET /api/instances/{name}`: the instance, its spec (as the manifest has it, camelCase)
/// and its recent events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub instance: Instance,
    pub spec: serde_json::Value,
    pub events: Vec<Event>,
}

/// One service of `GET /api/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub replicas: u32,
    /// Live instances that are ready.
    pub ready: u32,
    pub port: Option<u16>,
    /// The built-in component it runs, or else
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// the command line it runs (program first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Its autoscaler, when the manifest gives it `autoscale:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleView>,
}

/// An autoscaled service in `GET /api/cluster`: `current/desired (min-max)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleView {
    /// Ready instances now.
    pub current: u32,
    /// The replicas the autoscaler asks for.
    pub desired: u32,
    pub min: u32,
    pub max: u32,
    /// The target, in words (`in flight 8 per instance`).
    pub target: String,
    /// The last figure measured, in the same words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
    /// The target as a number (per instance), for charts.
    #[serde(default)]
    pub target_value: u32,
    /// The last figure measured as a number (per instance), for charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<f64>,
}

/// `GET /api/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    pub name: String,
    pub manifest: PathBuf,
    pub data_dir: PathBuf,
    pub control_url: String,
    pub started_at: String,
    /// Why the last manifest edit was rejected (nothing changed), if it was.
    pub last_error: Option<String>,
    pub stopping: bool,
    pub services: Vec<ServiceView>,
}

/// What happened, in an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    ManifestApplied,
    ManifestRejected,
    Scaled,
    Started,
    Ready,
    NotReady,
    Exited,
    Restarted,
    Backoff,
    Crashloop,
    LivenessFailed,
    Stopping,
    Stopped,
    Rolled,
    Chaos,
    /// A service's `resources:` applied, changed, or not enforceable here.
    Resources,
    /// A rollout did not finish: not ready within its deadline, or crash-looping.
    RolloutFailed,
    /// A failed rollout was undone: the last good revision runs again.
    RolledBack,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ManifestApplied => "manifest-applied",
            EventKind::ManifestRejected => "manifest-rejected",
            EventKind::Scaled => "scaled",
            EventKind::Started => "started",
            EventKind::Ready => "ready",
            EventKind::NotReady => "not-ready",
            EventKind::Exited => "exited",
            EventKind::Restarted => "restarted",
            EventKind::Backoff => "backoff",
            EventKind::Crashloop => "crashloop",
            EventKind::LivenessFailed => "liveness-failed",
            EventKind::Stopping => "stopping",
            EventKind::Stopped => "stopped",
            EventKind::Rolled => "rolled",
            EventKind::Chaos => "chaos",
            EventKind::Resources => "resources",
            EventKind::RolloutFailed => "rollout-failed",
            EventKind::RolledBack => "rolled-back",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One numbered event of the cluster (`GET /api/events`, `DATA_DIR/events.jsonl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub message: String,
}

impl Event {
    /// The event as a console line: `12:00:01.234  exited           web-2 exited (signal SIGKILL)`.
    pub fn line(&self) -> String {
        let time = self.time.get(11..23).unwrap_or(&self.time);
        format!("{time}  {:<16} {}", self.kind.as_str(), self.message)
    }
}

/// `GET /api/events`: events after `since`, oldest first, and the seq to ask from next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    pub next: u64,
}

/// What kind of change an apply makes to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A new service: `to` instances.
    Create,
    /// Replicas `from` -> `to`.
    Scale,
    /// The spec changed, a numbered rollout: its instances are replaced one at a time, or,
    /// when only `resources:` changed, their limits are changed in place.
    Roll,
    /// Probes, restart policy or grace changed: nothing restarts.
    Update,
    /// A service is gone: its `from` instances stop.
    Delete,
}

impl ChangeKind {
    /// `+`, `-` or `~`, as `orch diff` marks it.
    pub fn sign(self) -> char {
        match self {
            ChangeKind::Create => '+',
            ChangeKind::Delete => '-',
            ChangeKind::Scale | ChangeKind::Roll | ChangeKind::Update => '~',
        }
    }
}

/// One change of an apply, per service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub service: String,
    pub change: ChangeKind,
    pub from: Option<u32>,
    pub to: Option<u32>,
    pub summary: String,
}

/// `POST /api/apply` (and `orch diff --json`, without `applied` and `manifest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub applied: bool,
    pub manifest: PathBuf,
    pub changes: Vec<Change>,
}

/// `POST /api/apply`'s body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `POST /api/scale`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub service: String,
    pub replicas: i64,
}

/// `POST /api/scale`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaled {
    pub service: String,
    pub from: u32,
    pub replicas: u32,
}

/// `POST /api/restart`'s body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    pub target: String,
}

/// The answer of `POST /api/restart` and `POST /api/down`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub message: String,
}

/// Where a rollout (one revision of a service) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Its instances are being replaced.
    Progressing,
    /// Every instance runs it and is ready.
    Complete,
    /// Not ready within its deadline, or crash-looping; `cause` says which.
    Failed,
    /// A later rollout replaced it before it ended.
    Superseded,
}

impl RolloutState {
    /// Whether the rollout has ended (`orch rollout status` stops waiting).
    pub fn is_final(self) -> bool {
        !matches!(self, RolloutState::Progressing)
    }
}

/// One rollout of a service: a revision, numbered from 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub number: u32,
    /// The revision's hash, as hex.
    pub revision: String,
    /// When it began (ISO 8601).
    pub started_at: String,
    /// When it ended, if it has.
    pub ended_at: Option<String>,
    /// What changed: the apply's summary, `rollback to #3: ...`, `undo to #2`.
    pub change: String,
    pub state: RolloutState,
    /// Why it failed.
    pub cause: Option<String>,
    /// Instances of this revision that are ready, of the replicas wanted.
    pub ready: u32,
    pub replicas: u32,
}

/// `GET /api/rollouts/{service}`: its rollouts, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHistory {
    pub service: String,
    /// The rollout whose spec the controller runs now.
    pub current: u32,
    /// The last rollout that completed, if any.
    pub last_good: Option<u32>,
    /// The file on disk asks for another spec than the one running (after a rollback or
    /// an undo), until it changes again.
    pub pinned: bool,
    pub rollouts: Vec<Rollout>,
}

/// `POST /api/rollouts/{service}/undo`'s body: back to rollout `to` (default: the last
/// good one before the current).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UndoRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
}

/// What a chaos experiment does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChaosAction {
    Kill,
    Pause,
    Latency,
    Errors,
    /// An instance cut off from the registry for a while (orch's `ORCH_PARTITIONS` links).
    Partition,
}

impl ChaosAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ChaosAction::Kill => "kill",
            ChaosAction::Pause => "pause",
            ChaosAction::Latency => "latency",
            ChaosAction::Errors => "errors",
            ChaosAction::Partition => "partition",
        }
    }

    /// Whether it acts on instances, once or repeatedly (kill, pause, partition), else
    /// at the balancer.
    pub fn on_processes(self) -> bool {
        matches!(self, ChaosAction::Kill | ChaosAction::Pause | ChaosAction::Partition)
    }
}

/// `POST /api/chaos`'s body (checked by orch's `chaos::Spec::parse`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosRequest {
    pub action: Option<ChaosAction>,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A chaos experiment (`POST /api/chaos`'s answer, an entry of `GET /api/chaos`). The
/// fields after `last` are there only for the actions they belong to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Experiment {
    pub id: String,
    pub action: ChaosAction,
    /// As the request named it: an instance or a service.
    pub target: String,
    pub service: String,
    /// `kill a random instance of data every 1s for 10s`.
    pub description: String,
    pub started_at: String,
    /// `null`: over at once (one kill).
    pub ends_at: Option<String>,
    /// Injections so far: kills, pauses, faults posted.
    pub injected: u64,
    /// What the latest injection did.
    pub last: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
    /// Pause and partition: how long each lasts, and the instances paused (cut off) now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Vec<String>>,
    /// Latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Latency and errors: the balancer instances that hold the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancers: Option<Vec<String>>,
}

/// `GET /api/chaos`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentList {
    pub experiments: Vec<Experiment>,
}

/// `DELETE /api/chaos[/{id}]`: the experiments it ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoppedExperiments {
    pub stopped: Vec<Experiment>,
}

#[cfg(test)]
mod tests;

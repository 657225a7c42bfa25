//! The manifest: the desired state of a cluster, parsed strictly.
//!
//! A manifest is YAML (`apiVersion: orch/v1`, `kind: Cluster`). Parsing has two steps:
//! serde_yaml reads it into the raw types (`raw`), which reject unknown fields and wrong
//! types with a line and column; then [`parse`] checks everything serde cannot (names,
//! ranges, port clashes, dependencies and their cycles, routes, commands on `PATH`) and
//! fills in the defaults (`check`, `service`, `rules`). Every problem names the file, the
//! line and column of the node at fault (found with [`locate()`]) and the fix (`error`). A
//! manifest with any problem is rejected whole: nothing that runs changes because of it.
//!
//! This file holds the resolved model (`Manifest`, `Service` and their parts) and the
//! entry points.

mod autoscale;
mod check;
mod error;
mod locate;
pub mod quantity;
mod raw;
mod rollout;
mod rules;
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

pub use autoscale::{Autoscale, Target};
use check::Checker;
pub use error::{ManifestError, Problem, closest};
pub use locate::{NodePath, Position, locate};
pub use quantity::Resources;
use raw::RawManifest;
use rules::{port_problems, topo_order};

use crate::run::Component;

pub const API_VERSION: &str = "orch/v1";
pub const KIND: &str = "Cluster";
/// Replicas of one service: `0..=MAX_REPLICAS` (and what the machine allows, checked when
/// the instances' sockets are bound: `supervisor::capacity`).
pub const MAX_REPLICAS: u32 = 1000;
pub const DEFAULT_CONTROL_PORT: u16 = 3006;
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Variables orch sets for every instance; a manifest may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "SERVICE_NAME",
    "SERVICE_TYPE",
    "PORT",
    "LISTEN_FDS",
    "LISTEN_PID",
    "ORCH_CLUSTER_TOKEN",
    "ORCH_CLUSTER_ID",
    "ORCH_MANAGED",
    "ORCH_CONTROL_URL",
];

// ---------------------------------------------------------------------------------------
// The resolved manifest
// ---------------------------------------------------------------------------------------

/// A valid manifest with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The manifest file, absolute.
    pub path: PathBuf,
    pub name: String,
    /// `spec.dataDir`, absolute (relative to the manifest file when written).
    pub data_dir: PathBuf,
    /// `spec.controlPort`: the control API's port; 0 means any free port.
    pub control_port: u16,
    pub auth_required: bool,
    /// `spec.env`: given to every instance.
    pub env: BTreeMap<String, String>,
    /// `spec.database`: a `postgres://` URL that auth, data and compute share (each in a
    /// schema of its own), as their `DATABASE_URL`; `None`: a SQLite file each in the data dir.
    pub database: Option<String>,
    /// Each instance's log file is rotated (to `.1`) when it grows past this.
    pub log_max_bytes: u64,
    /// In file order; [`Manifest::start_order`] gives the dependency order.
    pub services: Vec<Service>,
}

/// One service: `replicas` instances of a component or a command.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    #[serde(flatten)]
    pub kind: Kind,
    /// Command services only: the container image `orch export kubernetes` runs it in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub replicas: u32,
    /// The first instance's port; instance `n` listens on `port + n - 1`. `None`: automatic.
    pub port: Option<u16>,
    pub env: BTreeMap<String, String>,
    pub depends_on: Vec<String>,
    pub readiness: Probe,
    pub liveness: Probe,
    pub restart: Restart,
    pub grace_period_ms: u64,
    /// Balancer only: path prefix → service.
    pub routes: BTreeMap<String, String>,
    /// orch binds the socket and passes it as fd 3 (`LISTEN_FDS`).
    pub socket_activation: bool,
    /// orch registers the instances in the registry (commands; components do it themselves).
    pub register: bool,
    /// The instances register themselves, so they get the registry token
    /// (`ORCH_CLUSTER_TOKEN`): always for components, for commands only when the manifest
    /// says `registers: true`.
    pub registers: bool,
    pub working_dir: PathBuf,
    /// `autoscale:` replicas follow the load within `min..=max` (`replicas` is the start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// `resources:`, enforced per instance by a cgroup (see `supervisor::cgroup`); a change
    /// applies to running instances, so it is not part of the revision.
    #[serde(skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// How a new revision replaces the instances, and what happens when it fails.
    pub rollout: Rollout,
}

/// `rollout:`: Kubernetes' rolling update strategy (`maxSurge`, `maxUnavailable`,
/// `progressDeadlineMs`), and whether a failed rollout is undone by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Instances of the new revision started beyond `replicas` while it rolls out.
    pub max_surge: u32,
    /// Instances that may be unready (being replaced) at once.
    pub max_unavailable: u32,
    /// A rollout not complete this long after it began has failed.
    pub progress_deadline_ms: u64,
    /// A failed rollout goes back to the last good revision.
    pub auto_rollback: bool,
}

/// What a service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A built-in component, run as `orch run COMPONENT`.
    Component(Component),
    /// Any program: `program` is resolved (absolute); `args` may contain `{port}`.
    Command { program: PathBuf, args: Vec<String> },
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            Kind::Component(c) => map.serialize_entry("component", c.name())?,
            Kind::Command { program, args } => {
                let mut line = vec![program.display().to_string()];
                line.extend(args.iter().cloned());
                map.serialize_entry("command", &line)?;
            }
        }
        map.end()
    }
}

/// A readiness or liveness probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub check: Check,
    /// The pace while starting up (after the first moments), failing or not ready.
    pub period_ms: u64,
    /// The pace while all is well (ready, or live): `periodMs` when the manifest sets it, else
    /// a calmer default (an idle cluster costs next to nothing); one failure brings back
    /// `periodMs` until the next success.
    pub steady_period_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that count: not ready again, or (liveness) a restart.
    pub failure_threshold: u32,
}

impl Probe {
    /// Whether the manifest left the period unset, so the probe may be calmer while all is well
    /// (`steadyPeriodMs` above `periodMs`; a period the manifest sets holds at all times).
    pub fn calm_when_well(&self) -> bool {
        self.steady_period_ms > self.period_ms
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// `GET path` answers 2xx.
    Http(String),
    /// The port accepts a connection.
    Tcp,
    /// No probe: ready once started (readiness), never restarted for hanging (liveness).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Restart {
    pub policy: RestartPolicy,
    /// The delay before the second restart in a row (the first is at once); it doubles.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Ready this long without a crash: the next crash restarts at once again.
    pub reset_after_ms: u64,
}

impl Manifest {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Services in dependency order (each after everything it depends on), file order
    /// otherwise.
    pub fn start_order(&self) -> Vec<&Service> {
        let order = topo_order(&self.services.iter().map(|s| (s.name.as_str(), &s.depends_on[..])).collect::<Vec<_>>())
            .unwrap_or_else(|_| (0..self.services.len()).collect());
        order.into_iter().map(|i| &self.services[i]).collect()
    }

    /// The first service running `component`.
    pub fn component(&self, component: Component) -> Option<&Service> {
        self.services.iter().find(|s| s.kind == Kind::Component(component))
    }
}

impl Service {
    pub fn component(&self) -> Option<Component> {
        match self.kind {
            Kind::Component(c) => Some(c),
            Kind::Command { .. } => None,
        }
    }

    /// The fixed port of ordinal `n`, if the service has a base port.
    pub fn port_of(&self, n: u32) -> Option<u16> {
        self.port.map(|p| p + (n - 1) as u16)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// Reads and parses the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ManifestError::whole_file(path, format!("cannot read the manifest: {e}"), "check the path"))?;
    parse(path, &text)
}

/// Parses `text`, the contents of the manifest at `path`.
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| ManifestError::from_yaml(path, &e))?;
    let abs = std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_owned());
    let base = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    let mut check = Checker { problems: Vec::new(), base };
    let manifest = check.manifest(raw, abs);
    if check.problems.is_empty() {
        return Ok(manifest);
    }
    let problems = check
        .problems
        .into_iter()
        .map(|(node, message, fix)| Problem { at: locate(text, &node), message, fix })
        .collect();
    Err(ManifestError { file: path.display().to_string(), problems })
}

/// Semantic checks of an already resolved manifest (used when the running cluster is changed
/// without a file, e.g. `orch scale`): port ranges and clashes. Messages only, no positions.
pub fn check_ports(manifest: &Manifest) -> Result<(), String> {
    let ranges: Vec<(String, u32, Option<u16>)> =
        manifest.services.iter().map(|s| (s.name.clone(), s.replicas, s.port)).collect();
    let mut problems = Vec::new();
    port_problems(&ranges, manifest.control_port, |_, msg, _| problems.push(msg));
    match problems.into_iter().next() {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;

//! The manifest: the desired state of a cluster, parsed strictly.
//!
//! A manifest is YAML (`apiVersion: orch/v1`, `kind: Cluster`). Parsing has two steps:
//! serde_yaml reads it into the raw types below, which reject unknown fields and wrong
//! types with a line and column; then [`parse`] checks everything serde cannot (names,
//! ranges, port clashes, dependencies and their cycles, routes, commands on `PATH`) and
//! fills in the defaults. Every problem names the file, the line and column of the node at
//! fault (found with [`locate`]) and the fix. A manifest with any problem is rejected whole:
//! nothing that runs changes because of it.

mod locate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

pub use locate::{NodePath, Position, locate};

use crate::run::Component;

pub const API_VERSION: &str = "orch/v1";
pub const KIND: &str = "Cluster";
/// Replicas of one service: `0..=MAX_REPLICAS`.
pub const MAX_REPLICAS: u32 = 100;
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
    pub period_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that count: not ready again, or (liveness) a restart.
    pub failure_threshold: u32,
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
// Errors
// ---------------------------------------------------------------------------------------

/// Why a manifest was rejected: one or more problems, each with its place and fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file as the user named it.
    pub file: String,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Option<Position>,
    pub message: String,
    pub fix: String,
}

impl ManifestError {
    fn whole_file(file: &Path, message: String, fix: &str) -> Self {
        Self { file: file.display().to_string(), problems: vec![Problem { at: None, message, fix: fix.to_owned() }] }
    }

    /// An error about a manifest that was fine as a file but cannot be applied now.
    pub fn new(file: &Path, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            file: file.display().to_string(),
            problems: vec![Problem { at: None, message: message.into(), fix: fix.into() }],
        }
    }

    fn from_yaml(file: &Path, err: &serde_yaml::Error) -> Self {
        let at = err.location().map(|l| Position { line: l.line(), column: l.column() });
        let mut message = err.to_string();
        if let Some(at) = at {
            message = message.replacen(&format!(" at line {} column {}", at.line, at.column), "", 1);
        }
        let fix = yaml_fix(&message);
        Self { file: file.display().to_string(), problems: vec![Problem { at, message, fix }] }
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match p.at {
                Some(at) => write!(f, "{}:{}:{}: {}", self.file, at.line, at.column, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
            if !p.fix.is_empty() {
                write!(f, "; fix: {}", p.fix)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// The fix for a serde_yaml error, from its message.
fn yaml_fix(message: &str) -> String {
    if let Some(rest) = message.split("unknown field `").nth(1) {
        let field = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest.split("expected ").nth(1).map(backticked).unwrap_or_default();
        return match closest(field, expected.iter().copied()) {
            Some(best) => format!("did you mean `{best}`? (allowed here: {})", expected.join(", ")),
            None if !expected.is_empty() => format!("remove it (allowed here: {})", expected.join(", ")),
            None => "remove it".to_owned(),
        };
    }
    if let Some(rest) = message.split("unknown variant `").nth(1) {
        let expected: Vec<&str> = rest.split("expected ").nth(1).map(backticked).unwrap_or_default();
        return format!("use one of {}", expected.join(", "));
    }
    if let Some(rest) = message.split("missing field `").nth(1) {
        return format!("add `{}`", rest.split('`').next().unwrap_or_default());
    }
    if let Some(expected) = message.split(", expected ").nth(1) {
        return format!("give {expected}");
    }
    if message.contains("EOF while parsing") {
        return "write a manifest: apiVersion, kind, metadata and spec (see manifests/examples/minimal.yaml)"
            .to_owned();
    }
    "fix the YAML syntax here (indentation, a missing colon or quote)".to_owned()
}

fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------------------
// The raw document
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a manifest: apiVersion, kind, metadata and spec")]
struct RawManifest {
    api_version: String,
    kind: String,
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "metadata: a mapping with a name")]
struct RawMetadata {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a spec: a mapping with services (and dataDir, controlPort, auth, env, logMaxBytes, database)")]
struct RawSpec {
    data_dir: Option<String>,
    database: Option<String>,
    control_port: Option<Int>,
    auth: Option<RawAuth>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    log_max_bytes: Option<Int>,
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "auth: a mapping with required: true or false")]
struct RawAuth {
    required: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a service: a mapping with a name and a component or a command")]
struct RawService {
    name: String,
    component: Option<String>,
    command: Option<CommandLine>,
    args: Option<Vec<String>>,
    replicas: Option<Int>,
    port: Option<Int>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    #[serde(default)]
    depends_on: Vec<String>,
    readiness: Option<RawProbe>,
    liveness: Option<RawProbe>,
    restart: Option<RawRestart>,
    grace_period_ms: Option<Int>,
    routes: Option<BTreeMap<String, String>>,
    socket_activation: Option<bool>,
    register: Option<bool>,
    registers: Option<bool>,
    working_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a probe: a mapping with path or tcp, periodMs, timeoutMs, failureThreshold, enabled")]
struct RawProbe {
    path: Option<String>,
    tcp: Option<bool>,
    enabled: Option<bool>,
    period_ms: Option<Int>,
    timeout_ms: Option<Int>,
    failure_threshold: Option<Int>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "restart: a mapping with policy, backoffInitialMs, backoffMaxMs, resetAfterMs")]
struct RawRestart {
    policy: Option<RestartPolicy>,
    backoff_initial_ms: Option<Int>,
    backoff_max_ms: Option<Int>,
    reset_after_ms: Option<Int>,
}

/// A whole number of any size, so range errors can say what the range is.
#[derive(Clone, Copy, Debug)]
struct Int(i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Int, E> {
                Ok(Int(v.min(i128::MAX as u128) as i128))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(Int(v as i128))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An environment value: YAML strings, numbers and booleans are all taken as text.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `command: prog` or `command: [prog, arg, ...]`.
struct CommandLine(Vec<String>);

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a program, or a list [program, arguments...]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandLine, E> {
                Ok(CommandLine(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut line = Vec::new();
                while let Some(arg) = seq.next_element::<EnvValue>()? {
                    line.push(arg.0);
                }
                Ok(CommandLine(line))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing and validation
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

type Found = (NodePath, String, String);

struct Checker {
    problems: Vec<Found>,
    base: PathBuf,
}

fn services_path() -> NodePath {
    NodePath::root().key("spec").key("services")
}

impl Checker {
    fn problem(&mut self, at: NodePath, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push((at, message.into(), fix.into()));
    }

    /// `value` within `min..=max`, else a problem at `at`.
    fn range(&mut self, at: NodePath, what: &str, value: Option<Int>, default: i128, min: i128, max: i128) -> i128 {
        let Some(Int(v)) = value else { return default };
        if (min..=max).contains(&v) {
            v
        } else {
            self.problem(
                at,
                format!("{what} must be from {min} to {max}, got {v}"),
                format!("set {what} between {min} and {max}"),
            );
            default
        }
    }

    fn manifest(&mut self, raw: RawManifest, path: PathBuf) -> Manifest {
        let root = NodePath::root();
        if raw.api_version != API_VERSION {
            self.problem(
                root.key("apiVersion"),
                format!("unsupported apiVersion {:?}", raw.api_version),
                format!("write apiVersion: {API_VERSION}"),
            );
        }
        if raw.kind != KIND {
            self.problem(root.key("kind"), format!("unsupported kind {:?}", raw.kind), format!("write kind: {KIND}"));
        }
        let name = raw.metadata.name;
        if !valid_name(&name, 63) {
            self.problem(
                root.key("metadata").key("name"),
                format!("invalid cluster name {name:?}"),
                "use 1 to 63 lowercase letters, digits and dashes, starting with a letter",
            );
        }
        let spec = raw.spec;
        let sp = root.key("spec");
        let data_dir = normalize(&self.base.join(spec.data_dir.as_deref().unwrap_or("data")));
        if data_dir.exists() && !data_dir.is_dir() {
            self.problem(
                sp.key("dataDir"),
                format!("dataDir {} exists and is not a directory", data_dir.display()),
                "point dataDir at a directory (relative to the manifest file)",
            );
        }
        let control_port =
            self.range(sp.key("controlPort"), "controlPort", spec.control_port, DEFAULT_CONTROL_PORT.into(), 0, 65535)
                as u16;
        let log_max_bytes = self.range(
            sp.key("logMaxBytes"),
            "logMaxBytes",
            spec.log_max_bytes,
            DEFAULT_LOG_MAX_BYTES.into(),
            4096,
            1 << 30,
        ) as u64;
        let env = self.env(sp.key("env"), spec.env);
        let database = spec.database.filter(|url| {
            let postgres = ["postgres://", "postgresql://"].iter().any(|s| url.starts_with(s) && url.len() > s.len());
            if !postgres {
                self.problem(
                    sp.key("database"),
                    format!("database {url:?} is not a PostgreSQL URL"),
                    "write postgres://USER@HOST:PORT/DATABASE, or leave database out for SQLite files",
                );
            }
            postgres
        });

        let mut services = Vec::new();
        let mut first_at: HashMap<String, usize> = HashMap::new();
        for (i, raw) in spec.services.into_iter().enumerate() {
            let at = services_path().index(i);
            if let Some(&first) = first_at.get(&raw.name) {
                self.problem(
                    at.key("name"),
                    format!("duplicate service name {:?} (services[{first}] has it too)", raw.name),
                    "give every service its own name",
                );
            } else {
                first_at.insert(raw.name.clone(), i);
            }
            services.push(self.service(at, raw));
        }
        self.dependencies(&services);
        self.routes(&services);
        let ranges: Vec<(String, u32, Option<u16>)> =
            services.iter().map(|s| (s.name.clone(), s.replicas, s.port)).collect();
        let mut found = Vec::new();
        port_problems(&ranges, control_port, |i, msg, fix| {
            found.push((services_path().index(i).key("port"), msg, fix))
        });
        self.problems.extend(found);

        Manifest {
            path,
            name,
            data_dir,
            control_port,
            auth_required: spec.auth.is_none_or(|a| a.required),
            env,
            database,
            log_max_bytes,
            services,
        }
    }

    fn env(&mut self, at: NodePath, raw: BTreeMap<String, EnvValue>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (key, EnvValue(value)) in raw {
            let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.problem(
                    at.key(&key),
                    format!("invalid environment variable name {key:?}"),
                    "use letters, digits and underscores, not starting with a digit",
                );
            } else if key == "ORCH_CONTROL_TOKEN" {
                self.problem(
                    at.key(&key),
                    "ORCH_CONTROL_TOKEN is the CLI's: the control token is given to no instance",
                    "remove ORCH_CONTROL_TOKEN",
                );
            } else if RESERVED_ENV.contains(&key.as_str()) {
                self.problem(at.key(&key), format!("{key} is set by orch for every instance"), format!("remove {key}"));
            } else if value.contains('\0') {
                self.problem(at.key(&key), format!("the value of {key} contains a NUL byte"), "remove it");
            }
            env.insert(key, value);
        }
        env
    }

    fn service(&mut self, at: NodePath, raw: RawService) -> Service {
        let name = raw.name;
        if !valid_name(&name, 40) {
            self.problem(
                at.key("name"),
                format!("invalid service name {name:?}"),
                "use 1 to 40 lowercase letters, digits and dashes, starting with a letter",
            );
        }
        let working_dir = match &raw.working_dir {
            Some(dir) => {
                let dir = normalize(&self.base.join(dir));
                if !dir.is_dir() {
                    self.problem(
                        at.key("workingDir"),
                        format!("workingDir {} is not a directory", dir.display()),
                        "point it at an existing directory (relative to the manifest file)",
                    );
                }
                dir
            }
            None => self.base.clone(),
        };
        let kind = match (raw.component, raw.command) {
            (Some(_), Some(_)) => {
                self.problem(
                    at.key("command"),
                    format!("service {name:?} has both component and command"),
                    "keep one of them",
                );
                Kind::Component(Component::Registry)
            }
            (None, None) => {
                self.problem(
                    at.clone(),
                    format!("service {name:?} has neither component nor command"),
                    format!("add `component: <{}>` or `command: [program, args...]`", component_names()),
                );
                Kind::Component(Component::Registry)
            }
            (Some(component), None) => {
                if raw.args.is_some() {
                    self.problem(at.key("args"), "args are for command services", "remove args");
                }
                match Component::from_name(&component) {
                    Some(c) => Kind::Component(c),
                    None => {
                        let fix = match closest(&component, Component::ALL.iter().map(|c| c.name())) {
                            Some(best) => format!("did you mean {best:?}? (components: {})", component_names()),
                            None => format!("use one of {}, or `command:` for any program", component_names()),
                        };
                        self.problem(at.key("component"), format!("unknown component {component:?}"), fix);
                        Kind::Component(Component::Registry)
                    }
                }
            }
            (None, Some(CommandLine(line))) => {
                let mut line = line.into_iter();
                let program = line.next().unwrap_or_default();
                let mut args: Vec<String> = line.collect();
                if let Some(extra) = raw.args {
                    if !args.is_empty() {
                        self.problem(
                            at.key("args"),
                            "arguments are given both in command and in args",
                            "put them in one place",
                        );
                    }
                    args.extend(extra);
                }
                let program = if program.trim().is_empty() {
                    self.problem(
                        at.key("command"),
                        "the command is empty",
                        "name a program: command: [program, args...]",
                    );
                    PathBuf::new()
                } else {
                    match find_program(&program, &self.base) {
                        Ok(p) => p,
                        Err(why) => {
                            self.problem(
                                at.key("command"),
                                why,
                                "install it, or give its path (relative to the manifest file)",
                            );
                            PathBuf::new()
                        }
                    }
                };
                if args.iter().any(|a| a.contains('\0')) {
                    self.problem(at.key("args"), "an argument contains a NUL byte", "remove it");
                }
                Kind::Command { program, args }
            }
        };
        let is_component = matches!(kind, Kind::Component(_));

        let replicas = self.range(at.key("replicas"), "replicas", raw.replicas, 1, 0, MAX_REPLICAS.into()) as u32;
        let port = match raw.port {
            None => None,
            Some(Int(0)) => {
                self.problem(at.key("port"), "port 0 is not a port", "omit port for automatic ports");
                None
            }
            some => Some(self.range(at.key("port"), "port", some, 1, 1, 65535) as u16),
        };
        if let Some(p) = port {
            let last = u32::from(p) + replicas.max(1) - 1;
            if last > 65535 {
                self.problem(
                    at.key("port"),
                    format!("{replicas} instances from port {p} go past port 65535"),
                    "choose a lower port or fewer replicas",
                );
            }
        }
        let env = self.env(at.key("env"), raw.env);

        let socket_activation = raw.socket_activation.unwrap_or(is_component);
        let register = match raw.register {
            Some(true) if is_component => {
                self.problem(at.key("register"), "components register themselves", "remove register");
                false
            }
            Some(true) if raw.registers == Some(true) => {
                self.problem(
                    at.key("register"),
                    "register (orch registers the instances) and registers (they register themselves) are both true",
                    "keep one of them",
                );
                false
            }
            Some(r) => r,
            None => !is_component && raw.registers != Some(true),
        };
        let registers = match raw.registers {
            Some(_) if is_component => {
                self.problem(
                    at.key("registers"),
                    "components register themselves and always get the registry token",
                    "remove registers",
                );
                true
            }
            Some(r) => r,
            None => is_component,
        };
        let readiness_default = if is_component {
            Probe { check: Check::Http("/ready".into()), period_ms: 200, timeout_ms: 1000, failure_threshold: 3 }
        } else if socket_activation {
            Probe { check: Check::None, period_ms: 200, timeout_ms: 1000, failure_threshold: 3 }
        } else {
            Probe { check: Check::Tcp, period_ms: 200, timeout_ms: 1000, failure_threshold: 3 }
        };
        let liveness_default = if is_component {
            // A hung process is killed 1.9-2.4 s after it stops answering (four failed checks).
            Probe { check: Check::Http("/health".into()), period_ms: 500, timeout_ms: 400, failure_threshold: 4 }
        } else {
            Probe { check: Check::None, period_ms: 500, timeout_ms: 400, failure_threshold: 4 }
        };
        let readiness = self.probe(at.key("readiness"), raw.readiness, readiness_default, socket_activation);
        let liveness = self.probe(at.key("liveness"), raw.liveness, liveness_default, socket_activation);

        let rr = raw.restart.unwrap_or_default();
        let rp = at.key("restart");
        let backoff_initial_ms =
            self.range(rp.key("backoffInitialMs"), "backoffInitialMs", rr.backoff_initial_ms, 100, 1, 600_000) as u64;
        let backoff_max_ms =
            self.range(rp.key("backoffMaxMs"), "backoffMaxMs", rr.backoff_max_ms, 30_000, 1, 3_600_000) as u64;
        if backoff_max_ms < backoff_initial_ms {
            self.problem(
                rp.key("backoffMaxMs"),
                format!("backoffMaxMs ({backoff_max_ms}) is below backoffInitialMs ({backoff_initial_ms})"),
                "make backoffMaxMs at least backoffInitialMs",
            );
        }
        let reset_after_ms =
            self.range(rp.key("resetAfterMs"), "resetAfterMs", rr.reset_after_ms, 10_000, 1, 86_400_000) as u64;
        let restart = Restart {
            policy: rr.policy.unwrap_or(RestartPolicy::Always),
            backoff_initial_ms,
            backoff_max_ms,
            reset_after_ms,
        };
        let grace_period_ms =
            self.range(at.key("gracePeriodMs"), "gracePeriodMs", raw.grace_period_ms, 5_000, 0, 600_000) as u64;

        let routes = raw.routes.unwrap_or_default();
        if !routes.is_empty() && kind != Kind::Component(Component::Balancer) {
            self.problem(at.key("routes"), "routes are for balancer services", "move routes to the balancer service");
        }
        let mut depends_on: Vec<String> = Vec::new();
        for dep in raw.depends_on {
            if !depends_on.contains(&dep) {
                depends_on.push(dep);
            }
        }

        Service {
            name,
            kind,
            replicas,
            port,
            env,
            depends_on,
            readiness,
            liveness,
            restart,
            grace_period_ms,
            routes,
            socket_activation,
            register,
            registers,
            working_dir,
        }
    }

    fn probe(&mut self, at: NodePath, raw: Option<RawProbe>, default: Probe, socket_activation: bool) -> Probe {
        let Some(raw) = raw else { return default };
        let check = match (raw.enabled, raw.path, raw.tcp) {
            (Some(false), _, _) => Check::None,
            (_, Some(_), Some(true)) => {
                self.problem(at.key("tcp"), "a probe has both path and tcp", "keep one of them");
                Check::None
            }
            (_, Some(path), _) => {
                if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
                    self.problem(
                        at.key("path"),
                        format!("probe path {path:?} is not a URL path"),
                        "write it like /ready",
                    );
                }
                Check::Http(path)
            }
            (_, None, Some(true)) => {
                if socket_activation {
                    self.problem(
                        at.key("tcp"),
                        "a tcp probe of a socket-activated service always succeeds (orch holds the socket)",
                        "probe a path instead: path: /health",
                    );
                }
                Check::Tcp
            }
            (_, None, _) if default.check == Check::None => {
                if socket_activation {
                    Check::None
                } else {
                    Check::Tcp
                }
            }
            (_, None, _) => default.check,
        };
        let period_ms =
            self.range(at.key("periodMs"), "periodMs", raw.period_ms, default.period_ms.into(), 10, 3_600_000) as u64;
        let default_timeout = if raw.period_ms.is_some() {
            (period_ms * 4 / 5).clamp(10, default.timeout_ms)
        } else {
            default.timeout_ms
        };
        let timeout_ms =
            self.range(at.key("timeoutMs"), "timeoutMs", raw.timeout_ms, default_timeout.into(), 1, 600_000) as u64;
        let failure_threshold = self.range(
            at.key("failureThreshold"),
            "failureThreshold",
            raw.failure_threshold,
            default.failure_threshold.into(),
            1,
            1000,
        ) as u32;
        Probe { check, period_ms, timeout_ms, failure_threshold }
    }

    fn dependencies(&mut self, services: &[Service]) {
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        for (i, s) in services.iter().enumerate() {
            for (j, dep) in s.depends_on.iter().enumerate() {
                let at = services_path().index(i).key("dependsOn").index(j);
                if *dep == s.name {
                    self.problem(
                        at,
                        format!("service {:?} depends on itself", s.name),
                        "remove it from its own dependsOn",
                    );
                } else if !names.contains(&dep.as_str()) {
                    let fix = match closest(dep, names.iter().copied()) {
                        Some(best) => format!("did you mean {best:?}?"),
                        None => "add that service, or remove it from dependsOn".to_owned(),
                    };
                    self.problem(
                        at,
                        format!("service {:?} depends on {dep:?}, which is not in the manifest", s.name),
                        fix,
                    );
                }
            }
        }
        let graph: Vec<(&str, &[String])> = services.iter().map(|s| (s.name.as_str(), &s.depends_on[..])).collect();
        if let Err(cycle) = topo_order(&graph) {
            let first = cycle[0];
            let next = &services[cycle[1 % cycle.len()]].name;
            let j = services[first].depends_on.iter().position(|d| d == next).unwrap_or(0);
            let mut names: Vec<&str> = cycle.iter().map(|&i| services[i].name.as_str()).collect();
            names.push(&services[first].name);
            self.problem(
                services_path().index(first).key("dependsOn").index(j),
                format!("dependency cycle: {}", names.join(" -> ")),
                "remove one of these dependsOn entries",
            );
        }
    }

    fn routes(&mut self, services: &[Service]) {
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        for (i, s) in services.iter().enumerate() {
            for (prefix, target) in &s.routes {
                let at = services_path().index(i).key("routes").key(prefix);
                if !prefix.starts_with('/') || prefix.contains([',', '=']) || prefix.chars().any(char::is_whitespace) {
                    self.problem(
                        at.clone(),
                        format!("route prefix {prefix:?} is not a URL path"),
                        "write it like /api/auth",
                    );
                }
                if !names.contains(&target.as_str()) {
                    let fix = match closest(target, names.iter().copied()) {
                        Some(best) => format!("did you mean {best:?}?"),
                        None => "route to a service of this manifest".to_owned(),
                    };
                    self.problem(at, format!("route {prefix} goes to {target:?}, which is not in the manifest"), fix);
                }
            }
        }
    }
}

/// Overlapping port ranges and clashes with the control port, reported through `report`
/// with the index of the later service.
fn port_problems(
    ranges: &[(String, u32, Option<u16>)],
    control_port: u16,
    mut report: impl FnMut(usize, String, String),
) {
    let span = |(_, n, p): &(String, u32, Option<u16>)| -> Option<(u32, u32)> {
        let p = u32::from((*p)?);
        (*n > 0).then(|| (p, p + n - 1))
    };
    let show = |(a, b): (u32, u32)| if a == b { format!("port {a}") } else { format!("ports {a}-{b}") };
    for (i, r) in ranges.iter().enumerate() {
        let Some((lo, hi)) = span(r) else { continue };
        if control_port != 0 && (lo..=hi).contains(&u32::from(control_port)) {
            report(
                i,
                format!("{} of {:?} include orch's control port {control_port}", show((lo, hi)), r.0),
                "move the service, or set spec.controlPort to another port".to_owned(),
            );
        }
        for other in &ranges[..i] {
            let Some((olo, ohi)) = span(other) else { continue };
            if lo <= ohi && olo <= hi {
                report(
                    i,
                    format!("{} of {:?} overlap {} of {:?}", show((lo, hi)), r.0, show((olo, ohi)), other.0),
                    "give each service its own port range (instance n listens on port + n - 1)".to_owned(),
                );
            }
        }
    }
}

/// Dependency order (indices), stable in file order; `Err(cycle)` names a cycle's members.
fn topo_order(graph: &[(&str, &[String])]) -> Result<Vec<usize>, Vec<usize>> {
    let index: HashMap<&str, usize> = graph.iter().enumerate().map(|(i, (n, _))| (*n, i)).collect();
    let deps: Vec<Vec<usize>> =
        graph.iter().map(|(_, d)| d.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()).collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; graph.len()];
    let mut order = Vec::with_capacity(graph.len());
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                return Err(stack[start..].to_vec());
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            visit(d, deps, state, stack, order)?;
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..graph.len() {
        visit(i, &deps, &mut state, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// `path` without `.` and `..` components (lexically: the directories may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn component_names() -> String {
    Component::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// `program` as an absolute path: a path (relative to `base`) or a name found on `PATH`.
fn find_program(program: &str, base: &Path) -> Result<PathBuf, String> {
    let executable = |p: &Path| p.is_file() && p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = normalize(&base.join(program));
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("command {program:?} is not an executable file"))
        } else {
            Err(format!("command {program:?} does not exist ({})", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {program:?} not found on PATH"))
}

#[cfg(test)]
mod tests;

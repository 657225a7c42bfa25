//! The `Checker`: turns a raw document into a `Manifest`, collecting every problem with
//! its node path (located in the text afterwards). This file checks the cluster-wide parts
//! (header, spec, env, dependencies, routes, ports); `service` checks one service.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::raw::{EnvValue, Int, RawManifest};
use super::rules::{normalize, port_problems, topo_order, valid_name};
use super::{
    API_VERSION, DEFAULT_CONTROL_PORT, DEFAULT_LOG_MAX_BYTES, KIND, Manifest, NodePath, RESERVED_ENV, Service, closest,
};

pub(super) type Found = (NodePath, String, String);

pub(super) struct Checker {
    pub(super) problems: Vec<Found>,
    pub(super) base: PathBuf,
}

pub(super) fn services_path() -> NodePath {
    NodePath::root().key("spec").key("services")
}

impl Checker {
    pub(super) fn problem(&mut self, at: NodePath, message: impl Into<String>, fix: impl Into<String>) {
        self.problems.push((at, message.into(), fix.into()));
    }

    /// `value` within `min..=max`, else a problem at `at`.
    pub(super) fn range(
        &mut self,
        at: NodePath,
        what: &str,
        value: Option<Int>,
        default: i128,
        min: i128,
        max: i128,
    ) -> i128 {
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

    pub(super) fn manifest(&mut self, raw: RawManifest, path: PathBuf) -> Manifest {
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
        self.autoscale_signals(&services);
        // An autoscaled service may grow to its max: its ports are reserved up to there.
        let ranges: Vec<(String, u32, Option<u16>)> = services
            .iter()
            .map(|s| (s.name.clone(), s.autoscale.as_ref().map_or(s.replicas, |a| a.max.max(s.replicas)), s.port))
            .collect();
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

    pub(super) fn env(&mut self, at: NodePath, raw: BTreeMap<String, EnvValue>) -> BTreeMap<String, String> {
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

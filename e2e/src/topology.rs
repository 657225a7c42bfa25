//! The shipped topology (`manifests/cluster.yaml`: registry, auth ×3, data ×3, compute ×3,
//! the balancer with its routes, the detector) as a manifest on automatic ports: no `port:`,
//! `controlPort: 0`, the data dir beside the manifest, `auth.required: true`, and faster
//! heartbeats, checks and leases than the defaults so a test sees changes within a second.
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::topology::Topology;
//! let cluster = Topology::new().replicas("data", 5).env("data", "DATA_LIST_MAX_LIMIT", "50").start().await;
//! # }
//! ```

use std::fmt::Write;

use crate::cluster::Cluster;

/// The services of the shipped topology, in the manifest's order.
pub const SERVICES: [&str; 6] = ["registry", "auth", "data", "compute", "balancer", "detector"];

/// The example services, the ones behind the balancer.
pub const BACKENDS: [&str; 3] = ["auth", "data", "compute"];

/// The full cluster's manifest, built up and then written as YAML.
#[derive(Clone, Debug)]
pub struct Topology {
    name: String,
    /// `(service, replicas)` in manifest order.
    replicas: Vec<(&'static str, u32)>,
    /// `spec.env`: every instance.
    cluster_env: Vec<(String, String)>,
    /// `(service, name, value)`: one service's `env`.
    service_env: Vec<(String, String, String)>,
    /// `(service, field, YAML value)`: more fields of one service (`restart`, `liveness`, ...).
    service_fields: Vec<(String, String, String)>,
    /// The port of a `postgres` command service that auth, data and compute depend on and
    /// keep their tables in (`spec.database`), as in `manifests/examples/postgres.yaml`.
    postgres: Option<u16>,
    /// More of orch's own environment (like `ORCH_PARTITIONS`).
    orch_env: Vec<(String, String)>,
}

/// The script that runs the PostgreSQL server of a cluster on PostgreSQL.
pub const PG_SERVE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-serve.sh");

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Topology {
    /// Three instances of each example service, one of each infrastructure component.
    pub fn new() -> Self {
        let pairs = |list: &[(&str, &str)]| list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut service_env = Vec::new();
        let mut add = |service: &str, name: &str, value: &str| {
            service_env.push((service.to_owned(), name.to_owned(), value.to_owned()));
        };
        // The registry marks a silent instance unhealthy after six missed heartbeats.
        add("registry", "STALE_TIMEOUT_MS", "3000");
        // The balancer checks its backends twice a second.
        add("balancer", "HEALTH_CHECK_INTERVAL_MS", "500");
        // The detector checks every instance every second.
        add("detector", "CHECK_INTERVAL_MS", "1000");
        add("detector", "METRICS_INTERVAL_MS", "500");
        // A job whose worker was killed is taken over after a second, not five.
        add("compute", "JOB_LEASE_MS", "1000");
        Self {
            name: "e2e".to_owned(),
            replicas: vec![("registry", 1), ("auth", 3), ("data", 3), ("compute", 3), ("balancer", 1), ("detector", 1)],
            cluster_env: pairs(&[("HEARTBEAT_INTERVAL_MS", "500")]),
            service_env,
            service_fields: Vec::new(),
            postgres: None,
            orch_env: Vec::new(),
        }
    }

    /// Auth, data and compute on PostgreSQL: a `postgres` service (scripts/pg-serve.sh, on
    /// `port`) that they depend on, and `spec.database` naming it.
    pub fn on_postgres(mut self, port: u16) -> Self {
        self.postgres = Some(port);
        self
    }

    /// `metadata.name`.
    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// `service`'s replicas (one of [`SERVICES`]).
    pub fn replicas(mut self, service: &str, replicas: u32) -> Self {
        let entry = self.replicas.iter_mut().find(|(s, _)| *s == service);
        entry.unwrap_or_else(|| panic!("{service} is not a service of the topology")).1 = replicas;
        self
    }

    /// One service's environment variable (`service` = `"*"`: `spec.env`, every instance);
    /// a later value for the same name wins.
    pub fn env(mut self, service: &str, name: &str, value: &str) -> Self {
        if service == "*" {
            self.cluster_env.retain(|(k, _)| k != name);
            self.cluster_env.push((name.to_owned(), value.to_owned()));
        } else {
            assert!(SERVICES.contains(&service), "{service} is not a service of the topology");
            self.service_env.retain(|(s, k, _)| !(s == service && k == name));
            self.service_env.push((service.to_owned(), name.to_owned(), value.to_owned()));
        }
        self
    }

    /// A field of one service's entry in the manifest, as YAML (`"{ resetAfterMs: 100 }"` for
    /// `restart`); a later value for the same field wins.
    pub fn field(mut self, service: &str, field: &str, yaml: &str) -> Self {
        assert!(SERVICES.contains(&service), "{service} is not a service of the topology");
        self.service_fields.retain(|(s, f, _)| !(s == service && f == field));
        self.service_fields.push((service.to_owned(), field.to_owned(), yaml.to_owned()));
        self
    }

    /// The instance names the manifest asks for (`auth-1`, ...), in manifest order.
    pub fn instances(&self) -> Vec<String> {
        let postgres = self.postgres.map(|_| "postgres-1".to_owned());
        postgres
            .into_iter()
            .chain(self.replicas.iter().flat_map(|(s, n)| (1..=*n).map(move |i| format!("{s}-{i}"))))
            .collect()
    }

    /// The instances of the example services, the ones registered behind the balancer.
    pub fn backend_instances(&self) -> Vec<String> {
        self.instances().into_iter().filter(|i| BACKENDS.iter().any(|b| i.starts_with(&format!("{b}-")))).collect()
    }

    /// The manifest.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: {} }}\nspec:", self.name);
        let _ = writeln!(y, "  dataDir: data\n  controlPort: 0\n  auth: {{ required: true }}");
        if let Some(port) = self.postgres {
            let _ = writeln!(y, "  database: postgres://orch@127.0.0.1:{port}/orch");
        }
        write_env(&mut y, "  ", self.cluster_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let _ = writeln!(y, "  services:");
        if let Some(port) = self.postgres {
            let _ = writeln!(
                y,
                "    - name: postgres\n      command: [{PG_SERVE:?}, \"{{dataDir}}/postgres\", \"{{port}}\"]\n      \
                 port: {port}\n      register: false\n      gracePeriodMs: 10000"
            );
        }
        for (service, replicas) in &self.replicas {
            let _ = writeln!(y, "    - name: {service}\n      component: {service}\n      replicas: {replicas}");
            match *service {
                "registry" => {}
                "detector" => {
                    let _ = writeln!(y, "      dependsOn: [registry, balancer]");
                }
                "auth" | "data" | "compute" if self.postgres.is_some() => {
                    let _ = writeln!(y, "      dependsOn: [registry, postgres]");
                }
                _ => {
                    let _ = writeln!(y, "      dependsOn: [registry]");
                }
            }
            if *service == "balancer" {
                let _ = writeln!(y, "      routes: {{ /api/auth: auth, /api/data: data, /api/compute: compute }}");
            }
            for (_, field, value) in self.service_fields.iter().filter(|(s, ..)| s == service) {
                let _ = writeln!(y, "      {field}: {value}");
            }
            let env = self.service_env.iter().filter(|(s, ..)| s == service);
            write_env(&mut y, "      ", env.map(|(_, k, v)| (k.as_str(), v.as_str())));
        }
        y
    }

    /// Runs `orch apply` on this manifest and waits until every instance is ready and the
    /// balancer routes to every backend instance.
    /// `name=value` in orch's own environment.
    pub fn orch_env(mut self, name: &str, value: &str) -> Self {
        self.orch_env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn start(&self) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), self.yaml()).unwrap();
        let env: Vec<(&str, &str)> = self.orch_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cluster = Cluster::start_with_env(dir, &env).await;
        let names = self.instances();
        cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
        cluster.wait_routed(&self.backend_instances()).await;
        cluster
    }
}

fn write_env<'a>(y: &mut String, indent: &str, mut env: impl Iterator<Item = (&'a str, &'a str)>) {
    let Some(first) = env.next() else { return };
    let _ = writeln!(y, "{indent}env:");
    for (k, v) in std::iter::once(first).chain(env) {
        let _ = writeln!(y, "{indent}  {k}: {}", serde_json::Value::from(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_every_instance_and_setting() {
        let t = Topology::new().replicas("data", 5).env("data", "X", "1").env("*", "HEARTBEAT_INTERVAL_MS", "250");
        let yaml = t.yaml();
        assert!(yaml.contains("controlPort: 0"), "{yaml}");
        assert!(!yaml.contains("port: "), "automatic ports: {yaml}");
        assert!(yaml.contains("HEARTBEAT_INTERVAL_MS: \"250\""), "{yaml}");
        assert_eq!(yaml.matches("HEARTBEAT_INTERVAL_MS").count(), 1, "replaced, not added: {yaml}");
        assert!(yaml.contains("- name: data\n      component: data\n      replicas: 5\n      dependsOn: [registry]\n      env:\n        X: \"1\""), "{yaml}");
        assert_eq!(t.instances().len(), 14);
        assert_eq!(t.backend_instances().len(), 11);
        assert!(t.backend_instances().contains(&"data-5".to_owned()));
    }

    #[test]
    fn fields_go_to_their_service() {
        let t = Topology::new()
            .field("data", "restart", "{ resetAfterMs: 50 }")
            .field("data", "restart", "{ resetAfterMs: 100 }")
            .field("auth", "gracePeriodMs", "2000");
        let yaml = t.yaml();
        assert!(
            yaml.contains("replicas: 3\n      dependsOn: [registry]\n      restart: { resetAfterMs: 100 }\n"),
            "{yaml}"
        );
        assert_eq!(yaml.matches("restart:").count(), 1, "replaced, not added: {yaml}");
        let auth = &yaml[yaml.find("- name: auth").unwrap()..yaml.find("- name: data").unwrap()];
        assert!(auth.contains("      gracePeriodMs: 2000\n"), "{yaml}");
        assert!(Topology::new().yaml().lines().all(|l| !l.contains("restart")));
    }
}

//! `manifests/examples/observability.yaml` run by the real `orch apply` (on automatic ports,
//! Prometheus on a free one) with the real Prometheus it declares, asked through its HTTP
//! API, never a parser of ours:
//!
//! - every one of the twelve instances (and orch) is a target with `health: up`, the
//!   instances found through the registry's `GET /api/registry/prometheus-sd`;
//! - under traffic through the balancer, the request rate of auth, data and compute is not
//!   zero;
//! - after `orch scale data=5` the two new instances are targets, with no reload;
//! - after a kill -9, orch's restart counter for that instance moved.
//!
//! Skipped, saying so, when the `prometheus` binary is missing outside CI (`make deps`
//! installs Debian's); in CI (`CI` set) a missing binary fails the test.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use e2e::cluster::Cluster;
use e2e::eventually;
use e2e::traffic::{Api, Load, Mix};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn prometheus_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("prometheus").is_file()))
}

/// The example manifest on automatic ports, Prometheus on `port`, its files by absolute path.
fn manifest(port: u16) -> String {
    let examples = Path::new(REPO).join("manifests/examples");
    let text = std::fs::read_to_string(examples.join("observability.yaml")).unwrap();
    let script = Path::new(REPO).join("scripts/prometheus-serve.sh").canonicalize().unwrap();
    let config = examples.join("prometheus.yml").canonicalize().unwrap();
    let mut yaml = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let line = if trimmed.starts_with("dataDir:") {
            "  dataDir: data".to_owned()
        } else if trimmed.starts_with("controlPort:") {
            "  controlPort: 0".to_owned()
        } else if trimmed == "port: 9090" {
            format!("      port: {port}")
        } else if trimmed.starts_with("port:") {
            continue;
        } else {
            line.replace("../../scripts/prometheus-serve.sh", &script.display().to_string())
                .replace("prometheus.yml,", &format!("{},", config.display()))
        };
        yaml.push_str(&line);
        yaml.push('\n');
    }
    yaml
}

struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let res = self.http.get(format!("{}{path}", self.url)).query(query).send().await.ok()?;
        let body: Value = res.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The `instance_id`s of the active targets whose health is `up`.
    async fn up(&self) -> BTreeSet<String> {
        let Some(data) = self.api("/api/v1/targets", &[("state", "active")]).await else { return BTreeSet::new() };
        let targets = data["activeTargets"].as_array().cloned().unwrap_or_default();
        targets
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["instance_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// An instant query's samples as (labels, value).
    async fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let Some(data) = self.api("/api/v1/query", &[("query", promql)]).await else { return Vec::new() };
        let result = data["result"].as_array().cloned().unwrap_or_default();
        result.into_iter().filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?))).collect()
    }

    async fn wait_up(&self, names: &[String]) {
        eventually(DEADLINE, &format!("targets up: {names:?}"), || async {
            let up = self.up().await;
            names.iter().all(|n| up.contains(n)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_instance_through_the_registry() {
    if !prometheus_installed() {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed (make deps installs it); CI runs this test"
        );
        return eprintln!("skipped: no prometheus on the PATH (make deps installs Debian's prometheus)");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cluster = Cluster::start(&manifest(port)).await;
    let mut names: Vec<String> = ["registry-1", "balancer-1", "detector-1", "prometheus-1"].map(String::from).into();
    for service in ["auth", "data", "compute"] {
        names.extend((1..=3).map(|i| format!("{service}-{i}")));
    }
    cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let backends: Vec<String> =
        names.iter().filter(|n| ["auth-", "data-", "compute-"].iter().any(|p| n.starts_with(p))).cloned().collect();
    cluster.wait_routed(&backends).await;
    let prometheus = Prometheus { url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };

    // Every instance of the cluster (twelve), and orch, is a target and up.
    let mut expected: Vec<String> = names.iter().filter(|n| *n != "prometheus-1").cloned().collect();
    assert_eq!(expected.len(), 12);
    expected.push("orch".to_owned());
    prometheus.wait_up(&expected).await;

    // Traffic through the balancer: auth, data and compute each serve a rate of requests.
    let balancer = cluster.url_of("balancer-1").await;
    let api = Api::new(&balancer).signed_up("watcher", "pass123").await;
    let load = Load::start(&api, "observed", Mix { jobs: true, ..Mix::default() });
    let rate = r#"sum by (service) (rate(http_requests_total{service=~"auth|data|compute"}[30s]))"#;
    let rates = eventually(DEADLINE, "a request rate for auth, data and compute", || async {
        let samples = prometheus.query(rate).await;
        let busy: BTreeSet<&str> =
            samples.iter().filter(|(_, v)| *v > 0.0).filter_map(|(m, _)| m["service"].as_str()).collect();
        (busy.len() == 3).then(|| format!("{samples:?}"))
    })
    .await;
    println!("rates: {rates}");

    // Scaling out: the new instances become targets through the registry, with no reload.
    let out = cluster.cli(&["scale", "data=5"]);
    assert!(out.status.success(), "{}", e2e::cluster::stderr(&out));
    prometheus.wait_up(&["data-4".to_owned(), "data-5".to_owned()]).await;

    // A kill -9: orch restarts the instance, and its restart counter moves in Prometheus.
    let old = cluster.kill("compute-2").await;
    cluster.wait_replaced("compute-2", old).await;
    eventually(DEADLINE, "compute-2's restart counted", || async {
        let samples = prometheus.query(r#"sum(orch_restarts_total{name="compute-2"})"#).await;
        samples.first().is_some_and(|(_, v)| *v >= 1.0).then_some(())
    })
    .await;
    prometheus.wait_up(&["compute-2".to_owned()]).await;

    let report = load.stop().await;
    println!("load: {report}");
}

//! Scaling and a rolling restart while traffic flows: six clients run data CRUD, simulated
//! data work (100 ms each) and token checks through the balancer while the manifest file is edited from three data
//! instances to five, then to two, and `orch restart data` replaces the two one at a time.
//! No client request fails, every acknowledged write reads back, and afterwards exactly the
//! expected instances exist and the balancer routes to exactly them.

use std::time::Duration;

use e2e::cluster::{gone, stdout};
use e2e::eventually;
use e2e::topology::Topology;
use e2e::traffic::{Api, Load, Mix};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// Requests the balancer sent to `instance`, as its `/status` counts them.
async fn routed_to(http: &reqwest::Client, balancer: &str, instance: &str) -> Option<u64> {
    let status: Value = http.get(format!("{balancer}/status")).send().await.ok()?.json().await.ok()?;
    let pool = status["services"]["data"]["instances"].as_array()?;
    pool.iter().find(|i| i["id"] == instance)?["requests"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_by_edit_and_a_rolling_restart_under_traffic_fail_no_request() {
    let topology = Topology::new();
    let cluster = topology.start().await;
    let balancer = cluster.url_of("balancer-1").await;
    let api = Api::new(&balancer).signed_up("scaler", "pass123").await;
    // Simulated work (100 ms) keeps data instances busy, so a drained one has requests in flight.
    let mix = Mix { work: Some(Duration::from_millis(100)), work_on: &["data"], ..Mix::default() };
    let load = Load::start(&api, "scale", mix);
    load.wait_for(100).await;

    // 3 -> 5: the two new instances start, join the balancer's rotation and serve.
    let five = topology.clone().replicas("data", 5);
    let phase = Phase::begin(&load);
    cluster.edit(&five.yaml());
    let names = five.instances();
    cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    cluster.wait_routed(&five.backend_instances()).await;
    for new in ["data-4", "data-5"] {
        eventually(DEADLINE, &format!("{new} serving client requests"), || async {
            routed_to(&api.http, &balancer, new).await.filter(|&n| n > 0)
        })
        .await;
    }
    phase.end(&load, "3 -> 5 (until both new instances served)");
    load.wait_for(300).await;

    // 5 -> 2: data-3, data-4 and data-5 are drained and stop gracefully.
    let leaving: Vec<u32> = pids(&cluster, &["data-3", "data-4", "data-5"]).await;
    let seq = cluster.latest_event().await;
    let two = topology.clone().replicas("data", 2);
    let phase = Phase::begin(&load);
    cluster.edit(&two.yaml());
    let names = two.instances();
    cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    cluster.wait_routed(&two.backend_instances()).await;
    for name in ["data-3", "data-4", "data-5"] {
        let stopped = cluster.wait_event_after(seq, "stopped", Some(name), "").await;
        assert!(stopped["message"].as_str().unwrap().contains("code 0"), "{name} stopped gracefully: {stopped}");
    }
    eventually(DEADLINE, "the removed instances' processes gone", || async {
        leaving.iter().all(|&pid| gone(pid)).then_some(())
    })
    .await;
    phase.end(&load, "5 -> 2 (until the removed processes were gone)");
    load.wait_for(300).await;

    // A rolling restart through the CLI: both replaced, one at a time, under traffic.
    let before = pids(&cluster, &["data-1", "data-2"]).await;
    let seq = cluster.latest_event().await;
    let phase = Phase::begin(&load);
    let out = cluster.cli(&["restart", "data"]);
    assert!(out.status.success(), "{}", e2e::cluster::stderr(&out));
    assert!(stdout(&out).contains("rolling restart of data"), "{}", stdout(&out));
    cluster.wait_event_after(seq, "rolled", None, "data rolled out").await;
    let after = cluster.wait_ready(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let routed = cluster.wait_routed(&two.backend_instances()).await;
    for (name, old) in ["data-1", "data-2"].iter().zip(&before) {
        let new = after.iter().find(|(n, ..)| n == name).and_then(|(_, pid, _)| *pid).unwrap();
        assert_ne!(new, u64::from(*old), "{name} was replaced");
    }
    phase.end(&load, "orch restart data (until rolled out and routed)");
    load.wait_for(300).await;
    let report = load.stop().await;

    // Exactly the expected instances, and the balancer lists exactly them.
    let mut data: Vec<String> = cluster
        .instances()
        .await
        .iter()
        .filter(|i| i["service"] == "data")
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["data-1", "data-2"]);
    let mut pool: Vec<&str> =
        routed["services"]["data"]["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    pool.sort_unstable();
    assert_eq!(pool, ["data-1", "data-2"], "{routed}");

    let metrics: Value = api.http.get(format!("{balancer}/api/metrics")).send().await.unwrap().json().await.unwrap();
    println!("load: {report}");
    println!(
        "balancer: {} requests, {} errors, {} retries",
        metrics["requests"], metrics["errors"], metrics["retries"]
    );
    report.assert_no_failures();
    let checked = report.read_back(&api).await;
    assert!(checked >= 50, "{report}");
    println!("{checked} acknowledged writes read back");
}

/// Client requests during one change.
struct Phase {
    started: std::time::Instant,
    requests: u64,
    failures: usize,
}

impl Phase {
    fn begin(load: &Load) -> Self {
        let (requests, failures) = load.counts();
        Self { started: std::time::Instant::now(), requests, failures }
    }

    fn end(self, load: &Load, what: &str) {
        let (requests, failures) = load.counts();
        println!(
            "{what}: {:.2} s, {} client requests meanwhile, {} failed",
            self.started.elapsed().as_secs_f64(),
            requests - self.requests,
            failures - self.failures
        );
    }
}

/// The pids of `names`.
async fn pids(cluster: &e2e::cluster::Cluster, names: &[&str]) -> Vec<u32> {
    let mut pids = Vec::new();
    for name in names {
        pids.push(cluster.pid(name).await);
    }
    pids
}

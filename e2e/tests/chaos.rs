//! Chaos under load: for 30 s a random service instance (auth, data or compute) is killed
//! with SIGKILL every 2 s while six clients write data items, submit jobs, verify their
//! token and call the simulated-work endpoints (200 ms each) through the balancer, every
//! write with an `Idempotency-Key`. orch restarts each killed instance on the socket it
//! holds, the balancer retries what is safe to retry, and:
//! - no client request fails (connection errors included);
//! - every acknowledged write reads back afterwards with the acknowledged version and value;
//! - every accepted job completes exactly once, with its expected result, and the queue holds
//!   exactly the jobs accepted (a retried submit queued nothing twice).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use e2e::eventually;
use e2e::topology::Topology;
use e2e::traffic::{Api, Load, Mix};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const CHAOS: Duration = Duration::from_secs(30);
const EVERY: Duration = Duration::from_secs(2);
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_lose_no_request_write_or_job() {
    let topology = Topology::new();
    let cluster = topology.start().await;
    let balancer = cluster.url_of("balancer-1").await;
    let api = Api::new(&balancer).signed_up("chaos", "pass123").await;

    let load = Load::start(&api, "chaos", Mix { jobs: true, work: Some(Duration::from_millis(200)), ..Mix::default() });
    load.wait_for(100).await;

    // Every 2 s, one running service instance, chosen at random, gets SIGKILL.
    let victims = topology.backend_instances();
    let mut kills: Vec<(String, u32)> = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    while started.elapsed() < CHAOS {
        tick.tick().await;
        let running: Vec<(String, u32)> = cluster
            .instances()
            .await
            .iter()
            .filter(|i| victims.iter().any(|v| i["name"] == v.as_str()) && i["status"] == "running")
            .filter_map(|i| Some((i["name"].as_str()?.to_owned(), i["pid"].as_u64()? as u32)))
            .collect();
        let Some((name, pid)) = running.get(rand::random_range(0..running.len().max(1))).cloned() else { continue };
        if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            kills.push((name, pid));
        }
    }
    let chaos_time = started.elapsed();

    // Every killed instance is back under a new pid, and the balancer routes to all of them.
    let killed_pids: BTreeSet<u64> = kills.iter().map(|(_, pid)| u64::from(*pid)).collect();
    eventually(DEADLINE, "every service instance running again", || async {
        let list = cluster.instances().await;
        list.iter()
            .filter(|i| victims.iter().any(|v| i["name"] == v.as_str()))
            .all(|i| {
                i["status"] == "running"
                    && i["ready"] == true
                    && i["pid"].as_u64().is_some_and(|pid| !killed_pids.contains(&pid))
            })
            .then_some(())
    })
    .await;
    cluster.wait_routed(&victims).await;
    let report = load.stop().await;

    // orch saw each kill: an `exited` event by SIGKILL and a restart for every one.
    let mut killed_per_instance: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, _) in &kills {
        *killed_per_instance.entry(name.as_str()).or_default() += 1;
    }
    let instances = cluster.instances().await;
    let restarts: u64 = instances.iter().filter_map(|i| i["restarts"].as_u64()).sum();
    for (name, n) in &killed_per_instance {
        let i = instances.iter().find(|i| i["name"] == *name).unwrap();
        assert!(i["restarts"].as_u64().unwrap() >= *n, "{name} was killed {n} times: {i}");
    }
    let events = cluster.events().await;
    let exits_by_sigkill =
        events.iter().filter(|e| e["type"] == "exited" && e["message"].as_str().unwrap().contains("SIGKILL")).count();
    let liveness_failures = events.iter().filter(|e| e["type"] == "liveness-failed").count();
    assert!(exits_by_sigkill >= kills.len(), "{exits_by_sigkill} exits by SIGKILL for {} kills", kills.len());

    let metrics: Value = api.http.get(format!("{balancer}/api/metrics")).send().await.unwrap().json().await.unwrap();
    println!("chaos: {} kills in {:.1} s: {killed_per_instance:?}", kills.len(), chaos_time.as_secs_f64());
    println!("orch: {restarts} restarts, {exits_by_sigkill} exits by SIGKILL, {liveness_failures} liveness failures");
    println!("load: {report}");
    println!(
        "balancer: {} requests, {} errors, {} retries",
        metrics["requests"], metrics["errors"], metrics["retries"]
    );
    assert!(kills.len() >= 10, "a kill every {EVERY:?} for {CHAOS:?}: {kills:?}");
    assert!(report.requests >= 1000, "{report}");
    report.assert_no_failures();

    // Every acknowledged write reads back as acknowledged.
    let checked = report.read_back(&api).await;
    assert!(checked >= 100, "{report}");

    // Every accepted job completed, once, with its result; the queue holds exactly them.
    let ids: BTreeSet<&str> = report.jobs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), report.jobs.len(), "every accepted submit has its own job");
    assert!(report.jobs.len() >= 50, "{report}");
    let jobs = report.wait_jobs(&api, DEADLINE).await;
    let (status, stats) = api.get("/api/compute/stats").await;
    assert_eq!(status, 200, "{stats}");
    let counts = &stats["counts"];
    assert_eq!(counts["total"].as_u64(), Some(report.jobs.len() as u64), "no job queued twice: {stats}");
    assert_eq!(counts["completed"].as_u64(), Some(report.jobs.len() as u64), "{stats}");
    let by_workers: u64 = stats["workers"].as_array().unwrap().iter().map(|w| w["completed"].as_u64().unwrap()).sum();
    assert_eq!(by_workers, report.jobs.len() as u64, "each job completed by one worker: {stats}");
    println!(
        "jobs: {} accepted, {} completed, {} needed more than one attempt (at most {}); {checked} writes read back",
        report.jobs.len(),
        jobs.completed,
        jobs.retried,
        jobs.max_attempts
    );
}

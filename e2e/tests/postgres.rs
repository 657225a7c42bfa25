//! The cluster on PostgreSQL, run by the real `orch apply` in the shape of
//! `manifests/examples/postgres.yaml` (on automatic ports): orch runs the server as a
//! `command:` service (scripts/pg-serve.sh initdb's it into the data dir), and auth, data and
//! compute depend on it and keep their tables in it (`spec.database`), none in a SQLite file.
//!
//! - The walkthrough: sign up and in, data CRUD and a listing, a direct computation and a job.
//! - Chaos: service instances (compute's workers among them) killed with SIGKILL under load:
//!   no client request fails, every acknowledged write reads back, every job completes once.
//! - The server itself killed with SIGKILL under load: orch restarts it, the services recover
//!   (requests may fail while it is away, as 503s), and nothing acknowledged is lost.
//!
//! PostgreSQL pass only (`make test-pg`, which sets `ORCH_TEST_DATABASE_URL`): the first pass
//! runs on SQLite, and this test would only repeat itself there.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use e2e::eventually;
use e2e::topology::Topology;
use e2e::traffic::{Api, Load, Mix, Report};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_on_postgres_survives_kills_and_a_server_restart() {
    if std::env::var(kit::testing::PG_ENV).is_err() {
        return eprintln!("skipped: PostgreSQL pass only ({} unset)", kit::testing::PG_ENV);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let topology = Topology::new().on_postgres(port);
    let cluster = topology.start().await;
    let balancer = cluster.url_of("balancer-1").await;

    // The walkthrough, through the balancer.
    let api = Api::new(&balancer).signed_up("pgsql", "pass123").await;
    let res = api.register("PgSql", "pass123").await;
    assert_eq!(res.status(), 409, "usernames are unique whatever their case");
    let (status, created) = post(&api, "/api/data", json!({"key": "pg-B", "value": {"n": 1}})).await;
    assert_eq!((status, &created["version"]), (201, &json!(1)), "{created}");
    for key in ["pg-a", "pg-a-b"] {
        assert_eq!(post(&api, "/api/data", json!({"key": key, "value": 1})).await.0, 201);
    }
    let res = api.request(reqwest::Method::PUT, "/api/data/pg-B").header("if-match", "7").json(&json!({"value": 2}));
    assert_eq!(res.send().await.unwrap().status(), 412);
    let (status, page) = api.get("/api/data?prefix=pg-").await;
    let keys: Vec<&str> = page["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!((status.as_u16(), keys), (200, vec!["pg-B", "pg-a", "pg-a-b"]), "byte order");
    let (status, direct) = post(&api, "/api/compute/direct", json!({"operation": "add", "operands": [2, 3]})).await;
    assert_eq!((status, &direct["result"]), (200, &json!(5)), "{direct}");
    let (status, job) = post(&api, "/api/compute/job", json!({"operation": "multiply", "operands": [6, 7]})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["jobId"].as_str().unwrap().to_owned();
    let done = eventually(DEADLINE, "the job completed", || async {
        let (_, job) = api.get(&format!("/api/compute/job/{id}")).await;
        (job["status"] == "completed").then_some(job)
    })
    .await;
    assert_eq!(done["result"], json!(42));
    for file in ["auth.sqlite", "data.sqlite", "compute.sqlite"] {
        assert!(!cluster.path("data").join(file).exists(), "{file}: the state is in PostgreSQL");
    }

    // Chaos: a service instance killed every 1.5 s for 12 s under load.
    let mix = Mix { jobs: true, work: Some(Duration::from_millis(100)), ..Mix::default() };
    let load = Load::start(&api, "kills", mix);
    load.wait_for(50).await;
    let victims = topology.backend_instances();
    let mut killed = BTreeSet::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1500));
    tick.tick().await;
    while started.elapsed() < Duration::from_secs(12) {
        tick.tick().await;
        // Compute's workers every other time: they hold leases on jobs.
        let pick = if killed.len() % 2 == 0 { "compute-" } else { "" };
        let running: Vec<(String, u32)> = cluster
            .instances()
            .await
            .iter()
            .filter(|i| victims.iter().any(|v| i["name"] == v.as_str() && v.starts_with(pick)))
            .filter(|i| i["status"] == "running" && i["ready"] == true)
            .filter_map(|i| Some((i["name"].as_str()?.to_owned(), i["pid"].as_u64()? as u32)))
            .collect();
        let Some((_, pid)) = running.get(rand::random_range(0..running.len().max(1))).cloned() else { continue };
        if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed.insert(u64::from(pid));
        }
    }
    eventually(DEADLINE, "every service instance running again", || async {
        let list = cluster.instances().await;
        list.iter()
            .filter(|i| victims.iter().any(|v| i["name"] == v.as_str()))
            .all(|i| i["ready"] == true && i["pid"].as_u64().is_some_and(|pid| !killed.contains(&pid)))
            .then_some(())
    })
    .await;
    cluster.wait_routed(&victims).await;
    let chaos = load.stop().await;
    println!("kills: {} instances killed; load: {chaos}", killed.len());
    assert!(killed.len() >= 6, "{killed:?}");
    chaos.assert_no_failures();
    check(&api, &chaos).await;

    // The server killed under load: restarted by orch, and the services recover.
    let load = Load::start(&api, "restart", Mix { jobs: true, ..Mix::default() });
    load.wait_for(50).await;
    let old = cluster.kill("postgres-1").await;
    cluster.wait_replaced("postgres-1", old).await;
    let restarted = Instant::now();
    // Served again: requests sent after the server is back succeed.
    eventually(DEADLINE, "requests succeeding after the restart", || async {
        let (status, _) = api.get("/api/data/pg-B").await;
        (status == 200).then_some(())
    })
    .await;
    let back = Instant::now();
    load.wait_for(200).await;
    let report = load.stop().await;
    println!("server restart: back {:.1} s after; load: {report}", (back - restarted).as_secs_f64());
    let late: Vec<_> = report.failures_since(back + Duration::from_secs(2));
    assert!(late.is_empty(), "requests failed once the server was back:\n{}", report.failure_lines(20));
    check(&api, &report).await;

    // Exactly once over all of it: the queue holds exactly the accepted jobs (a retried submit
    // queued nothing twice), all completed, each counted by one worker.
    let accepted = 1 + chaos.jobs.len() + report.jobs.len();
    let (status, stats) = api.get("/api/compute/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["counts"]["total"].as_u64(), Some(accepted as u64), "{stats}");
    assert_eq!(stats["counts"]["completed"].as_u64(), Some(accepted as u64), "{stats}");
    let by_workers: u64 = stats["workers"].as_array().unwrap().iter().map(|w| w["completed"].as_u64().unwrap()).sum();
    assert_eq!(by_workers, accepted as u64, "{stats}");
}

async fn post(api: &Api, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let res = api.request(reqwest::Method::POST, path).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

/// Every acknowledged write reads back, and every accepted job completed once: each with its
/// own job, counted completed by one worker.
async fn check(api: &Api, report: &Report) {
    let read = report.read_back(api).await;
    assert!(read >= 20, "{report}");
    let ids: BTreeSet<&str> = report.jobs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), report.jobs.len(), "every accepted submit has its own job");
    assert!(!report.jobs.is_empty(), "{report}");
    let jobs = report.wait_jobs(api, DEADLINE).await;
    assert_eq!(jobs.completed, report.jobs.len());
    println!("{read} writes read back; jobs: {jobs:?}");
}

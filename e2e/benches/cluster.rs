//! The cluster benchmark (`make bench`): the figures that matter, each measured in this one
//! run on the release `orch` binary (`ORCH_BIN`, else `target/release/orch`) and the full
//! 12-process topology (`e2e::topology`, automatic ports), printed as one table with each
//! target beside its figure, and written to `target/bench/summary.json` (and `summary.md`).
//!
//! The steps, one after another (the 2-core machine is shared by the cluster, the load
//! generator and nginx, so nothing overlaps and every load generator is small: one wrk
//! thread, or a few client tasks):
//! 1. cold start, three times: `orch apply` → all 12 instances ready (orch's
//!    `/api/cluster`) → every backend instance in the balancer's rotation and each route
//!    answering; the third cluster stays for the rest;
//! 2. memory at rest: VmRSS and PSS summed over the 12 instances and orch;
//! 3. the cluster's balancer against nginx in front of the same data instances
//!    (`e2e::nginx::compare`); then the balancer's load-shape matrix against nginx and
//!    HAProxy (`matrix`: 8/64 connections, wrk -t1/-t2, dynamic and static discovery, tiny
//!    and ~4 KB answers);
//! 4. through the balancer with a JWT: data reads and writes, logins, direct compute
//!    (wrk), jobs (submitted by a few tasks, then polled until all completed); then job
//!    pickup latency (`pickup`): submit → claimed, one job at a time on the idle queue;
//! 5. memory after the load;
//! 6. data writes still accepted (a write cancelled by its client at the end of a wrk run
//!    must not leave the shared database locked; if it did, data's instances are killed and
//!    restarted to go on);
//! 7. durability: data rolled to `SQLITE_SYNCHRONOUS=NORMAL` through the manifest, the
//!    writes of step 4 (at the default, `FULL`) measured again, then rolled back;
//! 8. saving a 3 → 5 replicas edit of data → both new instances answering through the
//!    balancer (five times, back to 3 in between);
//! 9. kill -9 of nine backend instances in turn under light client traffic → each answers
//!    `/health` again on its port from a new process; failed client requests counted;
//! 10. a WebSocket client on the detector's dashboard socket: kill -9 → the first message
//!     that shows the death;
//! 11. SIGSTOP (a hung instance) → orch reports a new pid ready;
//! 12. slowloris: requests answered by the registry and by the balancer (wrk) while
//!     `slowloris::SLOW_CONNECTIONS` connections each hold a partial request open against it, beside
//!     the same wrk run without them;
//! 13. `orch verify`'s checker on a generated 10 000-operation history (no cluster needed);
//! 14. growth (`growth`): clusters of their own with the default settings, nothing asked of
//!     them: the 12 processes, then a registry, a balancer and 10, 100 (and, asked for, 1000)
//!     compute instances: cold start, idle CPU of orch and of the whole cluster, PSS per
//!     instance;
//! 15. autoscale (`policies`): a small cluster of its own, Python's http.server behind a
//!     balancer with `autoscale: { min: 1, max: 3 }`: load start → first scale-up, load end →
//!     back to min, failed requests meanwhile;
//! 16. rollback (`policies`): a small cluster of its own, a rollout whose command exits at
//!     once → orch's `rolled-back` event;
//! 17. postgres: a second cluster, on PostgreSQL (`manifests/examples/postgres.yaml`'s shape),
//!     and the load rows of step 4 on it: data reads and writes, logins, direct compute,
//!     jobs, job pickup, each beside its SQLite row.
//!
//! `BENCH_SECS` (default 5) sets the length of each wrk run. `BENCH_ONLY` runs only the steps
//! it names, comma-separated, from [`STEPS`] (`BENCH_ONLY=durability,slowloris`); the
//! cluster is then started once, without the cold-start rows.
//!
//! This file holds the steps' list, the table's order and the dispatch; each step's code is a
//! module under `cluster/` (`startup`, `versus`, `matrix`, `load`, `pickup`, `recovery`,
//! `slowloris`, `checker`, `growth`, `policies`), with what they share in `support`. The rows,
//! table and `summary.json` are the `bench` crate's; the waits are `e2e`'s.

use std::cell::Cell;
use std::time::{Duration, Instant};

use bench::report::{self, Row};
use bench::stats::round2;
use e2e::nginx;
use e2e::topology::{BACKENDS, Topology};
use serde_json::{Map, Value};

// The crate root is this file: its modules live in cluster/ beside it, one step (or a few of
// one kind) each.
#[path = "cluster/checker.rs"]
mod checker;
#[path = "cluster/growth.rs"]
mod growth;
#[path = "cluster/load.rs"]
mod load;
#[path = "cluster/matrix.rs"]
mod matrix;
#[path = "cluster/pickup.rs"]
mod pickup;
#[path = "cluster/policies.rs"]
mod policies;
#[path = "cluster/recovery.rs"]
mod recovery;
#[path = "cluster/slowloris.rs"]
mod slowloris;
#[path = "cluster/startup.rs"]
mod startup;
#[path = "cluster/support.rs"]
mod support;
#[path = "cluster/versus.rs"]
mod versus;

// The helpers the first step modules took from `super` (the others name `super::support`).
use support::{TIGHT, data_behind_balancer, get_json, submit_job, until};

/// The steps by the names `BENCH_ONLY` takes, in the order they run.
/// (`memory` is both memory steps.)
const STEPS: &[&str] = &[
    "coldstart",
    "memory",
    "nginx",
    "matrix",
    "load",
    "pickup",
    "afterload",
    "durability",
    "scale",
    "kills",
    "dashboard",
    "hangs",
    "slowloris",
    "checker",
    "growth",
    "autoscale",
    "rollback",
    "postgres",
];

fn main() {
    let started = Instant::now();
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5).max(1);
    assert!(nginx::ensure_tools(), "nginx and wrk are needed (scripts/bench.sh installs them with apt-get)");
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY").ok().filter(|s| !s.trim().is_empty()).map(|s| {
        let names: Vec<String> = s.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
        for name in &names {
            assert!(STEPS.contains(&name.as_str()), "BENCH_ONLY: no step {name:?}; the steps are {}", STEPS.join(","));
        }
        names
    });
    let wants = |step: &str| only.as_ref().is_none_or(|names| names.iter().any(|n| n == step));
    // The cluster is started in any case; memory is measured twice; postgres starts a second
    // cluster, then runs the load step (and the pickup step) on it.
    let steps = 1
        + STEPS[1..].iter().filter(|s| wants(s)).count()
        + usize::from(wants("memory"))
        + usize::from(wants("postgres"))
        + usize::from(wants("postgres") && wants("pickup"));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let mut bench = Bench {
        progress: Progress { started, step: Cell::new(0), steps },
        only,
        rows: Vec::new(),
        secs,
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("a client"),
        // a new connection for every request: what answers is whatever listens right now
        fresh: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client"),
        run: format!("b{}", std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_millis()),
    };
    let machine = report::machine();
    println!(
        "orch cluster benchmark: {} × {} cores, {} RAM, Linux {}, commit {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["memory"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["commit"].as_str().unwrap_or("?"),
    );
    println!(
        "orch binary: {}; load average before the start: {} (other work on the machine disturbs the figures)",
        e2e::orch_bin().display(),
        machine["loadAverage"].as_str().unwrap_or("?")
    );
    runtime.block_on(bench.run_all());
    drop(runtime);
    bench.finish(&machine, started.elapsed());
}

/// Progress lines: the step, and the time since the start.
struct Progress {
    started: Instant,
    step: Cell<usize>,
    steps: usize,
}

impl Progress {
    fn step(&self, what: &str) {
        self.step.set(self.step.get() + 1);
        println!("[{:>6.1}s] step {}/{}: {what}", self.started.elapsed().as_secs_f64(), self.step.get(), self.steps);
    }

    fn note(&self, what: &str) {
        println!("[{:>6.1}s]   {what}", self.started.elapsed().as_secs_f64());
    }
}

struct Bench {
    progress: Progress,
    rows: Vec<Row>,
    secs: u64,
    http: reqwest::Client,
    fresh: reqwest::Client,
    /// Unique to this run: user names and keys.
    run: String,
    /// `BENCH_ONLY`: the steps to run (all when unset).
    only: Option<Vec<String>>,
}

/// The order of the table: the list.
const ORDER: &[&str] = &[
    "coldStartReady",
    "coldStartRoutable",
    "killToAnswer",
    "killFailedRequests",
    "hungReplaced",
    "dashboardDeath",
    "scaleUpServing",
    "balancerThroughput",
    "nginxThroughput",
    "balancerNginxRatio",
    "balancerAddedP99",
    "lbDynTinyC8T1",
    "lbDynTinyC8T2",
    "lbDynTinyC64T1",
    "lbDynTinyC64T2",
    "lbStaticTinyC8T1",
    "lbStaticTinyC8T2",
    "lbStaticTinyC64T1",
    "lbStaticTinyC64T2",
    "lbStatic4kC8T1",
    "lbStatic4kC8T2",
    "lbStatic4kC64T1",
    "lbStatic4kC64T2",
    "lbMatrixWorstP99",
    "dataReads",
    "dataWrites",
    "dataWritesP99",
    "dataWritesNormal",
    "logins",
    "loginsP99",
    "computeDirect",
    "jobs",
    "jobPickup",
    "dataReadsPg",
    "dataWritesPg",
    "loginsPg",
    "computeDirectPg",
    "jobsPg",
    "jobPickupPg",
    "autoscaleUp",
    "autoscaleDown",
    "autoscaleFailedRequests",
    "rollbackComplete",
    "writesAfterLoad",
    "slowlorisRegistry",
    "slowlorisBalancer",
    "memoryRssAtRest",
    "memoryPssAtRest",
    "memoryRssAfterLoad",
    "memoryPssAfterLoad",
    "checkerOpsPerSecond",
    "growthColdStartCluster",
    "growthIdleCpuCluster",
    "growthIdleCpuOrchCluster",
    "growthPssPerInstanceCluster",
    "growthColdStartN10",
    "growthIdleCpuN10",
    "growthIdleCpuOrchN10",
    "growthPssPerInstanceN10",
    "growthColdStartN100",
    "growthIdleCpuN100",
    "growthIdleCpuOrchN100",
    "growthPssPerInstanceN100",
    "growthColdStartN1000",
    "growthIdleCpuN1000",
    "growthIdleCpuOrchN1000",
    "growthPssPerInstanceN1000",
];

impl Bench {
    fn topology() -> Topology {
        let mut t = Topology::new().name("bench");
        for service in BACKENDS {
            t = t.field(service, "restart", "{ resetAfterMs: 100 }");
        }
        t
    }

    /// Whether `BENCH_ONLY` lets `step` (one of [`STEPS`]) run.
    fn wants(&self, step: &str) -> bool {
        self.only.as_ref().is_none_or(|names| names.iter().any(|n| n == step))
    }

    async fn run_all(&mut self) {
        let topology = Self::topology();
        let cluster = if self.wants("coldstart") {
            self.cold_start(&topology).await
        } else {
            self.progress.step("starting the cluster");
            topology.start().await.poll_every(TIGHT)
        };
        if self.wants("memory") {
            self.progress.step("memory at rest");
            // At rest: a moment after startup, nothing asked of it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.memory(&cluster, "AtRest", "at rest after startup").await;
        }
        if self.wants("nginx") {
            self.versus_nginx(&cluster).await;
        }
        if self.wants("matrix") {
            self.matrix(&cluster).await;
        }
        let api = if self.wants("load") { self.load_rows(&cluster).await } else { self.sign_in(&cluster).await };
        if self.wants("pickup") {
            // Idle again: the load step waited for its jobs to complete.
            self.pickup(&api).await;
        }
        if self.wants("memory") {
            self.progress.step("memory after the load");
            self.memory(&cluster, "AfterLoad", "after the load rows").await;
        }
        if self.wants("afterload") {
            self.writes_after_load(&cluster, &api).await;
        }
        if self.wants("durability") {
            self.durability(&cluster, &topology, &api).await;
        }
        if self.wants("scale") {
            self.scale_up(&cluster, &topology).await;
        }
        if self.wants("kills") {
            self.kills(&cluster, &api).await;
        }
        if self.wants("dashboard") {
            self.dashboard(&cluster).await;
        }
        if self.wants("hangs") {
            self.hangs(&cluster).await;
        }
        if self.wants("slowloris") {
            self.slowloris(&cluster).await;
        }
        if self.wants("checker") {
            self.checker();
        }
        self.progress.note("stopping the cluster");
        tokio::task::block_in_place(|| drop(cluster));
        if self.wants("growth") {
            self.growth().await;
        }
        if self.wants("autoscale") {
            self.autoscale().await;
        }
        if self.wants("rollback") {
            self.rollback().await;
        }
        if self.wants("postgres") {
            self.postgres().await;
        }
    }

    fn finish(mut self, machine: &Value, took: Duration) {
        report::sort(&mut self.rows, ORDER);
        let took_text = format!("{}:{:02}", took.as_secs() / 60, took.as_secs() % 60);
        let header = format!(
            "orch benchmark, {} ({} × {} cores, {} RAM, Linux {}; load average before {}), commit {}; measured in one \
             run of {took_text} min",
            machine["date"].as_str().unwrap_or("?"),
            machine["cpu"].as_str().unwrap_or("?"),
            machine["cores"],
            machine["memory"].as_str().unwrap_or("?"),
            machine["kernel"].as_str().unwrap_or("?"),
            machine["loadAverage"].as_str().unwrap_or("?"),
            machine["commit"].as_str().unwrap_or("?"),
        );

        let mut fields = Map::new();
        fields.insert("durationSeconds".to_owned(), round2(took.as_secs_f64()).into());
        fields.insert("orchBinary".to_owned(), e2e::orch_bin().display().to_string().into());
        fields.insert("wrkSeconds".to_owned(), self.secs.into());
        let summary = report::summary(machine, &self.rows, fields);
        let json_path = report::write(&summary, &report::markdown(&header, &self.rows));
        print!("{}", report::text(&header, &self.rows));
        println!("\nwritten: {} (and summary.md beside it)", json_path.display());
    }
}

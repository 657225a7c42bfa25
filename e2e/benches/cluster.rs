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
//!     [`SLOW_CONNECTIONS`] connections each hold a partial request open against it, beside
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

use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::report::{self, Row, Target};
use bench::stats::{mb, ms, round2, runs, show_count, show_ms, show_spread, spread};
use e2e::cluster::{Cluster, gone};
use e2e::eventually_every;
use e2e::nginx::{self, Nginx, Setup};
use e2e::procfs::{self, Memory};
use e2e::topology::{BACKENDS, Topology};
use e2e::traffic::{Api, Load, Mix};
use e2e::wrk::{Run, Script, Wrk};
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

// The crate root is this file: its modules live in cluster/ beside it.
#[path = "cluster/growth.rs"]
mod growth;
#[path = "cluster/matrix.rs"]
mod matrix;
#[path = "cluster/pickup.rs"]
mod pickup;
#[path = "cluster/policies.rs"]
mod policies;

/// How long any one wait may take before the benchmark gives up.
const DEADLINE: Duration = Duration::from_secs(30);
const COLD_STARTS: usize = 3;
const EDITS: usize = 5;
/// The instances killed with SIGKILL, in turn, each once.
const KILLS: [&str; 9] =
    ["auth-1", "data-1", "compute-1", "auth-2", "data-2", "compute-2", "auth-3", "data-3", "compute-3"];
const DASHBOARD_KILLS: [&str; 5] = ["data-2", "compute-3", "auth-2", "data-3", "compute-1"];
const HANGS: [&str; 3] = ["data-1", "compute-2", "auth-3"];
const JOBS: usize = 1000;
/// Registered users whose logins are measured.
const USERS: usize = 4;
const PASSWORD: &str = "bench-password";
/// A healthy stretch longer than the manifest's `resetAfterMs` (100), so every kill is a
/// first crash, restarted at once rather than after a backoff.
const HEALTHY_STRETCH: Duration = Duration::from_millis(300);
/// Connections each holding a partial request, in the slowloris step.
const SLOW_CONNECTIONS: usize = 2000;
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

/// The order of the table: the issue's list.
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
    "dataWritesNormal",
    "logins",
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

// ------------------------------------------------------------------------ formatting

fn wrk_errors(run: &Run) -> String {
    if run.errors() == 0 {
        String::new()
    } else {
        format!("; {} non-2xx, {} socket errors", run.non_2xx, run.socket_errors)
    }
}

/// `21 350 writes/s, p50 1.20 ms, p99 9.10 ms`.
fn wrk_rate(r: &Run, what: &str) -> String {
    format!("{} {what}/s, p50 {}, p99 {}", show_count(r.ok_per_second()), show_ms(r.p50_ms), show_ms(r.p99_ms))
}

/// The row of a wrk run: answers with a 2xx per second, p50 and p99.
fn wrk_row(id: &'static str, metric: &str, r: &Run, unit: &'static str, what: &str, how: String) -> Row {
    Row::new(id, metric, r.ok_per_second(), unit)
        .shown(wrk_rate(r, what))
        .how(format!("{how}{}", wrk_errors(r)))
        .detail("p50Ms", r.p50_ms)
        .detail("p99Ms", r.p99_ms)
        .detail("requests", r.requests)
        .detail("errors", r.errors())
}

// ------------------------------------------------------------------------ waiting

/// The pause between two checks in the waits whose end is timed.
const TIGHT: Duration = Duration::from_millis(1);

/// Polls `f` every `every` until it returns `Some`; panics naming `what` after [`DEADLINE`].
async fn until<T, F, Fut>(every: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(every, DEADLINE, what, f).await
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// `(pid, port)` of `name` once orch reports it running and ready.
async fn ready_instance(cluster: &Cluster, name: &str) -> (u32, u16) {
    let i = cluster.wait_instance_ready(name).await;
    let number = |field: &str| i[field].as_u64().unwrap_or_else(|| panic!("{name} has no {field}: {i}"));
    (number("pid") as u32, number("port") as u16)
}

/// The addresses of data-1..3, and the pid and address of the cluster's balancer, once
/// each is ready.
async fn data_behind_balancer(cluster: &Cluster) -> (Vec<SocketAddr>, u32, SocketAddr) {
    let mut upstreams = Vec::new();
    for name in ["data-1", "data-2", "data-3"] {
        let (_, port) = ready_instance(cluster, name).await;
        upstreams.push(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let (pid, port) = ready_instance(cluster, "balancer-1").await;
    (upstreams, pid, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The instance that answered through the balancer.
fn upstream_of(res: &reqwest::Response) -> String {
    res.headers().get("x-upstream-instance").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned()
}

/// Submits an `add` job through `api`; its id once accepted (202).
async fn submit_job(api: &Api, n: usize) -> String {
    let res = api
        .request(Method::POST, "/api/compute/job")
        .json(&json!({"operation": "add", "operands": [n, 1]}))
        .send()
        .await
        .expect("submitting a job: no answer");
    assert_eq!(res.status(), 202, "submitting a job: {}", res.text().await.unwrap_or_default());
    let accepted: Value = res.json().await.expect("the submit's answer as JSON");
    accepted["jobId"].as_str().unwrap_or_else(|| panic!("no jobId in {accepted}")).to_owned()
}

/// Nanoseconds of the clock: a suffix that differs between calls.
fn rand_suffix() -> u128 {
    std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos()
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap_or_else(|e| panic!("kill -9 {pid}: {e}"));
}

// ------------------------------------------------------------------------ the steps

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

    /// The load rows again on a second cluster, on PostgreSQL in the shape of
    /// `manifests/examples/postgres.yaml` (orch runs the server): the same data reads and
    /// writes, logins, direct compute and jobs, as rows whose ids end in `Pg`, sorted beside
    /// the SQLite ones.
    async fn postgres(&mut self) {
        self.progress.step("a second cluster, on PostgreSQL (orch runs the server)");
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("a port").port();
        let cluster = Self::topology().name("bench-pg").on_postgres(port).start().await.poll_every(TIGHT);
        let (first, run) = (self.rows.len(), self.run.clone());
        self.run = format!("{run}pg");
        let api = self.load_rows(&cluster).await;
        if self.wants("pickup") {
            self.pickup(&api).await;
        }
        self.run = run;
        for row in &mut self.rows[first..] {
            // Leaked: a handful of ids, once per run.
            row.id = Box::leak(format!("{}Pg", row.id).into_boxed_str());
            let metric = row.metric.split(" (").next().unwrap_or_default().to_owned();
            row.metric = format!("{metric}, on PostgreSQL");
            row.how = row.how.replace("one SQLite transaction", "one PostgreSQL transaction");
            row.how =
                row.how.replace("; every commit synced to disk before its 201", "; PostgreSQL's defaults (fsync on)");
        }
        self.progress.note("stopping the PostgreSQL cluster");
        tokio::task::block_in_place(|| drop(cluster));
    }

    /// `orch verify`'s checker alone (no cluster): operations checked per second on a
    /// generated linearizable history of 10 000 register operations (5 keys, 8 clients, one
    /// in a hundred writes of unknown outcome), the median of three runs of the binary.
    fn checker(&mut self) {
        self.progress.step("orch verify's checker on a 10 000-operation history");
        let mut rates: Vec<f64> = (0..3)
            .map(|_| {
                let out = std::process::Command::new(e2e::orch_bin())
                    .args(["verify", "--bench-checker", "10000"])
                    .output()
                    .expect("running orch verify --bench-checker");
                let v: Value = serde_json::from_slice(&out.stdout).expect("the checker's figures as JSON");
                assert_eq!(v["verdict"], "valid", "{v}");
                v["opsPerSecond"].as_f64().unwrap_or(f64::NAN)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[1];
        self.rows.push(
            Row::new("checkerOpsPerSecond", "orch verify: operations checked per second", median, "ops/s")
                .shown(format!("{} ops/s", show_count(median)))
                .how("orch verify --bench-checker 10000: a generated linearizable 10 000-operation register history (5 keys, 8 clients), median of 3")
                .detail("runs", rates),
        );
    }

    /// Step 1: `orch apply` → ready → routable, [`COLD_STARTS`] times; returns the last cluster.
    async fn cold_start(&mut self, topology: &Topology) -> Cluster {
        self.progress.step(&format!("cold start × {COLD_STARTS}: orch apply -> 12 ready -> routable"));
        let backends = topology.backend_instances();
        let total = topology.instances().len() as u64;
        let (mut ready, mut routable) = (Vec::new(), Vec::new());
        let mut kept = None;
        for n in 1..=COLD_STARTS {
            let t0 = Instant::now();
            let cluster = Cluster::start(&topology.yaml()).await.poll_every(TIGHT);
            let url = format!("{}/api/cluster", cluster.url);
            until(TIGHT, "every instance ready", || async {
                let c = get_json(&self.http, &url).await?;
                let ready: u64 = c["services"].as_array()?.iter().filter_map(|s| s["ready"].as_u64()).sum();
                (ready == total).then_some(())
            })
            .await;
            ready.push(ms(t0.elapsed()));
            cluster.wait_routed(&backends).await;
            let balancer = cluster.url_of("balancer-1").await;
            until(TIGHT, "each route answering through the balancer", || async {
                for prefix in ["/api/auth", "/api/data", "/api/compute"] {
                    let res = self.http.get(format!("{balancer}{prefix}/health")).send().await.ok()?;
                    res.status().is_success().then_some(())?;
                }
                Some(())
            })
            .await;
            routable.push(ms(t0.elapsed()));
            self.progress.note(&format!(
                "run {n}: ready {}, routable {}",
                show_ms(ready[n - 1]),
                show_ms(routable[n - 1])
            ));
            if n == COLD_STARTS {
                kept = Some(cluster);
            } else {
                tokio::task::block_in_place(|| drop(cluster));
            }
        }
        let how = format!(
            "{COLD_STARTS} cold starts, each with a new data dir (the binary in the page cache): from running `orch \
             apply` (release) to orch's /api/cluster counting 12 ready instances, polled every 1 ms"
        );
        self.rows.push(
            Row::new("coldStartReady", "cold start: orch apply -> all 12 instances ready", spread(&ready).0, "ms")
                .shown(show_spread(&ready))
                .how(how)
                .detail("runsMs", runs(&ready)),
        );
        self.rows.push(
            Row::new("coldStartRoutable", "cold start: orch apply -> 12 ready and routable", spread(&routable).0, "ms")
                .shown(show_spread(&routable))
                .target(Target::below(2000.0, "< 2 s"))
                .how(
                    "the same starts, until the balancer's /status lists all 9 backend instances healthy and \
                 /api/auth, /api/data, /api/compute health answer 200 through it",
                )
                .detail("runsMs", runs(&routable)),
        );
        kept.expect("at least one cold start")
    }

    /// Steps 2 and 5: VmRSS and PSS of the 12 instances and orch.
    async fn memory(&mut self, cluster: &Cluster, id: &str, when: &str) {
        let instances = cluster.instances().await;
        let mut per_instance = Map::new();
        let mut sum = Memory::default();
        for i in &instances {
            let name = i["name"].as_str().unwrap_or("?");
            let pid = i["pid"].as_u64().unwrap_or_else(|| panic!("{name} has no pid")) as u32;
            let m = procfs::memory(pid).unwrap_or_else(|| panic!("{name} ({pid}) is gone"));
            per_instance.insert(
                name.to_owned(),
                json!({"rssKiB": m.rss_kib, "pssKiB": m.pss_kib, "privateKiB": m.private_kib}),
            );
            sum = sum + m;
        }
        let orch = procfs::memory(cluster.orch.id()).expect("orch runs");
        let total = sum + orch;
        self.progress.note(&format!(
            "{} instances: VmRSS {:.1} MB, PSS {:.1} MB; orch VmRSS {:.1} MB, PSS {:.1} MB",
            instances.len(),
            mb(sum.rss_kib),
            mb(sum.pss_kib),
            mb(orch.rss_kib),
            mb(orch.pss_kib)
        ));
        let (rss_id, pss_id) = match id {
            "AtRest" => ("memoryRssAtRest", "memoryPssAtRest"),
            _ => ("memoryRssAfterLoad", "memoryPssAfterLoad"),
        };
        let details = |row: Row| {
            row.detail("instancesRssKiB", sum.rss_kib)
                .detail("instancesPssKiB", sum.pss_kib)
                .detail("orchRssKiB", orch.rss_kib)
                .detail("orchPssKiB", orch.pss_kib)
                .detail("instancesPrivateKiB", sum.private_kib)
                .detail("orchPrivateKiB", orch.private_kib)
                .detail("perInstance", per_instance.clone())
        };
        self.rows.push(details(
            Row::new(rss_id, format!("memory {when}: sum of VmRSS, 12 instances + orch"), mb(total.rss_kib), "MB")
                .shown(format!("{:.1} MB", mb(total.rss_kib)))
                .target(Target::below(100.0, "< 100 MB"))
                .how(format!(
                    "VmRSS from /proc/PID/status of the 12 instances ({:.1} MB) plus orch ({:.1} MB): the pages of \
                     the one orch binary all 13 run are counted once per process, so this overstates the total; \
                     private to each (freed on its exit): {:.1} MB in all",
                    mb(sum.rss_kib),
                    mb(orch.rss_kib),
                    mb(total.private_kib)
                )),
        ));
        self.rows.push(details(
            Row::new(pss_id, format!("memory {when}: sum of PSS, 12 instances + orch"), mb(total.pss_kib), "MB")
                .shown(format!("{:.1} MB", mb(total.pss_kib)))
                .target(Target::below(100.0, "< 100 MB"))
                .how(format!(
                    "Pss from /proc/PID/smaps_rollup (shared pages divided among the processes sharing them: the \
                     honest total): 12 instances {:.1} MB plus orch {:.1} MB",
                    mb(sum.pss_kib),
                    mb(orch.pss_kib)
                )),
        ));
    }

    /// Step 3: the cluster's balancer and an nginx in front of the same data instances.
    async fn versus_nginx(&mut self, cluster: &Cluster) {
        self.progress.step("balancer vs nginx in front of data-1..3 (wrk -t1)");
        let (upstreams, balancer_pid, balancer) = data_behind_balancer(cluster).await;
        let progress = &self.progress;
        let secs = self.secs;
        let c = tokio::task::block_in_place(|| {
            let nginx = Nginx::start(&upstreams, 2);
            nginx::compare(&Setup {
                balancer,
                balancer_cpu: &|| procfs::cpu_ticks(balancer_pid),
                nginx: &nginx,
                direct: upstreams[0],
                path: "/api/data/health",
                connections: 64,
                secs,
                rounds: 3,
                progress: &|what| progress.note(what),
            })
        });
        let throughput = |r: &Run| {
            format!("{} req/s, p50 {}, p99 {}", show_count(r.per_second), show_ms(r.p50_ms), show_ms(r.p99_ms))
        };
        let rounds = format!(
            "wrk -t1 -c64 keep-alive, GET /api/data/health (answered by data-1..3) for {secs} s; median of 3 rounds \
             alternating balancer and nginx"
        );
        let row = |id: &'static str, label: &'static str, round: &nginx::Round, setup: &str| {
            Row::new(id, label, round.run.per_second, "req/s")
                .shown(throughput(&round.run))
                .how(format!("{rounds}; {setup}, {:.1} us CPU per request{}", round.cpu_us, wrk_errors(&round.run)))
                .detail("p50Ms", round.run.p50_ms)
                .detail("p99Ms", round.run.p99_ms)
                .detail("cpuUsPerRequest", round2(round.cpu_us))
                .detail("errors", round.run.errors())
        };
        self.rows.push(row(
            "balancerThroughput",
            "balancer throughput, 64 connections",
            &c.balancer,
            "the cluster's balancer (BALANCER_WORKERS = 2 cores)",
        ));
        self.rows.push(row(
            "nginxThroughput",
            "nginx throughput, same backends and load",
            &c.nginx,
            "nginx worker_processes 2, upstream round-robin over data-1..3 with keepalive 64",
        ));
        self.rows.push(
            Row::new("balancerNginxRatio", "throughput ratio balancer / nginx", c.ratio(), "x")
                .shown(format!("{:.2}", c.ratio()))
                .target(Target::at_least(1.0, ">= 1.00"))
                .how("the two rows above"),
        );
        let (conns, pause) = c.moderate;
        self.rows.push(
            Row::new("balancerAddedP99", "balancer's added p99 at moderate load", c.balancer_added_p99_ms(), "ms")
                .shown(format!(
                    "{:+.2} ms (p99 {} vs {} direct)",
                    c.balancer_added_p99_ms(),
                    show_ms(c.balancer_moderate.p99_ms),
                    show_ms(c.direct_moderate.p99_ms)
                ))
                .target(Target::below(1.0, "< 1 ms"))
                .how(format!(
                    "wrk -t1, {conns} connections each pausing {pause} ms between requests, {} s each: p99 through the \
                     balancer ({:.0} req/s) minus p99 straight to data-1; nginx adds {:+.2} ms (p99 {})",
                    secs.min(5),
                    c.balancer_moderate.per_second,
                    c.nginx_added_p99_ms(),
                    show_ms(c.nginx_moderate.p99_ms)
                ))
                .detail("directP99Ms", c.direct_moderate.p99_ms)
                .detail("balancerP99Ms", c.balancer_moderate.p99_ms)
                .detail("nginxP99Ms", c.nginx_moderate.p99_ms),
        );
    }

    /// Step 4: data reads and writes, logins, direct compute, jobs, through the balancer.
    /// Returns a signed-in client for the later steps.
    async fn load_rows(&mut self, cluster: &Cluster) -> Api {
        self.progress.step("load through the balancer: data reads, writes, logins, compute, jobs");
        let api = self.sign_in(cluster).await;
        let (base, run) = (api.base.clone(), self.run.clone());
        let bearer = format!("Bearer {}", api.token.as_deref().unwrap_or_default());
        let dir = tempfile::tempdir().expect("a temp dir for wrk scripts");
        let secs = Duration::from_secs(self.secs);

        // Reads: 100 keys written first.
        for n in 0..100 {
            let res = api
                .request(Method::POST, "/api/data")
                .json(&json!({"key": format!("{run}-r-{n}"), "value": {"n": n, "text": "a value to read back"}}))
                .send()
                .await
                .expect("creating a key to read");
            assert_eq!(res.status(), 201, "creating a key to read: {}", res.text().await.unwrap_or_default());
        }
        let wrk = |name: &str, script: Script, connections: u32| {
            let path = script.write(dir.path(), name);
            tokio::task::block_in_place(|| Wrk::new(&base).connections(connections).duration(secs).script(&path).run())
        };
        let row = wrk_row;

        self.progress.note("data reads");
        let reads = wrk(
            "reads",
            Script::new("GET", &format!("/api/data/{run}-r-{{n}}")).header("authorization", &bearer).cycle(100),
            16,
        );
        self.rows.push(row(
            "dataReads",
            "data reads through the balancer",
            &reads,
            "reads/s",
            "reads",
            format!("wrk -t1 -c16 for {} s: GET /api/data/:key over 100 keys, JWT checked on each", self.secs),
        ));

        self.progress.note("data writes");
        let writes = self.data_writes(&api, "w");
        self.rows.push(self.writes_row("FULL", &writes));

        self.progress.note("logins");
        // The CPU each login costs auth and the balancer: what says whether a hash runs at
        // its isolated speed (`cargo bench -p auth`) inside the cluster.
        let pids = |prefix: &str, list: &[Value]| -> Vec<u32> {
            let named = |i: &&Value| i["name"].as_str().is_some_and(|n| n.starts_with(prefix));
            list.iter().filter(named).filter_map(|i| i["pid"].as_u64()).map(|p| p as u32).collect()
        };
        let instances = cluster.instances().await;
        let (auth_pids, balancer_pids) = (pids("auth-", &instances), pids("balancer", &instances));
        let ticks = |pids: &[u32]| pids.iter().map(|&p| procfs::cpu_ticks(p)).sum::<u64>();
        let before = (ticks(&auth_pids), ticks(&balancer_pids));
        let logins = wrk(
            "logins",
            Script::new("POST", "/api/auth/login")
                .body(&format!(r#"{{"username":"{run}-u{{n}}","password":"{PASSWORD}"}}"#))
                .cycle(USERS as u64),
            4,
        );
        let ok = logins.requests.saturating_sub(logins.non_2xx).max(1) as f64;
        let per_login = |ticks: u64| round2(ticks as f64 * 1000.0 / procfs::TICKS_PER_SECOND as f64 / ok);
        let auth_cpu = per_login(ticks(&auth_pids).saturating_sub(before.0));
        let balancer_cpu = per_login(ticks(&balancer_pids).saturating_sub(before.1));
        self.rows.push(
            row(
                "logins",
                "logins through the balancer",
                &logins,
                "logins/s",
                "logins",
                format!(
                    "wrk -t1 -c4 for {} s: POST /api/auth/login of {USERS} users in turn (4 logins in flight: at \
                     ~12 ms of CPU per argon2id verification on 2 cores, enough to keep both busy), spread over \
                     auth-1..3; CPU per login: auth {auth_cpu} ms, balancer {balancer_cpu} ms",
                    self.secs
                ),
            )
            .detail("authCpuMsPerLogin", auth_cpu)
            .detail("balancerCpuMsPerLogin", balancer_cpu),
        );

        self.progress.note("direct compute");
        let compute = wrk(
            "compute",
            Script::new("POST", "/api/compute/direct")
                .header("authorization", &bearer)
                .body(r#"{"operation":"add","operands":[{n},3]}"#),
            16,
        );
        self.rows.push(row(
            "computeDirect",
            "direct compute through the balancer",
            &compute,
            "ops/s",
            "ops",
            format!("wrk -t1 -c16 for {} s: POST /api/compute/direct add, JWT checked", self.secs),
        ));

        self.progress.note(&format!("{JOBS} jobs"));
        self.jobs(&api).await;
        api
    }

    /// Registers the bench users through the balancer and signs the first in.
    async fn sign_in(&self, cluster: &Cluster) -> Api {
        let anonymous = Api::new(&cluster.url_of("balancer-1").await);
        for n in 0..USERS {
            let res = anonymous.register(&format!("{}-u{n}", self.run), PASSWORD).await;
            assert_eq!(res.status(), 201, "registering a bench user: {}", res.text().await.unwrap_or_default());
        }
        let token = anonymous.login(&format!("{}-u0", self.run), PASSWORD).await;
        anonymous.with_token(Some(token))
    }

    /// wrk -c16 of `POST /api/data` through the balancer, a new key each (`<run>-<tag>-<n>`).
    fn data_writes(&self, api: &Api, tag: &str) -> Run {
        let dir = tempfile::tempdir().expect("a temp dir for wrk scripts");
        let body = format!(r#"{{"key":"{}-{tag}-{{n}}","value":{{"n":{{n}},"text":"a new value"}}}}"#, self.run);
        let script = Script::new("POST", "/api/data")
            .header("authorization", &format!("Bearer {}", api.token.as_deref().unwrap_or_default()))
            .body(&body)
            .write(dir.path(), tag);
        let wrk = Wrk::new(&api.base).connections(16).duration(Duration::from_secs(self.secs)).script(&script);
        tokio::task::block_in_place(|| wrk.run())
    }

    /// The data-writes row for `SQLITE_SYNCHRONOUS=<mode>`.
    fn writes_row(&self, mode: &str, writes: &Run) -> Row {
        let (id, metric, note) = match mode {
            "FULL" => (
                "dataWrites",
                "data writes through the balancer (durable: SQLITE_SYNCHRONOUS=FULL, the default)",
                "every commit synced to disk before its 201",
            ),
            _ => (
                "dataWritesNormal",
                "data writes through the balancer, SQLITE_SYNCHRONOUS=NORMAL",
                "data rolled to NORMAL through the manifest's env for this run (the WAL synced at checkpoints only: \
                 the last 201s before a power loss can be lost), then back",
            ),
        };
        wrk_row(
            id,
            metric,
            writes,
            "writes/s",
            "writes",
            format!(
                "wrk -t1 -c16 for {} s: POST /api/data of a new key each (one SQLite transaction, shared by the 3 \
                 instances), JWT checked; {note}",
                self.secs
            ),
        )
    }

    /// Step 7: the data writes again with `SQLITE_SYNCHRONOUS=NORMAL` (data rolled to it
    /// through the manifest, and back after), beside the durable default.
    async fn durability(&mut self, cluster: &Cluster, topology: &Topology, api: &Api) {
        self.progress.step("data writes with SQLITE_SYNCHRONOUS=NORMAL (data rolled to it and back)");
        if !self.rows.iter().any(|r| r.id == "dataWrites") {
            self.progress.note("data writes, FULL");
            let writes = self.data_writes(api, "w");
            self.rows.push(self.writes_row("FULL", &writes));
        }
        let progress = &self.progress;
        let roll = |yaml: String, what: &'static str| async move {
            let seq = cluster.latest_event().await;
            let t0 = Instant::now();
            cluster.edit(&yaml);
            cluster.wait_event_after(seq, "rolled", None, "data rolled out").await;
            cluster.wait_routed(&topology.backend_instances()).await;
            progress.note(&format!("data rolled to {what} and routed in {}", show_ms(ms(t0.elapsed()))));
        };
        roll(topology.clone().env("data", "SQLITE_SYNCHRONOUS", "NORMAL").yaml(), "NORMAL").await;
        self.progress.note("data writes, NORMAL");
        let writes = self.data_writes(api, "wn");
        roll(topology.yaml(), "FULL").await;
        self.rows.push(self.writes_row("NORMAL", &writes));
    }

    /// Step 12: requests answered while [`SLOW_CONNECTIONS`] connections each hold a partial
    /// request open (a header line, then silence), on the registry (kit's server) and on the
    /// balancer (its own), beside the same wrk run without them.
    async fn slowloris(&mut self, cluster: &Cluster) {
        self.progress.step(&format!("slowloris: {SLOW_CONNECTIONS} partial requests held open, registry and balancer"));
        raise_open_files(SLOW_CONNECTIONS as u64 + 1000);
        let targets = [
            ("slowlorisRegistry", "registry-1", "/health", "the registry's GET /health"),
            ("slowlorisBalancer", "balancer-1", "/api/data/health", "GET /api/data/health through the balancer"),
        ];
        for (id, instance, path, what) in targets {
            let (_, port) = ready_instance(cluster, instance).await;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let url = format!("http://{addr}{path}");
            let wrk = Wrk::new(&url).connections(16).duration(Duration::from_secs(self.secs));
            let alone = tokio::task::block_in_place(|| wrk.run());
            let t0 = Instant::now();
            let slow = hold_partial_requests(addr, path, SLOW_CONNECTIONS).await;
            let opened = slow.len();
            self.progress.note(&format!("{instance}: {opened} slow connections open in {}", show_ms(ms(t0.elapsed()))));
            let under = tokio::task::block_in_place(|| wrk.run());
            let still_open = slow.iter().filter(|c| is_open(c)).count();
            drop(slow);
            self.progress.note(&format!(
                "{instance}: {} alone, {} beside them; {still_open} of {opened} still open after {}",
                wrk_rate(&alone, "req"),
                wrk_rate(&under, "req"),
                show_ms(ms(t0.elapsed()))
            ));
            self.rows.push(
                wrk_row(
                    id,
                    &format!("{what}, {SLOW_CONNECTIONS} slow connections held open"),
                    &under,
                    "req/s",
                    "req",
                    format!(
                        "{opened} connections to {instance} each sent a partial request (`GET {path} HTTP/1.1` and \
                         one header line, no end) and then nothing; meanwhile wrk -t1 -c16 for {} s: {} (without \
                         them: {}); {still_open} of them still open at the end ({} after they opened)",
                        self.secs,
                        what,
                        wrk_rate(&alone, "req"),
                        show_ms(ms(t0.elapsed()))
                    ),
                )
                .detail("slowConnections", opened)
                .detail("stillOpen", still_open)
                .detail("withoutPerSecond", alone.ok_per_second())
                .detail("withoutP99Ms", alone.p99_ms),
            );
        }
    }

    /// Jobs: [`JOBS`] submitted by 8 tasks, then `/api/compute/stats` polled until all are
    /// completed.
    async fn jobs(&mut self, api: &Api) {
        const TASKS: usize = 8;
        let counts = |stats: &Value| (stats["counts"]["completed"].as_u64(), stats["counts"]["failed"].as_u64());
        let stats = || async {
            let (status, stats) = api.get("/api/compute/stats").await;
            (status == 200).then_some(stats)
        };
        let before = stats().await.expect("compute stats");
        let (Some(completed0), Some(failed0)) = counts(&before) else {
            panic!("compute stats without counts: {before}")
        };
        let t0 = Instant::now();
        let submitters: Vec<_> = (0..TASKS)
            .map(|t| {
                let api = api.clone();
                tokio::spawn(async move {
                    for n in (t..JOBS).step_by(TASKS) {
                        submit_job(&api, n).await;
                    }
                })
            })
            .collect();
        for task in submitters {
            task.await.expect("a submitting task panicked");
        }
        let submitted = t0.elapsed();
        let failed = until(Duration::from_millis(10), "every job completed", || async {
            let (completed, failed) = counts(&stats().await?);
            let (completed, failed) = (completed? - completed0, failed? - failed0);
            (completed + failed >= JOBS as u64).then_some(failed)
        })
        .await;
        let all = t0.elapsed();
        let per_second = JOBS as f64 / all.as_secs_f64();
        self.rows.push(
            Row::new("jobs", "jobs through the balancer, submit to completed", per_second, "jobs/s")
                .shown(format!("{} jobs/s", show_count(per_second)))
                .how(format!(
                    "{JOBS} add jobs POSTed by {TASKS} client tasks (all accepted in {}), then /api/compute/stats polled \
                     every 10 ms until all finished: first submit to last completion, 3 instances × 2 workers, \
                     {failed} failed",
                    show_ms(ms(submitted))
                ))
                .detail("jobs", JOBS)
                .detail("submitMs", ms(submitted))
                .detail("allDoneMs", ms(all))
                .detail("failed", failed),
        );
    }

    /// Step 6: data writes still go through after the load. A write whose client went away
    /// at the end of a wrk run must not leave the shared database locked; if it did, data's
    /// instances are killed and restarted so the later steps can run, and the row says so.
    async fn writes_after_load(&mut self, cluster: &Cluster, api: &Api) {
        self.progress.step("data writes still accepted after the load");
        // Three writes: round-robin spreads them over the three data instances.
        let mut outcomes = Vec::new();
        for n in 0..3 {
            let t0 = Instant::now();
            let res = api
                .request(Method::POST, "/api/data")
                .json(&json!({"key": format!("{}-probe-{n}", self.run), "value": n}))
                .timeout(Duration::from_secs(3))
                .send()
                .await;
            let outcome = match res {
                Ok(res) => {
                    let (status, upstream) = (res.status(), upstream_of(&res));
                    let body = res.text().await.unwrap_or_default();
                    format!(
                        "{status} from {upstream} in {}{}",
                        show_ms(ms(t0.elapsed())),
                        if status == 201 { String::new() } else { format!(": {body}") }
                    )
                }
                Err(e) => format!("no answer within 3 s ({e})"),
            };
            outcomes.push(outcome);
        }
        let ok = outcomes.iter().all(|o| o.starts_with("201 "));
        self.progress.note(&outcomes.join("; "));
        let mut how =
            format!("3 writes through the balancer right after the wrk runs, each within 3 s: {}", outcomes.join("; "));
        if !ok {
            // The lock dies with the process holding it. A rolling restart would wait forever
            // for a replacement that cannot migrate while the holder still runs, so every
            // data instance is killed at once (by the pid orch reports), and orch restarts them.
            self.progress.note("data's writes are stuck: kill -9 of data-1..3 to release the lock, then on");
            for name in ["data-1", "data-2", "data-3"] {
                let (pid, _) = ready_instance(cluster, name).await;
                sigkill(pid);
            }
            until(Duration::from_millis(50), "data's writes accepted again after the restart", || async {
                let res = api
                    .request(Method::POST, "/api/data")
                    .json(&json!({"key": format!("{}-probe-{}", self.run, rand_suffix()), "value": 0}))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                (res.status() == 201).then_some(())
            })
            .await;
            let topology = Self::topology();
            cluster.wait_routed(&topology.backend_instances()).await;
            how.push_str(
                "; writes were stuck (the shared database's write lock held by a connection left in a transaction \
                 by a cancelled write), so data-1..3 were killed and restarted before the next steps",
            );
        }
        self.rows.push(
            Row::new("writesAfterLoad", "data writes still accepted after the load", f64::from(u8::from(ok)), "yes/no")
                .shown(if ok { "yes" } else { "NO" })
                .target(Target::at_least(1.0, "yes"))
                .how(how),
        );
    }

    /// Step 7: saving a 3 → 5 edit of data's replicas → both new instances serve.
    async fn scale_up(&mut self, cluster: &Cluster, topology: &Topology) {
        self.progress.step(&format!("data 3 -> 5 by editing the manifest, × {EDITS}"));
        let three = topology.yaml();
        let five = topology.clone().replicas("data", 5).yaml();
        let balancer = cluster.url_of("balancer-1").await;
        let nine = topology.backend_instances();
        // data-4 and data-5 in the rotation, beside the nine.
        let eleven = topology.clone().replicas("data", 5).backend_instances();
        let mut serving = Vec::new();
        let mut in_rotation = Vec::new();
        for n in 1..=EDITS {
            let t0 = Instant::now();
            cluster.edit(&five);
            cluster.wait_routed(&eleven).await;
            in_rotation.push(ms(t0.elapsed()));
            // They serve: requests through the balancer are answered by each.
            let mut seen = BTreeSet::new();
            let end = Instant::now() + DEADLINE;
            while !(seen.contains("data-4") && seen.contains("data-5")) {
                assert!(Instant::now() < end, "data-4 and data-5 did not answer through the balancer: {seen:?}");
                let Ok(res) = self.http.get(format!("{balancer}/api/data/health")).send().await else { continue };
                let upstream = res.headers().get("x-upstream-instance").and_then(|v| v.to_str().ok());
                if let (true, Some(upstream)) = (res.status().is_success(), upstream) {
                    seen.insert(upstream.to_owned());
                }
            }
            serving.push(ms(t0.elapsed()));
            self.progress.note(&format!(
                "edit {n}: in rotation {}, both serving {}",
                show_ms(in_rotation[n - 1]),
                show_ms(serving[n - 1])
            ));
            cluster.edit(&three);
            cluster.wait_routed(&nine).await;
            until(Duration::from_millis(10), "data back to 3 instances", || async {
                let list = cluster.instances().await;
                (list.iter().filter(|i| i["service"] == "data").count() == 3).then_some(())
            })
            .await;
        }
        self.rows.push(
            Row::new("scaleUpServing", "edit 3 -> 5 -> both new instances serving", spread(&serving).0, "ms")
                .shown(show_spread(&serving))
                .target(Target::below(1000.0, "< 1 s"))
                .how(format!(
                    "{EDITS} times: save the manifest with data's replicas 3 -> 5 (back to 3 between), until \
                     data-4 and data-5 have each answered a request through the balancer (X-Upstream-Instance); \
                     in its rotation after {}",
                    show_ms(spread(&in_rotation).0)
                ))
                .detail("runsMs", runs(&serving))
                .detail("inRotationMs", runs(&in_rotation)),
        );
    }

    /// Step 8: kill -9 → answering again, under light client traffic.
    async fn kills(&mut self, cluster: &Cluster, api: &Api) {
        self.progress.step(&format!("kill -9 of {} backend instances in turn, under light traffic", KILLS.len()));
        let mix = Mix { clients: 3, period: Duration::from_millis(25), jobs: false, verify: true, ..Mix::default() };
        let load = Load::start(api, &format!("{}-kills", self.run), mix);
        load.wait_for(30).await;
        let mut answered = Vec::new();
        let mut ready = Vec::new();
        for name in KILLS {
            let (pid, port) = ready_instance(cluster, name).await;
            tokio::time::sleep(HEALTHY_STRETCH).await;
            let url = format!("http://127.0.0.1:{port}/health");
            let t0 = Instant::now();
            sigkill(pid);
            // Sent at once: it waits in the backlog of the socket orch keeps open. Only an
            // answer from a process younger than the kill counts.
            until(Duration::ZERO, &format!("{name} answering from a new process"), || async {
                let res = self.fresh.get(&url).send().await.ok()?;
                let since_kill = t0.elapsed();
                let health: Value = res.json().await.ok()?;
                (health["uptime"].as_f64()? <= since_kill.as_secs_f64()).then_some(())
            })
            .await;
            answered.push(ms(t0.elapsed()));
            cluster.wait_replaced(name, pid).await;
            ready.push(ms(t0.elapsed()));
            self.progress.note(&format!(
                "{name}: answering after {}, ready (orch) after {}",
                show_ms(answered[answered.len() - 1]),
                show_ms(ready[ready.len() - 1])
            ));
        }
        let report = load.stop().await;
        self.progress.note(&format!("traffic: {report}"));
        self.rows.push(
            Row::new("killToAnswer", "kill -9 -> answering again on its port", spread(&answered).0, "ms")
                .shown(show_spread(&answered))
                .target(Target::at_most(25.0, "<= 25 ms"))
                .how(format!(
                    "median of {} kills (auth, data, compute 1-3, each a first crash: resetAfterMs 100) of the pid \
                     orch reports, under the traffic below: until GET /health on its port is answered by a process \
                     younger than the kill; orch reports it ready after {} (median)",
                    KILLS.len(),
                    show_ms(spread(&ready).0)
                ))
                .detail("runsMs", runs(&answered))
                .detail("readyMs", runs(&ready)),
        );
        let failures = report.failures.len();
        self.rows.push(
            Row::new("killFailedRequests", "failed client requests during the kills", failures as f64, "requests")
                .shown(format!("{failures} of {}", show_count(report.requests as f64)))
                .target(Target::at_most(0.0, "0"))
                .how(format!(
                    "3 signed-in clients through the balancer, one request each 25 ms (data create, read, update, \
                     list, delete with Idempotency-Key; token checks) for {:.1} s{}",
                    report.elapsed.as_secs_f64(),
                    if failures == 0 { String::new() } else { format!(": {}", report.failure_lines(3).trim()) }
                ))
                .detail("requests", report.requests),
        );
    }

    /// Step 9: kill -9 → the dashboard's socket shows it.
    async fn dashboard(&mut self, cluster: &Cluster) {
        self.progress.step(&format!("instance death on the dashboard, × {}", DASHBOARD_KILLS.len()));
        let (_, port) = ready_instance(cluster, "detector-1").await;
        let ws_url = format!("ws://127.0.0.1:{port}/ws");
        let mut shown = Vec::new();
        let mut signals = Vec::new();
        for name in DASHBOARD_KILLS {
            let (pid, _) = ready_instance(cluster, name).await;
            tokio::time::sleep(HEALTHY_STRETCH).await;
            let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.expect("connecting to the dashboard");
            // Until the page would show the instance up under this pid; its last crash then.
            let last_exit = until_message(&mut ws, &format!("{name} up with pid {pid} on the dashboard"), |msg| {
                let m = member(msg, name)?;
                (m["status"] == "up" && m["orch"]["pid"].as_u64() == Some(u64::from(pid)))
                    .then(|| m["orch"]["lastExit"]["at"].clone())
            })
            .await;
            let t0 = Instant::now();
            sigkill(pid);
            let signal = until_message(&mut ws, &format!("{name}'s death on the dashboard"), |msg| {
                if msg["type"] == "event" && msg["event"]["type"] == "exited" && msg["event"]["instance"] == name {
                    return Some("orch's exited event");
                }
                let m = member(msg, name)?;
                if m["status"] == "down" {
                    Some("status down")
                } else if m["orch"]["lastExit"]["at"] != last_exit {
                    Some("crash (new lastExit)")
                } else {
                    None
                }
            })
            .await;
            shown.push(ms(t0.elapsed()));
            signals.push(signal);
            let _ = ws.close(None).await;
            self.progress.note(&format!("{name}: shown after {} ({signal})", show_ms(shown[shown.len() - 1])));
            cluster.wait_replaced(name, pid).await;
        }
        self.rows.push(
            Row::new("dashboardDeath", "instance death on the dashboard", spread(&shown).0, "ms")
                .shown(show_spread(&shown))
                .target(Target::below(1000.0, "< 1 s"))
                .how(format!(
                    "median of {} kills: a WebSocket client on the detector's /ws (what the page reads), from kill -9 \
                     to the first message showing the instance down, its new crash, or orch's exited event for it \
                     (first: {})",
                    DASHBOARD_KILLS.len(),
                    tally(&signals)
                ))
                .detail("runsMs", runs(&shown)),
        );
    }

    /// Step 10: SIGSTOP → orch reports a new pid ready (liveness kills the hung one).
    async fn hangs(&mut self, cluster: &Cluster) {
        self.progress.step(&format!("hung instance (SIGSTOP) replaced, × {}", HANGS.len()));
        let mut replaced_ms = Vec::new();
        let spec = cluster.instance(HANGS[0]).await["spec"]["liveness"].clone();
        let liveness = format!(
            "GET {} every {} ms, {} ms timeout, {} failures in a row",
            spec["check"]["http"].as_str().unwrap_or("?"),
            spec["periodMs"],
            spec["timeoutMs"],
            spec["failureThreshold"]
        );
        for name in HANGS {
            let (pid, _) = ready_instance(cluster, name).await;
            tokio::time::sleep(HEALTHY_STRETCH).await;
            let t0 = Instant::now();
            kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP {name}: {e}"));
            cluster.wait_replaced(name, pid).await;
            replaced_ms.push(ms(t0.elapsed()));
            self.progress.note(&format!("{name}: replaced after {}", show_ms(replaced_ms[replaced_ms.len() - 1])));
            // orch killed the stopped process; make sure nothing stays stopped.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !gone(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !gone(pid) {
                self.progress.note(&format!("{name}'s old process {pid} still there: killed"));
                sigkill(pid);
            }
        }
        self.rows.push(
            Row::new("hungReplaced", "hung (SIGSTOP) instance replaced", spread(&replaced_ms).0, "ms")
                .shown(show_spread(&replaced_ms))
                .target(Target::at_most(3000.0, "<= 3 s"))
                .how(format!(
                    "median of {}: SIGSTOP of the pid orch reports, until orch reports a new pid ready; liveness is \
                     the component default ({liveness})",
                    HANGS.len()
                ))
                .detail("liveness", spec)
                .detail("runsMs", runs(&replaced_ms)),
        );
    }

    // -------------------------------------------------------------------------- output

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

/// `orch's exited event × 4, status down × 1`: how often each kind came first.
fn tally(kinds: &[&str]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for kind in kinds {
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind, 1)),
        }
    }
    counts.iter().map(|(k, n)| format!("{k} × {n}")).collect::<Vec<_>>().join(", ")
}

/// Reads dashboard messages until `check` accepts one; panics after [`DEADLINE`].
async fn until_message<S, T>(ws: &mut S, what: &str, mut check: impl FnMut(&Value) -> Option<T>) -> T
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let next = tokio::time::timeout_at(end, ws.next()).await;
        let msg = match next {
            Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
            Ok(None) => panic!("the dashboard socket closed while waiting for {what}"),
            Ok(Some(Err(e))) => panic!("the dashboard socket failed while waiting for {what}: {e}"),
            Ok(Some(Ok(msg))) => msg,
        };
        let Message::Text(text) = msg else { continue };
        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
        if let Some(found) = check(&value) {
            return found;
        }
    }
}

/// Instance `name` in a dashboard `snapshot` or `status` message.
fn member<'a>(msg: &'a Value, name: &str) -> Option<&'a Value> {
    if msg["type"] != "snapshot" && msg["type"] != "status" {
        return None;
    }
    msg["status"]["services"]
        .as_object()?
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .find(|m| m["serviceId"] == name)
}

/// Raises this process's soft limit of open files to at least `wanted` (up to the hard
/// limit): the slowloris step holds thousands of sockets.
fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("reading RLIMIT_NOFILE");
    if soft < wanted {
        let raised = wanted.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, raised, hard).expect("raising RLIMIT_NOFILE");
        assert!(raised >= wanted, "RLIMIT_NOFILE: the hard limit {hard} is below the {wanted} open files needed");
    }
}

/// `n` connections to `addr`, each having sent the start of a request for `path` and no
/// more (opened 100 at a time; those that fail to open are left out).
async fn hold_partial_requests(addr: SocketAddr, path: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let partial = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let open = |_| async {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
        stream.write_all(partial.as_bytes()).await.ok()?;
        Some(stream)
    };
    let mut held = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let batch = futures_util::future::join_all((start..n.min(start + 100)).map(open)).await;
        held.extend(batch.into_iter().flatten());
    }
    held
}

/// Whether the server still keeps `stream` open: nothing to read yet (no answer, no close).
fn is_open(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

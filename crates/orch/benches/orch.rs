//! The control plane's speed, with the release `orch` binary that `cargo bench` builds
//! (`make bench-all` runs it; alone: `cargo bench -p orch --bench orch`).
//!
//! Every cluster runs on automatic ports (`controlPort: 0`, no `port:`) in a temporary data
//! dir, so the benchmark needs no free well-known port. Measured from a client's point of
//! view, polling the control API (and the balancer) every millisecond:
//! - `orch apply` → all 12 instances ready: the seed topology of real components, and the
//!   same shape with every instance a registry component (a stand-in with no database);
//! - the real topology routable: a request through the balancer to each service answers;
//! - kill -9 of an instance → it answers again on its port (the request sent right after
//!   the kill waits in the socket's backlog) → orch reports it ready;
//! - saving a 3 → 5 replicas edit → both new instances ready → both in the balancer's
//!   rotation;
//! - memory: the proportional set size of orch and its 12 children.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench::stats::{ms, spread};
use bench::table::Table;
use serde_json::Value;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");
const DEADLINE: Duration = Duration::from_secs(30);

fn topology(real: bool, data_replicas: u32) -> String {
    let c = |component: &str| if real { component.to_owned() } else { "registry".to_owned() };
    format!(
        "apiVersion: orch/v1
kind: Cluster
metadata: {{ name: bench }}
spec:
  dataDir: data
  controlPort: 0
  env: {{ HEARTBEAT_INTERVAL_MS: \"2000\", STALE_TIMEOUT_MS: \"6000\" }}
  services:
    - {{ name: registry, component: registry }}
    - {{ name: auth, component: {auth}, replicas: 3, dependsOn: [registry] }}
    - {{ name: data, component: {data}, replicas: {data_replicas}, dependsOn: [registry], restart: {{ resetAfterMs: 100 }} }}
    - {{ name: compute, component: {compute}, replicas: 3, dependsOn: [registry] }}
    - name: balancer
      component: {balancer}
      dependsOn: [registry]
{routes}    - {{ name: detector, component: {detector}, dependsOn: [registry, balancer] }}
",
        auth = c("auth"),
        data = c("data"),
        compute = c("compute"),
        balancer = c("balancer"),
        detector = c("detector"),
        routes = if real { "      routes: { /api/auth: auth, /api/data: data, /api/compute: compute }\n" } else { "" },
    )
}

struct Cluster {
    dir: tempfile::TempDir,
    orch: Child,
    url: String,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts `orch apply` on `yaml`; returns once the control API answers, with the time
    /// the command was started.
    async fn start(yaml: &str) -> (Self, Instant) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let started = Instant::now();
        let orch = Command::new(ORCH)
            .args(["apply", "m.yaml"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (state, pid) = (dir.path().join("data/orch.json"), orch.id());
        let url = eventually("the control URL", || {
            let state = state.clone();
            async move {
                let record: Value = serde_json::from_str(&std::fs::read_to_string(state).ok()?).ok()?;
                (record["pid"].as_u64() == Some(u64::from(pid)))
                    .then(|| record["controlUrl"].as_str().unwrap().to_owned())
            }
        })
        .await;
        (Self { dir, orch, url, http: reqwest::Client::new() }, started)
    }

    async fn get(&self, path: &str) -> Option<Value> {
        self.http.get(format!("{}{path}", self.url)).send().await.ok()?.json().await.ok()
    }

    async fn instances(&self) -> Vec<Value> {
        self.get("/api/instances").await.and_then(|v| v["instances"].as_array().cloned()).unwrap_or_default()
    }

    /// Waits until every instance of the manifest is ready.
    async fn all_ready(&self, total: usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(c) = self.get("/api/cluster").await {
                let services = c["services"].as_array().cloned().unwrap_or_default();
                let ready: u64 = services.iter().map(|s| s["ready"].as_u64().unwrap_or(0)).sum();
                if ready as usize == total {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the cluster did not get ready");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn port_of(&self, name: &str) -> u16 {
        self.instances().await.iter().find(|i| i["name"] == name).unwrap()["port"].as_u64().unwrap() as u16
    }

    async fn pid_of(&self, name: &str) -> Option<u32> {
        self.instances().await.iter().find(|i| i["name"] == name).and_then(|i| i["pid"].as_u64()).map(|p| p as u32)
    }

    async fn ready(&self, name: &str) -> Option<u32> {
        let list = self.instances().await;
        let i = list.iter().find(|i| i["name"] == name)?;
        (i["ready"] == true).then(|| i["pid"].as_u64().map(|p| p as u32)).flatten()
    }

    fn edit(&self, yaml: &str) {
        let tmp = self.dir.path().join("m.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(tmp, self.dir.path().join("m.yaml")).unwrap();
    }

    /// Resident memory of orch alone, and of orch with its children.
    fn rss_kib(&self) -> (u64, u64) {
        let record: Value =
            serde_json::from_str(&std::fs::read_to_string(self.dir.path().join("data/orch.json")).unwrap()).unwrap();
        let mut pids = vec![self.orch.id()];
        for child in record["children"].as_object().unwrap().values() {
            pids.push(child["pid"].as_u64().unwrap() as u32);
        }
        (rss(self.orch.id()), pids.iter().map(|pid| rss(*pid)).sum())
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.orch.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.orch.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.orch.kill();
        let _ = self.orch.wait();
    }
}

/// Proportional set size in KiB: resident memory with the pages processes share (the one
/// `orch` binary every instance runs) divided among them, so the sum is the cluster's real
/// footprint. Resident set size when the kernel does not say.
fn rss(pid: u32) -> u64 {
    let field = |file: &str, name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok())
    };
    field("smaps_rollup", "Pss:").or_else(|| field("status", "VmRSS:")).unwrap_or(0)
}

/// Polls `f` every millisecond until it returns `Some`; panics naming `what` after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    kit::testing::eventually_every(Duration::from_millis(1), DEADLINE, what, f).await
}

/// A row of `values` (ms): how many, median, min, max.
fn row(table: &mut Table, what: &str, values: &[f64]) {
    let (median, min, max) = spread(values);
    let show = |v: f64| if v.is_nan() { "n/a".to_owned() } else { format!("{v:.1}") };
    table.row([what.to_owned(), values.len().to_string(), show(median), show(min), show(max)]);
}

/// The real components are usable when the balancer routes (they are being written).
async fn routable(c: &Cluster, http: &reqwest::Client) -> bool {
    let port = c.port_of("balancer-1").await;
    for path in ["/api/auth/health", "/api/data/health", "/api/compute/health"] {
        match http.get(format!("http://127.0.0.1:{port}{path}")).send().await {
            Ok(res) if res.status().is_success() => {}
            _ => return false,
        }
    }
    true
}

async fn apply_times(real: bool, runs: usize, rows: &mut Table) -> Option<(u64, u64)> {
    let mut ready = Vec::new();
    let mut route = Vec::new();
    let mut memory = None;
    let http = reqwest::Client::new();
    for _ in 0..runs {
        let (c, started) = Cluster::start(&topology(real, 3)).await;
        c.all_ready(12).await;
        ready.push(ms(started.elapsed()));
        if real {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !routable(&c, &http).await && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if Instant::now() < deadline {
                route.push(ms(started.elapsed()));
            }
        }
        memory = Some(c.rss_kib());
        c.stop();
    }
    let what = if real { "components" } else { "registry stand-ins" };
    row(rows, &format!("orch apply -> 12 instances ready ({what})"), &ready);
    if real {
        row(rows, "orch apply -> 12 ready and routable via the balancer", &route);
    }
    memory
}

async fn kill_times(real: bool, service: &str, kills: usize, rows: &mut Table) {
    let (c, _) = Cluster::start(&topology(real, 3)).await;
    c.all_ready(12).await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut answers = Vec::new();
    let mut ready = Vec::new();
    for k in 0..kills {
        let name = format!("{service}-{}", k % 3 + 1);
        let port = c.port_of(&name).await;
        let old = c.pid_of(&name).await.unwrap();
        let t0 = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        // Sent at once: it waits in the backlog of the socket orch keeps open.
        let res = http.get(format!("http://127.0.0.1:{port}/health")).timeout(Duration::from_secs(10)).send().await;
        if res.is_ok_and(|r| r.status().is_success()) {
            answers.push(ms(t0.elapsed()));
        }
        eventually("the killed instance ready again", || async { c.ready(&name).await.filter(|p| *p != old) }).await;
        ready.push(ms(t0.elapsed()));
        c.all_ready(12).await;
        // A healthy stretch (resetAfterMs: 100) so the next kill is a first crash again,
        // restarted at once rather than after a backoff.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let what = if real { service.to_owned() } else { format!("{service}, registry stand-in") };
    row(rows, &format!("kill -9 (first crash) -> answers again on its port ({what})"), &answers);
    row(rows, &format!("kill -9 (first crash) -> ready again, as orch reports ({what})"), &ready);
    c.stop();
}

async fn edit_times(real: bool, runs: usize, rows: &mut Table) {
    let (c, _) = Cluster::start(&topology(real, 3)).await;
    c.all_ready(12).await;
    let mut ready = Vec::new();
    let mut rotation = Vec::new();
    let balancer = c.port_of("balancer-1").await;
    for _ in 0..runs {
        let t0 = Instant::now();
        c.edit(&topology(real, 5));
        eventually("data-4 and data-5 ready", || async {
            (c.ready("data-4").await.is_some() && c.ready("data-5").await.is_some()).then_some(())
        })
        .await;
        ready.push(ms(t0.elapsed()));
        if real {
            let status = format!("http://127.0.0.1:{balancer}/status");
            let listed = |v: &Value, id: &str| {
                v["services"]["data"]["instances"].as_array().is_some_and(|a| a.iter().any(|i| i["id"] == id))
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let v: Option<Value> = match c.http.get(&status).send().await {
                    Ok(r) => r.json().await.ok(),
                    Err(_) => None,
                };
                if v.as_ref().is_some_and(|v| listed(v, "data-4") && listed(v, "data-5")) {
                    rotation.push(ms(t0.elapsed()));
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        c.edit(&topology(real, 3));
        eventually("back to 3", || async {
            let list = c.instances().await;
            (list.iter().filter(|i| i["service"] == "data").count() == 3).then_some(())
        })
        .await;
        c.all_ready(12).await;
    }
    let what = if real { "components" } else { "registry stand-ins" };
    row(rows, &format!("save a 3 -> 5 edit -> both new instances ready ({what})"), &ready);
    if real {
        row(rows, "save a 3 -> 5 edit -> both in the balancer's rotation", &rotation);
    }
    c.stop();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut rows = Table::new()
            .gap("  ")
            .left("measurement (ms)", 70)
            .right("runs", 4)
            .right("median", 7)
            .right("min", 7)
            .right("max", 7);
        let memory_standins = apply_times(false, 5, &mut rows).await;
        let memory = apply_times(true, 5, &mut rows).await;
        kill_times(false, "data", 15, &mut rows).await;
        kill_times(true, "data", 15, &mut rows).await;
        edit_times(false, 5, &mut rows).await;
        edit_times(true, 5, &mut rows).await;

        println!(
            "orch control plane, release build, {} cores; automatic ports",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        rows.print();
        let mib = |kib: u64| kib as f64 / 1024.0;
        if let Some((orch, all)) = memory {
            println!("memory (PSS): orch {:.1} MiB; orch + 12 component processes {:.1} MiB", mib(orch), mib(all));
        }
        if let Some((orch, all)) = memory_standins {
            println!("memory (PSS): orch {:.1} MiB; orch + 12 registry stand-ins {:.1} MiB", mib(orch), mib(all));
        }
    });
}

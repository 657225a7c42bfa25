//! The `growth` step: what a cluster costs as it grows, each shape on a cluster of its own
//! with the components' default settings (and `manifests/cluster.yaml`'s heartbeats, every
//! 2 s) and nothing asked of it: the 12 processes of
//! `manifests/cluster.yaml` (automatic ports), then one registry, one balancer and N compute
//! instances for each N of [`SIZES`] (and 1000 with `BENCH_GROWTH_1000=1`: a thousand
//! processes take minutes to start and to measure on two cores, and most of a small machine's
//! memory). Each: cold start (`orch apply` → all ready), idle CPU of orch and of the whole
//! cluster over [`IDLE`] after [`SETTLE`] (each process's CPU-time clock), PSS per instance.

use std::time::{Duration, Instant};

use bench::report::{Row, Target};
use bench::stats::{ms, round2, show_ms};
use e2e::cluster::Cluster;
use e2e::procfs;

use super::{Bench, get_json, until};

/// The N of the compute-only shapes.
const SIZES: [usize; 2] = [10, 100];
/// After the last instance is ready, before measuring: the first heartbeats and checks.
const SETTLE: Duration = Duration::from_secs(3);
/// How long idle CPU is sampled.
const IDLE: Duration = Duration::from_secs(20);

/// A cluster shape: its name in row ids, its manifest's services and its instance count.
struct Shape {
    id: String,
    what: String,
    services: String,
    instances: usize,
}

fn manifest(name: &str, services: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: {name} }}\nspec:\n  dataDir: data\n  controlPort: 0\n  \
         env: {{ HEARTBEAT_INTERVAL_MS: \"2000\", STALE_TIMEOUT_MS: \"6000\" }}\n  services:\n    - {{ name: registry, \
         component: registry }}\n{services}"
    )
}

fn shapes() -> Vec<Shape> {
    let routes = "{ /api/auth: auth, /api/data: data, /api/compute: compute }";
    let mut services: String = ["auth", "data", "compute"]
        .iter()
        .map(|s| format!("    - {{ name: {s}, component: {s}, replicas: 3, dependsOn: [registry] }}\n"))
        .collect();
    services.push_str(&format!(
        "    - {{ name: balancer, component: balancer, dependsOn: [registry], routes: {routes} }}\n"
    ));
    services.push_str("    - { name: detector, component: detector, dependsOn: [registry, balancer] }\n");
    let mut all = vec![Shape { id: "Cluster".into(), what: "the 12-process cluster".into(), services, instances: 12 }];
    let mut sizes = SIZES.to_vec();
    if std::env::var("BENCH_GROWTH_1000").is_ok_and(|v| v == "1") {
        sizes.push(1000);
    }
    for n in sizes {
        let services = format!(
            "    - {{ name: compute, component: compute, replicas: {n}, dependsOn: [registry] }}\n    - {{ name: \
             balancer, component: balancer, dependsOn: [registry], routes: {{ /api/compute: compute }} }}\n"
        );
        all.push(Shape {
            id: format!("N{n}"),
            what: format!("registry, balancer and {n} compute instances"),
            services,
            instances: n + 2,
        });
    }
    all
}

/// Leaked: a handful of row ids, once per run.
fn id(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

impl Bench {
    /// `growthColdStart*`, `growthIdleCpu*`, `growthIdleCpuOrch*`, `growthPssPerInstance*`.
    pub(super) async fn growth(&mut self) {
        let shapes = shapes();
        self.progress.step(&format!(
            "growth: cold start, idle CPU and PSS of {}",
            shapes.iter().map(|s| s.what.as_str()).collect::<Vec<_>>().join("; ")
        ));
        for shape in shapes {
            self.growth_of(&shape).await;
        }
    }

    async fn growth_of(&mut self, shape: &Shape) {
        let t0 = Instant::now();
        let cluster = Cluster::start(&manifest(&format!("growth{}", shape.id.to_lowercase()), &shape.services)).await;
        let url = format!("{}/api/cluster", cluster.url);
        let total = shape.instances as u64;
        until(Duration::from_millis(5), &format!("{}: every instance ready", shape.what), || async {
            let c = get_json(&self.http, &url).await?;
            let ready: u64 = c["services"].as_array()?.iter().filter_map(|s| s["ready"].as_u64()).sum();
            (ready == total).then_some(())
        })
        .await;
        let cold = ms(t0.elapsed());
        tokio::time::sleep(SETTLE).await;
        let orch = cluster.orch.id();
        let children = procfs::children(orch);
        let nanos = || (procfs::cpu_nanos(orch), children.iter().map(|&p| procfs::cpu_nanos(p)).sum::<u64>());
        let ((orch0, children0), t1) = (nanos(), Instant::now());
        tokio::time::sleep(IDLE).await;
        let (orch1, children1) = nanos();
        let secs = t1.elapsed().as_secs_f64();
        let share = |nanos: u64| round2(100.0 * nanos as f64 / 1e9 / secs);
        let (orch_cpu, children_cpu) = (share(orch1 - orch0), share(children1 - children0));
        let pss: Vec<u64> = children.iter().filter_map(|&p| procfs::memory(p)).map(|m| m.pss_kib).collect();
        let pss_each = round2(pss.iter().sum::<u64>() as f64 / 1024.0 / pss.len().max(1) as f64);
        let orch_pss = procfs::memory(orch).map_or(0.0, |m| round2(m.pss_kib as f64 / 1024.0));
        self.progress.note(&format!(
            "{}: ready in {}; idle CPU orch {orch_cpu} %, whole cluster {} % of a core; PSS {pss_each} MB per \
             instance, orch {orch_pss} MB",
            shape.what,
            show_ms(cold),
            round2(orch_cpu + children_cpu)
        ));
        tokio::task::block_in_place(|| drop(cluster));
        let (sid, what) = (&shape.id, &shape.what);
        let n = children.len();
        self.rows.push(
            Row::new(id(format!("growthColdStart{sid}")), format!("cold start of {what}"), cold, "ms")
                .shown(show_ms(cold))
                .how(format!(
                    "from running `orch apply` to orch's /api/cluster counting {total} ready, polled every 5 ms"
                )),
        );
        let target = match sid.as_str() {
            "Cluster" => Target::below(0.5, "< 0.5 % of a core"),
            "N100" => Target::below(3.0, "< 3 % of a core"),
            _ => None,
        };
        let whole = round2(orch_cpu + children_cpu);
        self.rows.push(
            Row::new(id(format!("growthIdleCpu{sid}")), format!("idle CPU of {what}, orch included"), whole, "%")
                .shown(format!("{whole} % of a core (orch {orch_cpu} %)"))
                .target(target)
                .how(format!(
                    "CPU time (each process's CPU-time clock, all threads) of orch and its {n} children over {} s, \
                     {} s after the last was ready, nothing asked of them; component defaults but for the 2 s \
                     heartbeats of manifests/cluster.yaml",
                    IDLE.as_secs(),
                    SETTLE.as_secs()
                ))
                .detail("orchPercent", orch_cpu)
                .detail("childrenPercent", children_cpu),
        );
        self.rows.push(
            Row::new(id(format!("growthIdleCpuOrch{sid}")), format!("idle CPU of orch, {what}"), orch_cpu, "%")
                .shown(format!("{orch_cpu} % of a core"))
                .how("the same sample, orch alone: its probes (readiness and liveness), ticks and watches"),
        );
        self.rows.push(
            Row::new(id(format!("growthPssPerInstance{sid}")), format!("PSS per instance, {what}"), pss_each, "MB")
                .shown(format!("{pss_each} MB (orch {orch_pss} MB)"))
                .how(format!("Pss of smaps_rollup summed over the {n} children at rest, divided by {n}"))
                .detail("orchMb", orch_pss),
        );
    }
}

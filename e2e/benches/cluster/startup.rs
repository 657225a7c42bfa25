//! The `coldstart` and `memory` steps: `orch apply` → every instance ready → routable,
//! [`COLD_STARTS`] times; VmRSS and PSS of the 12 instances and orch, at rest and after the load.

use std::time::Instant;

use bench::report::{Row, Target};
use bench::stats::{mb, ms, runs, show_ms, show_spread, spread};
use e2e::cluster::Cluster;
use e2e::procfs::{self, Memory};
use e2e::topology::Topology;
use serde_json::{Map, json};

use super::Bench;
use super::support::{TIGHT, get_json, until};

const COLD_STARTS: usize = 3;

impl Bench {
    /// Step 1: `orch apply` → ready → routable, [`COLD_STARTS`] times; returns the last cluster.
    pub(super) async fn cold_start(&mut self, topology: &Topology) -> Cluster {
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
    pub(super) async fn memory(&mut self, cluster: &Cluster, id: &str, when: &str) {
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
                .target(Target::below(50.0, "< 50 MB"))
                .how(format!(
                    "Pss from /proc/PID/smaps_rollup (shared pages divided among the processes sharing them: the \
                     honest total): 12 instances {:.1} MB plus orch {:.1} MB",
                    mb(sum.pss_kib),
                    mb(orch.pss_kib)
                )),
        ));
    }
}

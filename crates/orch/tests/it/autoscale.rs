//! `autoscale:` under real load: clients through a real balancer to a real backend (Python's
//! http.server, registered by orch); the service scales up while the load lasts and back
//! down to `min` after it stops, with no failed request in between; each decision is an
//! event with its reason, and `orch get` shows `current/desired (min-max)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use kit::testing::eventually;
use serde_json::Value;

use crate::{Cluster, DEADLINE, files_behind_balancer, manifest, stderr, stdout};

/// `files` behind a balancer, autoscaled on its request rate (1 to 3 instances, short windows).
fn autoscaled() -> tempfile::TempDir {
    files_behind_balancer(
        "      autoscale: { min: 1, max: 3, target: { requestsPerSecondPerInstance: 10 }, scaleUpWindowMs: 1000, scaleDownWindowMs: 2000 }\n",
    )
}

/// Closed-loop clients until `stop`: every answer counted, and every one that is not the
/// file (an error, a non-200) counted as failed, with what it was.
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Load {
    fn start(balancer: &str, clients: usize) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Load {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_failure: std::sync::Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let http = reqwest::Client::new();
        let tasks = (0..clients)
            .map(|_| {
                let (load, http, url) = (load.clone(), http.clone(), format!("{balancer}/files/hello.txt"));
                tokio::spawn(async move {
                    while !load.stop.load(Relaxed) {
                        let outcome = match http.get(&url).send().await {
                            Ok(res) if res.status() == 200 => match res.text().await {
                                Ok(body) if body == "hello\n" => Ok(()),
                                other => Err(format!("body {other:?}")),
                            },
                            Ok(res) => Err(format!("status {}", res.status())),
                            Err(e) => Err(format!("error {e}")),
                        };
                        match outcome {
                            Ok(()) => load.ok.fetch_add(1, Relaxed),
                            Err(why) => {
                                load.first_failure.lock().unwrap().get_or_insert(why);
                                load.failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        (load, tasks)
    }
}

/// The `scaled` events of the autoscaler so far.
async fn decisions(cluster: &Cluster) -> Vec<String> {
    let events = cluster.events().await;
    events
        .iter()
        .filter(|e| e["type"] == "scaled" && e["message"].as_str().is_some_and(|m| m.contains("autoscaled")))
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

async fn service(cluster: &Cluster, name: &str) -> Value {
    let services = cluster.get("/api/cluster").await["services"].as_array().unwrap().clone();
    services.into_iter().find(|s| s["name"] == name).unwrap()
}

#[tokio::test]
async fn a_service_under_load_scales_up_and_back_down_with_no_failed_request() {
    let cluster = Cluster::start_in(autoscaled()).await;
    cluster.wait_ready(&["registry-1", "files-1", "balancer-1"]).await;
    let balancer = cluster.url_of("balancer-1").await;
    let http = reqwest::Client::new();
    eventually(DEADLINE, "the balancer routing to files", || async {
        let res = http.get(format!("{balancer}/files/hello.txt")).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;
    let view = service(&cluster, "files").await;
    assert_eq!(view["replicas"], 1, "replicas omitted: the autoscaler starts at min");
    assert_eq!(view["autoscale"]["min"], 1);
    assert_eq!(view["autoscale"]["max"], 3);

    // Load well past 10 requests/s per instance: up to max, at most doubling per step.
    let (load, clients) = Load::start(&balancer, 4);
    eventually(DEADLINE, "files scaled up to 3 under load", || async {
        (service(&cluster, "files").await["replicas"] == 3).then_some(())
    })
    .await;
    cluster.wait_ready(&["registry-1", "files-1", "files-2", "files-3", "balancer-1"]).await;
    let up = decisions(&cluster).await;
    assert!(up[0].starts_with("files autoscaled: ") && up[0].ends_with(": 1 -> 2"), "{up:?}");
    assert!(up[0].contains("requests/s per instance > 10"), "{up:?}");
    assert!(up.iter().any(|m| m.ends_with(" -> 3")), "{up:?}");

    let out = cluster.cli(&["get", "files"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    let row =
        shown.lines().find(|l| l.starts_with("files ") && l.contains("(1-3)")).unwrap_or_else(|| panic!("{shown}"));
    assert!(row.contains("/3 (1-3)") && row.contains("10 requests/s per instance"), "{shown}");

    // The load stops: after the quiet of the down window, back to min.
    load.stop.store(true, Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let before = decisions(&cluster).await.len();
    eventually(DEADLINE, "files scaled back down to 1", || async {
        (service(&cluster, "files").await["replicas"] == 1).then_some(())
    })
    .await;
    let down = decisions(&cluster).await;
    assert!(down[before..].iter().all(|m| m.contains("requests/s per instance < 10")), "{down:?}");
    assert!(down.last().unwrap().ends_with(" -> 1"), "{down:?}");
    eventually(DEADLINE, "files-2 and files-3 gone", || async {
        let names: Vec<String> =
            cluster.instances().await.iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect();
        (!names.iter().any(|n| n == "files-2" || n == "files-3")).then_some(())
    })
    .await;

    let (ok, failed) = (load.ok.load(Relaxed), load.failed.load(Relaxed));
    assert!(ok > 0);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed, the first: {:?}",
        ok + failed,
        load.first_failure.lock().unwrap()
    );
}

#[tokio::test]
async fn a_busy_service_scales_up_on_its_processes_cpu() {
    // Busy loops use a whole core each, far past 30% per instance; no balancer is needed.
    let cluster = Cluster::start(&manifest(
        "    - name: busy\n      command: [sh, -c, \"while :; do :; done\"]\n      readiness: { enabled: false }\n      gracePeriodMs: 0\n      autoscale: { min: 1, max: 2, target: { cpuPercent: 30 }, scaleUpWindowMs: 0 }\n",
    ))
    .await;
    cluster.wait_ready(&["busy-1"]).await;
    let event = cluster.wait_event("scaled", None, "busy autoscaled: cpu ").await;
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("% per instance > 30: 1 -> 2"), "{message}");
    cluster.wait_ready(&["busy-1", "busy-2"]).await;
}

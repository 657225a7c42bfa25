//! The `autoscale` and `rollback` steps: each on a small cluster of its own (the manifest's
//! `autoscale:` and `rollout:` policies, with real processes), timed through orch's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bench::report::Row;
use bench::stats::{ms, show_ms};
use e2e::cluster::Cluster;
use serde_json::Value;

use super::{Bench, until};

/// The autoscaled service's target: requests per second per instance.
const TARGET_RPS: u32 = 10;
/// Closed-loop clients through the balancer in the autoscale step.
const CLIENTS: usize = 4;
/// The pause of the one client that goes on while the service scales down (5 requests/s,
/// below one instance's target).
const TRICKLE_PAUSE_MS: u64 = 200;

/// A manifest of a registry and `spec` (the services after it), controlled on an automatic port.
fn manifest(name: &str, services: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: {name} }}\nspec:\n  dataDir: data\n  controlPort: \
         0\n  services:\n    - name: registry\n      component: registry\n{services}"
    )
}

/// Events after `seq` of `kind` whose message contains `text`.
async fn events_after(cluster: &Cluster, seq: u64, kind: &str, text: &str) -> Vec<Value> {
    let events = cluster.get(&format!("/api/events?since={seq}&limit=10000")).await;
    events["events"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|e| {
                    e["seq"].as_u64().is_some_and(|s| s > seq)
                        && e["type"] == kind
                        && e["message"].as_str().is_some_and(|m| m.contains(text))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The replicas orch wants of `service` now (`/api/cluster`).
async fn replicas(cluster: &Cluster, service: &str) -> Option<u64> {
    let c = cluster.get("/api/cluster").await;
    c["services"].as_array()?.iter().find(|s| s["name"] == service)?["replicas"].as_u64()
}

impl Bench {
    /// `autoscaleUp` and `autoscaleDown` (and `autoscaleFailedRequests`): Python's
    /// http.server behind a balancer, `autoscale: { min: 1, max: 3 }` on its request rate;
    /// closed-loop clients until it runs 3, then quiet until it is back to 1.
    pub(super) async fn autoscale(&mut self) {
        self.progress.step("autoscale: http.server behind a balancer, 1 -> 3 under load, back to 1 after");
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::create_dir(dir.path().join("files")).expect("the files dir");
        std::fs::write(dir.path().join("files/hello.txt"), "hello\n").expect("the file served");
        let policy = format!(
            "{{ min: 1, max: 3, target: {{ requestsPerSecondPerInstance: {TARGET_RPS} }}, scaleUpWindowMs: 1000, \
             scaleDownWindowMs: 5000 }}"
        );
        let yaml = manifest(
            "bench-autoscale",
            &format!(
                "    - name: files\n      command: [python3, -m, http.server, \"{{port}}\", --bind, 127.0.0.1]\n      \
                 dependsOn: [registry]\n      autoscale: {policy}\n    - name: balancer\n      component: balancer\n      \
                 dependsOn: [files]\n      routes: {{ /files: files }}\n      env: {{ HEALTH_CHECK_INTERVAL_MS: \"200\" }}\n"
            ),
        );
        std::fs::write(dir.path().join("m.yaml"), yaml).expect("the manifest");
        let cluster = Cluster::start_in(dir).await;
        cluster.wait_ready(&["registry-1", "files-1", "balancer-1"]).await;
        let url = format!("{}/files/hello.txt", cluster.url_of("balancer-1").await);
        until(Duration::from_millis(20), "the balancer routing to files", || async {
            let res = self.http.get(&url).send().await.ok()?;
            (res.status() == 200).then_some(())
        })
        .await;
        let seq = cluster.latest_event().await;

        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let t0 = Instant::now();
        // A client until `stop`, pausing `pause` after each request.
        let client = |stop: Arc<AtomicBool>, pause: Duration| {
            let (ok, failed, http, url) = (ok.clone(), failed.clone(), self.http.clone(), url.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let answered = match http.get(&url).send().await {
                        Ok(res) if res.status() == 200 => res.text().await.is_ok_and(|b| b == "hello\n"),
                        _ => false,
                    };
                    (if answered { &ok } else { &failed }).fetch_add(1, Relaxed);
                    tokio::time::sleep(pause).await;
                }
            })
        };
        let clients: Vec<_> = (0..CLIENTS).map(|_| client(stop.clone(), Duration::ZERO)).collect();
        let every = Duration::from_millis(10);
        let first = until(every, "the first scale-up", || async {
            events_after(&cluster, seq, "scaled", "files autoscaled").await.into_iter().next()
        })
        .await;
        let up = ms(t0.elapsed());
        until(every, "files at 3 instances", || async { (replicas(&cluster, "files").await? == 3).then_some(()) })
            .await;
        let at_max = ms(t0.elapsed());
        self.progress.note(&format!(
            "first scale-up after {} ({}), at 3 after {}",
            show_ms(up),
            first["message"].as_str().unwrap_or("?"),
            show_ms(at_max)
        ));
        // The load lasts BENCH_SECS at least.
        tokio::time::sleep(Duration::from_secs(self.secs).saturating_sub(t0.elapsed())).await;
        let loaded = t0.elapsed().as_secs_f64();
        stop.store(true, Relaxed);
        for client in clients {
            client.await.expect("a client task panicked");
        }
        // A trickle below the target goes on while it scales down: requests still answered.
        let quiet = Arc::new(AtomicBool::new(false));
        let trickle = client(quiet.clone(), Duration::from_millis(TRICKLE_PAUSE_MS));
        let t1 = Instant::now();
        until(every, "files back at 1 instance", || async { (replicas(&cluster, "files").await? == 1).then_some(()) })
            .await;
        let down = ms(t1.elapsed());
        until(every, "files-2 and files-3 gone", || async {
            let gone = cluster.instances().await.iter().all(|i| i["name"] != "files-2" && i["name"] != "files-3");
            gone.then_some(())
        })
        .await;
        let drained = ms(t1.elapsed());
        quiet.store(true, Relaxed);
        trickle.await.expect("the trickle task panicked");
        let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
        let decisions: Vec<Value> = events_after(&cluster, seq, "scaled", "files autoscaled")
            .await
            .into_iter()
            .filter_map(|e| e["message"].as_str().map(Value::from))
            .collect();
        self.progress.note(&format!(
            "back at 1 after {}, its instances gone after {}; {failed} of {} requests failed",
            show_ms(down),
            show_ms(drained),
            ok + failed
        ));
        tokio::task::block_in_place(|| drop(cluster));
        let setting = format!("autoscale {policy}; {CLIENTS} closed-loop clients through the balancer");
        self.rows.push(
            Row::new("autoscaleUp", "autoscale: load start -> first scale-up", up, "ms")
                .shown(show_ms(up))
                .how(format!(
                    "Python's http.server behind the balancer, {setting}: from the first request to orch's first \
                     `scaled` event (polled every 10 ms); at 3 instances after {}",
                    show_ms(at_max)
                ))
                .detail("atMaxMs", at_max)
                .detail("decisions", decisions),
        );
        self.rows.push(
            Row::new("autoscaleDown", "autoscale: load end -> back to min", down, "ms")
                .shown(show_ms(down))
                .how(format!(
                    "the same, after {loaded:.1} s of load: from the clients' stop to orch wanting 1 instance again \
                     (/api/cluster, polled every 10 ms; the down window is 5 s); files-2 and files-3 gone after {}",
                    show_ms(drained)
                ))
                .detail("goneMs", drained),
        );
        self.rows.push(
            Row::new("autoscaleFailedRequests", "failed requests while autoscaling", failed as f64, "requests")
                .shown(format!("{failed} of {}", ok + failed))
                .target(bench::report::Target::at_most(0.0, "0"))
                .how(format!(
                    "{setting}: answers other than 200 with the file, or none, from the load's start to its end"
                ))
                .detail("requests", ok + failed),
        );
    }

    /// `rollbackComplete`: `web` (two registry components, `rollout: { progressDeadlineMs:
    /// 3000, autoRollback: true }`) edited to a command that exits at once → rolled back.
    pub(super) async fn rollback(&mut self) {
        self.progress.step("rollback: a rollout whose command exits at once, rolled back by itself");
        let web = |spec: &str| {
            manifest(
                "bench-rollback",
                &format!(
                    "    - name: web\n      {spec}\n      replicas: 2\n      dependsOn: [registry]\n      readiness: {{ path: \
                     /health, periodMs: 100 }}\n      restart: {{ backoffInitialMs: 20, backoffMaxMs: 100 }}\n      \
                     rollout: {{ maxSurge: 1, maxUnavailable: 0, progressDeadlineMs: 3000, autoRollback: true }}\n"
                ),
            )
        };
        let cluster = Cluster::start(&web("component: registry")).await;
        cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
        let every = Duration::from_millis(10);
        let complete = |n: usize| {
            let cluster = &cluster;
            async move {
                let h = cluster.get("/api/rollouts/web").await;
                let rollouts = h["rollouts"].as_array()?;
                (rollouts.len() == n && rollouts[n - 1]["state"] == "complete").then_some(h)
            }
        };
        until(every, "rollout #1 complete", || complete(1)).await;
        let seq = cluster.latest_event().await;
        let t0 = Instant::now();
        cluster.edit(&web("command: [/bin/sh, -c, 'exit 3']"));
        let failed = until(every, "the rollout failed", || async {
            events_after(&cluster, seq, "rollout-failed", "web rollout #2 failed").await.into_iter().next()
        })
        .await;
        let failed_ms = ms(t0.elapsed());
        until(every, "the rolled-back event", || async {
            events_after(&cluster, seq, "rolled-back", "web").await.into_iter().next()
        })
        .await;
        let rolled_back = ms(t0.elapsed());
        let history = until(every, "the rollback complete", || complete(3)).await;
        let done = ms(t0.elapsed());
        self.progress.note(&format!(
            "failed after {} ({}), rolled-back event after {}, rollback complete after {}",
            show_ms(failed_ms),
            failed["message"].as_str().unwrap_or("?"),
            show_ms(rolled_back),
            show_ms(done)
        ));
        tokio::task::block_in_place(|| drop(cluster));
        self.rows.push(
            Row::new("rollbackComplete", "bad rollout -> rolled back", rolled_back, "ms")
                .shown(show_ms(rolled_back))
                .how(format!(
                    "web (2 registry components, rollout maxSurge 1, maxUnavailable 0, progressDeadlineMs 3000, \
                     autoRollback) edited to a command that exits at once: from saving the manifest to orch's \
                     rolled-back event (events polled every 10 ms); rollout-failed after {}, the rollback's rollout \
                     complete in /api/rollouts/web after {}",
                    show_ms(failed_ms),
                    show_ms(done)
                ))
                .detail("failedMs", failed_ms)
                .detail("completeMs", done)
                .detail("failure", failed["message"].clone())
                .detail("history", history["rollouts"].clone()),
        );
    }
}

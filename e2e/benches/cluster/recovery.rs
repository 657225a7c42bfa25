//! The recovery steps: `scale` (3 → 5 replicas → serving), `kills` (kill -9 → answering
//! from a new process), `dashboard` (kill -9 → the dashboard shows it) and `hangs` (SIGSTOP
//! → a new pid ready).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bench::report::{Row, Target};
use bench::stats::{ms, runs, show_count, show_ms, show_spread, spread};
use e2e::cluster::{Cluster, gone};
use e2e::topology::Topology;
use e2e::traffic::{Api, Load, Mix};
use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::Bench;
use super::support::{DEADLINE, ready_instance, sigkill, until};

const EDITS: usize = 5;
/// The instances killed with SIGKILL, in turn, each once.
const KILLS: [&str; 9] =
    ["auth-1", "data-1", "compute-1", "auth-2", "data-2", "compute-2", "auth-3", "data-3", "compute-3"];
const DASHBOARD_KILLS: [&str; 5] = ["data-2", "compute-3", "auth-2", "data-3", "compute-1"];
const HANGS: [&str; 3] = ["data-1", "compute-2", "auth-3"];
/// A healthy stretch longer than the manifest's `resetAfterMs` (100), so every kill is a
/// first crash, restarted at once rather than after a backoff.
const HEALTHY_STRETCH: Duration = Duration::from_millis(300);

impl Bench {
    /// Step 7: saving a 3 → 5 edit of data's replicas → both new instances serve.
    pub(super) async fn scale_up(&mut self, cluster: &Cluster, topology: &Topology) {
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
    pub(super) async fn kills(&mut self, cluster: &Cluster, api: &Api) {
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
    pub(super) async fn dashboard(&mut self, cluster: &Cluster) {
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
    pub(super) async fn hangs(&mut self, cluster: &Cluster) {
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
            let gone_in_time =
                until(Duration::from_millis(10), "the stopped process gone", || async { gone(pid).then_some(()) });
            if tokio::time::timeout(Duration::from_secs(5), gone_in_time).await.is_err() {
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

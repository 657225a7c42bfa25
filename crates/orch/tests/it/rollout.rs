//! Rollouts with real processes: a new revision that exits at once fails its rollout and is
//! rolled back by itself while the old instances keep serving; the history shows every
//! rollout; `orch apply --wait` says it failed; `orch rollout undo` goes back by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kit::testing::eventually;
use serde_json::Value;

use crate::{Cluster, DEADLINE, manifest, stdout};

/// A registry and `web` (2 registry components) rolled out with a surge instance and no
/// unavailability; `web_spec` replaces web's `component: registry` line.
fn web_manifest(web_spec: &str) -> String {
    manifest(&format!(
        "    - name: registry\n      component: registry\n    - name: web\n      {web_spec}\n      replicas: 2\n      dependsOn: [registry]\n      socketActivation: true\n      readiness: {{ path: /health, periodMs: 100 }}\n      restart: {{ backoffInitialMs: 20, backoffMaxMs: 100 }}\n      gracePeriodMs: 2000\n      rollout: {{ maxSurge: 1, maxUnavailable: 0, progressDeadlineMs: 8000, autoRollback: true }}\n"
    ))
}

const GOOD: &str = "component: registry";
const EXITS_AT_ONCE: &str = "command: [/bin/sh, -c, 'exit 3']";

/// `GET /api/rollouts/web` until `done` holds.
async fn history_until(cluster: &Cluster, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(DEADLINE, what, || async {
        let h = cluster.get("/api/rollouts/web").await;
        done(&h).then_some(h)
    })
    .await
}

fn states(h: &Value) -> Vec<(u64, String)> {
    h["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["number"].as_u64().unwrap(), r["state"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_that_crashes_is_rolled_back_while_the_old_instances_keep_serving() {
    let cluster = Cluster::start(&web_manifest(GOOD)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    history_until(&cluster, "rollout #1 complete", |h| states(h) == [(1, "complete".to_owned())]).await;
    let ports: Vec<u64> = cluster
        .instances()
        .await
        .iter()
        .filter(|i| i["name"] == "web-1" || i["name"] == "web-2")
        .map(|i| i["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 2);

    // Requests at the old instances all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let http = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                for port in &ports {
                    let res = http.get(format!("http://127.0.0.1:{port}/health")).send().await;
                    let counter = if res.is_ok_and(|r| r.status().is_success()) { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });

    // The bad manifest, handed over with --wait: the rollout fails, the command says so.
    std::fs::write(cluster.path("bad.yaml"), web_manifest(EXITS_AT_ONCE)).unwrap();
    let out = tokio::task::block_in_place(|| cluster.cli(&["apply", "--wait", "bad.yaml"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("web: rollout #2 failed"), "{}", stdout(&out));
    cluster.wait_event("rollout-failed", None, "web rollout #2 failed").await;
    cluster.wait_event("rolled-back", None, "web back on the spec of rollout #1").await;
    let h = history_until(&cluster, "the rollback complete", |h| {
        states(h).len() == 3 && h["rollouts"][2]["state"] == "complete"
    })
    .await;
    assert_eq!(states(&h), [(1, "complete".to_owned()), (2, "failed".to_owned()), (3, "complete".to_owned())]);
    assert!(h["rollouts"][2]["change"].as_str().unwrap().starts_with("rollback to #1"), "{h}");
    assert_eq!(h["pinned"], true, "the file still asks for #2's spec");
    assert_eq!(h["lastGood"], 3);
    // The surge instance of the failed revision is gone; the old instances never stopped.
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    assert_eq!(after, before, "the old instances kept running");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed request");
    assert!(ok.load(Ordering::Relaxed) > 0);

    // The history on the console, and a note in `orch get`.
    let out = cluster.cli(&["rollout", "history", "web"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("failed: web-3 is crash-looping") || text.contains("failed: not ready within"), "{text}");
    assert!(text.contains("runs the spec of an earlier rollout (#3)"), "{text}");
    let out = cluster.cli(&["get"]);
    assert!(crate::stderr(&out).contains("web runs the spec of an earlier rollout"), "{out:?}");

    // A good change (back to m.yaml, with an env), then `undo` by hand goes back to #3's spec.
    std::fs::write(
        cluster.path("m.yaml"),
        web_manifest(GOOD).replace("replicas: 2", "replicas: 2\n      env: { GREETING: hi }"),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| cluster.cli(&["apply", "--wait", "m.yaml"]));
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("web: rollout #4 complete"), "{}", stdout(&out));
    let out = cluster.cli(&["rollout", "undo", "web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("rollout #5 started (undo to #3"), "{}", stdout(&out));
    let out = tokio::task::block_in_place(|| cluster.cli(&["rollout", "status", "web"]));
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("web: rollout #5 complete: 2/2 ready"), "{}", stdout(&out));
    let h = cluster.get("/api/rollouts/web").await;
    assert_eq!(h["pinned"], true);
    let env = &cluster.get("/api/instances/web-1").await["spec"]["env"];
    assert!(env.get("GREETING").is_none(), "{env}");
    // Undo to a rollout that does not exist changes nothing.
    let out = cluster.cli(&["rollout", "undo", "web", "--to", "9"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(crate::stderr(&out).contains("no rollout #9"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_probe_change_is_a_numbered_rollout_that_replaces_the_instances() {
    let cluster = Cluster::start(&web_manifest(GOOD)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    history_until(&cluster, "rollout #1 complete", |h| states(h) == [(1, "complete".to_owned())]).await;

    cluster.edit(&web_manifest(GOOD).replace("periodMs: 100", "periodMs: 150"));
    let h =
        history_until(&cluster, "rollout #2 complete", |h| states(h).get(1).is_some_and(|r| r.1 == "complete")).await;
    assert_eq!(h["rollouts"][1]["change"], "replace the instances of web one at a time (readiness changed)", "{h}");
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let pid = |list: &[(String, Option<u64>, bool)], name: &str| list.iter().find(|i| i.0 == name).unwrap().1;
    assert_eq!(pid(&after, "registry-1"), pid(&before, "registry-1"), "the registry's revision did not change");
    for name in ["web-1", "web-2"] {
        assert_ne!(pid(&after, name), pid(&before, name), "{name} replaced");
    }
    let probe = &cluster.get("/api/instances/web-1").await["spec"]["readiness"];
    assert_eq!(probe["periodMs"], 150, "{probe}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rollout_history_survives_a_restart_of_orch() {
    let mut cluster = Cluster::start(&web_manifest(GOOD)).await;
    history_until(&cluster, "rollout #1 complete", |h| states(h) == [(1, "complete".to_owned())]).await;
    cluster.edit(&web_manifest(GOOD).replace("replicas: 2", "replicas: 2\n      env: { GREETING: hi }"));
    let before = history_until(&cluster, "rollout #2 complete", |h| {
        states(h) == [(1, "complete".to_owned()), (2, "complete".to_owned())]
    })
    .await;

    // orch stops and starts again on the same manifest and data dir.
    cluster.signal(nix::sys::signal::Signal::SIGTERM);
    cluster.wait_exit(DEADLINE).expect("orch stopped");
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    drop(cluster);
    let cluster = Cluster::start_in(dir).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;

    // The same two rollouts: the revision orch runs again is #2's, no new one.
    let after = cluster.get("/api/rollouts/web").await;
    assert_eq!(after["rollouts"], before["rollouts"], "{after}");
    assert_eq!((after["current"].as_u64(), after["lastGood"].as_u64()), (Some(2), Some(2)), "{after}");
    let out = cluster.cli(&["rollout", "history", "web"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.lines().any(|l| l.starts_with("1 ") && l.contains("created") && l.contains("complete")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("2* ") && l.contains("(env changed)")), "{text}");
    // #1's spec was not kept across the restart: no undo to it, and nothing changes.
    let out = cluster.cli(&["rollout", "undo", "web"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(crate::stderr(&out).contains("rollout #1 ran before orch restarted"), "{out:?}");
    assert_eq!(cluster.get("/api/rollouts/web").await["rollouts"], before["rollouts"]);

    // A change after the restart numbers on: #3.
    cluster.edit(&web_manifest(GOOD));
    history_until(&cluster, "rollout #3 complete", |h| states(h).get(2) == Some(&(3, "complete".to_owned()))).await;
}

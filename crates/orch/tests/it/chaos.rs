//! `orch chaos`: kills, pauses and balancer faults against real processes, each seen as a
//! `chaos` event; experiments that repeat and end by themselves or by `chaos stop`; bad
//! input that changes nothing.

use std::time::{Duration, Instant};

use kit::testing::eventually;
use serde_json::{Value, json};

use crate::{Cluster, DEADLINE, files_behind_balancer, gone, manifest, stderr, stdout, web};

/// The state letter of process `pid` (`T` stopped, `S` sleeping, `R` running...).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `web` without a liveness probe: a paused instance stays paused as long as chaos says.
fn calm(replicas: u32) -> String {
    manifest(&format!(
        "    - name: registry\n      component: registry\n    - name: web\n      component: registry\n      replicas: {replicas}\n      dependsOn: [registry]\n      liveness: {{ enabled: false }}\n      restart: {{ backoffInitialMs: 20, backoffMaxMs: 200 }}\n"
    ))
}

/// The cluster of [`files_behind_balancer`]: requests through the balancer reach a real backend.
fn balanced() -> tempfile::TempDir {
    files_behind_balancer("")
}

/// The `chaos` events so far.
async fn chaos_events(cluster: &Cluster) -> Vec<Value> {
    cluster.events().await.into_iter().filter(|e| e["type"] == "chaos").collect()
}

async fn experiments(cluster: &Cluster) -> Vec<Value> {
    cluster.get("/api/chaos").await["experiments"].as_array().unwrap().clone()
}

/// The balancer's admin API takes the registry token.
fn token(cluster: &Cluster) -> String {
    cluster.registry_token()
}

/// Runs `orch chaos ARGS` and expects success; its stdout.
fn chaos(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["chaos"];
    all.extend_from_slice(args);
    let out = cluster.cli(&all);
    assert!(out.status.success(), "orch {all:?}: {}", stderr(&out));
    stdout(&out)
}

/// The experiment id in `chaos experiment 3 started: ...`.
fn experiment_id(out: &str) -> String {
    out.split_whitespace().nth(2).unwrap().to_owned()
}

#[tokio::test]
async fn kill_hits_an_instance_or_a_random_one_of_a_service_and_orch_restarts_it() {
    let cluster = Cluster::start(&web(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;

    let old = cluster.pid("web-2").await;
    let out = chaos(&cluster, &["kill", "web-2"]);
    assert_eq!(out.trim(), "chaos: killed web-2 (SIGKILL)");
    let event = cluster.wait_event("chaos", Some("web-2"), "chaos: killed web-2 (SIGKILL)").await;
    assert_eq!(event["service"], "web");
    cluster.wait_event_after(event["seq"].as_u64().unwrap(), "exited", Some("web-2"), "signal SIGKILL").await;
    cluster.wait_event("restarted", Some("web-2"), "restart 1").await;
    let list = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    assert_ne!(list.iter().find(|(n, ..)| n == "web-2").unwrap().1, Some(u64::from(old)));
    eventually(DEADLINE, "the killed process to be gone", || async { gone(old).then_some(()) }).await;

    // A service: a random running instance of it.
    let before = cluster.pids().await;
    let out = chaos(&cluster, &["kill", "web"]);
    let victim = out.trim().strip_prefix("chaos: killed ").and_then(|r| r.strip_suffix(" (SIGKILL)")).unwrap();
    assert!(["web-1", "web-2"].contains(&victim), "{out}");
    let old = before.iter().find(|(n, ..)| n == victim).unwrap().1.unwrap() as u32;
    cluster.wait_event("chaos", Some(victim), &format!("chaos: killed {victim} (SIGKILL)")).await;
    let after = eventually(DEADLINE, "the victim restarted under a new pid", || async {
        let list = cluster.pids().await;
        let (_, pid, ready) = list.iter().find(|(n, ..)| n == victim)?.clone();
        (ready && pid.is_some_and(|p| p != u64::from(old))).then_some(list)
    })
    .await;
    let other = if victim == "web-1" { "web-2" } else { "web-1" };
    let pid_of = |list: &[(String, Option<u64>, bool)], name: &str| list.iter().find(|(n, ..)| n == name).unwrap().1;
    assert_eq!(pid_of(&after, other), pid_of(&before, other), "only one instance was hit");
    // A single kill is over at once: no experiment stays listed.
    assert!(experiments(&cluster).await.is_empty());
}

#[tokio::test]
async fn pause_stops_the_process_then_resumes_the_same_one() {
    let cluster = Cluster::start(&calm(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let pid = cluster.pid("web-1").await;

    let out = chaos(&cluster, &["pause", "web-1", "--duration", "1s"]);
    assert!(out.contains("chaos: paused web-1 for 1s"), "{out}");
    // Stopped now: the signal is sent before the command returns.
    eventually(DEADLINE, "web-1 stopped (T)", || async { (state(pid) == Some('T')).then_some(()) }).await;
    let listed = experiments(&cluster).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["action"].as_str(), listed[0]["paused"].clone()), (Some("pause"), json!(["web-1"])));
    // A paused instance cannot be paused twice.
    let out = cluster.cli(&["chaos", "pause", "web-1", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("web-1 is paused already"), "{}", stderr(&out));

    cluster.wait_event("chaos", Some("web-1"), "chaos: resumed web-1").await;
    let state_now = state(pid);
    assert!(matches!(state_now, Some('S' | 'R')), "running again, not {state_now:?}");
    assert_eq!(cluster.pid("web-1").await, pid, "the same process, resumed");
    cluster.wait_event("chaos", Some("web-1"), "ended (its time is up; 1 injection)").await;
    assert!(experiments(&cluster).await.is_empty());
    let restarts = cluster.get("/api/instances/web-1").await["restarts"].clone();
    assert_eq!(restarts, 0);
}

#[tokio::test]
async fn a_pause_longer_than_liveness_is_replaced_and_nothing_is_resumed() {
    // web's liveness: every 100 ms, 3 failures of 300 ms.
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let pid = cluster.pid("web-1").await;
    let out = chaos(&cluster, &["pause", "web", "--duration", "1m"]);
    assert!(out.contains("chaos: paused web-1 for 1m"), "{out}");
    eventually(DEADLINE, "web-1 stopped (T)", || async { (state(pid) == Some('T')).then_some(()) }).await;
    cluster.wait_event("liveness-failed", Some("web-1"), "3 times in a row").await;
    cluster.wait_event("restarted", Some("web-1"), "restart 1").await;
    let list = cluster.wait_ready(&["registry-1", "web-1"]).await;
    let new = list[1].1.unwrap() as u32;
    assert_ne!(new, pid);
    eventually(DEADLINE, "the paused process to be killed", || async { gone(pid).then_some(()) }).await;

    // Ending the experiment signals nothing: its process is gone.
    let id = experiment_id(&out);
    let out = chaos(&cluster, &["stop", &id]);
    assert!(out.contains(&format!("chaos experiment {id} stopped")), "{out}");
    cluster.wait_event("chaos", Some("web-1"), "nothing to resume for web-1").await;
    assert!(!chaos_events(&cluster).await.iter().any(|e| e["message"] == "chaos: resumed web-1"));
    assert!(matches!(state(new), Some('S' | 'R')), "the new process runs");
}

#[tokio::test]
async fn every_repeats_until_for_ends_by_itself() {
    let cluster = Cluster::start(&web(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let out = chaos(&cluster, &["kill", "web", "--every", "300ms", "--for", "1s"]);
    let id = experiment_id(&out);
    assert!(out.contains("kill a random instance of web every 300ms for 1s"), "{out}");

    // At once, then at 300, 600 and 900 ms: four kills, then it ends.
    let ended = cluster.wait_event("chaos", None, &format!("chaos experiment {id} ended (its time is up")).await;
    assert!(ended["message"].as_str().unwrap().ends_with("4 injections)"), "{ended}");
    assert!(experiments(&cluster).await.is_empty());
    let kills = || async {
        chaos_events(&cluster)
            .await
            .iter()
            .filter(|e| e["message"].as_str().unwrap().starts_with("chaos: killed web-"))
            .count()
    };
    assert_eq!(kills().await, 4);
    // orch restarted every one of them, and nothing more was killed.
    eventually(DEADLINE, "four restarts, every instance ready", || async {
        let list = cluster.instances().await;
        let restarts: u64 = list.iter().filter_map(|i| i["restarts"].as_u64()).sum();
        (restarts == 4 && list.iter().all(|i| i["ready"] == true)).then_some(())
    })
    .await;
    assert_eq!(kills().await, 4);
}

#[tokio::test]
async fn chaos_stop_ends_repeating_experiments_and_resumes_what_they_paused() {
    let cluster = Cluster::start(&calm(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let paused = cluster.pid("web-1").await;
    let pause = chaos(&cluster, &["pause", "web-1", "--duration", "1m"]);
    let kill = chaos(&cluster, &["kill", "web-2", "--every", "200ms", "--for", "1m"]);
    let (pause_id, kill_id) = (experiment_id(&pause), experiment_id(&kill));
    eventually(DEADLINE, "at least two kills", || async {
        let v = cluster.get("/api/chaos").await;
        let e = v["experiments"].as_array()?.iter().find(|e| e["id"] == kill_id.as_str())?.clone();
        (e["injected"].as_u64()? >= 2).then_some(())
    })
    .await;

    let table = chaos(&cluster, &["list"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "ACTION", "TARGET", "INJECTED", "ENDS", "IN", "WHAT"]);
    assert!(table.lines().any(|l| l.starts_with(&pause_id) && l.contains("pause web-1 for 1m")), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&kill_id) && l.contains("kill web-2 every 200ms for 1m")), "{table}");
    let v: Value = serde_json::from_str(&chaos(&cluster, &["list", "-o", "json"])).unwrap();
    assert_eq!(v["experiments"].as_array().unwrap().len(), 2);

    // One by its id.
    let out = chaos(&cluster, &["stop", &kill_id]);
    assert!(out.contains(&format!("chaos experiment {kill_id} stopped")), "{out}");
    let ended = cluster.wait_event("chaos", Some("web-2"), &format!("chaos experiment {kill_id} ended (stopped")).await;
    let kills_then =
        chaos_events(&cluster).await.iter().filter(|e| e["message"] == "chaos: killed web-2 (SIGKILL)").count();
    assert_eq!(experiments(&cluster).await.len(), 1);

    // The rest: the paused process runs again, untouched otherwise.
    let out = chaos(&cluster, &["stop"]);
    assert!(out.contains(&format!("chaos experiment {pause_id} stopped")), "{out}");
    cluster.wait_event("chaos", Some("web-1"), "chaos: resumed web-1").await;
    assert!(matches!(state(paused), Some('S' | 'R')));
    assert_eq!(cluster.pid("web-1").await, paused);
    assert!(experiments(&cluster).await.is_empty());
    assert_eq!(stdout(&cluster.cli(&["chaos", "list"])).trim(), "no chaos experiment is running");
    assert_eq!(stdout(&cluster.cli(&["chaos", "stop", "--all"])).trim(), "no chaos experiment was running");

    // No kill after the stop: web-2 is back and stays with the kills counted then.
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let after = chaos_events(&cluster).await;
    assert!(after.last().unwrap()["seq"].as_u64() > ended["seq"].as_u64());
    assert_eq!(after.iter().filter(|e| e["message"] == "chaos: killed web-2 (SIGKILL)").count(), kills_then);
}

/// GET through the balancer: status, body, and how long it took.
async fn fetch(http: &reqwest::Client, balancer: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let res = http.get(format!("{balancer}/files/hello.txt")).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap(), started.elapsed())
}

#[tokio::test]
async fn latency_and_errors_at_the_balancer_end_by_themselves() {
    let cluster = Cluster::start_in(balanced()).await;
    cluster.wait_ready(&["registry-1", "files-1", "balancer-1"]).await;
    let balancer = format!("http://127.0.0.1:{}", cluster.get("/api/instances/balancer-1").await["port"]);
    let http = reqwest::Client::new();
    eventually(DEADLINE, "the balancer routing to files", || async {
        let (status, body, _) = fetch(&http, &balancer).await;
        (status == 200 && body == "hello\n").then_some(())
    })
    .await;
    let faults = || async {
        let res = http.get(format!("{balancer}/api/faults")).bearer_auth(token(&cluster)).send().await.unwrap();
        res.json::<Value>().await.unwrap()["faults"].as_array().unwrap().clone()
    };

    // Errors: every request gets the injected status, answered by the balancer.
    let out = chaos(&cluster, &["errors", "files", "--percent", "100", "--status", "418", "--for", "3s"]);
    let id = experiment_id(&out);
    cluster.wait_event("chaos", None, "chaos: files answers 100% 418 for 3s").await;
    for _ in 0..5 {
        let (status, body, _) = fetch(&http, &balancer).await;
        assert_eq!((status, body.as_str()), (418, r#"{"error":"injected fault"}"#));
    }
    let listed = experiments(&cluster).await;
    assert_eq!((listed[0]["percent"].as_f64(), listed[0]["status"].as_u64()), (Some(100.0), Some(418)));
    assert_eq!(listed[0]["balancers"], json!(["balancer-1"]));

    // A balancer that restarts meanwhile gets the fault again.
    let old = cluster.pid("balancer-1").await;
    chaos(&cluster, &["kill", "balancer-1"]);
    cluster.wait_event("chaos", None, "chaos: files answers 100% 418 for 3s again at balancer-1").await;
    assert_ne!(cluster.pid("balancer-1").await, old);
    assert_eq!(fetch(&http, &balancer).await.0, 418);

    cluster.wait_event("chaos", None, &format!("chaos experiment {id} ended (its time is up")).await;
    assert!(faults().await.is_empty(), "the balancer holds no fault after the end");
    eventually(DEADLINE, "answers from files again", || async {
        let (status, body, _) = fetch(&http, &balancer).await;
        (status == 200 && body == "hello\n").then_some(())
    })
    .await;

    // Latency: each request waits at least the added delay, and still reaches files.
    let out = chaos(&cluster, &["latency", "files", "--ms", "400", "--for", "1500ms"]);
    let id = experiment_id(&out);
    cluster.wait_event("chaos", None, "chaos: files +400 ms latency for 1500ms").await;
    let listed = faults().await;
    assert_eq!((listed.len(), listed[0]["latencyMs"].as_u64()), (1, Some(400)));
    let (status, body, took) = fetch(&http, &balancer).await;
    assert_eq!((status, body.as_str()), (200, "hello\n"));
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    cluster.wait_event("chaos", None, &format!("chaos experiment {id} ended (its time is up")).await;
    assert!(faults().await.is_empty());
    assert!(experiments(&cluster).await.is_empty());

    // Latency for a share of the requests: some wait, some do not.
    let out = chaos(&cluster, &["latency", "files", "--ms", "200", "--percent", "50", "--for", "1m"]);
    cluster.wait_event("chaos", None, "chaos: files +200 ms latency on 50% for 1m").await;
    assert_eq!(faults().await[0]["latencyPercent"].as_f64(), Some(50.0));
    let mut delayed = 0;
    for _ in 0..16 {
        let (status, _, took) = fetch(&http, &balancer).await;
        assert_eq!(status, 200);
        delayed += usize::from(took >= Duration::from_millis(200));
    }
    assert!((1..16).contains(&delayed), "{delayed} of 16 requests delayed");
    chaos(&cluster, &["stop", &experiment_id(&out)]);
    assert!(faults().await.is_empty());

    // Stopped early, a fault is removed at once.
    let out = chaos(&cluster, &["errors", "files", "--percent", "100", "--for", "1m"]);
    assert_eq!(fetch(&http, &balancer).await.0, 503, "the default status");
    chaos(&cluster, &["stop", &experiment_id(&out)]);
    assert!(faults().await.is_empty());
    assert_eq!(fetch(&http, &balancer).await.0, 200);
}

#[tokio::test]
async fn bad_input_is_refused_precisely_and_changes_nothing() {
    let cluster = Cluster::start(&web(1)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1"]).await;
    let cases: &[(&[&str], i32, &str)] = &[
        (&["kill", "nosuch"], 1, "no instance or service named \"nosuch\""),
        (&["pause", "web-7", "--duration", "1s"], 1, "no instance or service named \"web-7\""),
        (&["kill", "web", "--every", "1s"], 2, "--every needs --for (at most 1h)"),
        (&["kill", "web", "--for", "1s"], 2, "--for bounds a repeating kill: give --every too"),
        (&["kill", "web", "--every", "1x", "--for", "1s"], 2, "invalid duration \"1x\""),
        (&["kill", "web", "--every", "50ms", "--for", "1s"], 2, "--every must be from 100ms to 1h, got 50ms"),
        (&["kill", "web", "--every", "1s", "--for", "2h"], 2, "--for must be from 1ms to 1h, got 2h"),
        (&["pause", "web", "--duration", "0s"], 2, "--duration must be from 1ms to 1h, got 0ms"),
        (&["pause", "web"], 2, "--duration <DUR>"),
        (&["partition", "web"], 2, "--duration <DUR>"),
        (&["partition", "web", "--every", "1s", "--duration", "1s"], 2, "--every needs --for"),
        // Started without ORCH_PARTITIONS: instances talk to the registry directly.
        (&["partition", "web-1", "--duration", "1s"], 1, "partitions are off in this cluster"),
        (
            &["errors", "web", "--percent", "101", "--for", "1s"],
            2,
            "--percent must be above 0 and at most 100, got 101",
        ),
        (&["errors", "web", "--percent", "0", "--for", "1s"], 2, "--percent must be above 0 and at most 100, got 0"),
        (
            &["errors", "web", "--percent", "50", "--status", "302", "--for", "1s"],
            2,
            "--status must be from 400 to 599, got 302",
        ),
        (&["errors", "web", "--percent", "50"], 2, "--for <DUR>"),
        (&["latency", "web", "--ms", "0", "--for", "1s"], 2, "--ms must be from 1 to 600000, got 0"),
        (
            &["latency", "web", "--ms", "100", "--percent", "0", "--for", "1s"],
            2,
            "--percent must be above 0 and at most 100, got 0",
        ),
        (&["latency", "web", "--ms", "100", "--for", "1s"], 2, "the cluster has no balancer"),
        (&["errors", "web", "--percent", "5", "--for", "1s"], 2, "the cluster has no balancer"),
        (&["stop", "42"], 1, "no chaos experiment \"42\""),
        (&["stop", "1", "--all"], 2, "cannot be used with"),
    ];
    let mut wrong = Vec::new();
    for (args, code, message) in cases {
        let mut all = vec!["chaos"];
        all.extend_from_slice(args);
        let out = cluster.cli(&all);
        let err = stderr(&out);
        if out.status.code() != Some(*code) || !err.contains(message) {
            wrong.push(format!(
                "{args:?}: exit {:?}, stderr {err:?}; expected {code} and {message:?}",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The API checks the same, and wants the token.
    let url = format!("{}/api/chaos", cluster.url);
    let http = &cluster.http;
    let res = http.post(&url).json(&json!({"action": "kill", "target": "web"})).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let token = cluster.control_token();
    let api_cases = [
        (json!({"action": "kill", "target": "web", "everyMs": 1000}), 400, "everyMs needs forMs"),
        (json!({"action": "explode", "target": "web"}), 400, "unknown variant `explode`"),
        (json!({"action": "kill", "target": "web", "signal": 9}), 400, "unknown field `signal`"),
        (json!({"action": "kill", "target": "nope"}), 404, "no instance or service named \"nope\""),
    ];
    for (body, status, message) in api_cases {
        let res = http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(res.status(), status, "{body}");
        let v: Value = res.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(message), "{body}: {v}");
    }
    let res = http.delete(format!("{url}/7")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 401);

    // Nothing happened.
    assert!(chaos_events(&cluster).await.is_empty());
    assert!(experiments(&cluster).await.is_empty());
    assert_eq!(cluster.pids().await, before);
}

//! The CLI verbs and the control API, against a running cluster.

use std::time::Duration;

use kit::testing::eventually;
use serde_json::Value;

use crate::{Cluster, DEADLINE, ORCH, manifest, orch, stderr, stdout, web};

#[tokio::test]
async fn get_describe_logs_and_events() {
    let cluster = Cluster::start(&web(2)).await;
    let list = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;

    let out = cluster.cli(&["get"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "PID", "PORT", "STATUS", "READY", "RESTARTS", "AGE"]);
    assert_eq!(lines.len(), 4);
    assert!(lines[2].starts_with("web-1 ") && lines[2].contains(" running ") && lines[2].contains(" yes "), "{text}");
    // Columns are aligned: every row's STATUS starts where the header's does.
    let col = lines[0].find("STATUS").unwrap();
    assert!(lines[1..].iter().all(|l| &l[col..col + 7] == "running"), "{text}");

    let out = cluster.cli(&["get", "web", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["instances"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    assert_eq!(v["instances"][0]["pid"], list[1].1.unwrap());

    let out = cluster.cli(&["get", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no service \"nosuch\""), "{}", stderr(&out));

    let out = cluster.cli(&["describe", "web-2"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("Name:       web-2") && text.contains("Status:     running (ready)"), "{text}");
    assert!(text.contains("component: registry") && text.contains("web-2 ready"), "{text}");
    let out = cluster.cli(&["describe", "web-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no instance \"web-9\""));
    let v: Value = serde_json::from_slice(&cluster.cli(&["describe", "web-1", "-o", "json"]).stdout).unwrap();
    assert_eq!(v["spec"]["replicas"], 2);
    assert!(v["events"].as_array().unwrap().iter().any(|e| e["type"] == "started"));

    // orch's start marker and the component's own lines are in the log.
    let out = cluster.cli(&["logs", "web-1"]);
    let text = stdout(&out);
    assert!(text.contains("[orch ") && text.contains("started web-1"), "{text}");
    assert!(text.contains("listening"), "{text}");
    let out = cluster.cli(&["logs", "web-1", "--tail", "1"]);
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = cluster.cli(&["logs", "../etc"]);
    assert_eq!(out.status.code(), Some(1));

    let out = cluster.cli(&["events"]);
    assert!(stdout(&out).lines().any(|l| l.contains("manifest-applied")), "{}", stdout(&out));
    let out = cluster.cli(&["events", "-o", "json"]);
    let first: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["type"], "manifest-applied");
}

#[tokio::test]
async fn follow_streams_new_events_and_log_lines() {
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let mut events = std::process::Command::new(ORCH)
        .args(["events", "-f", "--control", &cluster.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = std::process::Command::new(ORCH)
        .args(["logs", "web-1", "-f", "--control", &cluster.url])
        .env("HOME", cluster.dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = cluster.cli(&["restart", "web-1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cluster.wait_event("rolled", None, "web rolled out").await;
    // Both followers saw what happened after they started.
    let read = |child: &mut std::process::Child, needle: &'static str| {
        use std::io::BufRead;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(needle) {
                    let _ = tx.send(line);
                    return;
                }
            }
        });
        rx.recv_timeout(DEADLINE)
    };
    let seen_event = read(&mut events, "web-1 stopping (replaced)");
    let seen_log = read(&mut logs, "exited (");
    for child in [&mut events, &mut logs] {
        let _ = child.kill();
        let _ = child.wait();
    }
    seen_event.expect("events -f shows the restart");
    seen_log.expect("logs -f shows the exit marker");
}

#[tokio::test]
async fn scale_restart_and_diff() {
    let cluster = Cluster::start(&web(2)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;

    let out = cluster.cli(&["scale", "web=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "web scaled 2 -> 3");
    cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    for (args, code, text) in [
        (&["scale", "web=-1"][..], 2, "replicas must be from 0 to 1000, got -1"),
        (&["scale", "web=1001"][..], 2, "replicas must be from 0 to 1000, got 1001"),
        (&["scale", "nosuch=1"][..], 1, "no service \"nosuch\""),
        (&["scale", "web"][..], 2, "expected SERVICE=REPLICAS"),
        (&["restart", "nosuch"][..], 1, "no service or instance \"nosuch\""),
    ] {
        let out = cluster.cli(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(text), "{args:?}: {}", stderr(&out));
    }

    // A rolling restart replaces every instance of the service, one at a time.
    let out = cluster.cli(&["restart", "web"]);
    assert!(out.status.success());
    cluster.wait_event("rolled", None, "web rolled out: 3 instances").await;
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1].1, before[1].1);
    assert_ne!(after[2].1, before[2].1);

    // diff: the file says 2 replicas, the running cluster has 3.
    let out = cluster.cli(&["diff", "m.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "~ scale web 3 -> 2");
    std::fs::write(cluster.path("other.yaml"), web(3)).unwrap();
    let out = cluster.cli(&["diff", "other.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out).trim(), "no changes");
    std::fs::write(cluster.path("other.yaml"), web(3).replace("replicas: 3", "replicas: 3\n      env: { A: b }"))
        .unwrap();
    let out = cluster.cli(&["diff", "other.yaml", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changes"][0]["change"], "roll");
    // A dry run changes nothing.
    assert_eq!(cluster.pids().await, after);
}

#[tokio::test]
async fn events_long_poll_answers_when_something_happens() {
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let latest = cluster.get("/api/events?since=0").await["next"].as_u64().unwrap();
    let url = format!("{}/api/events?since={latest}&wait=30s", cluster.url);
    let waiting = tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await.unwrap() });
    let waiting = kit::testing::still_pending(waiting, Duration::from_millis(200), "the long poll").await;
    assert!(cluster.cli(&["restart", "web-1"]).status.success());
    let page = waiting.await.unwrap();
    assert!(page["events"].as_array().unwrap().iter().all(|e| e["seq"].as_u64().unwrap() > latest));
    assert!(page["next"].as_u64().unwrap() > latest);
}

#[tokio::test]
async fn apply_detached_hands_over_and_comes_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), web(2)).unwrap();
    let out = orch(dir.path(), &["apply", "-d", "m.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("3 instances ready in"), "{text}");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/orch.json")).unwrap()).unwrap();
    let url = record["controlUrl"].as_str().unwrap().to_owned();
    let daemon = record["pid"].as_u64().unwrap() as u32;
    let stop = Guard(daemon);
    assert!(text.contains(&url));

    // A second apply hands the file to the running orch (found through the shared data
    // dir). A new file, so the running orch's watcher of m.yaml cannot apply it first.
    std::fs::write(dir.path().join("m2.yaml"), web(3)).unwrap();
    let out = orch(dir.path(), &["apply", "m2.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("scale web 2 -> 3"), "{}", stdout(&out));
    let http = reqwest::Client::new();
    eventually(DEADLINE, "web-3 ready", || async {
        let v: Value = http.get(format!("{url}/api/instances?service=web")).send().await.ok()?.json().await.ok()?;
        (v["instances"].as_array()?.iter().filter(|i| i["ready"] == true).count() == 3).then_some(())
    })
    .await;
    // A bad manifest is refused by the CLI itself.
    std::fs::write(dir.path().join("m.yaml"), web(3).replace("replicas: 3", "replicas: 3\n      bogus: 1")).unwrap();
    let out = orch(dir.path(), &["apply", "m.yaml"]);
    assert_eq!(out.status.code(), Some(2));

    let out = orch(dir.path(), &["down", "--control", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(DEADLINE, "the detached orch to exit", || async { crate::gone(daemon).then_some(()) }).await;
    let out = orch(dir.path(), &["get", "--control", &url]);
    assert_eq!(out.status.code(), Some(3), "unreachable: {}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach orch"));
    drop(stop);
}

/// Ends a detached orch by PID if a test fails before `orch down`.
struct Guard(u32);

impl Drop for Guard {
    fn drop(&mut self) {
        if !crate::gone(self.0) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn a_custom_command_is_registered_under_its_service_name() {
    // A shell loop answering on its port, registered by orch on its behalf.
    let yaml = manifest(
        "    - name: registry\n      component: registry\n    - name: echo\n      command: [sh, -c, 'exec \"$0\" run registry', '{orch}']\n      env: { REGISTER: \"false\", HEARTBEAT_INTERVAL_MS: \"200\" }\n      replicas: 2\n      dependsOn: [registry]\n",
    )
    .replace("{orch}", ORCH);
    let cluster = Cluster::start(&yaml).await;
    cluster.wait_ready(&["registry-1", "echo-1", "echo-2"]).await;
    let registry_port = cluster.instances().await[0]["port"].as_u64().unwrap();
    let echo_ports: Vec<u64> = cluster.instances().await[1..].iter().map(|i| i["port"].as_u64().unwrap()).collect();
    let registry = format!("http://127.0.0.1:{registry_port}/api/registry/services/echo");
    let records = eventually(DEADLINE, "both echo instances registered", || async {
        let v: Value = reqwest::get(&registry).await.ok()?.json().await.ok()?;
        (v["total"] == 2).then_some(v)
    })
    .await;
    let mut urls: Vec<String> =
        records["services"].as_array().unwrap().iter().map(|r| r["url"].as_str().unwrap().to_owned()).collect();
    urls.sort();
    let mut expected: Vec<String> = echo_ports.iter().map(|p| format!("http://localhost:{p}")).collect();
    expected.sort();
    assert_eq!(urls, expected);
    // Scaled down, it is deregistered.
    assert!(cluster.cli(&["scale", "echo=1"]).status.success());
    eventually(DEADLINE, "echo-2 deregistered", || async {
        let v: Value = reqwest::get(&registry).await.ok()?.json().await.ok()?;
        (v["total"] == 1 && v["services"][0]["serviceId"] == "echo-1").then_some(())
    })
    .await;
}

#[tokio::test]
async fn logs_answer_their_tail_a_default_of_200_lines_even_from_a_large_file() {
    let cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    // A log of tens of MB (an instance that was very talkative before a restart of orch).
    let mut text = String::with_capacity(41 << 20);
    let mut i = 0;
    while text.len() < 40 << 20 {
        text.push_str(&format!("line {i:08} of a very talkative instance\n"));
        i += 1;
    }
    std::fs::write(cluster.path("data/logs/talk-1.log"), &text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let http = reqwest::Client::new();
    let get = |query: &str| {
        let req = http.get(format!("{}/api/logs/talk-1{query}", cluster.url)).bearer_auth(cluster.control_token());
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        }
    };
    let last = |n: usize| format!("{}\n", lines[lines.len() - n..].join("\n"));
    assert_eq!(get("?tail=7").await, last(7));
    assert_eq!(get("").await, last(200), "the default is the last 200 lines");
    assert_eq!(get("?tail=100000000").await, last(100_000), "tail is capped");
    let out = cluster.cli(&["logs", "talk-1", "--tail", "3"]);
    assert_eq!(stdout(&out), last(3));
}

#[tokio::test]
async fn a_detached_orch_rotates_its_log_and_events_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    // Once DATA_DIR/go exists, `flaky` crash-loops: events (and console lines) come fast.
    let yaml = manifest(
        "    - name: registry\n      component: registry\n    - name: flaky\n      command: [sh, -c, 'if [ -e {dataDir}/go ]; then sleep 0.05; exit 3; fi; exec sleep 300']\n      readiness: { enabled: false }\n      restart: { backoffInitialMs: 1, backoffMaxMs: 20 }\n",
    )
    .replace("  controlPort: 0\n", "  controlPort: 0\n  logMaxBytes: 4096\n");
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let out = orch(dir.path(), &["apply", "-d", "m.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("data/orch.json")).unwrap()).unwrap();
    let daemon = record["pid"].as_u64().unwrap() as u32;
    let url = record["controlUrl"].as_str().unwrap().to_owned();
    let stop = Guard(daemon);
    let data = dir.path().join("data");
    std::fs::write(data.join("go"), "").unwrap();
    let out = orch(dir.path(), &["restart", "flaky", "--control", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let size = |name: &str| std::fs::metadata(data.join(name)).map(|m| m.len()).ok();
    eventually(DEADLINE, "orch.log and events.jsonl rotated", || async {
        (size("orch.log.1").is_some() && size("events.jsonl.1").is_some()).then_some(())
    })
    .await;
    // The daemon goes on writing to a new orch.log, and events.jsonl stays under its cap.
    eventually(DEADLINE, "new lines in the new orch.log", || async {
        let text = std::fs::read_to_string(data.join("orch.log")).ok()?;
        text.contains("flaky-1").then_some(())
    })
    .await;
    assert!(size("events.jsonl").unwrap() <= 4096 && size("events.jsonl.1").unwrap() <= 4096);
    let out = orch(dir.path(), &["down", "--control", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually(DEADLINE, "the detached orch to exit", || async { crate::gone(daemon).then_some(()) }).await;
    drop(stop);
}

/// `orch verify`'s exit codes keep their meanings apart: `--workload all` with one client
/// is bad usage (2, nothing run), and a cluster that cannot be reached is a run that could
/// not be made (4), not an invalid verdict (1) nor an unknown one (3).
#[test]
fn verify_tells_bad_usage_and_a_failed_run_from_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = orch(dir.path(), &["verify", "--control", &closed, "--workload", "all", "--clients", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--clients 2 or more"), "{}", stderr(&out));
    let out = orch(dir.path(), &["verify", "--control", &closed, "--for", "1s", "--nemesis", "none"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

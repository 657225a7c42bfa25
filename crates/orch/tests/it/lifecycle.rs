//! The cluster's life: start, crash, hang, scale by editing the file, bad edits, orch's own
//! death, and `orch down`.

use std::time::Duration;

use kit::testing::eventually;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Cluster, DEADLINE, gone, manifest, web};

#[tokio::test]
async fn apply_brings_every_instance_up_and_ready_in_dependency_order() {
    let cluster = Cluster::start(&web(3)).await;
    let list = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    // Each instance has its own automatic port, and answers on it.
    let instances = cluster.instances().await;
    let mut ports: Vec<u64> = instances.iter().map(|i| i["port"].as_u64().unwrap()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    for i in &instances {
        let health: serde_json::Value =
            reqwest::get(format!("http://127.0.0.1:{}/health", i["port"])).await.unwrap().json().await.unwrap();
        assert_eq!(health["service"], i["name"], "SERVICE_NAME is the instance name");
        assert_eq!(i["status"], "running");
        assert_eq!(i["url"], format!("http://localhost:{}", i["port"]));
    }
    // web waited for the registry to be ready.
    let events = cluster.events().await;
    let at = |kind: &str, instance: &str| {
        events
            .iter()
            .position(|e| e["type"] == kind && e["instance"] == instance)
            .unwrap_or_else(|| panic!("{kind} {instance}"))
    };
    assert!(at("ready", "registry-1") < at("started", "web-1"));
    assert_eq!(list.len(), 4);
    // The cluster view.
    let c = cluster.get("/api/cluster").await;
    assert_eq!(c["name"], "test");
    assert_eq!(c["services"][1]["name"], "web");
    assert_eq!(c["services"][1]["component"], "registry");
    assert_eq!(c["services"][1]["replicas"], 3);
    assert_eq!(c["services"][1]["ready"], 3);
    assert!(c["services"][1]["port"].is_null());
    assert_eq!(c["controlUrl"], cluster.url);
    assert!(c["lastError"].is_null());
    // Events are in DATA_DIR/events.jsonl too.
    let lines = std::fs::read_to_string(cluster.path("data/events.jsonl")).unwrap();
    assert!(lines.lines().count() >= events.len());
    assert!(lines.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[tokio::test]
async fn a_killed_instance_is_restarted_on_the_same_socket() {
    let cluster = Cluster::start(&web(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let old = cluster.pid("web-2").await;
    let port = cluster.instances().await.iter().find(|i| i["name"] == "web-2").unwrap()["port"].as_u64().unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // The socket stays open while the process restarts: a request sent right after the kill
    // waits in the backlog and is answered by the new process, never refused.
    let res = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.expect("no connection refused");
    assert!(res.status().is_success());
    cluster.wait_event("exited", Some("web-2"), "signal SIGKILL").await;
    cluster.wait_event("restarted", Some("web-2"), "restart 1").await;
    let list = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let new = list.iter().find(|(n, ..)| n == "web-2").unwrap().1.unwrap() as u32;
    assert_ne!(new, old);
    let web2 = cluster.get("/api/instances/web-2").await;
    assert_eq!(web2["restarts"], 1);
    assert_eq!(web2["port"], port);
    assert_eq!(web2["lastExit"]["signal"], "SIGKILL");
    assert!(web2["lastExit"]["code"].is_null());
}

#[tokio::test]
async fn a_hung_instance_fails_liveness_and_is_replaced() {
    let cluster = Cluster::start(&web(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let hung = cluster.pid("web-1").await;
    kill(Pid::from_raw(hung as i32), Signal::SIGSTOP).unwrap();
    let event = cluster.wait_event("liveness-failed", Some("web-1"), "3 times in a row").await;
    assert!(event["message"].as_str().unwrap().contains("no answer within 300 ms"), "{event}");
    cluster.wait_event("restarted", Some("web-1"), "restart 1").await;
    let list = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    assert_ne!(list.iter().find(|(n, ..)| n == "web-1").unwrap().1, Some(u64::from(hung)));
    eventually(DEADLINE, "the hung process to be killed", || async { gone(hung).then_some(()) }).await;
}

#[tokio::test]
async fn editing_replicas_scales_up_and_gracefully_down() {
    let cluster = Cluster::start(&web(3)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;

    cluster.edit(&web(5));
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3", "web-4", "web-5"]).await;
    for (name, pid, _) in &before {
        assert_eq!(after.iter().find(|(n, ..)| n == name).unwrap().1, *pid, "{name} was left alone");
    }
    cluster.wait_event("scaled", None, "web scaled 3 -> 5").await;

    cluster.edit(&web(2));
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    for name in ["web-3", "web-4", "web-5"] {
        // SIGTERM and a clean exit, not SIGKILL.
        cluster.wait_event("stopped", Some(name), "stopped (code 0)").await;
    }
    let events = cluster.events().await;
    let stopping: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "stopping" && e["message"].as_str().unwrap().contains("scaled down"))
        .map(|e| e["instance"].as_str().unwrap())
        .collect();
    assert_eq!(stopping, ["web-5", "web-4", "web-3"], "highest ordinals first");
    let still: Vec<_> = cluster.pids().await.into_iter().map(|(_, pid, _)| pid).collect();
    assert_eq!(still[1], after[1].1, "web-1 untouched");
}

#[tokio::test]
async fn a_broken_edit_changes_nothing_and_the_next_valid_one_applies() {
    let cluster = Cluster::start(&web(2)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let bad = [
        (web(2).replace("replicas: 2", "replicas: 5\n      bogus: true"), "unknown field `bogus`"),
        (web(2).replace("dependsOn: [registry]", "dependsOn: [web]"), "depends on itself"),
        (web(2).replace("replicas: 2", "replicas: -2"), "replicas must be from 0 to 1000, got -2"),
        (
            web(2).replace("replicas: 2", &format!("replicas: 2\n      port: {taken_port}")),
            "is already in use by another program",
        ),
        (
            web(2).replace("  services:", "  services:\n  - ["),
            "invalid type: sequence, expected a service: a mapping with a name",
        ),
    ];
    for (yaml, expected) in bad {
        let seq = cluster.latest_event().await;
        cluster.edit(&yaml);
        let event = cluster.wait_event_after(seq, "manifest-rejected", None, expected).await;
        let message = event["message"].as_str().unwrap();
        assert!(message.contains("m.yaml:") && message.contains("; fix: "), "located, with a fix: {message}");
        let last = cluster.get("/api/cluster").await["lastError"].as_str().unwrap().to_owned();
        assert_eq!(last, message);
        assert_eq!(cluster.pids().await, before, "nothing started or stopped");
    }
    drop(taken);
    // `orch get` shows the rejection.
    let out = cluster.cli(&["get"]);
    assert!(crate::stderr(&out).contains("rejected"), "{}", crate::stderr(&out));

    cluster.edit(&web(3));
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    assert_eq!(&after[..3], &before[..]);
    assert!(cluster.get("/api/cluster").await["lastError"].is_null());
}

#[tokio::test]
async fn a_spec_change_rolls_one_instance_at_a_time() {
    let cluster = Cluster::start(&web(3)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    cluster.edit(&web(3).replace("dependsOn: [registry]", "dependsOn: [registry]\n      env: { GREETING: hello }"));
    cluster.wait_event("rolled", None, "web rolled out").await;
    let after = cluster.wait_ready(&["registry-1", "web-1", "web-2", "web-3"]).await;
    assert_eq!(after[0], before[0], "the registry's spec did not change");
    for i in 1..4 {
        assert_ne!(after[i].1, before[i].1, "{} replaced", after[i].0);
    }
    // Each replacement was ready before the next old instance was stopped.
    let events = cluster.events().await;
    let web_events: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["service"] == "web" && ["stopping", "ready"].contains(&e["type"].as_str().unwrap()))
        .skip_while(|e| e["type"] != "stopping")
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["instance"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = ["web-1", "web-2", "web-3"]
        .iter()
        .flat_map(|n| [("stopping".to_owned(), n.to_string()), ("ready".to_owned(), n.to_string())])
        .collect();
    assert_eq!(web_events, expected);
}

#[tokio::test]
async fn sigkill_of_orch_leaves_no_child_alive_and_the_next_orch_cleans_up() {
    // `lingering` leaves a grandchild in its process group that PR_SET_PDEATHSIG does not
    // reach: the next orch must find and kill it.
    let yaml = manifest(
        "    - name: lingering\n      command: [sh, -c, 'sleep 300 & exec sleep 301']\n      readiness: { enabled: false }\n    - name: reg\n      component: registry\n      replicas: 2\n",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), &yaml).unwrap();
    let mut cluster = Cluster::start_in(dir).await;
    cluster.wait_ready(&["lingering-1", "reg-1", "reg-2"]).await;
    let children: Vec<u32> = cluster.pids().await.iter().map(|(_, pid, _)| pid.unwrap() as u32).collect();
    let lingering = cluster.pid("lingering-1").await;
    let grandchild = eventually(DEADLINE, "the grandchild sleep", || async {
        group_members(lingering).into_iter().find(|&p| p != lingering)
    })
    .await;

    cluster.signal(Signal::SIGKILL);
    cluster.wait_exit(DEADLINE).expect("orch died");
    eventually(DEADLINE, "every child of orch to die with it", || async {
        children.iter().all(|&pid| gone(pid)).then_some(())
    })
    .await;
    assert!(!gone(grandchild), "the grandchild outlives orch (it is not orch's child)");

    // The next orch on the same data dir kills what is left, then starts normally.
    let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap());
    drop(cluster);
    let cluster = Cluster::start_in(dir).await;
    let killed = tokio::time::timeout(DEADLINE, async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !gone(grandchild) {
            tick.tick().await;
        }
    });
    if killed.await.is_err() {
        let _ = kill(Pid::from_raw(grandchild as i32), Signal::SIGKILL);
        panic!("the next orch did not kill the stray grandchild {grandchild}");
    }
    cluster.wait_ready(&["lingering-1", "reg-1", "reg-2"]).await;
    assert!(cluster.output().contains("left by an orch that did not stop cleanly"), "{}", cluster.output());
}

fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
                s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok())
            }) == Some(pgid)
        })
        .collect()
}

#[tokio::test]
async fn down_stops_everything_in_reverse_dependency_order() {
    let yaml = manifest(
        "    - name: registry\n      component: registry\n    - name: web\n      component: registry\n      replicas: 2\n      dependsOn: [registry]\n    - name: edge\n      component: registry\n      dependsOn: [web]\n",
    );
    let mut cluster = Cluster::start(&yaml).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2", "edge-1"]).await;
    let pids: Vec<u32> = cluster.pids().await.iter().map(|(_, pid, _)| pid.unwrap() as u32).collect();
    let out = cluster.cli(&["down"]);
    assert!(out.status.success(), "{}", crate::stderr(&out));
    assert!(crate::stdout(&out).contains("cluster stopped"));
    let status = cluster.wait_exit(DEADLINE).expect("orch exits after down");
    assert!(status.success());
    assert!(pids.iter().all(|&p| gone(p)));

    let events = recorded_events(&cluster);
    let at = |kind: &str, instance: &str| position(&events, kind, instance);
    assert!(at("stopped", "edge-1") < at("stopping", "web-1"));
    assert!(at("stopped", "edge-1") < at("stopping", "web-2"));
    assert!(at("stopped", "web-1") < at("stopping", "registry-1"));
    assert!(at("stopped", "web-2") < at("stopping", "registry-1"));
    for name in ["edge-1", "web-1", "web-2", "registry-1"] {
        assert!(
            events[at("stopped", name)]["message"].as_str().unwrap().contains("code 0"),
            "{name} stopped gracefully"
        );
    }
    // A clean stop leaves no state for the next orch to clean up.
    assert!(!cluster.path("data/orch.json").exists());
}

#[tokio::test]
async fn ctrl_c_stops_the_cluster_gracefully() {
    let mut cluster = Cluster::start(&web(1)).await;
    cluster.wait_ready(&["registry-1", "web-1"]).await;
    let pids: Vec<u32> = cluster.pids().await.iter().map(|(_, pid, _)| pid.unwrap() as u32).collect();
    cluster.signal(Signal::SIGINT);
    let status = cluster.wait_exit(DEADLINE).expect("orch exits on SIGINT");
    assert!(status.success(), "{status}");
    assert!(pids.iter().all(|&p| gone(p)));
    let out = cluster.output();
    assert!(out.contains("all 2 instances ready in"), "{out}");
    assert!(out.contains("cluster stopped"), "{out}");
}

#[tokio::test]
async fn sighup_stops_the_cluster_gracefully_in_reverse_order() {
    // A closed terminal sends SIGHUP: a drain like SIGTERM's, not a sudden death.
    let mut cluster = Cluster::start(&web(2)).await;
    cluster.wait_ready(&["registry-1", "web-1", "web-2"]).await;
    let pids: Vec<u32> = cluster.pids().await.iter().map(|(_, pid, _)| pid.unwrap() as u32).collect();
    cluster.signal(Signal::SIGHUP);
    let status = cluster.wait_exit(DEADLINE).expect("orch exits on SIGHUP");
    assert!(status.success(), "{status}");
    assert!(pids.iter().all(|&p| gone(p)), "no strays");
    let events = recorded_events(&cluster);
    let at = |kind: &str, instance: &str| position(&events, kind, instance);
    for web in ["web-1", "web-2"] {
        assert!(at("stopped", web) < at("stopping", "registry-1"), "{web} stops before its dependency");
        assert!(events[at("stopped", web)]["message"].as_str().unwrap().contains("code 0"), "{web} drained");
    }
    assert!(events[at("stopped", "registry-1")]["message"].as_str().unwrap().contains("code 0"));
    assert!(!cluster.path("data/orch.json").exists());
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test]
async fn the_data_dir_and_everything_in_it_are_private() {
    use std::os::unix::fs::PermissionsExt;
    // A data dir left readable by everyone (as the old orch created it) is tightened.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let yaml = manifest(
        "    - name: registry\n      component: registry\n    - name: store\n      component: data\n      dependsOn: [registry]\n      env: { AUTH_REQUIRED: \"false\" }\n",
    );
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let cluster = Cluster::start_in(dir).await;
    cluster.wait_ready(&["registry-1", "store-1"]).await;
    let out = cluster.output();
    assert!(out.contains("was mode 0755") && out.contains("now 0700"), "{out}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&data), 0o700);
    let files = files_under(&data);
    let names: Vec<String> =
        files.iter().map(|p| p.strip_prefix(&data).unwrap().display().to_string()).collect::<Vec<_>>();
    for expected in ["store.sqlite", "events.jsonl", "control-token", "registry-token", "orch.json", "logs/store-1.log"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }
    let open: Vec<String> =
        files.iter().filter(|p| mode(p) & 0o077 != 0).map(|p| format!("{} {:o}", p.display(), mode(p))).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
}

/// The events orch wrote to `events.jsonl`, in order.
fn recorded_events(cluster: &Cluster) -> Vec<serde_json::Value> {
    std::fs::read_to_string(cluster.path("data/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Where the first event of `kind` for `instance` is in `events`.
fn position(events: &[serde_json::Value], kind: &str, instance: &str) -> usize {
    events
        .iter()
        .position(|e| e["type"] == kind && e["instance"] == instance)
        .unwrap_or_else(|| panic!("{kind} {instance}"))
}

//! `resources:` with real processes: the kernel's OOM killer, the CPU quota, the pids limit,
//! a limit change rolled out in place (the same process), and the rss watchdog where no
//! cgroup is used. The ratios are read from the instance's own cgroup counters, never from a
//! clock.
//!
//! Where no cgroup hierarchy is writable, the kernel-enforced tests print a loud SKIPPED line
//! and pass: orch then says it uses the watchdog, which has its own test.

use kit::testing::eventually;
use serde_json::Value;

use crate::{Cluster, DEADLINE, manifest};

/// A python3 that allocates `mib` MiB, touches it, and sleeps.
fn hog(mib: u32) -> String {
    format!("[python3, -c, 'b = bytearray({mib} * 1024 * 1024); import time; time.sleep(60)']")
}

fn service(name: &str, command: &str, resources: &str) -> String {
    format!(
        "    - name: {name}\n      command: {command}\n      resources: {resources}\n      readiness: {{ enabled: false }}\n      restart: {{ backoffInitialMs: 50, backoffMaxMs: 200 }}\n      gracePeriodMs: 500\n"
    )
}

/// The file `file` of the cgroup of process `pid` in hierarchy `ctl` (v1), or in the unified
/// hierarchy when orch uses v2.
fn cgroup_file(pid: u32, ctl: &str, file: &str) -> Option<String> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let dirs = if list.is_empty() {
            vec!["/sys/fs/cgroup/unified".to_owned(), "/sys/fs/cgroup".to_owned()]
        } else if list.split(',').any(|c| c == ctl) {
            vec![format!("/sys/fs/cgroup/{list}")]
        } else {
            continue;
        };
        for dir in dirs {
            if let Ok(text) = std::fs::read_to_string(format!("{dir}{path}/{file}")) {
                return Some(text);
            }
        }
    }
    None
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether orch enforces with cgroups here; prints the loud skip when it does not.
fn enforced_by_cgroups(instance: &Value, test: &str) -> bool {
    let by = instance["usage"]["enforcedBy"].as_str().unwrap_or_default().to_owned();
    if !by.starts_with("cgroup") {
        eprintln!("\n*** SKIPPED {test}: no writable cgroup hierarchy here (orch enforces with {by:?}) ***\n");
    }
    by.starts_with("cgroup")
}

#[tokio::test]
async fn a_command_past_its_memory_limit_is_oom_killed_and_restarted() {
    let cluster = Cluster::start(&manifest(&service("hog", &hog(300), "{ memory: 64Mi }"))).await;
    let event = cluster.wait_event("exited", Some("hog-1"), "OOMKilled").await;
    assert!(event["message"].as_str().unwrap().contains("signal SIGKILL"), "{event}");
    cluster.wait_event("restarted", Some("hog-1"), "restart 1").await;
    let hog = cluster.instance("hog-1").await;
    assert_eq!(hog["lastExit"]["reason"], "OOMKilled", "{hog}");
    assert_eq!(hog["usage"]["memoryLimitBytes"], 64 << 20);
    // `orch get` and `orch describe` say so too.
    let get = crate::stdout(&cluster.cli(&["get"]));
    assert!(get.contains("OOMKilled"), "{get}");
    let json: Value = serde_json::from_str(&crate::stdout(&cluster.cli(&["get", "-o", "json"]))).unwrap();
    let listed = json["instances"].as_array().unwrap().iter().find(|i| i["name"] == "hog-1").unwrap().clone();
    assert_eq!(listed["usage"]["memoryLimitBytes"], 64 << 20, "{listed}");
    let describe = crate::stdout(&cluster.cli(&["describe", "hog-1"]));
    assert!(describe.contains("OOMKilled") && describe.contains("64Mi"), "{describe}");
    if enforced_by_cgroups(&hog, "oom kill by the kernel") {
        let pid = cluster.pid("hog-1").await;
        let limit = cgroup_file(pid, "memory", "memory.limit_in_bytes")
            .or_else(|| cgroup_file(pid, "memory", "memory.max"))
            .expect("the instance runs in its own memory cgroup");
        assert_eq!(limit.trim(), (64u64 << 20).to_string());
    }
}

#[tokio::test]
async fn without_cgroups_the_rss_watchdog_holds_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), manifest(&service("hog", &hog(200), "{ memory: 32Mi, cpu: 500m }")))
        .unwrap();
    let cluster = Cluster::start_with_env(dir, &[("ORCH_CGROUPS", "off")]).await;
    let said = cluster.wait_event("resources", None, "no cgroup hierarchy is writable").await;
    assert!(said["message"].as_str().unwrap().contains("cpu and pids limits are NOT enforced"), "{said}");
    cluster.wait_event("resources", Some("hog-1"), "rss watchdog").await;
    cluster.wait_event("exited", Some("hog-1"), "OOMKilled").await;
    let hog = cluster.instance("hog-1").await;
    assert_eq!(hog["usage"]["enforcedBy"], "rss watchdog");
}

#[tokio::test]
async fn a_memory_limit_the_kernel_refuses_replaces_the_instance_instead() {
    let cluster = Cluster::start(&manifest(&service("hog", &hog(64), "{ memory: 256Mi }"))).await;
    let first = cluster.wait_instance_ready("hog-1").await;
    if !enforced_by_cgroups(&first, "a memory limit the kernel refuses") {
        return;
    }
    if first["usage"]["enforcedBy"] == "cgroup v2" {
        // v2 takes a memory.max below use (and reclaims or OOM-kills); only v1 refuses.
        eprintln!("\n*** SKIPPED a memory limit the kernel refuses: cgroup v2 does not refuse ***\n");
        return;
    }
    let pid = cluster.pid("hog-1").await;
    eventually(DEADLINE, "hog-1 using its 64 MiB", || async {
        let used = cluster.instance("hog-1").await["usage"]["memoryBytes"].as_u64()?;
        (used >= 64 << 20).then_some(())
    })
    .await;
    cluster.edit(&manifest(&service("hog", &hog(64), "{ memory: 16Mi }")));
    let said = cluster.wait_event("resources", Some("hog-1"), "not set in place").await;
    assert!(said["message"].as_str().unwrap().ends_with("replacing it"), "{said}");
    // Its replacement starts under 16 MiB, and the kernel holds it there.
    cluster.wait_event("exited", Some("hog-1"), "OOMKilled").await;
    let now = cluster.instance("hog-1").await;
    assert_ne!(now["pid"].as_u64(), Some(pid as u64), "replaced");
    assert_eq!(now["usage"]["memoryLimitBytes"], 16 << 20, "{now}");
    let h = cluster.get("/api/rollouts/hog").await;
    assert_eq!(h["rollouts"][1]["change"], "change the instances of hog in place (resources changed)", "{h}");
}

#[tokio::test]
async fn without_cgroups_the_watchdog_takes_a_new_memory_limit_in_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), manifest(&service("hog", &hog(100), "{ cpu: 500m }"))).unwrap();
    let cluster = Cluster::start_with_env(dir, &[("ORCH_CGROUPS", "off")]).await;
    cluster.wait_instance_ready("hog-1").await;
    let pid = cluster.pid("hog-1").await;
    cluster.edit(&manifest(&service("hog", &hog(100), "{ memory: 32Mi, cpu: 500m }")));
    let said = cluster.wait_event("resources", Some("hog-1"), "limits changed in place").await;
    assert!(said["message"].as_str().unwrap().contains("the rss watchdog holds memory only"), "{said}");
    // The process that started without a memory limit now has one, and is past it.
    cluster.wait_event("resources", Some("hog-1"), "past its memory limit of 33554432").await;
    cluster.wait_event("exited", Some("hog-1"), "OOMKilled").await;
    let history = crate::stdout(&cluster.cli(&["rollout", "history", "hog"]));
    assert!(history.contains("change the instances of hog in place (resources changed)"), "{history}");
    // Killed and restarted (not replaced): its first restart, a new process.
    cluster.wait_event("restarted", Some("hog-1"), "restart 1").await;
    assert_ne!(cluster.pid("hog-1").await, pid);
}

#[tokio::test]
async fn a_busy_loop_under_200m_gets_a_fifth_of_a_core() {
    let cluster = Cluster::start(&manifest(&service("spin", "[sh, -c, 'while :; do :; done']", "{ cpu: 200m }"))).await;
    let spin = cluster.wait_instance_ready("spin-1").await;
    if !enforced_by_cgroups(&spin, "cpu quota") {
        return;
    }
    let pid = cluster.pid("spin-1").await;
    // The cgroup's own counters: CPU time used over the CFS periods it ran in.
    let (used_us, periods) = eventually(DEADLINE, "30 CFS periods of the busy loop", || async {
        let stat = cgroup_file(pid, "cpu", "cpu.stat")?;
        let periods = keyed(&stat, "nr_periods")?;
        let used_us = keyed(&stat, "usage_usec").or_else(|| {
            cgroup_file(pid, "cpuacct", "cpuacct.usage").and_then(|t| t.trim().parse::<u64>().ok()).map(|ns| ns / 1000)
        })?;
        (periods >= 30).then_some((used_us, periods))
    })
    .await;
    let ratio = used_us as f64 / (periods as f64 * 100_000.0);
    assert!((0.1..=0.23).contains(&ratio), "used {used_us} µs in {periods} periods of 100 ms: {ratio:.3} of a core");
    let usage = &cluster.instance("spin-1").await["usage"];
    assert_eq!(usage["cpuLimitMillis"], 200);
    assert!(usage["cpuMillis"].as_u64().unwrap() <= 260, "{usage}");
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    // Forks 200 sleepers, carrying on when a fork is refused, then sleeps itself.
    let bomb = r#"[python3, -c, 'import os, time; exec("for i in range(200):\n try:\n  os.fork() or (time.sleep(60), os._exit(0))\n except OSError: pass"); time.sleep(60)']"#;
    let cluster = Cluster::start(&manifest(&service("bomb", bomb, "{ pids: 16 }"))).await;
    let bomb = cluster.wait_instance_ready("bomb-1").await;
    if !enforced_by_cgroups(&bomb, "pids limit") {
        return;
    }
    let pid = cluster.pid("bomb-1").await;
    // The kernel refused forks (pids.events counts them), and the count never passed 16.
    eventually(DEADLINE, "forks refused at the pids limit", || async {
        keyed(&cgroup_file(pid, "pids", "pids.events")?, "max").filter(|refused| *refused > 0)
    })
    .await;
    let current: u64 = cgroup_file(pid, "pids", "pids.current").unwrap().trim().parse().unwrap();
    assert!(current <= 16, "{current} processes under a limit of 16");
    let usage = &cluster.instance("bomb-1").await["usage"];
    assert_eq!(usage["pidsLimit"], 16);
    assert!(usage["pids"].as_u64().unwrap() <= 16, "{usage}");
}

/// nap's history once its rollout #`n` is complete.
async fn rollout_complete(cluster: &Cluster, n: usize) -> Value {
    eventually(DEADLINE, &format!("rollout #{n} of nap complete"), || async {
        let h = cluster.get("/api/rollouts/nap").await;
        (h["rollouts"][n - 1]["state"] == "complete").then_some(h)
    })
    .await
}

#[tokio::test]
async fn a_limit_change_is_a_rollout_applied_in_place() {
    let sleeper = "[sleep, '60']";
    let cluster = Cluster::start(&manifest(&service("nap", sleeper, "{ memory: 64Mi, cpu: 200m }"))).await;
    let nap = cluster.wait_instance_ready("nap-1").await;
    let pid = cluster.pid("nap-1").await;
    cluster.edit(&manifest(&service("nap", sleeper, "{ memory: 128Mi, cpu: 500m, pids: 32 }")));
    cluster.wait_event("resources", Some("nap-1"), "limits changed in place").await;
    // A numbered rollout of its own revision, complete with the same process.
    let h = rollout_complete(&cluster, 2).await;
    assert_eq!(h["rollouts"][1]["change"], "change the instances of nap in place (resources changed)", "{h}");
    assert_ne!(h["rollouts"][0]["revision"], h["rollouts"][1]["revision"], "{h}");
    assert_eq!(cluster.pid("nap-1").await, pid, "no restart");
    let usage = &cluster.instance("nap-1").await["usage"];
    let limits = |u: &Value| (u["memoryLimitBytes"].as_u64(), u["cpuLimitMillis"].as_u64(), u["pidsLimit"].as_u64());
    assert_eq!(limits(usage), (Some(128 << 20), Some(500), Some(32)));
    let cgroups = enforced_by_cgroups(&nap, "limits changed in place");
    let quota = || cgroup_file(pid, "cpu", "cpu.cfs_quota_us").or_else(|| cgroup_file(pid, "cpu", "cpu.max")).unwrap();
    if cgroups {
        assert!(quota().starts_with("50000"), "{}", quota());
        assert_eq!(cgroup_file(pid, "pids", "pids.max").unwrap().trim(), "32");
    }

    // Undo: back to #1's limits, in place again, as rollout #3.
    let out = cluster.cli(&["rollout", "undo", "nap"]);
    assert!(out.status.success(), "{out:?}");
    rollout_complete(&cluster, 3).await;
    assert_eq!(cluster.pid("nap-1").await, pid, "no restart");
    let usage = &cluster.instance("nap-1").await["usage"];
    assert_eq!(limits(usage), (Some(64 << 20), Some(200), None));
    if cgroups {
        assert!(quota().starts_with("20000"), "{}", quota());
    }
    let out = cluster.cli(&["rollout", "history", "nap"]);
    let text = crate::stdout(&out);
    assert!(out.status.success(), "{out:?}");
    let row = |n: &str| text.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("no rollout {n}: {text}"));
    assert!(row("2 ").contains("change the instances of nap in place (resources changed)"), "{text}");
    assert!(row("2 ").ends_with("complete") && row("3*").contains("undo to #1"), "{text}");
}

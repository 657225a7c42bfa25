//! `orch verify` against a real cluster (the shipped topology, auth required):
//! - the real data and compute services stay correct for 20 s of register and jobs
//!   workloads under kill, pause, latency and errors: the verdict is valid (exit 0), and the
//!   history, results and timeline are written;
//! - the same run against data instances whose version check is deliberately broken (a
//!   test-only switch of debug builds, `DATA_TEST_BREAK_VERSION_CHECK`) is invalid
//!   (exit 1), with a counterexample;
//! - with `ORCH_PARTITIONS=1`, `--nemesis partition` is valid (exit 0) and leaves the
//!   timeline where the detector serves it; bad arguments exit 2.

use e2e::cluster::{stderr, stdout};
use e2e::topology::Topology;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_cluster_is_valid_under_faults() {
    let cluster = Topology::new().start().await;
    let out = cluster.path("verify");
    let run = cluster.cli(&[
        "verify",
        "--workload",
        "all",
        "--nemesis",
        "kill,pause,latency,errors",
        "--for",
        "20s",
        "--clients",
        "8",
        "--seed",
        "19",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (text, err) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(0), "stdout:\n{text}\nstderr:\n{err}");
    assert!(text.contains("verdict: valid"), "{text}");
    let results: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["verdict"], "valid");
    // The faults were injected, and the clients did real work on every key.
    let faults = results["faults"].as_array().unwrap();
    // A fault the nemesis could not inject is recorded as "not injected: ...": not a hit.
    let hit = |action: &str, on: &str| {
        faults.iter().any(|f| {
            let description = f["description"].as_str().unwrap();
            f["action"] == action && !description.starts_with("not injected") && description.contains(on)
        })
    };
    // The seed's schedule kills or pauses a data instance and a compute instance.
    assert!(hit("kill", "data-") || hit("pause", "data-"), "{faults:?}");
    assert!(hit("kill", "compute-") || hit("pause", "compute-"), "{faults:?}");
    for key in results["registers"].as_array().unwrap() {
        assert!(key["ops"].as_u64().unwrap() > 10, "{key}");
    }
    assert!(results["jobs"]["completed"].as_u64().unwrap() > 10, "{}", results["jobs"]);
    let history = std::fs::read_to_string(out.join("history.jsonl")).unwrap();
    assert!(history.lines().count() > 100);
    // Injected errors reached the clients, as failures (the balancer answered them itself).
    if faults.iter().any(|f| f["action"] == "errors") {
        assert!(history.lines().any(|l| l.contains(r#""type":"fail""#) && l.contains(r#""status":503"#)));
    }
    assert!(std::fs::read_to_string(out.join("timeline.html")).unwrap().contains("<svg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_version_check_is_caught() {
    let cluster = Topology::new().env("data", "DATA_TEST_BREAK_VERSION_CHECK", "true").start().await;
    let out = cluster.path("verify");
    let run =
        cluster.cli(&["verify", "--nemesis", "none", "--for", "10s", "--seed", "7", "--out", out.to_str().unwrap()]);
    let (text, err) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(1), "stdout:\n{text}\nstderr:\n{err}");
    assert!(text.contains("verdict: invalid"), "{text}");
    assert!(text.contains("counterexample on verify-"), "{text}");
    let results: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let invalid: Vec<&Value> =
        results["registers"].as_array().unwrap().iter().filter(|k| k["verdict"] == "invalid").collect();
    assert!(!invalid.is_empty());
    assert!(invalid.iter().all(|k| k["counterexample"]["stuck"].is_u64()), "{invalid:?}");
}

/// `--nemesis partition` on a cluster with `ORCH_PARTITIONS=1`: data instances are cut off
/// from the registry in turn while the clients write through the balancer, and the verdict
/// is valid; bad arguments are refused with exit 2 before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_keep_the_real_cluster_valid() {
    let cluster = Topology::new().orch_env("ORCH_PARTITIONS", "1").start().await;
    let out = cluster.path("verify");
    let out = out.to_str().unwrap();
    for bad in [
        &["verify", "--nemesis", "partition,flood", "--for", "10s"][..],
        &["verify", "--nemesis", "partition", "--for", "0s"],
        &["verify", "--nemesis", "partition", "--clients", "0"],
    ] {
        let run = cluster.cli(bad);
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", stderr(&run));
        assert!(stdout(&run).is_empty(), "{bad:?}: nothing ran: {}", stdout(&run));
    }
    let run = cluster.cli(&["verify", "--nemesis", "partition", "--for", "10s", "--seed", "5", "--out", out]);
    let (text, err) = (stdout(&run), stderr(&run));
    assert_eq!(run.status.code(), Some(0), "stdout:\n{text}\nstderr:\n{err}");
    assert!(text.contains("verdict: valid"), "{text}");
    let results: Value =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(out).join("results.json")).unwrap()).unwrap();
    let faults = results["faults"].as_array().unwrap();
    let cuts: Vec<&Value> = faults
        .iter()
        .filter(|f| f["action"] == "partition" && f["description"].as_str().unwrap().contains("off from the registry"))
        .collect();
    assert!(!cuts.is_empty(), "{faults:?}");
    assert!(cuts.iter().all(|f| f["end"].as_u64() > f["start"].as_u64()), "{cuts:?}");
    for key in results["registers"].as_array().unwrap() {
        assert!(key["ops"].as_u64().unwrap() > 10, "{key}");
    }
    // The timeline is left in the data dir, where the detector serves it for its dashboard.
    let timeline = reqwest::get(format!("{}/verify/timeline.html", cluster.url_of("detector-1").await)).await.unwrap();
    assert_eq!(timeline.status(), 200);
    assert!(timeline.text().await.unwrap().contains("<svg"));
}

//! A compute instance killed with SIGKILL in the middle of a job: the other instance on the
//! same database takes the job over when the lease runs out and completes it, exactly once.
//!
//! Two real `orch run compute` processes share one SQLite file. A `sleep` job (the
//! documented, bounded demo operation) starts on one of them; the test kills that one by PID
//! and watches the job through the survivor.

use std::time::Duration;

use e2e::{Proc, eventually, listener};
use serde_json::{Value, json};

const SECRET: &str = "e2e-compute-crash-secret-0123456789";
const SLEEP_MS: u64 = 2_500;

struct Instance {
    proc: Proc,
    url: String,
}

fn token() -> String {
    let now = kit::time::unix_millis() / 1000;
    kit::jwt::Keys::from_secret(SECRET.as_bytes()).sign(&kit::jwt::Claims {
        sub: "1".into(),
        username: "ada".into(),
        email: "ada@example.com".into(),
        iat: now,
        exp: now + 3600,
    })
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    let res = http.get(url).bearer_auth(token()).send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    res.json().await.ok()
}

#[tokio::test]
async fn a_job_survives_the_kill_of_the_instance_running_it() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("compute.sqlite").display());
    let data_dir = dir.path().display().to_string();
    let envs = [
        ("DATABASE_URL", database.as_str()),
        ("DATA_DIR", data_dir.as_str()),
        ("JWT_SECRET", SECRET),
        ("REGISTER", "false"),
        ("COMPUTE_WORKERS", "1"),
        ("JOB_LEASE_MS", "500"),
    ];
    let http = reqwest::Client::new();
    let mut instances = Vec::new();
    for name in ["compute-a", "compute-b"] {
        let (socket, addr) = listener();
        let proc = Proc::component(name, "compute", &socket, &envs);
        let url = format!("http://{addr}");
        eventually(Duration::from_secs(20), &format!("{name} ready"), || async {
            http.get(format!("{url}/ready")).send().await.ok().filter(|r| r.status() == 200)
        })
        .await;
        instances.push(Instance { proc, url });
    }

    let res = http
        .post(format!("{}/api/compute/job", instances[0].url))
        .bearer_auth(token())
        .json(&json!({"operation": "sleep", "operands": [SLEEP_MS]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_owned();

    // Whichever instance's worker took the job is the one to kill.
    let job_url = |instance: &Instance| format!("{}/api/compute/job/{id}", instance.url);
    let running = eventually(Duration::from_secs(10), "the job running", || async {
        get(&http, &job_url(&instances[0])).await.filter(|job| job["status"] == "running")
    })
    .await;
    assert_eq!(running["attempts"], 1);
    let victim = running["worker"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let victim_index = instances.iter().position(|i| i.proc.name == victim).expect("a worker of ours");
    let mut victim = instances.remove(victim_index);
    let survivor = instances.pop().unwrap();
    victim.proc.kill();
    assert!(http.get(format!("{}/health", victim.url)).timeout(Duration::from_millis(500)).send().await.is_err());

    let done = eventually(Duration::from_secs(30), "the job completed by the survivor", || async {
        get(&http, &job_url(&survivor)).await.filter(|job| job["status"] == "completed")
    })
    .await;
    assert_eq!(done["worker"], format!("{}/w1", survivor.proc.name), "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["result"], SLEEP_MS, "{done}");

    let stats = get(&http, &format!("{}/api/compute/stats", survivor.url)).await.unwrap();
    assert_eq!(stats["counts"]["completed"], 1, "{stats}");
    assert_eq!(stats["counts"]["total"], 1, "{stats}");
    assert_eq!(stats["instance"]["completed"], 1, "the survivor wrote the outcome once: {stats}");
    assert_eq!(stats["instance"]["lostLeases"], 0, "{stats}");
}

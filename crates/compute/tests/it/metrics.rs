//! compute's figures in `/metrics`: operations by name and place, claims and their time
//! (the registry is the process's, shared with the tests beside this one: movements are
//! lower bounds).

use std::time::Duration;

use kit::testing::metric;
use serde_json::json;

use crate::{Instance, database, send};

#[tokio::test]
async fn operations_and_claims_move_their_series() {
    let (_dir, db) = database().await;
    let compute = Instance::start(&db, "compute-m", &[("COMPUTE_WORKERS", "1")]).await;
    let scrape =
        || async { compute.http.get(format!("{}/metrics", compute.url)).send().await.unwrap().text().await.unwrap() };
    let series = [
        r#"compute_operations_total{operation="add",place="direct"}"#,
        r#"compute_operations_total{operation="multiply",place="job"}"#,
        "compute_claim_duration_seconds_count",
    ];
    let text = scrape().await;
    assert!(text.contains("# TYPE compute_lease_expiries counter"), "present from the first scrape: {text}");
    let before: Vec<f64> = series.iter().map(|s| metric(&text, s).unwrap_or(0.0)).collect();

    let (status, _) = send(compute.post("/api/compute/direct", &json!({"operation": "add", "operands": [1, 2]}))).await;
    assert_eq!(status, 200);
    let id = compute.submit(json!({"operation": "multiply", "operands": [6, 7]})).await;
    compute.wait_for(&id, "completed", Duration::from_secs(10)).await;

    let text = scrape().await;
    for (series, before) in series.iter().zip(before) {
        let now = metric(&text, series).unwrap_or_else(|| panic!("{series} missing: {text}"));
        assert!(now >= before + 1.0, "{series} did not move ({before} -> {now})");
    }

    // The queue's depth is read every few seconds: the completed job shows in it.
    let completed = r#"compute_jobs{status="completed"}"#;
    let deadline = tokio::time::Instant::now() + compute::metrics::DEPTH_EVERY * 4;
    loop {
        let text = scrape().await;
        if metric(&text, completed).is_some_and(|n| n >= 1.0) {
            assert!(text.contains(r#"compute_jobs{status="queued"}"#), "every status has its series: {text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{completed} never counted the job: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    compute.stop().await;
}

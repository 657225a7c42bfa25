//! data's figures in `/metrics`: each kind of request moves its own series (the registry
//! is the process's, shared with the tests running beside this one: movements are
//! asserted as lower bounds).

use kit::testing::metric;
use serde_json::json;

use crate::{TestData, send};

#[tokio::test]
async fn reads_writes_conflicts_and_replays_move_their_counters() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    let scrape =
        || async { data.client.get(format!("{}/metrics", data.url)).send().await.unwrap().text().await.unwrap() };
    let series = [
        r#"data_reads_total{kind="item"}"#,
        r#"data_reads_total{kind="list"}"#,
        r#"data_writes_total{status="201"}"#,
        r#"data_conflicts_total{status="409"}"#,
        r#"data_conflicts_total{status="412"}"#,
        "data_idempotent_replays_total",
        r#"http_requests_total{route="/api/data/{*key}",method="GET",status="200"}"#,
    ];
    let text = scrape().await;
    assert!(text.contains("# TYPE data_idempotent_replays counter"), "present from the first scrape: {text}");
    let before: Vec<f64> = series.iter().map(|s| metric(&text, s).unwrap_or(0.0)).collect();

    let new = json!({"key": "m:1", "value": 1});
    assert_eq!(send(data.post("/api/data", &new).header("idempotency-key", "m-1")).await.0, 201);
    assert_eq!(send(data.post("/api/data", &new).header("idempotency-key", "m-1")).await.0, 201, "a replay");
    assert_eq!(send(data.post("/api/data", &new)).await.0, 409);
    assert_eq!(send(data.put("/api/data/m:1", &json!({"value": 2})).header("if-match", "9")).await.0, 412);
    assert_eq!(send(data.get("/api/data/m:1")).await.0, 200);
    assert_eq!(send(data.get("/api/data?prefix=m:")).await.0, 200);

    let text = scrape().await;
    for (series, before) in series.iter().zip(before) {
        let now = metric(&text, series).unwrap_or_else(|| panic!("{series} missing: {text}"));
        assert!(now >= before + 1.0, "{series} did not move ({before} -> {now})");
    }
    data.stop().await;
}

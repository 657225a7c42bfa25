//! Every endpoint, field name and status code of the data contract.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{TestData, send, send_raw};

#[tokio::test]
async fn create_read_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;

    let new = json!({"key": "user:1", "value": {"name": "Ada", "langs": ["en", "fr"]}, "metadata": {"owner": "ada"}});
    let (status, headers, raw) = send_raw(data.post("/api/data", &new)).await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(headers["etag"], "\"1\"");
    let item: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(item["key"], "user:1");
    assert_eq!(item["value"], new["value"]);
    assert_eq!(item["metadata"], json!({"owner": "ada"}));
    assert_eq!(item["version"], 1);
    assert!(item["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(item["createdAt"], item["updatedAt"]);

    let (status, headers, raw) = send_raw(data.get("/api/data/user:1")).await;
    assert_eq!((status, headers["etag"].to_str().unwrap()), (200, "\"1\""));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), item);

    // 409 on an existing key, naming the current version; nothing changes.
    let (status, body) = send(data.post("/api/data", &json!({"key": "user:1", "value": 2}))).await;
    assert_eq!(status, 409);
    assert_eq!(body["currentVersion"], 1);
    assert!(body["error"].as_str().unwrap().contains("already exists"), "{body}");

    // Update the value only: metadata stays, version + 1.
    let (status, headers, raw) = send_raw(data.put("/api/data/user:1", &json!({"value": "v2"}))).await;
    assert_eq!((status, headers["etag"].to_str().unwrap()), (200, "\"2\""), "{raw}");
    let updated: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!((updated["value"].clone(), updated["version"].clone()), (json!("v2"), json!(2)));
    assert_eq!(updated["metadata"], json!({"owner": "ada"}));
    assert_eq!(updated["createdAt"], item["createdAt"]);

    // Metadata only; then null is a value like any other.
    let (status, body) = send(data.put("/api/data/user:1", &json!({"metadata": {"tag": "x"}}))).await;
    assert_eq!((status, body["value"].clone(), body["metadata"].clone()), (200, json!("v2"), json!({"tag": "x"})));
    let (status, body) = send(data.put("/api/data/user:1", &json!({"value": null}))).await;
    assert_eq!((status, body["value"].clone(), body["version"].clone()), (200, json!(null), json!(4)));

    let (status, body) = send(data.put("/api/data/user:1", &json!({}))).await;
    assert_eq!((status, body["error"].clone()), (400, json!("body must set value, metadata or both")));
    let (status, _) = send(data.put("/api/data/nobody", &json!({"value": 1}))).await;
    assert_eq!(status, 404);

    let (status, body) = send(data.delete("/api/data/user:1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["key"].clone(), body["version"].clone()), (json!("user:1"), json!(4)));
    let (status, body) = send(data.get("/api/data/user:1")).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("user:1"));
    assert_eq!(send(data.delete("/api/data/user:1")).await.0, 404);

    // Any JSON is a value; a created item may omit metadata.
    for (i, value) in
        [json!(1.5), json!("text"), json!(true), json!(null), json!([1, [2]]), json!({})].into_iter().enumerate()
    {
        let item = data.create(&format!("v{i}"), value.clone()).await;
        assert_eq!((item["value"].clone(), item["metadata"].clone()), (value, json!({})));
    }
    data.stop().await;
}

#[tokio::test]
async fn if_match_and_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    data.create("counter", json!(0)).await;

    let put = |if_match: Option<&str>, body: serde_json::Value| {
        let req = data.put("/api/data/counter", &body);
        match if_match {
            Some(v) => req.header("if-match", v),
            None => req,
        }
    };
    assert_eq!(send(put(Some("1"), json!({"value": 1}))).await.0, 200);
    assert_eq!(send(put(Some("\"2\""), json!({"value": 2}))).await.0, 200);
    assert_eq!(send(put(None, json!({"value": 3, "expectedVersion": 3}))).await.0, 200);
    assert_eq!(send(put(Some("*"), json!({"value": 4}))).await.0, 200);

    let (status, body) = send(put(Some("2"), json!({"value": 99}))).await;
    assert_eq!(status, 412);
    assert_eq!(body["error"], "version mismatch: expected version 2, current version is 5");
    assert_eq!(body["currentVersion"], 5);
    let (status, _) = send(put(None, json!({"value": 99, "expectedVersion": "4"}))).await;
    assert_eq!(status, 412);
    let (status, body) = send(put(Some("5"), json!({"value": 99, "expectedVersion": 4}))).await;
    assert_eq!((status, body["error"].clone()), (400, json!("If-Match and expectedVersion disagree")));
    for bad in ["abc", "W/\"5\"", "-1", "\"\""] {
        let (status, body) = send(put(Some(bad), json!({"value": 99}))).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = send(put(None, json!({"value": 99, "expectedVersion": [5]}))).await;
    assert_eq!(status, 400);

    let (_, item) = send(data.get("/api/data/counter")).await;
    assert_eq!((item["value"].clone(), item["version"].clone()), (json!(4), json!(5)), "refusals changed nothing");

    // DELETE honours If-Match too.
    let (status, body) = send(data.delete("/api/data/counter").header("if-match", "4")).await;
    assert_eq!((status, body["currentVersion"].clone()), (412, json!(5)));
    assert_eq!(send(data.delete("/api/data/counter").header("if-match", "\"5\"")).await.0, 200);
    assert_eq!(send(put(Some("*"), json!({"value": 1}))).await.0, 404);
    data.stop().await;
}

#[tokio::test]
async fn list_pages_by_prefix_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("DATA_LIST_DEFAULT_LIMIT", "4"), ("DATA_LIST_MAX_LIMIT", "50")]).await;
    let keys: Vec<String> = (0..10).map(|i| format!("user:{i:02}")).collect();
    for key in &keys {
        data.create(key, json!(key)).await;
    }
    for other in ["user", "user;", "users", "order:1", "%", "_x", "user%1", "user_1"] {
        data.create(other, json!(0)).await;
    }

    // Default page size, then the cursor to the end.
    let (status, page) = send(data.get("/api/data?prefix=user:")).await;
    assert_eq!(status, 200);
    let page_keys = |page: &serde_json::Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(page_keys(&page), keys[..4]);
    assert!(page["items"][0]["value"].is_string() && page["items"][0]["version"] == 1);
    let mut seen = page_keys(&page);
    let mut cursor = page["nextCursor"].as_str().unwrap().to_owned();
    loop {
        let (status, page) = send(data.get(&format!("/api/data?prefix=user:&limit=3&cursor={cursor}"))).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page_keys(&page));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, keys);

    // `%` and `_` are literal in a prefix.
    let (_, page) = send(data.get("/api/data?prefix=%25")).await;
    assert_eq!(page_keys(&page), ["%"]);
    let (_, page) = send(data.get("/api/data?prefix=user_")).await;
    assert_eq!(page_keys(&page), ["user_1"]);
    let (_, page) = send(data.get("/api/data?prefix=user%25")).await;
    assert_eq!(page_keys(&page), ["user%1"]);
    let (_, page) = send(data.get("/api/data?prefix=nothing")).await;
    assert_eq!((page["items"].clone(), page["nextCursor"].clone()), (json!([]), json!(null)));

    // Everything, in byte order, when there is no prefix.
    let (_, page) = send(data.get("/api/data?limit=50")).await;
    let all = page_keys(&page);
    assert_eq!(all.len(), 18);
    assert!(all.windows(2).all(|w| w[0].as_bytes() < w[1].as_bytes()), "{all:?}");
    assert_eq!(page["nextCursor"], json!(null));

    for bad in ["limit=0", "limit=51", "limit=-1", "limit=ten", "cursor=zz", "cursor=abc"] {
        let (status, body) = send(data.get(&format!("/api/data?{bad}"))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
    let (status, _) = send(data.get(&format!("/api/data?prefix={}", "p".repeat(257)))).await;
    assert_eq!(status, 400);
    data.stop().await;
}

#[tokio::test]
async fn health_and_simulated_work_through_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("WORK_DELAY_MS", "40"), ("WORK_DELAY_MAX_MS", "500")]).await;
    let anonymous = reqwest::Client::new();
    for path in ["/health", "/api/data/health"] {
        let (status, body) = send(anonymous.get(format!("{}{path}", data.url))).await;
        assert_eq!(
            (status, body["status"].clone(), body["service"].clone()),
            (200, json!("healthy"), json!("data-test"))
        );
        assert!(body["uptime"].is_number() && body["timestamp"].is_string());
    }
    let started = Instant::now();
    let (status, body) = send(anonymous.get(format!("{}/api/data/data-work", data.url))).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(40));
    assert!(body["message"].is_string() && body["timestamp"].is_string());
    assert_eq!((body["service"].clone(), body["delayMs"].clone()), (json!("data-test"), json!(40)));
    let (status, body) = send(anonymous.post(format!("{}/api/data/data-work?ms=0", data.url))).await;
    assert_eq!((status, body["delayMs"].clone()), (200, json!(0)));
    let (status, body) = send(anonymous.get(format!("{}/api/data/data-work?ms=501", data.url))).await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("ms must be a whole number of milliseconds from 0 to 500"))
    );

    // The keys "health" and "data-work" are items for every method but GET (and the work's POST).
    assert_eq!(data.create("health", json!("h")).await["key"], "health");
    let (status, body) = send(data.put("/api/data/health", &json!({"value": "h2"}))).await;
    assert_eq!((status, body["version"].clone()), (200, json!(2)));
    let (_, page) = send(data.get("/api/data?prefix=health")).await;
    assert_eq!(page["items"][0]["value"], "h2");
    assert_eq!(send(data.delete("/api/data/health")).await.0, 200);
    let (status, _) = send(anonymous.put(format!("{}/api/data/data-work", data.url)).json(&json!({"value": 1}))).await;
    assert_eq!(status, 401, "item writes need a token even on these paths");
    data.stop().await;
}

#[tokio::test]
async fn auth_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("AUTH_REQUIRED", "false")]).await;
    let anonymous = reqwest::Client::new();
    let (status, _) =
        send(anonymous.post(format!("{}/api/data", data.url)).json(&json!({"key": "k", "value": 1}))).await;
    assert_eq!(status, 201);
    let (status, body) = send(anonymous.get(format!("{}/api/data/k", data.url))).await;
    assert_eq!((status, body["value"].clone()), (200, json!(1)));
    data.stop().await;
}

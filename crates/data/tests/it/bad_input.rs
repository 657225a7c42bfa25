//! Bad input gets a clear JSON error and changes nothing; odd but valid keys are stored
//! exactly as given.

use serde_json::json;

use crate::{SECRET, TestData, item_path, send};

#[tokio::test]
async fn bad_tokens_and_missing_headers_are_401_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    data.create("kept", json!("original")).await;
    let before = data.all().await;

    let c = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", data.url);
    let requests = |auth: Option<String>| {
        let with = move |req: reqwest::RequestBuilder| match &auth {
            Some(value) => req.header("authorization", value.clone()),
            None => req,
        };
        vec![
            with(c.get(url("/api/data/kept"))),
            with(c.get(url("/api/data"))),
            with(c.post(url("/api/data")).json(&json!({"key": "new", "value": 1}))),
            with(c.put(url("/api/data/kept")).json(&json!({"value": "changed"}))),
            with(c.delete(url("/api/data/kept"))),
        ]
    };
    let mut cases: Vec<(String, Option<String>)> = kit::testing::bad_tokens(&data.token, SECRET, "1")
        .into_iter()
        .map(|(what, t)| (what.to_owned(), Some(format!("Bearer {t}"))))
        .collect();
    cases.push(("missing header".into(), None));
    cases.push(("empty bearer".into(), Some("Bearer ".into())));
    cases.push(("basic auth".into(), Some(format!("Basic {}", data.token))));
    for (what, auth) in cases {
        for req in requests(auth.clone()) {
            let (status, body) = send(req).await;
            assert_eq!(status, 401, "{what}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {body}");
        }
    }
    assert_eq!(data.all().await, before);
    data.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data =
        TestData::start(dir.path(), &[("DATA_MAX_VALUE_BYTES", "1000"), ("DATA_MAX_METADATA_BYTES", "100")]).await;
    data.create("kept", json!("original")).await;
    let before = data.all().await;
    let raw = |method: reqwest::Method, path: &str, body: &str| data.req(method, path).body(body.to_owned());

    use reqwest::Method as M;
    let cases = [
        (raw(M::POST, "/api/data", "{\"key\": \"x\", \"value\": "), 400, "invalid JSON"),
        (raw(M::POST, "/api/data", "not json"), 400, "invalid JSON"),
        (raw(M::POST, "/api/data", ""), 400, "empty"),
        (raw(M::POST, "/api/data", "[1,2]"), 400, "invalid type"),
        (raw(M::POST, "/api/data", r#"{"value": 1}"#), 400, "missing field `key`"),
        (raw(M::POST, "/api/data", r#"{"key": "x"}"#), 400, "missing field `value`"),
        (raw(M::POST, "/api/data", r#"{"key": 7, "value": 1}"#), 400, "invalid type"),
        (
            raw(M::POST, "/api/data", r#"{"key": "x", "value": 1, "metadata": [1]}"#),
            400,
            "metadata must be a JSON object",
        ),
        (
            raw(M::POST, "/api/data", r#"{"key": "x", "value": 1, "metadata": "m"}"#),
            400,
            "metadata must be a JSON object",
        ),
        (raw(M::PUT, "/api/data/kept", "{\"value\": "), 400, "invalid JSON"),
        (raw(M::PUT, "/api/data/kept", r#"{"metadata": 5}"#), 400, "metadata must be a JSON object"),
        (raw(M::PUT, "/api/data/kept", r#"{"metadata": null}"#), 400, "must set value"),
        (data.post("/api/data", &json!({"key": "big", "value": "v".repeat(1000)})), 413, "value is 1002 bytes"),
        (data.put("/api/data/kept", &json!({"value": "v".repeat(1000)})), 413, "limit of 1000 bytes"),
        (
            data.post("/api/data", &json!({"key": "m", "value": 1, "metadata": {"m": "m".repeat(100)}})),
            413,
            "metadata is",
        ),
        (
            raw(M::POST, "/api/data", &format!(r#"{{"key": "huge", "value": "{}"}}"#, "x".repeat(10 << 20))),
            413,
            "limit",
        ),
        (raw(M::PUT, "/api/data/kept", &format!(r#"{{"value": "{}"}}"#, "x".repeat(10 << 20))), 413, "limit"),
    ];
    for (req, expected_status, expected) in cases {
        let (status, body) = send(req).await;
        assert_eq!(status, expected_status, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
    }
    assert_eq!(data.all().await, before);
    data.stop().await;
}

#[tokio::test]
async fn keys_are_stored_exactly_and_bad_keys_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[]).await;
    let odd = [
        "'; DROP TABLE items; --",
        "a' OR '1'='1",
        "%",
        "_",
        "100%_done",
        "ключ/🔑 ümlaut",
        "path/with/slashes",
        "spaces and ?query=1&x#frag",
        "\"quoted\"\\back",
        "emoji 👩‍👩‍👧‍👦",
        &"é".repeat(128),
        &"k".repeat(256),
    ];
    for key in odd {
        let created = data.create(key, json!(key)).await;
        assert_eq!(created["key"], key);
    }
    for key in odd {
        let (status, item) = send(data.get(&item_path(key))).await;
        assert_eq!(status, 200, "{key:?}: {item}");
        assert_eq!((item["key"].as_str(), item["value"].as_str()), (Some(key), Some(key)));
        let (status, item) = send(data.put(&item_path(key), &json!({"value": "updated"}))).await;
        assert_eq!((status, item["version"].clone()), (200, json!(2)), "{key:?}");
    }
    // A raw slash in the path works like an encoded one.
    let (status, item) = send(data.get("/api/data/path/with/slashes")).await;
    assert_eq!((status, item["key"].clone()), (200, json!("path/with/slashes")));
    let mut keys: Vec<String> = data.all().await.iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect();
    let mut expected: Vec<String> = odd.iter().map(|k| k.to_string()).collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected, "the table is intact and holds exactly these keys");

    let before = data.all().await;
    let too_long = "k".repeat(257);
    let too_long_unicode = "é".repeat(129);
    for key in ["", too_long.as_str(), too_long_unicode.as_str(), "nul\0char"] {
        let (status, body) = send(data.post("/api/data", &json!({"key": key, "value": 1}))).await;
        assert_eq!(status, 400, "{key:?}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("key must"), "{body}");
        if !key.is_empty() {
            for req in [
                data.get(&item_path(key)),
                data.put(&item_path(key), &json!({"value": 1})),
                data.delete(&item_path(key)),
            ] {
                let (status, body) = send(req).await;
                assert_eq!(status, 400, "{key:?}: {body}");
                assert!(body["error"].as_str().unwrap().starts_with("key must"), "{body}");
            }
        }
    }
    for req in [data.get("/api/data/"), data.put("/api/data/", &json!({"value": 1})), data.delete("/api/data/")] {
        let (status, body) = send(req).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("(this one is 0 bytes)"), "{body}");
    }
    // Percent-encoding that is not UTF-8.
    let (status, body) = send(data.get("/api/data/%FF%FE")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(data.all().await, before);
    data.stop().await;
}

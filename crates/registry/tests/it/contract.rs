//! Every endpoint, field name and status code of the registry's contract.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{TOKEN, TestRegistry, http, registration, send, still_pending};

#[tokio::test]
async fn register_list_heartbeat_deregister() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    let post = |path: &str| c.post(format!("{}{path}", reg.url)).bearer_auth(TOKEN);

    let (status, record) = send(post("/api/registry/register").json(&registration("auth-1", "auth"))).await;
    assert_eq!(status, 201);
    for field in ["serviceId", "serviceType", "url", "name", "metadata", "registeredAt", "lastHeartbeat", "healthy"] {
        assert!(record.get(field).is_some(), "record lacks {field}: {record}");
    }
    assert_eq!(record["serviceId"], "auth-1");
    assert_eq!(record["serviceType"], "auth");
    assert_eq!(record["url"], "http://localhost:9/auth-1");
    assert_eq!(record["metadata"], json!({ "version": "1" }));
    assert_eq!(record["healthy"], true);

    // Registering again refreshes the record.
    let (status, again) = send(post("/api/registry/register").json(&registration("auth-1", "auth"))).await;
    assert_eq!(status, 200);
    assert_eq!(again["registeredAt"], record["registeredAt"]);

    send(post("/api/registry/register").json(&registration("data-1", "data"))).await;
    // `name` and `metadata` are optional.
    let minimal = json!({ "serviceId": "data-2", "serviceType": "data", "url": "http://localhost:9" });
    let (status, body) = send(post("/api/registry/register").json(&minimal)).await;
    assert_eq!((status, body["name"].clone(), body["metadata"].clone()), (201, json!("data-2"), json!({})));

    let (status, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3);
    assert!(list["timestamp"].as_str().unwrap().ends_with('Z'));
    let ids: Vec<&str> =
        list["services"].as_array().unwrap().iter().map(|s| s["serviceId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auth-1", "data-1", "data-2"]);

    let (_, by_path) = send(c.get(format!("{}/api/registry/services/data", reg.url))).await;
    let (_, by_query) = send(c.get(format!("{}/api/registry/services?type=data", reg.url))).await;
    assert_eq!(by_path["total"], 2);
    assert_eq!(by_path["services"], by_query["services"]);
    let (_, healthy) = send(c.get(format!("{}/api/registry/services?healthy=true", reg.url))).await;
    assert_eq!(healthy["total"], 3);
    let (_, unhealthy) = send(c.get(format!("{}/api/registry/services?healthy=false", reg.url))).await;
    assert_eq!(unhealthy["total"], 0);
    let (_, none) = send(c.get(format!("{}/api/registry/services/nothing", reg.url))).await;
    assert_eq!((none["total"].clone(), none["services"].clone()), (json!(0), json!([])));

    let (status, one) = send(c.get(format!("{}/api/registry/service/data-1", reg.url))).await;
    assert_eq!((status, one["serviceId"].clone()), (200, json!("data-1")));
    let (status, body) = send(c.get(format!("{}/api/registry/service/ghost", reg.url))).await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("ghost"));

    let (status, body) = send(post("/api/registry/heartbeat").json(&json!({ "serviceId": "auth-1" }))).await;
    assert_eq!(status, 200);
    assert_eq!(body["service"]["serviceId"], "auth-1");

    let (status, body) = send(post("/api/registry/deregister").json(&json!({ "serviceId": "auth-1" }))).await;
    assert_eq!((status, body["service"]["serviceId"].clone()), (200, json!("auth-1")));
    let (status, _) = send(post("/api/registry/deregister").json(&json!({ "serviceId": "auth-1" }))).await;
    assert_eq!(status, 404);
    // A heartbeat after a deliberate deregistration is refused with 410, so the instance
    // does not come back on its own.
    let (status, body) = send(post("/api/registry/heartbeat").json(&json!({ "serviceId": "auth-1" }))).await;
    assert_eq!(status, 410);
    assert!(body["error"].is_string());
    let (_, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!(list["total"], 2);

    reg.stop().await;
}

#[tokio::test]
async fn health_and_ready() {
    let reg = TestRegistry::start(&[("SERVICE_NAME", "registry-1")]).await;
    let (status, body) = send(http().get(format!("{}/health", reg.url))).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "registry-1");
    assert!(body["uptime"].is_number() && body["timestamp"].is_string());
    let (status, _) = send(http().get(format!("{}/ready", reg.url))).await;
    assert_eq!(status, 200);
    reg.stop().await;
}

#[tokio::test]
async fn mutations_need_the_cluster_token() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    for path in ["register", "heartbeat", "deregister"] {
        let url = format!("{}/api/registry/{path}", reg.url);
        let (status, body) = send(c.post(&url).json(&registration("evil-1", "auth"))).await;
        assert_eq!(status, 401, "{path} without a token");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        let (status, _) = send(c.post(&url).bearer_auth("wrong").json(&registration("evil-1", "auth"))).await;
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (_, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!(list["total"], 0, "nothing was injected");
    reg.stop().await;

    // Without a configured token (run by hand, alone), mutations are open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = registry::Config::from_vars(&kit::Vars::from_pairs([("SHUTDOWN_GRACE_MS", "500")])).unwrap();
    let shutdown = kit::Shutdown::new();
    let task = tokio::spawn(registry::serve(config, listener, shutdown.clone()));
    let (status, _) = send(c.post(format!("{url}/api/registry/register")).json(&registration("a-1", "a"))).await;
    assert_eq!(status, 201);
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_input_gets_clear_json_errors() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    let register = || c.post(format!("{}/api/registry/register", reg.url)).bearer_auth(TOKEN);
    let check = |status: u16, body: serde_json::Value, expected_status: u16, needle: &str| {
        assert_eq!(status, expected_status, "{body}");
        let msg = body["error"].as_str().unwrap_or_else(|| panic!("no error field: {body}"));
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    };

    let (s, b) = send(register().header("content-type", "application/json").body("{not json")).await;
    check(s, b, 400, "invalid JSON");
    let (s, b) = send(register().json(&json!({ "serviceType": "auth", "url": "http://x" }))).await;
    check(s, b, 400, "serviceId");
    let (s, b) = send(register().json(&json!({ "serviceId": 7, "serviceType": "auth", "url": "http://x" }))).await;
    check(s, b, 400, "invalid type");
    let (s, b) = send(register().json(&json!({ "serviceId": "", "serviceType": "auth", "url": "http://x" }))).await;
    check(s, b, 400, "serviceId");
    let (s, b) = send(register().json(&json!({ "serviceId": "a b", "serviceType": "auth", "url": "http://x" }))).await;
    check(s, b, 400, "serviceId");
    for url in ["ftp://localhost:1", "localhost:3001", "not a url", "file:///etc/passwd"] {
        let (s, b) = send(register().json(&json!({ "serviceId": "a-1", "serviceType": "auth", "url": url }))).await;
        check(s, b, 400, "http://");
    }
    let (s, b) =
        send(register().json(&json!({ "serviceId": "a-1", "serviceType": "a", "url": "http://x", "metadata": [1] })))
            .await;
    check(s, b, 400, "metadata");

    let big = vec![b'x'; 10 << 20];
    let (s, b) = send(register().header("content-type", "application/json").body(big)).await;
    check(s, b, 413, "limit");

    let (s, b) = send(
        c.post(format!("{}/api/registry/heartbeat", reg.url)).bearer_auth(TOKEN).json(&json!({ "serviceId": "ghost" })),
    )
    .await;
    check(s, b, 404, "ghost");

    let (s, b) = send(c.get(format!("{}/api/registry/services?healthy=maybe", reg.url))).await;
    check(s, b, 400, "healthy");
    let (s, b) = send(c.get(format!("{}/api/registry/services?index=abc", reg.url))).await;
    check(s, b, 400, "index");
    let (s, b) = send(c.get(format!("{}/api/registry/services?index=1&wait=forever", reg.url))).await;
    check(s, b, 400, "wait");
    let (s, b) = send(c.get(format!("{}/api/registry/nowhere", reg.url))).await;
    check(s, b, 404, "no route");
    let (s, b) = send(c.delete(format!("{}/api/registry/services", reg.url))).await;
    check(s, b, 405, "DELETE");

    // Still serving, and nothing was stored.
    let (status, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!((status, list["total"].clone()), (200, json!(0)));
    reg.stop().await;
}

#[tokio::test]
async fn watch_answers_on_change_and_times_out_cleanly() {
    let reg = TestRegistry::start(&[]).await;
    let client = reg.client();
    let first = client.services(None).await.unwrap();
    assert!(first.index > 0);

    // Nothing changes: the query waits out its time and returns the same index.
    let started = Instant::now();
    let same = client.watch(None, Some(first.index), Duration::from_millis(300)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(same.index, first.index);
    assert_eq!(same.total, 0);

    // A change wakes a waiting query at once, long before its 30 s are up.
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.watch(None, Some(first.index), Duration::from_secs(30)).await.unwrap() })
    };
    let waiter = still_pending(waiter, Duration::from_millis(150), "the blocking query").await;
    let changed_at = Instant::now();
    let registration: kit::registry::Registration =
        serde_json::from_value(crate::registration("data-1", "data")).unwrap();
    client.register(&registration).await.unwrap();
    let list = waiter.await.unwrap();
    let latency = changed_at.elapsed();
    assert!(latency < Duration::from_secs(2), "the watch answered {latency:?} after the change");
    assert!(list.index > first.index);
    assert_eq!(list.services[0].service_id, "data-1");

    // An index from the past answers at once; so does a type-filtered watch.
    let started = Instant::now();
    let now = client.watch(Some("data"), Some(first.index), Duration::from_secs(30)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(now.total, 1);

    // Shutdown ends waiting queries rather than holding the process for 30 s.
    let waiter = {
        let client = client.clone();
        let index = now.index;
        tokio::spawn(async move { client.watch(None, Some(index), Duration::from_secs(30)).await })
    };
    let waiter = still_pending(waiter, Duration::from_millis(100), "the second blocking query").await;
    let stopping = Instant::now();
    reg.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(2));
    assert!(waiter.await.unwrap().is_ok());
}

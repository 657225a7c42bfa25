//! Prometheus: service discovery in the `http_sd_configs` format, and the registry's own
//! figures in `/metrics`.

use std::time::Duration;

use kit::testing::metric;
use serde_json::json;

use crate::{TOKEN, TestRegistry, http, registration, send};

#[tokio::test]
async fn prometheus_sd_lists_every_record_as_a_target() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    let (status, empty) = send(c.get(format!("{}/api/registry/prometheus-sd", reg.url))).await;
    assert_eq!((status, empty), (200, json!([])));

    let post =
        |body: serde_json::Value| c.post(format!("{}/api/registry/register", reg.url)).bearer_auth(TOKEN).json(&body);
    send(post(
        json!({ "serviceId": "data-1", "serviceType": "data", "url": "http://localhost:4002", "name": "data-1" }),
    ))
    .await;
    send(post(json!({ "serviceId": "auth-2", "serviceType": "auth", "url": "https://127.0.0.1:3002/" }))).await;
    let (status, groups) = send(c.get(format!("{}/api/registry/prometheus-sd", reg.url))).await;
    assert_eq!(status, 200);
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let auth = &groups[0];
    assert_eq!(auth["targets"], json!(["127.0.0.1:3002"]));
    assert_eq!(auth["labels"]["service"], "auth");
    assert_eq!(auth["labels"]["instance_id"], "auth-2");
    assert_eq!(auth["labels"]["__scheme__"], "https");
    let data = &groups[1];
    assert_eq!(data["targets"], json!(["127.0.0.1:4002"]), "localhost is where instances listen: 127.0.0.1");
    assert_eq!(data["labels"]["service"], "data");
    assert_eq!(data["labels"]["__meta_orch_name"], "data-1");
    assert_eq!(data["labels"]["__meta_orch_healthy"], "true");
    assert!(data["labels"].get("__scheme__").is_none());
    for (key, value) in data["labels"].as_object().unwrap() {
        assert!(value.is_string(), "label {key} is a string");
    }
    reg.stop().await;
}

#[tokio::test]
async fn metrics_count_records_and_watch_wakeups() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    let scrape = || async { c.get(format!("{}/metrics", reg.url)).send().await.unwrap().text().await.unwrap() };
    let text = scrape().await;
    assert_eq!(metric(&text, r#"registry_records{healthy="true"}"#), Some(0.0), "{text}");
    let wakeups = metric(&text, "registry_watch_wakeups_total").unwrap();

    let client = reg.client();
    let first = client.services(None).await.unwrap();
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { client.watch(None, Some(first.index), Duration::from_secs(30)).await.unwrap() })
    };
    let waiter = kit::testing::still_pending(waiter, Duration::from_millis(100), "the blocking query").await;
    let record: kit::registry::Registration = serde_json::from_value(registration("data-1", "data")).unwrap();
    client.register(&record).await.unwrap();
    waiter.await.unwrap();

    let text = scrape().await;
    assert_eq!(metric(&text, r#"registry_records{healthy="true"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, r#"registry_records{healthy="false"}"#), Some(0.0), "{text}");
    assert!(metric(&text, "registry_watch_wakeups_total").unwrap() >= wakeups + 1.0, "{text}");
    let register = r#"http_requests_total{route="/api/registry/register",method="POST",status="201"}"#;
    assert!(metric(&text, register).unwrap() >= 1.0, "{text}");
    reg.stop().await;
}

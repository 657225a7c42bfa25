//! The loopback guard in front of the balancer's admin endpoints, and only them: a browser
//! form cannot inject a fault, while proxied requests pass as before.

use crate::{TOKEN, TestBackend, TestBalancer, http, read};

#[tokio::test]
async fn admin_endpoints_refuse_a_form_post_and_a_foreign_host() {
    let backend = TestBackend::start("a").await;
    let ports = backend.port().to_string();
    let balancer =
        TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &ports)]).await;
    let http = http();
    let faults = balancer.at("/api/faults");
    let spec = r#"{"service": "data", "errorPercent": 100, "durationMs": 60000}"#;
    for content_type in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
        let req = http.post(&faults).bearer_auth(TOKEN).header("content-type", content_type).body(spec);
        let (status, _, body) = read(req.send().await.unwrap()).await;
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    let res = http.get(balancer.at("/status")).header("host", "evil.example").send().await.unwrap();
    assert_eq!(res.status(), 421);
    let req = http.post(&faults).bearer_auth(TOKEN).header("host", "evil.example").json(&serde_json::json!({}));
    assert_eq!(req.send().await.unwrap().status(), 421);
    let (status, _, list) = read(http.get(&faults).bearer_auth(TOKEN).send().await.unwrap()).await;
    assert_eq!((status, list["faults"].as_array().map(Vec::len)), (200, Some(0)), "no fault was added: {list}");

    // The data plane is not guarded: any body and any host are proxied.
    let req = http.post(balancer.at("/api/data/x")).header("host", "shop.example").header("content-type", "text/plain");
    let (status, instance, _) = read(req.body("plain").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(instance.is_some(), "answered by the backend");
    balancer.stop().await;
}

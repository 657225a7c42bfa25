//! The loopback guard in front of the detector: its page, API and socket answer only
//! loopback names, and a browser form cannot start a round of checks.

use crate::{TestDetector, TestRegistry, send};

#[tokio::test]
async fn a_form_post_and_a_foreign_host_are_refused() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let c = reqwest::Client::new();
    let check = format!("{}/api/check", detector.url);
    for content_type in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
        let (status, body) = send(c.post(&check).header("content-type", content_type).body("a=b")).await;
        assert_eq!(status, 415, "{content_type}: {body}");
        assert!(body["error"].as_str().unwrap().contains("application/json"), "{body}");
    }
    let (status, _) = send(c.post(&check).header("origin", "https://evil.example")).await;
    assert_eq!(status, 403);
    for path in ["/", "/api/status", "/ws", "/health"] {
        let res = c.get(format!("{}{path}", detector.url)).header("host", "evil.example:3004").send().await.unwrap();
        assert_eq!(res.status(), 421, "{path}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("evil.example"), "{body}");
    }
    // What the CLI, the tests and the page send still works.
    detector.check().await;
    let res = c.get(format!("{}/", detector.url)).header("host", "localhost:3004").send().await.unwrap();
    assert_eq!(res.status(), 200);
}

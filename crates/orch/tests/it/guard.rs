//! The loopback guard in front of orch's control API: a browser form cannot stop or scale
//! the cluster, even with the token, and a page under another name cannot read it.

use serde_json::Value;

use crate::{Cluster, web};

#[tokio::test]
async fn a_form_post_and_a_foreign_host_are_refused() {
    let cluster = Cluster::start(&web(1)).await;
    let before = cluster.wait_ready(&["registry-1", "web-1"]).await;
    let http = reqwest::Client::new();
    let token = cluster.control_token();
    for (path, body) in [("/api/down", "{}"), ("/api/scale", r#"{"service": "web", "replicas": 3}"#)] {
        for content_type in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
            let req =
                http.post(format!("{}{path}", cluster.url)).bearer_auth(&token).header("content-type", content_type);
            let res = req.body(body).send().await.unwrap();
            assert_eq!(res.status(), 415, "{path} as {content_type}");
            let answer: Value = res.json().await.unwrap();
            assert!(answer["error"].as_str().unwrap().contains("application/json"), "{answer}");
        }
    }
    for path in ["/api/cluster", "/api/instances"] {
        let res = http.get(format!("{}{path}", cluster.url)).header("host", "evil.example").send().await.unwrap();
        assert_eq!(res.status(), 421, "{path}");
    }
    let res = http
        .post(format!("{}/api/down", cluster.url))
        .bearer_auth(&token)
        .header("origin", "https://evil.example")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(cluster.pids().await, before, "nothing was stopped or scaled");
}

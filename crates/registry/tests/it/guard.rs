//! The loopback guard in front of the registry: a browser page cannot change the set.

use serde_json::json;

use crate::{TOKEN, TestRegistry, http, registration, send};

#[tokio::test]
async fn a_form_post_and_a_foreign_host_change_nothing() {
    let reg = TestRegistry::start(&[]).await;
    let c = http();
    let url = format!("{}/api/registry/register", reg.url);
    let fields = "serviceId=evil-1&serviceType=auth&url=http://localhost:9";
    for content_type in ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"] {
        for token in [None, Some(TOKEN)] {
            let mut req = c.post(&url).header("content-type", content_type).body(fields);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let (status, body) = send(req).await;
            assert_eq!(status, 415, "{content_type}: {body}");
            assert!(body["error"].as_str().unwrap().contains("application/json"), "{body}");
        }
    }
    // JSON sent as text/plain, the one body a page can post without asking first.
    let text = serde_json::to_string(&registration("evil-2", "auth")).unwrap();
    let (status, _) = send(c.post(&url).bearer_auth(TOKEN).header("content-type", "text/plain").body(text)).await;
    assert_eq!(status, 415);

    // DNS rebinding: the page's own name in Host.
    for host in ["evil.example", "evil.example:3005", "10.1.2.3"] {
        let req = c.post(&url).bearer_auth(TOKEN).header("host", host).json(&registration("evil-3", "auth"));
        let (status, body) = send(req).await;
        assert_eq!(status, 421, "{host}: {body}");
        let (status, _) = send(c.get(format!("{}/api/registry/services", reg.url)).header("host", host)).await;
        assert_eq!(status, 421, "reads are refused too");
    }
    // A cross-origin fetch.
    let req =
        c.post(&url).bearer_auth(TOKEN).header("origin", "https://evil.example").json(&registration("evil-4", "a"));
    assert_eq!(send(req).await.0, 403);

    let (_, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!(list["total"], 0, "nothing was registered: {list}");

    // What programs send still works: loopback names, JSON.
    for host in ["localhost", "127.0.0.1:3005", "[::1]:3005"] {
        let (status, _) = send(c.get(format!("{}/health", reg.url)).header("host", host)).await;
        assert_eq!(status, 200, "{host}");
    }
    let (status, _) = send(c.post(&url).bearer_auth(TOKEN).json(&registration("auth-1", "auth"))).await;
    assert_eq!(status, 201);
    let heartbeat = json!({ "serviceId": "auth-1" });
    let (status, _) =
        send(c.post(format!("{}/api/registry/heartbeat", reg.url)).bearer_auth(TOKEN).json(&heartbeat)).await;
    assert_eq!(status, 200);
    reg.stop().await;
}

#[tokio::test]
async fn allowed_hosts_are_answered() {
    let reg = TestRegistry::start(&[("ALLOWED_HOSTS", "registry.cluster.local,registry")]).await;
    let c = http();
    for (host, expected) in [("registry:3005", 200), ("Registry.Cluster.Local", 200), ("localhost", 200), ("evil", 421)]
    {
        let (status, _) = send(c.get(format!("{}/api/registry/services", reg.url)).header("host", host)).await;
        assert_eq!(status, expected, "{host}");
    }
    reg.stop().await;
}

//! The JSON endpoints, the page's files, and bad input.

use futures_util::future::join_all;

use crate::{Backend, FakeBalancer, Mode, TestDetector, TestRegistry, WAIT, eventually, send};

#[tokio::test]
async fn status_by_type_and_unknown_types() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (_a, url_a) = Backend::start().await;
    let (_b, url_b) = Backend::start().await;
    let (_c, url_c) = Backend::start().await;
    registry.register("auth-1", "auth", &url_a).await;
    registry.register("auth-2", "auth", &url_b).await;
    registry.register("data-1", "data", &url_c).await;
    detector.instance_where("data-1", "data-1 up", |i| i["status"] == "up").await;
    detector.check().await;

    let (code, status) = detector.get("/api/status").await;
    assert_eq!(code, 200);
    assert!(status["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(status["summary"], serde_json::json!({"total": 3, "healthy": 3, "unhealthy": 0, "unknown": 0}));
    assert_eq!(status["services"]["auth"].as_array().unwrap().len(), 2);
    assert_eq!(status["services"]["data"].as_array().unwrap().len(), 1);
    for field in [
        "serviceId",
        "serviceType",
        "url",
        "port",
        "healthy",
        "status",
        "lastCheck",
        "responseTimeMs",
        "consecutiveFailures",
        "history",
    ] {
        assert!(status["services"]["auth"][0].get(field).is_some(), "missing {field}");
    }

    let (code, auth) = detector.get("/api/status/auth").await;
    assert_eq!(code, 200);
    assert_eq!(auth["serviceType"], "auth");
    assert_eq!(auth["summary"]["total"], 2);
    let ids: Vec<&str> =
        auth["instances"].as_array().unwrap().iter().map(|i| i["serviceId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["auth-1", "auth-2"]);

    let (code, body) = detector.get("/api/status/compute").await;
    assert_eq!(code, 404);
    assert_eq!(body["error"], "unknown service type \"compute\"");
    let (code, body) = detector.get("/api/status/%3Cscript%3E").await;
    assert_eq!(code, 404);
    assert!(body["error"].is_string());

    // The infrastructure targets answer under their own names.
    let (code, body) = detector.get("/api/status/registry").await;
    assert_eq!((code, body["instances"][0]["status"].as_str()), (200, Some("up")));

    // History on demand.
    let (_, none) = detector.get("/api/status?history=none").await;
    assert!(none["services"]["auth"][0].get("history").is_none());
    let (_, last) = detector.get("/api/status/auth?history=last").await;
    assert_eq!(last["instances"][0]["history"].as_array().unwrap().len(), 1);
    let (code, body) = detector.get("/api/status?history=lots").await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("history"), "{body}");
}

#[tokio::test]
async fn alerts_endpoint_and_its_limits() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (code, body) = detector.get("/api/alerts").await;
    assert_eq!((code, body), (200, serde_json::json!({"alerts": [], "total": 0})));
    for bad in ["/api/alerts?limit=0", "/api/alerts?limit=100000", "/api/alerts?limit=x"] {
        let (code, body) = detector.get(bad).await;
        assert_eq!(code, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }

    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;
    backend.set(Mode::Failing);
    detector.check().await;
    backend.set(Mode::Up);
    detector.check().await;
    let (_, body) = detector.get("/api/alerts?limit=1").await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(body["alerts"][0]["type"], "recovered");
    assert_eq!(body["total"], 2);
    let alert = &body["alerts"][0];
    for field in ["id", "type", "serviceId", "serviceType", "message", "at"] {
        assert!(alert.get(field).is_some(), "missing {field}: {alert}");
    }
}

#[tokio::test]
async fn a_flood_of_check_requests_is_coalesced() {
    let registry = TestRegistry::start().await;
    // A round takes about a second (the backend is slow), so the flood lands in it.
    let detector = TestDetector::start(&registry, &[("CHECK_TIMEOUT_MS", "3000")]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;
    backend.set(Mode::Slow);
    let before = backend.hits();

    let http = reqwest::Client::new();
    let flood = (0..100).map(|_| send(http.post(format!("{}/api/check", detector.url))));
    let answers = join_all(flood).await;
    assert!(answers.iter().all(|(code, body)| *code == 200 && body["summary"]["total"] == 1), "{:?}", answers[0]);
    let rounds: std::collections::BTreeSet<u64> = answers.iter().map(|(_, b)| b["round"].as_u64().unwrap()).collect();
    let checks = backend.hits() - before;
    // One round for the first request, at most one more for those that came while it ran.
    assert!((1..=2).contains(&checks), "100 requests caused {checks} checks");
    assert!(rounds.len() <= 2, "rounds {rounds:?}");
}

#[tokio::test]
async fn errors_are_json_and_the_page_is_served_with_its_headers() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let http = reqwest::Client::new();

    let (code, body) = detector.get("/nowhere").await;
    assert_eq!((code, body["error"].as_str()), (404, Some("no route for GET /nowhere")));
    let (code, body) = send(http.delete(format!("{}/api/status", detector.url))).await;
    assert_eq!(code, 405);
    assert!(body["error"].is_string());
    let (code, body) = detector.get("/api/check").await;
    assert_eq!(code, 405, "{body}");

    let (code, body) = detector.get("/health").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("healthy")));
    let (code, body) = detector.get("/ready").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ready")), "ready without a balancer");

    for (path, kind) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let res = http.get(format!("{}{path}", detector.url)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let headers = res.headers().clone();
        assert_eq!(headers["content-type"], kind, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
        let etag = headers["etag"].clone();
        let body = res.text().await.unwrap();
        assert!(!body.is_empty());
        let again = http.get(format!("{}{path}", detector.url)).header("if-none-match", etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path} revalidates");
    }

    // The page loads nothing from elsewhere and runs no inline script.
    let page = http.get(&detector.url).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "{page}");
    assert!(page.contains(r#"<script src="/app.js" defer></script>"#));
    assert_eq!(page.matches("<script").count(), 1);
}

#[tokio::test]
async fn nothing_shown_carries_a_secret() {
    let registry = TestRegistry::start().await;
    let (_balancer, balancer_url) = FakeBalancer::start().await;
    let hook = "http://127.0.0.1:9/hook?token=hook-secret";
    let detector =
        TestDetector::start(&registry, &[("ALERT_WEBHOOK_URL", hook), ("LOAD_BALANCER_URL", &balancer_url)]).await;
    let (_backend, url) = Backend::start().await;
    // A URL with credentials in it is shown without them.
    registry.register("web-1", "web", &url.replace("http://", "http://user:pw-secret@")).await;
    detector.instance_where("web-1", "web-1 checked", |i| i["status"] != "unknown").await;

    let mut shown = String::new();
    for path in ["/api/status", "/api/status/web", "/api/alerts", "/health"] {
        shown.push_str(&detector.get(path).await.1.to_string());
    }
    shown.push_str(detector.state.snapshot().text.as_str());
    for secret in [crate::TOKEN, "hook-secret", "pw-secret", "not for the dashboard"] {
        assert!(!shown.contains(secret), "{secret:?} is shown: {shown}");
    }
    let web1 = detector.instance_where("web-1", "web-1", |_| true).await;
    assert_eq!(web1["url"], url);
}

#[tokio::test]
async fn the_balancer_traffic_reaches_the_dashboard() {
    let registry = TestRegistry::start().await;
    let (balancer, balancer_url) = FakeBalancer::start().await;
    let detector = TestDetector::start(&registry, &[("LOAD_BALANCER_URL", &balancer_url)]).await;
    balancer.set(FakeBalancer::metrics(30, &[("backend-1", 20), ("backend-2", 10)]));
    eventually(WAIT, "a rate", || async {
        let snapshot: serde_json::Value = serde_json::from_str(detector.state.snapshot().text.as_str()).unwrap();
        let traffic = snapshot["traffic"].clone();
        // Two readings of a moving counter give a rate.
        balancer.set(FakeBalancer::metrics(
            traffic["requests"].as_u64().unwrap_or(30) + 10,
            &[("backend-1", 20), ("backend-2", 10)],
        ));
        (traffic["requestsPerSecond"].as_f64().is_some_and(|r| r > 0.0)).then_some(traffic)
    })
    .await;
    let snapshot: serde_json::Value = serde_json::from_str(detector.state.snapshot().text.as_str()).unwrap();
    let traffic = &snapshot["traffic"];
    assert_eq!(traffic["available"], true);
    assert_eq!(traffic["services"]["backend"]["instances"]["backend-1"]["requests"], 20);
    assert_eq!(traffic["services"]["backend"]["instances"]["backend-2"]["requests"], 10);
    assert!(!traffic["rateHistory"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_last_verify_timeline_is_served_and_linked_when_there_is_one() {
    let registry = TestRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let detector = TestDetector::start(&registry, &[("DATA_DIR", dir.path().to_str().unwrap())]).await;
    let (code, body) = detector.get("/verify/timeline.html").await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no verify run yet"), "{body}");

    std::fs::create_dir_all(dir.path().join("verify")).unwrap();
    std::fs::write(dir.path().join("verify/timeline.html"), "<!doctype html><svg>run</svg>").unwrap();
    let res = reqwest::get(format!("{}/verify/timeline.html", detector.url)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.starts_with("default-src 'none'") && !csp.contains("script"), "{csp}");
    assert_eq!(res.text().await.unwrap(), "<!doctype html><svg>run</svg>");
    // The page has the link (shown by app.js once the timeline answers).
    let page = reqwest::get(format!("{}/", detector.url)).await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"href="/verify/timeline.html""#));

    // Without a data dir there is nothing to serve.
    let bare = TestDetector::start(&registry, &[]).await;
    assert_eq!(bare.get("/verify/timeline.html").await.0, 404);
}

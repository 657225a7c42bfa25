//! Health over real checks: instances from the registry's watch, up -> down alerts,
//! down -> up recoveries, flapping, a hung instance, removal.

use crate::{Backend, Mode, TestDetector, TestRegistry, WAIT, eventually};

#[tokio::test]
async fn new_instances_are_checked_at_once_and_removed_ones_vanish() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;

    // Checks only run when asked here, so being up means the watch triggered a check.
    let web1 = detector.instance_where("web-1", "web-1 checked up", |i| i["status"] == "up").await;
    assert!(backend.hits() >= 1);
    assert_eq!(web1["serviceType"], "web");
    assert_eq!(web1["url"], url);
    assert_eq!(web1["healthy"], true);
    assert_eq!(web1["registryHealthy"], true);
    assert!(web1["responseTimeMs"].as_f64().unwrap() >= 0.0);
    assert!(web1.get("metadata").is_none(), "registry metadata is not shown");

    registry.client().deregister("web-1").await.unwrap();
    eventually(WAIT, "web-1 gone", || async {
        let (_, status) = detector.get("/api/status").await;
        status["services"].as_object().unwrap().is_empty().then_some(())
    })
    .await;
    assert!(detector.alerts().await.is_empty(), "a removal is not a failure");
}

#[tokio::test]
async fn down_then_recovered_then_flapping_one_alert_per_change() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;

    backend.set(Mode::Failing);
    let status = detector.check().await;
    assert_eq!(status["summary"]["unhealthy"], 1);
    let web1 = detector.instance_where("web-1", "web-1 down", |i| i["status"] == "down").await;
    assert_eq!(web1["lastError"], "answered 503 Service Unavailable");
    assert_eq!(web1["consecutiveFailures"], 1);
    detector.check().await;
    let web1 = detector.instance_where("web-1", "two failures", |i| i["consecutiveFailures"] == 2).await;
    assert_eq!(web1["status"], "down");

    let alerts = detector.alerts().await;
    assert_eq!(alerts.len(), 1, "still down is not a new alert: {alerts:?}");
    assert_eq!(alerts[0]["type"], "down");
    assert_eq!(alerts[0]["serviceId"], "web-1");
    assert_eq!(alerts[0]["serviceType"], "web");
    assert!(alerts[0]["message"].as_str().unwrap().contains("web-1 (web) is down"), "{alerts:?}");

    backend.set(Mode::Up);
    detector.check().await;
    let alerts = detector.alerts().await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["type"], "recovered", "newest first");
    assert!(alerts[0]["message"].as_str().unwrap().contains("recovered after"));

    // Flapping: four flips, four alerts, alternating.
    for mode in [Mode::Failing, Mode::Up, Mode::Failing, Mode::Up] {
        backend.set(mode);
        detector.check().await;
    }
    let (_, body) = detector.get("/api/alerts").await;
    assert_eq!(body["total"], 6);
    let kinds: Vec<&str> = body["alerts"].as_array().unwrap().iter().map(|a| a["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["recovered", "down", "recovered", "down", "recovered", "down"]);
    let ids: Vec<u64> = body["alerts"].as_array().unwrap().iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [6, 5, 4, 3, 2, 1]);
}

#[tokio::test]
async fn a_hung_instance_is_down_after_the_timeout() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[("CHECK_TIMEOUT_MS", "200")]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;

    backend.set(Mode::Hanging);
    detector.check().await;
    let web1 = detector.instance_where("web-1", "web-1 down", |i| i["status"] == "down").await;
    assert_eq!(web1["lastError"], "no answer within 200 ms");
    let history = web1["history"].as_array().unwrap();
    let last = history.last().unwrap();
    assert_eq!((last["ok"].as_bool(), last["ms"].is_null()), (Some(false), true), "{history:?}");
}

#[tokio::test]
async fn periodic_checks_keep_a_bounded_history() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[("CHECK_INTERVAL_MS", "20"), ("HISTORY_SIZE", "5")]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    eventually(WAIT, "more checks than the history keeps", || async { (backend.hits() > 10).then_some(()) }).await;
    let web1 =
        detector.instance_where("web-1", "a full history", |i| i["history"].as_array().unwrap().len() == 5).await;
    let times: Vec<i64> = web1["history"].as_array().unwrap().iter().map(|s| s["t"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
}

#[tokio::test]
async fn the_registry_and_the_balancer_are_checked_too() {
    let registry = TestRegistry::start().await;
    let (_balancer, balancer_url) = crate::FakeBalancer::start().await;
    let detector = TestDetector::start(&registry, &[("LOAD_BALANCER_URL", &balancer_url)]).await;
    let status = detector.check().await;
    assert_eq!(status["registry"]["status"], "up", "{status}");
    assert_eq!(status["balancer"]["status"], "up", "{status}");
    assert_eq!(status["registry"]["url"], registry.url);

    // No balancer: down, with the reason.
    let registry2 = TestRegistry::start().await;
    let detector = TestDetector::start(&registry2, &[]).await;
    let status = detector.check().await;
    assert_eq!(status["balancer"]["status"], "down");
    assert_eq!(status["balancer"]["lastError"], "cannot connect");
}

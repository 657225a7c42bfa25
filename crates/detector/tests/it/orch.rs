//! Following a (fake) orch: restart counts, crashes shown at once, processes orch says are
//! not running, and orch's events on the dashboard.

use serde_json::Value;

use crate::{Backend, FakeOrch, TestDetector, TestRegistry, WAIT, eventually};

async fn setup() -> (TestRegistry, FakeOrch, TestDetector, Backend, String) {
    let registry = TestRegistry::start().await;
    let (orch, orch_url) = FakeOrch::start().await;
    let (backend, url) = Backend::start().await;
    orch.set_instances(vec![FakeOrch::instance("web-1", &url, "running", 0)]);
    orch.event("started", "web-1", "web-1 started (pid 4242)");
    orch.event("ready", "web-1", "web-1 is ready");
    let detector = TestDetector::start(&registry, &[("ORCH_CONTROL_URL", &orch_url)]).await;
    registry.register("web-1", "web", &url).await;
    detector
        .instance_where("web-1", "web-1 up with orch's view", |i| i["status"] == "up" && i["orch"].is_object())
        .await;
    (registry, orch, detector, backend, url)
}

fn snapshot(detector: &TestDetector) -> Value {
    serde_json::from_str(detector.state.snapshot().text.as_str()).unwrap()
}

#[tokio::test]
async fn orch_history_fills_the_feed_without_alerts() {
    let (_registry, _orch, detector, _backend, _url) = setup().await;
    let web1 = detector.instance_where("web-1", "web-1", |_| true).await;
    assert_eq!(web1["orch"]["restarts"], 0);
    assert_eq!(web1["orch"]["pid"], 4242);
    assert_eq!(web1["orch"]["status"], "running");
    let events = eventually(WAIT, "orch's history in the snapshot", || async {
        let events = snapshot(&detector)["events"].as_array().unwrap().clone();
        (events.len() == 2).then_some(events)
    })
    .await;
    assert_eq!(events[0]["type"], "ready", "newest first");
    assert_eq!(events[1]["message"], "web-1 started (pid 4242)");
    assert_eq!(snapshot(&detector)["config"]["orch"], true);
    assert!(detector.alerts().await.is_empty());
}

#[tokio::test]
async fn a_crash_is_shown_even_when_the_restart_is_instant() {
    let (_registry, orch, detector, backend, url) = setup().await;
    // orch kills and restarts web-1 within milliseconds; its socket never stopped answering.
    orch.set_instances(vec![FakeOrch::instance("web-1", &url, "running", 1)]);
    let hits = backend.hits();
    orch.event("exited", "web-1", "web-1 exited (signal SIGKILL)");
    orch.event("restarted", "web-1", "web-1 restarted (restart 1)");

    // Down at once (from the event, not a check), then up again after a fresh check.
    let alerts = eventually(WAIT, "a down and a recovery", || async {
        let alerts = detector.alerts().await;
        (alerts.len() == 2).then_some(alerts)
    })
    .await;
    assert_eq!(alerts[1]["type"], "down");
    assert_eq!(alerts[1]["message"], "web-1 (web) is down: orch: web-1 exited (signal SIGKILL)");
    assert_eq!(alerts[0]["type"], "recovered");
    assert!(backend.hits() > hits, "the recovery came from a check after the events");
    let web1 = detector.instance_where("web-1", "restart counted", |i| i["orch"]["restarts"] == 1).await;
    assert_eq!(web1["status"], "up");
    assert_eq!(web1["orch"]["lastExit"]["signal"], "SIGKILL");
    let kinds: Vec<String> = snapshot(&detector)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds[..2], ["restarted", "exited"]);
}

#[tokio::test]
async fn an_instance_orch_reports_not_running_stays_down() {
    let (_registry, orch, detector, _backend, url) = setup().await;
    // Crash-looping: its (orch-held) socket may answer, but there is no process behind it.
    orch.set_instances(vec![FakeOrch::instance("web-1", &url, "crashloop", 5)]);
    let web1 = detector.instance_where("web-1", "web-1 down", |i| i["status"] == "down").await;
    assert_eq!(web1["lastError"], "orch reports it crashloop");
    detector.check().await;
    let web1 = detector.instance_where("web-1", "web-1", |_| true).await;
    assert_eq!(web1["status"], "down", "a check cannot bring it back while orch says so");
    assert_eq!(detector.alerts().await.len(), 1);

    orch.set_instances(vec![FakeOrch::instance("web-1", &url, "running", 6)]);
    orch.event("ready", "web-1", "web-1 is ready");
    detector.instance_where("web-1", "web-1 back", |i| i["status"] == "up").await;
}

#[tokio::test]
async fn a_new_orch_with_fresh_numbers_is_followed() {
    let (_registry, orch, detector, _backend, _url) = setup().await;
    eventually(WAIT, "the first orch's history read", || async {
        (snapshot(&detector)["events"].as_array().unwrap().len() == 2).then_some(())
    })
    .await;
    orch.reset_events();
    orch.event("manifest-applied", "", "cluster.yaml applied");
    eventually(WAIT, "the new orch's first event", || async {
        let events = snapshot(&detector)["events"].as_array().unwrap().clone();
        events.iter().any(|e| e["type"] == "manifest-applied").then_some(())
    })
    .await;
    orch.event("exited", "web-1", "web-1 exited (code 1)");
    let alerts = eventually(WAIT, "the crash alerted", || async {
        let alerts = detector.alerts().await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(alerts.last().unwrap()["message"], "web-1 (web) is down: orch: web-1 exited (code 1)");
}

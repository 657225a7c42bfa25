//! Alerts POSTed to `ALERT_WEBHOOK_URL`: retried until the receiver takes them, and never
//! in the way of the checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use crate::{Backend, Mode, TestDetector, TestRegistry, WAIT, eventually, spawn_server};

#[derive(Clone, Default)]
struct Receiver {
    attempts: Arc<AtomicUsize>,
    /// Attempts answered 500 before the first 200.
    fail_first: usize,
    hang: bool,
    received: Arc<Mutex<Vec<Value>>>,
    /// The `traceparent` of every attempt.
    traces: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start(self) -> (Self, String) {
        let router = Router::new().route("/hook", post(receive)).with_state(self.clone());
        let url = spawn_server(router).await;
        (self, format!("{url}/hook"))
    }
}

async fn receive(State(r): State<Receiver>, headers: axum::http::HeaderMap, body: axum::Json<Value>) -> StatusCode {
    let trace = headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned());
    r.traces.lock().unwrap().push(trace.unwrap_or_default());
    let attempt = r.attempts.fetch_add(1, Ordering::SeqCst) + 1;
    if r.hang {
        std::future::pending::<()>().await;
    }
    if attempt <= r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.received.lock().unwrap().push(body.0);
    StatusCode::OK
}

async fn detector_with_hook(hook: &str) -> (TestRegistry, TestDetector, Backend) {
    let registry = TestRegistry::start().await;
    let detector =
        TestDetector::start(&registry, &[("ALERT_WEBHOOK_URL", hook), ("ALERT_WEBHOOK_BACKOFF_MS", "20")]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;
    (registry, detector, backend)
}

#[tokio::test]
async fn alerts_are_delivered_after_retries() {
    let (receiver, hook) = Receiver { fail_first: 2, ..Default::default() }.start().await;
    let (_registry, detector, backend) = detector_with_hook(&hook).await;

    backend.set(Mode::Failing);
    detector.check().await;
    let delivered =
        eventually(WAIT, "the alert delivered", || async { receiver.received.lock().unwrap().first().cloned() }).await;
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 3, "two failures, then delivered");
    assert_eq!(delivered["type"], "down");
    assert_eq!(delivered["serviceId"], "web-1");
    assert_eq!(delivered["serviceType"], "web");
    assert!(delivered["message"].as_str().unwrap().contains("is down"));
    assert_eq!(delivered, detector.alerts().await[0], "the same alert as GET /api/alerts");

    backend.set(Mode::Up);
    detector.check().await;
    eventually(WAIT, "the recovery delivered", || async {
        (receiver.received.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    assert_eq!(receiver.received.lock().unwrap()[1]["type"], "recovered");

    // Each alert is a sampled trace of its own, the same on each of its attempts.
    let traces = receiver.traces.lock().unwrap().clone();
    let parsed: Vec<_> = traces
        .iter()
        .map(|t| kit::trace::TraceContext::parse(t.as_bytes()).unwrap_or_else(|e| panic!("{t:?}: {e}")))
        .collect();
    assert_eq!(parsed.len(), 4, "{traces:?}");
    assert!(parsed.iter().all(|t| t.sampled()), "{traces:?}");
    assert!(parsed[..3].iter().all(|t| *t == parsed[0]), "{traces:?}");
    assert_ne!(parsed[3].trace_id, parsed[0].trace_id, "{traces:?}");
}

#[tokio::test]
async fn a_hanging_receiver_never_blocks_the_checks() {
    let (receiver, hook) = Receiver { hang: true, ..Default::default() }.start().await;
    let (_registry, detector, backend) = detector_with_hook(&hook).await;

    backend.set(Mode::Failing);
    detector.check().await;
    eventually(WAIT, "the webhook called", || async { (receiver.attempts.load(Ordering::SeqCst) == 1).then_some(()) })
        .await;
    // The receiver holds the first delivery; checks and alerts go on regardless.
    for mode in [Mode::Up, Mode::Failing, Mode::Up] {
        backend.set(mode);
        let status = detector.check().await;
        assert_eq!(status["summary"]["total"], 1);
    }
    assert_eq!(detector.alerts().await.len(), 4);
    assert_eq!(receiver.attempts.load(Ordering::SeqCst), 1, "deliveries wait their turn");
}

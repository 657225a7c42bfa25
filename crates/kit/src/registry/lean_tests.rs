//! The heartbeat's lean path against an axum stub of the registry's heartbeat route.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Beat, ClientError, Lean, RegistryClient};
use crate::http1;
use crate::secret::Secret;
use crate::trace::TraceContext;

const TOKEN: &str = "cluster-token";

/// What the stub saw of each heartbeat: its `traceparent`, if any.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A registry's heartbeat route: the service id says the answer; the token is required.
struct Stub {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Seen,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let listener = listener.tap_io(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let seen = Seen::default();
        let app = axum::Router::new().route(
            "/api/registry/heartbeat",
            post({
                let seen = seen.clone();
                move |headers: HeaderMap, Json(body): Json<Value>| async move { beat(&seen, &headers, &body) }
            }),
        );
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        let served = tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stopped).await.unwrap();
        });
        Self { addr, accepted, seen, stop, served }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and closes every connection (graceful: idle ones at once).
    async fn stop(self) {
        self.stop.cancel();
        self.served.await.unwrap();
    }
}

fn beat(seen: &Seen, headers: &HeaderMap, body: &Value) -> (StatusCode, String) {
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"));
    if !authorized {
        return (StatusCode::UNAUTHORIZED, json!({ "error": "missing or invalid token" }).to_string());
    }
    let trace = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock().unwrap().push(trace);
    let id = body.get("serviceId").and_then(Value::as_str).unwrap_or_default();
    match id {
        "alive" => (StatusCode::OK, json!({ "serviceId": id, "healthy": true }).to_string()),
        "unknown" => (StatusCode::NOT_FOUND, json!({ "error": "service not found" }).to_string()),
        "drained" => (StatusCode::GONE, json!({ "error": "deregistered" }).to_string()),
        "not-json" => (StatusCode::OK, "fine".to_owned()),
        "crash" => (StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned()),
        _ => (StatusCode::BAD_REQUEST, json!({ "error": "serviceId is invalid" }).to_string()),
    }
}

fn client(url: &str) -> RegistryClient {
    let client = RegistryClient::new(url, Some(Secret::new(TOKEN.to_owned())));
    assert!(client.lean.is_some(), "{url} takes the lean path");
    client
}

#[tokio::test]
async fn a_heartbeat_tells_each_outcome_apart() {
    let stub = Stub::start("127.0.0.1:0").await;
    let client = client(&stub.url());
    assert_eq!(client.heartbeat("alive").await.unwrap(), Beat::Alive);
    assert_eq!(client.heartbeat("unknown").await.unwrap(), Beat::Unknown);
    assert_eq!(client.heartbeat("drained").await.unwrap(), Beat::Deregistered);
    match client.heartbeat("bad id").await {
        Err(ClientError::Status { status: 400, message }) => assert_eq!(message, "serviceId is invalid"),
        other => panic!("{other:?}"),
    }
    match client.heartbeat("crash").await {
        Err(ClientError::Status { status: 500, message }) => assert_eq!(message, "Internal Server Error"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(client.heartbeat("not-json").await, Err(ClientError::Body { status: 200, .. })));
    // Without the token the stub refuses, with its message.
    let anonymous = RegistryClient::new(&stub.url(), None);
    match anonymous.heartbeat("alive").await {
        Err(ClientError::Status { status: 401, message }) => assert_eq!(message, "missing or invalid token"),
        other => panic!("{other:?}"),
    }
    stub.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_one_connection_across_clones() {
    let stub = Stub::start("127.0.0.1:0").await;
    let client = client(&format!("{}/", stub.url()));
    for i in 0..5 {
        let beating = if i % 2 == 0 { client.clone() } else { client.clone().clone() };
        assert_eq!(beating.heartbeat("alive").await.unwrap(), Beat::Alive);
    }
    assert_eq!(stub.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(stub.seen.lock().unwrap().len(), 5);
    stub.stop().await;
}

#[tokio::test]
async fn a_heartbeat_inside_a_request_carries_its_trace() {
    let stub = Stub::start("127.0.0.1:0").await;
    let client = client(&stub.url());
    client.heartbeat("alive").await.unwrap();
    let context = TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
    crate::trace::scope(context, client.heartbeat("alive")).await.unwrap();
    let seen = stub.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![None, Some(context.to_string())]);
    stub.stop().await;
}

#[tokio::test]
async fn a_restarted_registry_gets_the_next_beat() {
    let stub = Stub::start("127.0.0.1:0").await;
    let (addr, url) = (stub.addr, stub.url());
    let client = client(&url);
    assert_eq!(client.heartbeat("alive").await.unwrap(), Beat::Alive);
    let kept = client.lean.as_ref().unwrap().conns.clone();
    assert_eq!(kept.kept(), 1);
    stub.stop().await;
    // The same address again: the kept connection is the old server's, closed.
    let restarted = Stub::start(&addr.to_string()).await;
    assert_eq!(client.heartbeat("alive").await.unwrap(), Beat::Alive);
    assert_eq!(restarted.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(kept.kept(), 1);
    restarted.stop().await;
}

#[tokio::test]
async fn no_answer_is_an_error_within_the_timeout() {
    // Accepted by the kernel, never answered.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let client = RegistryClient::with_timeout(&url, None, Duration::from_millis(200));
    let outcome = client.heartbeat("alive").await;
    assert!(matches!(outcome, Err(ClientError::Lean(http1::Error::TimedOut))), "{outcome:?}");
    drop(silent);
    let outcome = client.heartbeat("alive").await;
    assert!(matches!(outcome, Err(ClientError::Lean(http1::Error::Refused))), "{outcome:?}");
    assert!(outcome.unwrap_err().to_string().starts_with("registry unreachable"));
}

#[test]
fn only_plain_http_urls_take_the_lean_path() {
    let lean = |url: &str| Lean::of(url).map(|l| (l.host, l.port, l.host_header, l.path));
    let path = "/api/registry/heartbeat";
    assert_eq!(lean("http://localhost:3005"), Some(("localhost".into(), 3005, "localhost:3005".into(), path.into())));
    assert_eq!(
        lean("http://127.0.0.1:41234"),
        Some(("127.0.0.1".into(), 41234, "127.0.0.1:41234".into(), path.into()))
    );
    assert_eq!(lean("http://[::1]:3005"), Some(("::1".into(), 3005, "[::1]:3005".into(), path.into())));
    assert_eq!(lean("http://registry"), Some(("registry".into(), 80, "registry:80".into(), path.into())));
    assert_eq!(
        lean("http://127.0.0.1:9/prefix"),
        Some(("127.0.0.1".into(), 9, "127.0.0.1:9".into(), format!("/prefix{path}")))
    );
    for other in
        ["https://localhost:3005", "localhost:3005", "not a url", "", "http://u:p@localhost:1", "http://h:1/?q=1"]
    {
        assert!(Lean::of(other).is_none(), "{other:?}");
        assert!(RegistryClient::new(other, None).lean.is_none(), "{other:?}");
    }
}

//! The fakes and the in-process detector the tests (and the benchmark) run against.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kit::registry::{Registration, RegistryClient};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use kit::testing::eventually;

pub const TOKEN: &str = "test-cluster-token";
pub const WAIT: Duration = Duration::from_secs(10);

/// Serves `router` on 127.0.0.1:0 for the rest of the test; returns its base URL.
pub async fn spawn_server(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// A registry serving in this process.
pub struct TestRegistry {
    pub url: String,
}

impl TestRegistry {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let vars = kit::Vars::from_pairs([("ORCH_CLUSTER_TOKEN", TOKEN), ("SHUTDOWN_GRACE_MS", "500")]);
        let config = registry::Config::from_vars(&vars).unwrap();
        tokio::spawn(registry::serve(config, listener, kit::Shutdown::new()));
        Self { url }
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.url, Some(kit::secret::Secret::new(TOKEN)))
    }

    /// Registers `id` of `service_type` at `url`.
    pub async fn register(&self, id: &str, service_type: &str, url: &str) {
        let registration = Registration {
            service_id: id.into(),
            service_type: service_type.into(),
            url: url.into(),
            name: Some(id.into()),
            metadata: serde_json::from_value(json!({"secretish": "not for the dashboard"})).unwrap(),
        };
        self.client().register(&registration).await.unwrap();
    }
}

/// What a fake backend answers on `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Up = 0,
    /// 503.
    Failing = 1,
    /// Never answers (the checks time out).
    Hanging = 2,
    /// Answers 200 after a second.
    Slow = 3,
}

/// A backend whose health the test controls, counting the checks it receives.
#[derive(Clone, Default)]
pub struct Backend {
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
}

impl Backend {
    pub async fn start() -> (Self, String) {
        let backend = Self::default();
        let state = backend.clone();
        let router = Router::new().route("/health", get(backend_health)).with_state(state);
        let url = spawn_server(router).await;
        // Registered as `localhost`, as components register themselves.
        (backend, url.replace("127.0.0.1", "localhost"))
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn backend_health(State(backend): State<Backend>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    match backend.mode.load(Ordering::SeqCst) {
        0 => axum::Json(json!({"status": "healthy"})).into_response(),
        1 => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "unhealthy"}))).into_response(),
        2 => std::future::pending().await,
        _ => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            axum::Json(json!({"status": "healthy"})).into_response()
        }
    }
}

/// A balancer answering `/health` and `/api/metrics` from a document the test sets.
#[derive(Clone)]
pub struct FakeBalancer {
    metrics: Arc<Mutex<Value>>,
}

impl FakeBalancer {
    pub async fn start() -> (Self, String) {
        let balancer = Self { metrics: Arc::new(Mutex::new(Self::metrics(0, &[]))) };
        let router = Router::new()
            .route("/health", get(|| async { axum::Json(json!({"status": "healthy"})) }))
            .route(
                "/api/metrics",
                get(|State(b): State<FakeBalancer>| async move { axum::Json(b.metrics.lock().unwrap().clone()) }),
            )
            .with_state(balancer.clone());
        let url = spawn_server(router).await;
        (balancer, url)
    }

    /// A metrics document as the contract shapes it: `requests` in all, split over
    /// `instances` of the `backend` service.
    pub fn metrics(requests: u64, instances: &[(&str, u64)]) -> Value {
        let per: serde_json::Map<String, Value> = instances
            .iter()
            .map(|(id, n)| {
                let doc = json!({"url": "http://localhost:1", "healthy": true, "requests": n, "errors": 0,
                    "inFlight": 0, "statusClasses": {"2xx": n, "3xx": 0, "4xx": 0, "5xx": 0},
                    "latencyMs": {"p50": 0.7, "p90": 1.2, "p99": 2.0}});
                (id.to_string(), doc)
            })
            .collect();
        json!({"timestamp": "2026-01-01T00:00:00.000Z", "uptimeSeconds": 12.5, "requests": requests,
            "errors": 0, "inFlight": 0, "retries": 0,
            "services": {"backend": {"requests": requests, "errors": 0, "inFlight": 0, "retries": 0,
                "statusClasses": {"2xx": requests, "3xx": 0, "4xx": 0, "5xx": 0},
                "latencyMs": {"p50": 0.8, "p90": 1.9, "p99": 4.2}, "instances": per}}})
    }

    pub fn set(&self, metrics: Value) {
        *self.metrics.lock().unwrap() = metrics;
    }
}

/// orch's control API: `/api/instances` and `/api/events` (with the long poll).
#[derive(Clone)]
pub struct FakeOrch {
    instances: Arc<Mutex<Vec<Value>>>,
    events: Arc<Mutex<VecDeque<Value>>>,
    appended: Arc<tokio::sync::Notify>,
    pub instance_reads: Arc<AtomicUsize>,
}

impl FakeOrch {
    pub async fn start() -> (Self, String) {
        let orch = Self {
            instances: Arc::default(),
            events: Arc::default(),
            appended: Arc::default(),
            instance_reads: Arc::default(),
        };
        let router = Router::new()
            .route("/api/instances", get(orch_instances))
            .route("/api/events", get(orch_events))
            .with_state(orch.clone());
        let url = spawn_server(router).await;
        (orch, url)
    }

    /// An instance as the contract shapes it.
    pub fn instance(name: &str, url: &str, status: &str, restarts: u32) -> Value {
        let service = name.rsplit_once('-').map_or(name, |(s, _)| s);
        let last_exit = (restarts > 0).then(|| json!({"code": null, "signal": "SIGKILL", "at": kit::time::now_iso()}));
        json!({"name": name, "service": service, "ordinal": 1, "pid": 4242, "port": 1, "url": url,
            "status": status, "ready": status == "running", "restarts": restarts,
            "startedAt": kit::time::now_iso(), "lastExit": last_exit})
    }

    pub fn set_instances(&self, instances: Vec<Value>) {
        *self.instances.lock().unwrap() = instances;
    }

    /// Forgets every event, as a new orch would (its numbering starts over).
    pub fn reset_events(&self) {
        self.events.lock().unwrap().clear();
        self.appended.notify_waiters();
    }

    /// Appends an event (numbered in order) and wakes long polls.
    pub fn event(&self, kind: &str, instance: &str, message: &str) {
        let mut events = self.events.lock().unwrap();
        let seq = events.len() as u64 + 1;
        let service = instance.rsplit_once('-').map_or(instance, |(s, _)| s);
        events.push_back(json!({"seq": seq, "time": kit::time::now_iso(), "type": kind,
            "service": service, "instance": instance, "message": message}));
        drop(events);
        self.appended.notify_waiters();
    }
}

async fn orch_instances(State(orch): State<FakeOrch>) -> axum::Json<Value> {
    orch.instance_reads.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"instances": orch.instances.lock().unwrap().clone()}))
}

async fn orch_events(
    State(orch): State<FakeOrch>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<Value> {
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let wait = q.get("wait").map(|w| w.trim_end_matches("ms").parse::<u64>().expect("wait in ms"));
    let newer = |orch: &FakeOrch| -> Vec<Value> {
        orch.events.lock().unwrap().iter().filter(|e| e["seq"].as_u64().unwrap() > since).cloned().collect()
    };
    let mut events = newer(&orch);
    if events.is_empty() {
        if let Some(ms) = wait {
            let appended = orch.appended.notified();
            events = newer(&orch);
            if events.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(ms), appended).await;
                events = newer(&orch);
            }
        }
    }
    // As orch answers: the last seq given, or (nothing new) the smaller of `since` and its latest.
    let latest = orch.events.lock().unwrap().len() as u64;
    let next = events.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap_or(since.min(latest));
    axum::Json(json!({"events": events, "next": next}))
}

/// A detector serving in this process.
pub struct TestDetector {
    pub url: String,
    pub state: detector::AppState,
}

impl TestDetector {
    /// A detector watching `registry`, checking only when asked (unless `extra` says
    /// otherwise), with a short check timeout and no balancer.
    pub async fn start(registry: &TestRegistry, extra: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut vars = vec![
            ("SERVICE_REGISTRY_URL", registry.url.as_str()),
            ("ORCH_CLUSTER_TOKEN", TOKEN),
            ("REGISTER", "false"),
            ("CHECK_INTERVAL_MS", "600000"),
            ("CHECK_TIMEOUT_MS", "300"),
            ("LOAD_BALANCER_URL", "http://127.0.0.1:9"),
            ("METRICS_INTERVAL_MS", "100"),
            ("SHUTDOWN_GRACE_MS", "500"),
        ];
        vars.extend_from_slice(extra);
        let config = detector::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
        let state = detector::AppState::new(config, kit::Shutdown::new());
        tokio::spawn(detector::run(state.clone(), listener));
        Self { url, state }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(reqwest::Client::new().get(format!("{}{path}", self.url))).await
    }

    /// `POST /api/check`: a round of checks, now.
    pub async fn check(&self) -> Value {
        let (status, body) = send(reqwest::Client::new().post(format!("{}/api/check", self.url))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The instance `id` in `GET /api/status`, once `ready` says it is as wanted.
    pub async fn instance_where(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        eventually(WAIT, what, || async {
            let (_, status) = self.get("/api/status").await;
            let found = status["services"]
                .as_object()?
                .values()
                .flat_map(|v| v.as_array().unwrap().iter())
                .find(|i| i["serviceId"] == id)?
                .clone();
            ready(&found).then_some(found)
        })
        .await
    }

    pub async fn alerts(&self) -> Vec<Value> {
        self.get("/api/alerts").await.1["alerts"].as_array().unwrap().clone()
    }
}

/// Sends a request; the status and the JSON body (`Null` if it is not JSON).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

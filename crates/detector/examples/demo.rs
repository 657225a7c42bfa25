//! The dashboard with a made-up cluster, for working on the page:
//! `cargo run -p detector --example demo [PORT]`, then open http://127.0.0.1:PORT.
//!
//! Everything runs in this process on 127.0.0.1: a registry, nine backends (auth, data,
//! compute) with a little jitter, a balancer's `/api/metrics` with moving counters, and
//! orch's control API with events. `data-3` fails for a while every 40 s, and every 25 s
//! one instance "crashes" and is restarted by the fake orch at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SERVICES: [&str; 3] = ["auth", "data", "compute"];
const TOKEN: &str = "demo-token";

#[derive(Clone, Default)]
struct Orch {
    instances: Arc<Mutex<Vec<Value>>>,
    events: Arc<Mutex<Vec<Value>>>,
    appended: Arc<tokio::sync::Notify>,
}

impl Orch {
    fn event(&self, kind: &str, instance: &str, message: &str) {
        let mut events = self.events.lock().unwrap();
        let seq = events.len() as u64 + 1;
        let service = instance.rsplit_once('-').map_or(instance, |(s, _)| s);
        events.push(json!({"seq": seq, "time": kit::time::now_iso(), "type": kind, "service": service,
            "instance": instance, "message": message}));
        drop(events);
        self.appended.notify_waiters();
    }
}

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// A pseudo-random number in 0..n from the clock (no RNG needed for a demo).
fn jitter(n: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (t.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 33) % n.max(1)
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(3404);
    kit::telemetry::init(kit::telemetry::LogFormat::Text, std::io::stderr);

    // The registry.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let vars = kit::Vars::from_pairs([("ORCH_CLUSTER_TOKEN", TOKEN)]);
    tokio::spawn(registry::serve(registry::Config::from_vars(&vars).unwrap(), listener, kit::Shutdown::new()));
    let client = kit::registry::RegistryClient::new(&registry_url, Some(kit::secret::Secret::new(TOKEN)));

    // The backends.
    let failing = Arc::new(AtomicBool::new(false));
    let orch = Orch::default();
    let mut names = Vec::new();
    for (s, service) in SERVICES.iter().enumerate() {
        for n in 1..=3 {
            let name = format!("{service}-{n}");
            let sick = (name == "data-3").then(|| failing.clone());
            let base = 1 + s as u64 * 2;
            let router = Router::new().route(
                "/health",
                get(move || {
                    let sick = sick.clone();
                    async move {
                        tokio::time::sleep(Duration::from_micros((base + jitter(4)) * 700)).await;
                        if sick.is_some_and(|f| f.load(Ordering::SeqCst)) {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        axum::Json(json!({"status": "healthy"})).into_response()
                    }
                }),
            );
            let url = serve(router).await;
            let registration = kit::registry::Registration {
                service_id: name.clone(),
                service_type: service.to_string(),
                url: url.clone(),
                name: Some(name.clone()),
                metadata: Default::default(),
            };
            client.register(&registration).await.unwrap();
            names.push((name, url));
        }
    }

    // The balancer's metrics: about 120 requests a second, spread round-robin.
    let counters: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let balancer_router =
        Router::new().route("/health", get(|| async { axum::Json(json!({"status": "healthy"})) })).route(
            "/api/metrics",
            get({
                let (counters, total) = (counters.clone(), total.clone());
                move || {
                    let (counters, total) = (counters.clone(), total.clone());
                    async move { axum::Json(metrics(&counters.lock().unwrap(), total.load(Ordering::SeqCst))) }
                }
            }),
        );
    let balancer_url = serve(balancer_router).await;
    {
        let names: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        let (counters, total, failing) = (counters.clone(), total.clone(), failing.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let burst = 8 + jitter(8) + if (i / 150) % 2 == 0 { 6 } else { 0 };
                for _ in 0..burst {
                    let mut name = &names[i % names.len()];
                    if name == "data-3" && failing.load(Ordering::SeqCst) {
                        name = &names[3];
                    }
                    *counters.lock().unwrap().entry(name.clone()).or_default() += 1;
                    total.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            }
        });
    }

    // orch.
    let mut instances = Vec::new();
    for (i, (name, url)) in names.iter().enumerate() {
        instances.push(instance(name, url, 41200 + i as u32 * 7, 0, None));
        orch.event("started", name, &format!("{name} started (pid {})", 41200 + i * 7));
        orch.event("ready", name, &format!("{name} is ready"));
    }
    instances.push(instance("registry-1", &registry_url, 41190, 0, None));
    instances.push(instance("balancer-1", &balancer_url, 41195, 0, None));
    *orch.instances.lock().unwrap() = instances;
    orch.event("manifest-applied", "", "manifests/cluster.yaml applied: 12 instances in 6 services");
    let orch_router = Router::new()
        .route(
            "/api/instances",
            get(|State(o): State<Orch>| async move {
                axum::Json(json!({"instances": o.instances.lock().unwrap().clone()}))
            }),
        )
        .route("/api/events", get(events))
        .with_state(orch.clone());
    let orch_url = serve(orch_router).await;

    // Trouble, now and then.
    {
        let (orch, failing, names) = (orch.clone(), failing.clone(), names.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut crashes = 0u32;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = start.elapsed().as_secs();
                failing.store(s % 40 >= 12 && s % 40 < 22, Ordering::SeqCst);
                if s % 25 == 8 {
                    crashes += 1;
                    let (name, url) = &names[(crashes as usize * 4) % names.len()];
                    orch.event("exited", name, &format!("{name} exited (signal SIGKILL)"));
                    {
                        let mut list = orch.instances.lock().unwrap();
                        if let Some(entry) = list.iter_mut().find(|i| i["name"] == name.as_str()) {
                            let restarts = entry["restarts"].as_u64().unwrap_or(0) as u32 + 1;
                            *entry = instance(name, url, 42000 + crashes * 11, restarts, Some("SIGKILL"));
                        }
                    }
                    orch.event("restarted", name, &format!("{name} restarted (restart {crashes})"));
                    orch.event("ready", name, &format!("{name} is ready"));
                }
            }
        });
    }

    // The detector.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("the demo's port is free");
    let vars = kit::Vars::from_pairs([
        ("SERVICE_REGISTRY_URL", registry_url.as_str()),
        ("ORCH_CLUSTER_TOKEN", TOKEN),
        ("SERVICE_NAME", "detector-1"),
        ("CHECK_INTERVAL_MS", "1000"),
        ("CHECK_TIMEOUT_MS", "500"),
        ("LOAD_BALANCER_URL", balancer_url.as_str()),
        ("ORCH_CONTROL_URL", orch_url.as_str()),
    ]);
    let config = detector::Config::from_vars(&vars).unwrap();
    println!("dashboard: http://127.0.0.1:{port}");
    detector::serve(config, listener, kit::Shutdown::new()).await.unwrap();
}

fn instance(name: &str, url: &str, pid: u32, restarts: u32, signal: Option<&str>) -> Value {
    let service = name.rsplit_once('-').map_or(name, |(s, _)| s);
    let last_exit = signal.map(|s| json!({"code": null, "signal": s, "at": kit::time::now_iso()}));
    json!({"name": name, "service": service, "ordinal": 1, "pid": pid, "port": 0, "url": url,
        "status": "running", "ready": true, "restarts": restarts, "startedAt": kit::time::now_iso(), "lastExit": last_exit})
}

fn metrics(counters: &HashMap<String, u64>, total: u64) -> Value {
    let mut services = serde_json::Map::new();
    for service in SERVICES {
        let instances: serde_json::Map<String, Value> = counters
            .iter()
            .filter(|(n, _)| n.starts_with(service))
            .map(|(n, c)| {
                (n.clone(), json!({"url": "", "healthy": true, "requests": c, "errors": c / 500, "inFlight": 0}))
            })
            .collect();
        let requests: u64 = counters.iter().filter(|(n, _)| n.starts_with(service)).map(|(_, c)| c).sum();
        services
            .insert(service.into(), json!({"requests": requests, "errors": requests / 500, "instances": instances}));
    }
    json!({"timestamp": kit::time::now_iso(), "requests": total, "errors": total / 500, "inFlight": 2, "services": services})
}

async fn events(State(orch): State<Orch>, Query(q): Query<HashMap<String, String>>) -> Response {
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let wait = q.contains_key("wait");
    let newer = || -> Vec<Value> {
        orch.events.lock().unwrap().iter().filter(|e| e["seq"].as_u64().unwrap() > since).cloned().collect()
    };
    let appended = orch.appended.notified();
    let mut found = newer();
    if found.is_empty() && wait {
        let _ = tokio::time::timeout(Duration::from_secs(30), appended).await;
        found = newer();
    }
    let next = found.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap_or(since);
    axum::Json(json!({"events": found, "next": next})).into_response()
}

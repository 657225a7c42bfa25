//! The balancer's own endpoints: `/status`, `/api/metrics`, `/metrics` (Prometheus text),
//! `/api/faults` and `/api/round-robin/reset`. They are matched before the proxy routes.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use kit::http::{ApiError, Json};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::backend::Instance;
use crate::faults::FaultSpec;
use crate::stats::Stats;

/// A metric family: name, type, help, and how to read its value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// Paths served by [`router`] rather than proxied.
pub fn is_admin_path(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/status" | "/metrics" | "/api/metrics" | "/api/faults" | "/api/round-robin/reset"
    ) || path.starts_with("/api/faults/")
}

pub fn router(state: Arc<AppState>) -> Router {
    let ready = state.clone();
    let health = kit::health::Health::new(&state.config.kit.service_name).with_check(move || {
        let ready = ready.ready.load(Relaxed);
        async move { if ready { Ok(()) } else { Err("first discovery not finished".into()) } }
    });
    let limit = state.config.kit.body_limit;
    let guard = kit::guard::Guard::new(state.config.kit.bind_addr, &state.config.kit.allowed_hosts);
    let api = Router::new()
        .route("/status", get(status))
        .route("/api/metrics", get(metrics_json))
        .route("/metrics", get(metrics_text))
        .route("/api/faults", post(add_fault).get(list_faults).delete(clear_faults))
        .route("/api/faults/{id}", delete(remove_fault))
        .route("/api/round-robin/reset", post(reset_round_robin))
        .with_state(state);
    kit::trace::layer(guard.wrap(kit::http::finish(api.merge(health.router()), limit)))
}

/// Mutations and fault injection need the cluster token whenever one is configured.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    kit::http::require_token(state.config.kit.cluster_token.as_ref(), headers)
}

fn routes_json(state: &AppState) -> Value {
    let routes: Map<String, Value> =
        state.config.routes.entries().iter().map(|(p, s)| (p.clone(), Value::from(s.as_str()))).collect();
    Value::Object(routes)
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    let set = state.backends.load_full();
    let mut services = Map::new();
    for (service, pool) in state.services.iter().zip(&set.pools) {
        let instances: Vec<Value> = pool
            .iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "url": i.url,
                    "healthy": i.healthy(),
                    "ejected": i.ejected(),
                    "inFlight": i.stats.in_flight(),
                    "requests": i.stats.requests(),
                })
            })
            .collect();
        let healthy = pool.iter().filter(|i| i.usable()).count();
        services
            .insert(service.name.clone(), json!({ "total": pool.len(), "healthy": healthy, "instances": instances }));
    }
    axum::Json(json!({
        "status": "ok",
        "discovery": set.discovery.as_str(),
        "strategy": state.config.strategy.as_str(),
        "timestamp": kit::time::now_iso(),
        "routes": routes_json(&state),
        "poisonRequests": state.services.iter().map(|s| s.stats.poison()).sum::<u64>(),
        "services": services,
    }))
    .into_response()
}

fn figures(stats: &Stats, now: Instant) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("requests".into(), stats.requests().into());
    m.insert("errors".into(), stats.errors().into());
    m.insert("inFlight".into(), stats.in_flight().into());
    m.insert("statusClasses".into(), json!(stats.classes()));
    m.insert("latencyMs".into(), json!(stats.percentiles(now)));
    m
}

async fn metrics_json(State(state): State<Arc<AppState>>) -> Response {
    let now = Instant::now();
    let (mut requests, mut errors, mut in_flight, mut retries, mut poison) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut services = Map::new();
    for (index, service) in state.services.iter().enumerate() {
        let stats = &service.stats;
        requests += stats.requests();
        errors += stats.errors();
        in_flight += stats.in_flight();
        retries += stats.retries();
        poison += stats.poison();
        let mut figures_of = figures(stats, now);
        figures_of.insert("retries".into(), stats.retries().into());
        figures_of.insert("poisonRequests".into(), stats.poison().into());
        let mut instances = Map::new();
        for instance in state.instances_of(index) {
            let mut m = Map::new();
            m.insert("url".into(), instance.url.clone().into());
            m.insert("healthy".into(), instance.healthy().into());
            m.extend(figures(&instance.stats, now));
            instances.insert(instance.id.clone(), Value::Object(m));
        }
        figures_of.insert("instances".into(), Value::Object(instances));
        services.insert(service.name.clone(), Value::Object(figures_of));
    }
    axum::Json(json!({
        "timestamp": kit::time::now_iso(),
        "uptimeSeconds": (state.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "requests": requests,
        "errors": errors,
        "inFlight": in_flight,
        "retries": retries,
        "poisonRequests": poison,
        "services": services,
    }))
    .into_response()
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let now = Instant::now();
    let mut out = String::with_capacity(4096);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(&mut out, "balancer_uptime_seconds", "gauge", "Seconds since the balancer started.");
    let _ = writeln!(out, "balancer_uptime_seconds {:.3}", state.started.elapsed().as_secs_f64());

    let per_service: [Family<Stats>; 5] = [
        ("balancer_requests_total", "counter", "Client requests per service.", |s| s.requests()),
        ("balancer_errors_total", "counter", "Failed attempts and 5xx answers per service.", |s| s.errors()),
        ("balancer_retries_total", "counter", "Attempts after the first per service.", |s| s.retries()),
        ("balancer_in_flight", "gauge", "Client requests in flight per service.", |s| s.in_flight()),
        (
            "balancer_poison_requests_total",
            "counter",
            "Requests that broke two instances' connections per service.",
            |s| s.poison(),
        ),
    ];
    for (name, kind, help, value) in per_service {
        family(&mut out, name, kind, help);
        for service in &state.services {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", label(&service.name), value(&service.stats));
        }
    }
    family(&mut out, "balancer_responses_total", "counter", "Answers to clients per service and status class.");
    for service in &state.services {
        let c = service.stats.classes();
        for (class, n) in [("2xx", c.ok), ("3xx", c.redirect), ("4xx", c.client), ("5xx", c.server)] {
            let _ =
                writeln!(out, "balancer_responses_total{{service=\"{}\",class=\"{class}\"}} {n}", label(&service.name));
        }
    }
    family(&mut out, "balancer_latency_ms", "summary", "Latency to the response head over a recent window.");
    for service in &state.services {
        let p = service.stats.percentiles(now);
        for (q, v) in [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)] {
            let _ = writeln!(out, "balancer_latency_ms{{service=\"{}\",quantile=\"{q}\"}} {v}", label(&service.name));
        }
    }

    let instances: Vec<Arc<Instance>> = (0..state.services.len()).flat_map(|i| state.instances_of(i)).collect();
    let per_instance: [Family<Instance>; 5] = [
        ("balancer_instance_requests_total", "counter", "Attempts sent per instance.", |i| i.stats.requests()),
        ("balancer_instance_errors_total", "counter", "Failed attempts and 5xx answers per instance.", |i| {
            i.stats.errors()
        }),
        ("balancer_instance_in_flight", "gauge", "Attempts in flight per instance.", |i| i.stats.in_flight()),
        ("balancer_instance_healthy", "gauge", "1 if the instance passes its health checks.", |i| {
            u64::from(i.healthy())
        }),
        ("balancer_instance_ejected", "gauge", "1 if the instance is ejected after failures.", |i| {
            u64::from(i.ejected())
        }),
    ];
    let labels = |i: &Instance| format!("service=\"{}\",instance=\"{}\"", label(&i.service), label(&i.id));
    for (name, kind, help, value) in per_instance {
        family(&mut out, name, kind, help);
        for instance in &instances {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(instance), value(instance));
        }
    }
    family(&mut out, "balancer_instance_responses_total", "counter", "Answers per instance and status class.");
    for instance in &instances {
        let c = instance.stats.classes();
        for (class, n) in [("2xx", c.ok), ("3xx", c.redirect), ("4xx", c.client), ("5xx", c.server)] {
            let _ = writeln!(out, "balancer_instance_responses_total{{{},class=\"{class}\"}} {n}", labels(instance));
        }
    }
    family(&mut out, "balancer_instance_latency_ms", "summary", "Latency per instance over a recent window.");
    for instance in &instances {
        let p = instance.stats.percentiles(now);
        for (q, v) in [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)] {
            let _ = writeln!(out, "balancer_instance_latency_ms{{{},quantile=\"{q}\"}} {v}", labels(instance));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

async fn add_fault(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(spec): Json<FaultSpec>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let fault = state.faults.add(spec, &state.config.routes.services()).map_err(ApiError::bad_request)?;
    tracing::warn!(id = %fault.id, service = %fault.service, latency_ms = fault.latency_ms,
        error_percent = fault.error_percent, expires_at = %fault.expires_at, "fault injected");
    Ok((StatusCode::CREATED, axum::Json(fault)).into_response())
}

async fn list_faults(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    Ok(axum::Json(json!({ "faults": state.faults.list() })).into_response())
}

async fn clear_faults(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let removed = state.faults.clear();
    tracing::info!(removed, "faults cleared");
    Ok(axum::Json(json!({ "message": "faults removed", "removed": removed })).into_response())
}

async fn remove_fault(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    if !state.faults.remove(&id) {
        return Err(ApiError::not_found(format!("no fault {id}")));
    }
    tracing::info!(%id, "fault removed");
    Ok(axum::Json(json!({ "message": "fault removed", "id": id })).into_response())
}

async fn reset_round_robin(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    for service in &state.services {
        service.next.store(0, Relaxed);
    }
    Ok(axum::Json(json!({ "message": "round-robin counters reset" })).into_response())
}

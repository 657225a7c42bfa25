//! The balancer's own endpoints: `/status`, `/api/metrics`, `/metrics` (kit's, with the
//! balancer's series added by [`Figures`]),
//! `/api/faults` and `/api/round-robin/reset`. They are matched before the proxy routes.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use kit::http::{ApiError, Json};
use kit::metrics::Scoped;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::backend::Instance;
use crate::faults::FaultSpec;
use crate::stats::Stats;

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
        .route("/api/faults", post(add_fault).get(list_faults).delete(clear_faults))
        .route("/api/faults/{id}", delete(remove_fault))
        .route("/api/round-robin/reset", post(reset_round_robin))
        .with_state(state.clone());
    let figures = Extension(Scoped::new(Figures(state)));
    let app = kit::trace::layer(guard.clone().wrap(kit::http::finish(api, limit).layer(figures)));
    health.beside_guarded(app, guard)
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

/// The balancer's series in `/metrics`, read from its [`Stats`] at each scrape (the request
/// path only moves its atomics; nothing here runs per request).
struct Figures(Arc<AppState>);

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("balancer figures")
    }
}

/// One family: `name`, its help, its type, and a value per label set.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, kind): (&str, &str, MetricType),
    samples: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            // Counters here are counts: whole numbers, written as such.
            MetricType::Counter => ConstCounter::new(value as u64).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        let now = Instant::now();
        let uptime = ConstGauge::new(state.started.elapsed().as_secs_f64());
        uptime.encode(encoder.encode_descriptor(
            "balancer_uptime_seconds",
            "Seconds since the balancer started",
            None,
            GAUGE,
        )?)?;

        type PerService = (&'static str, &'static str, MetricType, fn(&Stats) -> u64);
        let per_service: [PerService; 5] = [
            ("balancer_requests", "Client requests per service", COUNTER, |s| s.requests()),
            ("balancer_errors", "Failed attempts and 5xx answers per service", COUNTER, |s| s.errors()),
            ("balancer_retries", "Attempts after the first per service", COUNTER, |s| s.retries()),
            ("balancer_in_flight", "Client requests in flight per service", GAUGE, |s| s.in_flight()),
            ("balancer_poison_requests", "Requests that broke two instances' connections per service", COUNTER, |s| {
                s.poison()
            }),
        ];
        let services = &state.services;
        for (name, help, kind, value) in per_service {
            let samples = services.iter().map(|s| ([("service", s.name.as_str())], value(&s.stats) as f64));
            family(&mut encoder, (name, help, kind), samples)?;
        }
        let classes = |stats: &Stats| {
            let c = stats.classes();
            [("2xx", c.ok), ("3xx", c.redirect), ("4xx", c.client), ("5xx", c.server)]
        };
        let help = ("balancer_responses", "Answers to clients per service and status class", COUNTER);
        let samples = services.iter().flat_map(|s| {
            classes(&s.stats).map(|(class, n)| ([("service", s.name.as_str()), ("class", class)], n as f64))
        });
        family(&mut encoder, help, samples)?;
        let quantiles = |stats: &Stats| {
            let p = stats.percentiles(now);
            [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99)]
        };
        let help = ("balancer_latency_ms", "Latency to the response head over a recent window", GAUGE);
        let samples = services
            .iter()
            .flat_map(|s| quantiles(&s.stats).map(|(q, v)| ([("service", s.name.as_str()), ("quantile", q)], v)));
        family(&mut encoder, help, samples)?;

        let instances: Vec<Arc<Instance>> = (0..services.len()).flat_map(|i| state.instances_of(i)).collect();
        let labels = |i: &Arc<Instance>| [("service", i.service.clone()), ("instance", i.id.clone())];
        type PerInstance = (&'static str, &'static str, MetricType, fn(&Instance) -> u64);
        let per_instance: [PerInstance; 5] = [
            ("balancer_instance_requests", "Attempts sent per instance", COUNTER, |i| i.stats.requests()),
            ("balancer_instance_errors", "Failed attempts and 5xx answers per instance", COUNTER, |i| i.stats.errors()),
            ("balancer_instance_in_flight", "Attempts in flight per instance", GAUGE, |i| i.stats.in_flight()),
            ("balancer_instance_healthy", "1 if the instance passes its health checks", GAUGE, |i| {
                u64::from(i.healthy())
            }),
            ("balancer_instance_ejected", "1 if the instance is ejected after failures", GAUGE, |i| {
                u64::from(i.ejected())
            }),
        ];
        for (name, help, kind, value) in per_instance {
            let samples = instances.iter().map(|i| (labels(i), value(i) as f64));
            family(&mut encoder, (name, help, kind), samples)?;
        }
        let help = ("balancer_instance_responses", "Answers per instance and status class", COUNTER);
        let samples = instances.iter().flat_map(|i| {
            let [service, instance] = labels(i);
            classes(&i.stats)
                .map(move |(class, n)| ([service.clone(), instance.clone(), ("class", class.to_owned())], n as f64))
        });
        family(&mut encoder, help, samples)?;
        let help = ("balancer_instance_latency_ms", "Upstream latency per instance over a recent window", GAUGE);
        let samples = instances.iter().flat_map(|i| {
            let [service, instance] = labels(i);
            quantiles(&i.stats).map(move |(q, v)| ([service.clone(), instance.clone(), ("quantile", q.to_owned())], v))
        });
        family(&mut encoder, help, samples)
    }
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

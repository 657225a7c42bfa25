//! The registry's HTTP routes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kit::http::{ApiError, Json};
use kit::registry::{INDEX_HEADER, Registration, ServiceList};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::store::{Filter, HeartbeatError};
use crate::{AppState, MAX_RECORDS};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/registry/register", post(register))
        .route("/api/registry/heartbeat", post(heartbeat))
        .route("/api/registry/deregister", post(deregister))
        .route("/api/registry/services", get(list))
        .route("/api/registry/services/{type}", get(list_type))
        .route("/api/registry/service/{id}", get(one))
        .route("/api/registry/prometheus-sd", get(prometheus_sd))
        .with_state(state)
}

/// Mutations need the cluster token whenever one is configured.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    kit::http::require_token(state.config.kit.cluster_token.as_ref(), headers)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody {
    service_id: String,
    service_type: String,
    url: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

impl RegisterBody {
    /// Checks every field; the message says which one is wrong and why.
    fn validate(self) -> Result<Registration, ApiError> {
        let service_id = identifier("serviceId", self.service_id, 128)?;
        let service_type = identifier("serviceType", self.service_type, 64)?;
        let url = http_url(self.url)?;
        let name = match self.name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()) {
            Some(n) if n.chars().count() > 128 => {
                return Err(ApiError::bad_request("name must be at most 128 characters"));
            }
            other => other,
        };
        let metadata = match self.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
        };
        Ok(Registration { service_id, service_type, url, name, metadata })
    }
}

fn identifier(field: &str, value: String, max: usize) -> Result<String, ApiError> {
    let value = value.trim().to_owned();
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "{field} must be 1-{max} characters of letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

fn http_url(raw: String) -> Result<String, ApiError> {
    let raw = raw.trim();
    let bad = || ApiError::bad_request(format!("url must be an http:// or https:// URL with a host, got {raw:?}"));
    let url = reqwest::Url::parse(raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) || raw.len() > 2048 {
        return Err(bad());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<RegisterBody>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let registration = body.validate()?;
    let now_iso = kit::time::now_iso();
    let outcome = state.update(|store| {
        if store.len() >= MAX_RECORDS && store.get(&registration.service_id).is_none() {
            return None;
        }
        Some(store.register(registration, Instant::now(), &now_iso))
    });
    let Some((record, created)) = outcome else {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the registry is full ({MAX_RECORDS} records)"),
        ));
    };
    if created {
        tracing::info!(service_id = %record.service_id, service_type = %record.service_type, url = %record.url, "registered");
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(record)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdBody {
    service_id: String,
}

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<IdBody>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let now_iso = kit::time::now_iso();
    match state.update(|store| store.heartbeat(&body.service_id, Instant::now(), &now_iso)) {
        Ok(record) => Ok(Json(json!({ "message": "heartbeat received", "service": record }))),
        Err(HeartbeatError::Unknown) => {
            Err(ApiError::not_found(format!("unknown serviceId {:?}: register again", body.service_id)))
        }
        Err(HeartbeatError::Deregistered) => Err(ApiError::new(
            StatusCode::GONE,
            format!("serviceId {:?} was deregistered; register explicitly to come back", body.service_id),
        )),
    }
}

async fn deregister(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<IdBody>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    match state.update(|store| store.deregister(&body.service_id, Instant::now())) {
        Some(record) => {
            tracing::info!(service_id = %record.service_id, "deregistered");
            Ok(Json(json!({ "message": "service deregistered", "service": record })))
        }
        None => Err(ApiError::not_found(format!("unknown serviceId {:?}", body.service_id))),
    }
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(rename = "type")]
    service_type: Option<String>,
    healthy: Option<String>,
    index: Option<String>,
    wait: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    respond_list(state, query).await
}

async fn list_type(
    State(state): State<AppState>,
    Path(service_type): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    query.service_type = Some(service_type);
    respond_list(state, query).await
}

/// Lists records; with `index`, first waits (at most `wait`, default 30 s) until the change
/// index differs from it.
async fn respond_list(state: AppState, query: ListQuery) -> Result<Response, ApiError> {
    let healthy = match query.healthy.as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(ApiError::bad_request(format!("healthy must be true or false, got {other:?}"))),
    };
    let filter = Filter { service_type: query.service_type.filter(|t| !t.is_empty()), healthy };
    if let Some(index) = query.index.as_deref().filter(|i| !i.is_empty()) {
        let index: u64 =
            index.parse().map_err(|_| ApiError::bad_request(format!("index must be a whole number, got {index:?}")))?;
        let wait = match query.wait.as_deref() {
            Some(w) => parse_wait(w)?,
            None => Duration::from_secs(30),
        }
        .min(state.config.max_wait);
        let mut changes = state.changes.subscribe();
        tokio::select! {
            woken = tokio::time::timeout(wait, changes.wait_for(|now| *now != index)) => {
                if woken.is_ok_and(|changed| changed.is_ok()) {
                    crate::metrics::get().watch_wakeups.inc();
                }
            }
            _ = state.shutdown.requested() => {}
        }
    }
    let (services, index) = state.read(|store| (store.list(&filter), store.index()));
    let list = ServiceList { total: services.len(), services, timestamp: kit::time::now_iso(), index };
    let mut res = Json(list).into_response();
    res.headers_mut().insert(INDEX_HEADER, kit::http::header_value(&index.to_string()));
    Ok(res)
}

/// `30s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_wait(raw: &str) -> Result<Duration, ApiError> {
    let raw = raw.trim();
    let bad = || ApiError::bad_request(format!("wait must look like 500ms, 30s or 2m, got {raw:?}"));
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(bad()),
    }
}

async fn one(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    match state.read(|store| store.get(&id)) {
        Some(record) => Ok(Json(record).into_response()),
        None => Err(ApiError::not_found(format!("unknown serviceId {id:?}"))),
    }
}

/// One target group of Prometheus's HTTP service discovery (`http_sd_configs`).
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: [String; 1],
    labels: BTreeMap<&'static str, String>,
}

/// Every record as a Prometheus scrape target (`GET /api/registry/prometheus-sd`): its URL's
/// `host:port` (`localhost` as `127.0.0.1`, where instances listen), labelled `service` (the
/// type) and `instance_id`, with `__meta_orch_*` labels for relabelling (name, healthy,
/// registered at). Open like the other reads; Prometheus follows scaling and restarts
/// through it with no change to its configuration.
async fn prometheus_sd(State(state): State<AppState>) -> Json<Vec<TargetGroup>> {
    let records = state.read(|store| store.list(&Filter::default()));
    Json(records.iter().filter_map(target_group).collect())
}

fn target_group(record: &kit::registry::ServiceRecord) -> Option<TargetGroup> {
    let url = reqwest::Url::parse(&record.url).ok()?;
    let host = match url.host_str()? {
        "localhost" => "127.0.0.1",
        host => host,
    };
    let port = url.port_or_known_default()?;
    let mut labels = BTreeMap::from([
        ("service", record.service_type.clone()),
        ("instance_id", record.service_id.clone()),
        ("__meta_orch_name", record.name.clone()),
        ("__meta_orch_healthy", record.healthy.to_string()),
        ("__meta_orch_registered_at", record.registered_at.clone()),
    ]);
    if url.scheme() == "https" {
        labels.insert("__scheme__", "https".to_owned());
    }
    Some(TargetGroup { targets: [format!("{host}:{port}")], labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_wait("5").unwrap(), Duration::from_secs(5));
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("5h").is_err());
        assert!(parse_wait("").is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(http_url("http://localhost:3001/".into()).unwrap(), "http://localhost:3001");
        assert!(http_url("https://example.com".into()).is_ok());
        for bad in ["ftp://x", "localhost:3001", "http://", "", "javascript:alert(1)"] {
            assert!(http_url(bad.into()).is_err(), "{bad}");
        }
    }
}

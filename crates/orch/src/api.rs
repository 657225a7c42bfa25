//! The control API, on loopback. Every mutation, and every read that shows an
//! instance's environment or output (`GET /api/instances/{name}`, `GET /api/logs/{name}`,
//! `GET /api/logs?trace=ID`),
//! needs `Authorization: Bearer <DATA_DIR/control-token>` (401 without it). The open reads
//! (the cluster, the instance list, events, chaos experiments) hold no environment values:
//! the detector polls them without a token. Every error is `{"error": "..."}`.
//!
//! Each call runs on the controller (see [`crate::controller::Handle::call`]), so what it
//! reads or changes is the controller's one consistent state; events are served from the
//! event log directly, so a long poll never holds the controller up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use kit::http::{ApiError, Json};
use kit::orch_api::{
    self, ApplyRequest, ApplyResult, EventPage, Experiment, ExperimentList, InstanceDetail, InstanceList, Message,
    RestartRequest, RolloutHistory, ScaleRequest, Scaled, StoppedExperiments, UndoRequest,
};
use kit::secret::Secret;
use serde::Deserialize;

use crate::chaos;
use crate::controller::chaos::tasks as experiments;
use crate::controller::{CallError, Handle};
use crate::events::EventLog;
use crate::supervisor::logs;

#[derive(Clone)]
pub struct ApiState {
    pub handle: Handle,
    pub events: Arc<EventLog>,
    pub token: Secret,
}

pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/instances", get(instances))
        .route("/api/instances/{name}", get(instance))
        .route("/api/events", get(events))
        .route("/api/logs", get(trace_logs))
        .route("/api/logs/{instance}", get(logs))
        .route("/api/apply", post(apply))
        .route("/api/scale", post(scale))
        .route("/api/restart", post(restart))
        .route("/api/down", post(down))
        .route("/api/rollouts/{service}", get(rollouts))
        .route("/api/rollouts/{service}/undo", post(rollout_undo))
        .route("/api/chaos", get(chaos_list).post(chaos_start).delete(chaos_stop_all))
        .route("/api/chaos/{id}", delete(chaos_stop))
        .with_state(state);
    kit::trace::layer(kit::guard::Guard::loopback().wrap(kit::http::finish(api, 1 << 20)))
}

fn gone() -> ApiError {
    from_call(CallError::Gone)
}

/// The one place a controller's [`CallError`] becomes an HTTP status.
fn from_call(e: CallError) -> ApiError {
    let status = match &e {
        CallError::Stopping | CallError::Conflict(_) => StatusCode::CONFLICT,
        CallError::Gone => StatusCode::SERVICE_UNAVAILABLE,
        CallError::NotFound(_) => StatusCode::NOT_FOUND,
        CallError::Invalid(_) => StatusCode::BAD_REQUEST,
        CallError::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CallError::Upstream(_) => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, e.to_string())
}

/// A request carrying the cluster token. As an extractor placed before the body, it
/// answers 401 before anything else about the request is looked at.
struct Authorized;

impl FromRequestParts<ApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authorize(state, &parts.headers).map(|()| Authorized)
    }
}

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    kit::http::require_token(Some(&state.token), headers)
}

async fn cluster(State(state): State<ApiState>) -> Result<Json<orch_api::Cluster>, ApiError> {
    state.handle.call(|c| c.cluster_view()).await.map(Json).ok_or_else(gone)
}

#[derive(Deserialize)]
struct InstancesQuery {
    service: Option<String>,
}

async fn instances(
    State(state): State<ApiState>,
    Query(q): Query<InstancesQuery>,
) -> Result<Json<InstanceList>, ApiError> {
    state.handle.call(move |c| c.instances_view(q.service.as_deref())).await.map(Json).ok_or_else(gone)
}

async fn instance(
    State(state): State<ApiState>,
    _: Authorized,
    Path(name): Path<String>,
) -> Result<Json<InstanceDetail>, ApiError> {
    let lookup = name.clone();
    match state.handle.call(move |c| c.instance_view(&lookup)).await {
        None => Err(gone()),
        Some(None) => Err(ApiError::not_found(format!("no instance {name:?}"))),
        Some(Some(v)) => Ok(Json(v)),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    wait: Option<String>,
    limit: Option<usize>,
}

/// `30s`, `500ms`, `2m`, or a number of seconds.
pub fn parse_wait(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let (number, unit) = raw.find(|c: char| !c.is_ascii_digit()).map_or((raw, ""), |i| raw.split_at(i));
    let n: u64 = number.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

async fn events(State(state): State<ApiState>, Query(q): Query<EventsQuery>) -> Result<Json<EventPage>, ApiError> {
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let (events, next) = match q.wait.as_deref() {
        None => state.events.since(since, limit),
        Some(raw) => {
            let wait = parse_wait(raw)
                .ok_or_else(|| ApiError::bad_request(format!("invalid wait {raw:?}: use 500ms, 30s or 2m")))?
                .min(Duration::from_secs(300));
            state.events.wait_since(since, limit, wait).await
        }
    };
    Ok(Json(EventPage { events, next }))
}

/// Lines of a log answered when the request names no `tail`.
pub const DEFAULT_TAIL: usize = 200;
/// The most lines one request gets (a larger `tail` is cut to this).
pub const MAX_TAIL: usize = 100_000;

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<bool>,
}

async fn logs(
    State(state): State<ApiState>,
    _: Authorized,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let lookup = name.clone();
    let path = match state.handle.call(move |c| c.log_path(&lookup)).await {
        None => return Err(gone()),
        Some(None) => return Err(ApiError::not_found(format!("no instance {name:?}"))),
        Some(Some(p)) => p,
    };
    let lines = q.tail.unwrap_or(DEFAULT_TAIL).min(MAX_TAIL);
    let tail_of = path.clone();
    // File reads stay off the runtime: a large log must not hold up probes and restarts.
    let initial = match tokio::task::spawn_blocking(move || logs::tail(&tail_of, lines)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Ok(Err(e)) => return Err(ApiError::internal(e)),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !q.follow.unwrap_or(false) {
        return Ok((text_plain, initial).into_response());
    }
    let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok((text_plain, Body::from_stream(follow(path, offset, initial))).into_response())
}

#[derive(Deserialize)]
struct TraceQuery {
    trace: Option<String>,
    name: Option<String>,
}

/// `GET /api/logs?trace=ID[&name=SERVICE|INSTANCE]`: the lines of one trace across the
/// instance logs, each prefixed by its instance, in time order.
async fn trace_logs(
    State(state): State<ApiState>,
    _: Authorized,
    Query(q): Query<TraceQuery>,
) -> Result<Response, ApiError> {
    let raw = q.trace.ok_or_else(|| {
        ApiError::bad_request("trace=ID is required (or ask for one instance's log: /api/logs/{instance})")
    })?;
    let trace_id = kit::trace::parse_trace_id(&raw).map_err(ApiError::bad_request)?;
    if let Some(name) = &q.name {
        if !logs::is_log_name(name) {
            return Err(ApiError::bad_request(format!("invalid name {name:?}: a service or an instance")));
        }
    }
    let Some(dir) = state.handle.call(|c| c.logs_dir()).await else { return Err(gone()) };
    let name = q.name.clone();
    // Reading every log stays off the runtime.
    let found = tokio::task::spawn_blocking(move || logs::trace(&dir, name.as_deref(), &trace_id, MAX_TAIL))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match found {
        Some(lines) => Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], lines).into_response()),
        None => Err(ApiError::not_found(format!("no service or instance {:?} has a log", q.name.unwrap_or_default()))),
    }
}

/// The log from `offset` on, as it grows (and after it is rotated), after `initial`.
fn follow(
    path: PathBuf,
    offset: u64,
    initial: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold((path, offset, Some(initial)), |(path, mut offset, first)| async move {
        if let Some(first) = first {
            return Some((Ok(Bytes::from(first)), (path, offset, None)));
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0;
            }
            if len > offset {
                let from = path.clone();
                let chunk = tokio::task::spawn_blocking(move || read_range(&from, offset, len))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                offset = len;
                return Some((chunk.map(Bytes::from), (path, offset, None)));
            }
        }
    })
}

fn read_range(path: &std::path::Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity((to - from) as usize);
    file.take(to - from).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn apply(
    State(state): State<ApiState>,
    _: Authorized,
    Json(body): Json<ApplyRequest>,
) -> Result<Json<ApplyResult>, ApiError> {
    if body.path.as_ref().is_some_and(|p| !p.is_absolute()) {
        return Err(ApiError::bad_request("path must be absolute"));
    }
    let result = state.handle.call(move |c| c.call_apply(body.path, body.dry_run)).await.ok_or_else(gone)?;
    result.map(Json).map_err(from_call)
}

async fn scale(
    State(state): State<ApiState>,
    _: Authorized,
    Json(body): Json<ScaleRequest>,
) -> Result<Json<Scaled>, ApiError> {
    let result = state.handle.call(move |c| c.call_scale(&body.service, body.replicas)).await.ok_or_else(gone)?;
    result.map(Json).map_err(from_call)
}

async fn restart(
    State(state): State<ApiState>,
    _: Authorized,
    Json(body): Json<RestartRequest>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let result = state.handle.call(move |c| c.call_restart(&body.target)).await.ok_or_else(gone)?;
    result.map(|v| (StatusCode::ACCEPTED, Json(v))).map_err(from_call)
}

async fn rollouts(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> Result<Json<RolloutHistory>, ApiError> {
    let result = state.handle.call(move |c| c.rollout_history(&service)).await.ok_or_else(gone)?;
    result.map(Json).map_err(from_call)
}

async fn rollout_undo(
    State(state): State<ApiState>,
    _: Authorized,
    Path(service): Path<String>,
    Json(body): Json<UndoRequest>,
) -> Result<(StatusCode, Json<RolloutHistory>), ApiError> {
    let result = state.handle.call(move |c| c.call_rollout_undo(&service, body.to)).await.ok_or_else(gone)?;
    result.map(|v| (StatusCode::ACCEPTED, Json(v))).map_err(from_call)
}

async fn down(State(state): State<ApiState>, _: Authorized) -> Result<(StatusCode, Json<Message>), ApiError> {
    let v = state.handle.call(|c| c.call_down()).await.ok_or_else(gone)?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn chaos_list(State(state): State<ApiState>) -> Result<Json<ExperimentList>, ApiError> {
    state.handle.call(|c| c.chaos_list()).await.map(Json).ok_or_else(gone)
}

/// Experiments start and stop in tasks of their own (they talk to the balancer), so a
/// client that goes away midway leaves nothing half done.
async fn chaos_start(
    State(state): State<ApiState>,
    _: Authorized,
    Json(body): Json<chaos::Request>,
) -> Result<(StatusCode, Json<Experiment>), ApiError> {
    let spec = chaos::Spec::parse(&body, chaos::Names::API).map_err(ApiError::bad_request)?;
    let started = tokio::spawn(experiments::start(state.handle.clone(), spec)).await.map_err(ApiError::internal)?;
    started.map(|v| (StatusCode::CREATED, Json(v))).map_err(from_call)
}

async fn chaos_stop(
    State(state): State<ApiState>,
    _: Authorized,
    Path(id): Path<String>,
) -> Result<Json<StoppedExperiments>, ApiError> {
    let stopped = tokio::spawn(experiments::stop(state.handle.clone(), Some(id))).await.map_err(ApiError::internal)?;
    stopped.map(Json).map_err(from_call)
}

async fn chaos_stop_all(State(state): State<ApiState>, _: Authorized) -> Result<Json<StoppedExperiments>, ApiError> {
    let stopped = tokio::spawn(experiments::stop(state.handle.clone(), None)).await.map_err(ApiError::internal)?;
    stopped.map(Json).map_err(from_call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_wait("soon"), None);
        assert_eq!(parse_wait("5h"), None);
    }

    #[test]
    fn call_errors_get_their_statuses() {
        let cases = [
            (CallError::Stopping, 409, "the cluster is stopping"),
            (CallError::Gone, 503, "orch is stopping"),
            (CallError::NotFound("no service \"x\"".into()), 404, "no service \"x\""),
            (CallError::Invalid("replicas must be from 0 to 100".into()), 400, "replicas must be from 0 to 100"),
            (CallError::Conflict("port 80 is taken".into()), 409, "port 80 is taken"),
            (CallError::Manifest("m.yaml: invalid".into()), 422, "m.yaml: invalid"),
            (
                CallError::Upstream("the balancer did not take the fault".into()),
                502,
                "the balancer did not take the fault",
            ),
        ];
        for (error, status, message) in cases {
            let expected = ApiError::new(StatusCode::from_u16(status).unwrap(), message);
            assert_eq!(from_call(error), expected);
        }
    }
}

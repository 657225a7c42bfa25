//! The compute service's HTTP routes.

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use kit::http::{ApiError, Json};
use kit::idempotency::IdempotencyKey;
use kit::work::WorkQuery;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::exec::ExecError;
use crate::ops::{self, Num, OpError, Place};
use crate::queue::{self, Cancel, JobView, NewJob, Status, Submitted};

/// Job priorities: higher runs first. A priority outside this range is clamped into it, so
/// no client can put its jobs ahead of everyone else's by more than this.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -10..=10;

/// Health through the prefix and the simulated-work endpoint: no token needed.
pub fn open_router() -> Router<AppState> {
    Router::new()
        .route("/api/compute/health", get(health))
        .route("/api/compute/compute-worker", get(simulated_work).post(simulated_work))
}

/// Everything that needs a token while auth is required.
pub fn protected_router() -> Router<AppState> {
    Router::new()
        .route("/api/compute/direct", post(direct))
        .route("/api/compute/job", post(submit))
        .route("/api/compute/job/{id}", get(job).delete(cancel))
        .route("/api/compute/stats", get(stats))
}

/// An error as the client sees it.
#[derive(Debug)]
pub enum Error {
    Api(ApiError),
    Op(OpError),
    Exec(ExecError),
    Database(sqlx::Error),
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}
impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        Self::Op(e)
    }
}
impl From<ExecError> for Error {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Invalid(e) => Self::Op(e),
            other => Self::Exec(other),
        }
    }
}
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Self::Api(e) => e.into_response(),
            // The original service listed the operations in `supported`; the message does too.
            Self::Op(e @ OpError::Unknown { .. }) => {
                let OpError::Unknown { supported, .. } = &e else { unreachable!() };
                let body = json!({ "error": e.to_string(), "supported": supported });
                (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
            }
            Self::Op(e) => ApiError::bad_request(e.to_string()).into_response(),
            Self::Exec(e @ ExecError::TimedOut(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
            }
            Self::Exec(ExecError::Crashed(cause)) => ApiError::internal(cause).into_response(),
            Self::Exec(e @ ExecError::Invalid(_)) => ApiError::bad_request(e.to_string()).into_response(),
            Self::Database(e) => kit::db::api_error(e).into_response(),
        }
    }
}

/// `{operation, operands, priority?}` from a request body; the original job API's `type`
/// and `data` are accepted for `operation` and `operands`. `operands` stays the JSON text
/// the client sent.
struct Request<'a> {
    operation: String,
    operands: &'a RawValue,
    priority: i64,
}

fn request(body: &[u8], place: Place) -> Result<Request<'_>, ApiError> {
    let Ok(mut fields) = serde_json::from_slice::<HashMap<String, &RawValue>>(body) else {
        // Not an object: say whether it is JSON at all.
        kit::http::parse_json::<Value>(body)?;
        return Err(ApiError::bad_request(
            "request body must be a JSON object {\"operation\": ..., \"operands\": ...}",
        ));
    };
    // A field given as null counts as absent.
    let mut take = |name: &str, alias: Option<&str>| {
        let field =
            fields.remove(name).or_else(|| alias.filter(|_| place == Place::Job).and_then(|a| fields.remove(a)));
        field.filter(|v| v.get() != "null")
    };
    let operation = match take("operation", Some("type")) {
        None => return Err(ApiError::bad_request("operation is required")),
        Some(v) => {
            serde_json::from_str::<String>(v.get()).map_err(|_| ApiError::bad_request("operation must be a string"))?
        }
    };
    let operands = take("operands", Some("data")).ok_or_else(|| ApiError::bad_request("operands is required"))?;
    let priority = match take("priority", None) {
        None => 0,
        Some(v) => priority(v)?,
    };
    Ok(Request { operation, operands, priority })
}

/// A whole number, clamped into [`PRIORITY_RANGE`].
fn priority(v: &RawValue) -> Result<i64, ApiError> {
    let (low, high) = (*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end());
    let clamp = |negative: bool| if negative { low } else { high };
    match ops::number(v, "priority") {
        Ok(Num::Int(p)) => Ok(p.clamp(low, high)),
        Ok(Num::Big(text)) => Ok(clamp(text.starts_with('-'))),
        Ok(Num::Float(p)) if p.fract() == 0.0 => Ok(p.clamp(low as f64, high as f64) as i64),
        _ => Err(ApiError::bad_request(format!(
            "priority must be a whole number (higher runs first; clamped to {low}..{high})"
        ))),
    }
}

/// The idempotency scope of direct operations.
pub const DIRECT_SCOPE: &str = "POST /api/compute/direct";

/// The answer of a direct operation; `operands` is the request's own text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Direct<'a> {
    operation: &'static str,
    operands: &'a RawValue,
    result: &'a RawValue,
    service: &'a str,
    computed_at: String,
}

async fn direct(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    body: Bytes,
) -> Result<Response, Error> {
    let req = request(&body, Place::Direct)?;
    let (op, task) = ops::parse(&req.operation, req.operands, Place::Direct)?;
    crate::metrics::get().operation(op, Place::Direct);
    let key = key.map(|key| key.with_limits(state.config.idempotency));
    // With a key already answered, the first answer, without computing again.
    let fingerprint = kit::idempotency::fingerprint(&[&body]);
    if let Some(key) = &key {
        let mut conn = state.queue.db().acquire().await?;
        if let Some(stored) = kit::idempotency::lookup(&mut conn, DIRECT_SCOPE, key).await? {
            return Ok(stored.replay(&fingerprint));
        }
    }
    let result = state.executor.run(task, state.config.time_limit).await?;
    let answer = Direct {
        operation: op.name(),
        operands: req.operands,
        result: &result,
        service: &state.config.kit.service_name,
        computed_at: kit::time::now_iso(),
    };
    let text = serde_json::to_string(&answer).map_err(|e| ApiError::internal(format!("writing the answer: {e}")))?;
    if let Some(key) = &key {
        // Two retries racing: the first to record wins, and both answer what it recorded.
        let (db, fingerprint, text) = (state.queue.db(), &fingerprint, &text);
        let first = kit::db::retry(db, move || async move {
            let mut tx = kit::db::begin_write(db).await?;
            if let Some(stored) = kit::idempotency::lookup(&mut tx, DIRECT_SCOPE, key).await? {
                return Ok(Some(stored));
            }
            kit::idempotency::record(&mut tx, DIRECT_SCOPE, key, fingerprint, StatusCode::OK, text).await?;
            tx.commit().await?;
            Ok(None)
        })
        .await?;
        if let Some(stored) = first {
            return Ok(stored.replay(fingerprint));
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], text).into_response())
}

async fn submit(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    body: Bytes,
) -> Result<Response, Error> {
    let req = request(&body, Place::Job)?;
    let (op, _) = ops::parse(&req.operation, req.operands, Place::Job)?;
    let key = key.map(|key| key.with_limits(state.config.idempotency));
    let job = NewJob {
        operation: op.name().to_owned(),
        operands: req.operands.to_owned(),
        priority: req.priority,
        max_attempts: state.config.max_attempts.into(),
    };
    let fingerprint = kit::idempotency::fingerprint(&[&body]);
    let idem = key.as_ref().map(|key| queue::Idempotency { key, fingerprint: &fingerprint });
    let submitted = match idem {
        None => crate::worker::submit(&state, job.clone()).await?,
        Some(idem) => state.queue.submit(&job, Some(idem)).await?,
    };
    match submitted {
        Submitted::Queued { id, body, started } => {
            if started.is_none() {
                state.wake();
            }
            tracing::debug!(job = %id, operation = %job.operation, priority = job.priority, "job queued");
            crate::metrics::get().operation(op, Place::Job);
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        Submitted::Replayed(stored) => Ok(stored.replay(&fingerprint)),
    }
}

async fn job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Error> {
    match state.queue.get(&id).await? {
        Some(job) => Ok(Json(job.view()).into_response()),
        None => Err(not_found(&id)),
    }
}

fn not_found(id: &str) -> Error {
    let shown: String = id.chars().take(64).collect();
    ApiError::not_found(format!("job {shown} not found")).into()
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Error> {
    match state.queue.cancel(&id).await? {
        Cancel::Cancelled(job) => Ok(Json(JobView { message: Some("job cancelled"), ..job.view() }).into_response()),
        Cancel::NotFound => Err(not_found(&id)),
        Cancel::Conflict(Status::Running) => {
            Err(ApiError::conflict(format!("job {id} is running; only a queued job can be cancelled")).into())
        }
        Cancel::Conflict(status) => {
            Err(ApiError::conflict(format!("job {id} has already finished ({})", status.as_str())).into())
        }
    }
}

async fn stats(State(state): State<AppState>) -> Result<Response, Error> {
    let stats = state.queue.stats().await?;
    let mut counts: Map<String, Value> =
        Status::ALL.iter().zip(stats.counts).map(|(s, n)| (s.as_str().to_owned(), json!(n))).collect();
    counts.insert("total".into(), json!(stats.counts.iter().sum::<i64>()));
    let workers: Vec<Value> = stats
        .workers
        .iter()
        .map(|w| {
            json!({
                "worker": w.worker,
                "running": w.running,
                "completed": w.completed,
                "failed": w.failed,
                "completedLastMinute": w.completed_last_minute,
                "meanDurationMs": w.mean_duration_ms,
                "lastFinishedAt": w.last_finished_at.map(kit::time::iso_from_millis),
            })
        })
        .collect();
    let local = &state.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(json!({
        "service": state.config.kit.service_name,
        "timestamp": kit::time::now_iso(),
        "counts": counts,
        "throughput": {
            "completedLastMinute": stats.completed_last_minute,
            "perSecond": stats.completed_last_minute as f64 / 60.0,
        },
        "workers": workers,
        "instance": {
            "workers": state.config.workers,
            "idle": state.slots.idle_count(),
            "computing": state.executor.computing(),
            "completed": load(&local.completed),
            "failed": load(&local.failed),
            "retried": load(&local.retried),
            "lostLeases": load(&local.lost_leases),
        },
    }))
    .into_response())
}

async fn health(State(state): State<AppState>) -> Response {
    state.health.health()
}

/// The original load test's endpoint: answers after a delay, holding no thread meanwhile.
async fn simulated_work(
    State(state): State<AppState>,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.config.work.answer("Compute work completed", &state.config.kit.service_name, query).await
}

//! The detector's JSON endpoints.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kit::http::ApiError;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::cluster::{ALERTS_KEPT, History};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/status/{type}", get(service_status))
        .route("/api/alerts", get(alerts))
        .route("/api/check", post(check_now))
        .with_state(state)
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    history: Option<String>,
}

impl StatusQuery {
    fn history(&self) -> Result<History, ApiError> {
        match self.history.as_deref() {
            None | Some("all") | Some("true") => Ok(History::All),
            Some("last") => Ok(History::Last),
            Some("none") | Some("false") => Ok(History::None),
            Some(other) => Err(ApiError::bad_request(format!("history must be all, last or none, not {other:?}"))),
        }
    }
}

fn query<T>(query: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

async fn status(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let history = query(q)?.history()?;
    Ok(state.read(|cluster| axum::Json(cluster.status(history)).into_response()))
}

async fn service_status(
    State(state): State<AppState>,
    Path(service_type): Path<String>,
    q: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let history = query(q)?.history()?;
    state.read(|cluster| match cluster.service_status(&service_type, history) {
        Some(view) => Ok(axum::Json(view).into_response()),
        None => Err(ApiError::not_found(format!("unknown service type {service_type:?}"))),
    })
}

#[derive(Deserialize)]
struct AlertsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn alerts(
    State(state): State<AppState>,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = query(q)?.limit.unwrap_or(ALERTS_KEPT);
    if limit == 0 || limit > ALERTS_KEPT {
        return Err(ApiError::bad_request(format!("limit must be from 1 to {ALERTS_KEPT}")));
    }
    Ok(state.read(|cluster| {
        let alerts: Vec<_> = cluster.alerts().take(limit).collect();
        axum::Json(json!({ "alerts": alerts, "total": cluster.alerts_total() })).into_response()
    }))
}

/// Checks everything now: waits for the next round (shared with every other request
/// waiting for it) and answers the status it produced.
async fn check_now(State(state): State<AppState>) -> Result<Response, ApiError> {
    let round = state.request_round();
    // At worst the round in progress ends, then ours runs: two timeouts, plus slack.
    let patience = state.config().check_timeout * 2 + Duration::from_secs(5);
    if tokio::time::timeout(patience, state.rounds().ended(round)).await.is_err() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the check did not finish in time"));
    }
    Ok(state.read(|cluster| {
        let mut body = serde_json::to_value(cluster.status(History::None)).unwrap_or_default();
        body["round"] = round.into();
        axum::Json(body).into_response()
    }))
}

//! The original load test's simulated work: `GET|POST /api/auth/auth-worker` (alias
//! `/api/auth/auth-work`), see [`kit::work`].

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use kit::http::{ApiError, Json};
use kit::work::WorkQuery;
use serde_json::Value;

use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/auth/auth-worker", get(work).post(work))
        .route("/api/auth/auth-work", get(work).post(work))
        .with_state(state)
}

async fn work(
    State(state): State<AppState>,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.config.work.answer("Auth work completed", &state.config.kit.service_name, query).await
}

//! The original load test's simulated work: `GET|POST /api/data/data-work`, see [`kit::work`].

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use kit::http::{ApiError, Json};
use kit::work::WorkQuery;
use serde_json::Value;

use crate::AppState;

pub async fn work(
    State(state): State<AppState>,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.config.work.answer("Data work completed", &state.config.kit.service_name, query).await
}

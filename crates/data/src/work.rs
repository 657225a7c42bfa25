//! The original load test's simulated work: `GET|POST /api/data/data-work` answers
//! `{message, service, timestamp}` after `WORK_DELAY_MS` (default 500), or `?ms=` within
//! `WORK_DELAY_MAX_MS`. The wait is a timer: it holds no thread.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use kit::http::{ApiError, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;

#[derive(Deserialize)]
pub struct WorkQuery {
    ms: Option<String>,
}

pub async fn work(
    State(state): State<AppState>,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let max = state.config.work_delay_max;
    let requested = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?.0.ms;
    let delay = match requested {
        None => state.config.work_delay,
        Some(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) if Duration::from_millis(ms) <= max => Duration::from_millis(ms),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "ms must be a whole number of milliseconds from 0 to {}",
                    max.as_millis()
                )));
            }
        },
    };
    tokio::time::sleep(delay).await;
    Ok(Json(json!({
        "message": "Data work completed",
        "service": state.config.kit.service_name,
        "delayMs": delay.as_millis() as u64,
        "timestamp": kit::time::now_iso(),
    })))
}

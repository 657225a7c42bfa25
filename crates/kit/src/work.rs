//! The original load test's simulated work (`/api/auth/auth-worker`, `/api/data/data-work`,
//! `/api/compute/compute-worker`): answer `{message, service, delayMs, timestamp}` after
//! `WORK_DELAY_MS` (each service has its own default), or `?ms=` within `WORK_DELAY_MAX_MS`
//! (default 10000). The wait is a timer: it holds no thread, so thousands can wait at once.

use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{ConfigError, Vars};
use crate::http::{ApiError, Json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimulatedWork {
    /// `WORK_DELAY_MS`: the delay when the request names none.
    pub delay: Duration,
    /// `WORK_DELAY_MAX_MS`: the longest `?ms=` accepted.
    pub max: Duration,
}

/// The request's query: `?ms=` (optional).
#[derive(Deserialize)]
pub struct WorkQuery {
    ms: Option<String>,
}

impl SimulatedWork {
    pub fn from_vars(vars: &Vars, default_delay_ms: u64) -> Result<Self, ConfigError> {
        let max = vars.number("WORK_DELAY_MAX_MS", 10_000, 0, 3_600_000)?;
        let delay = vars.number("WORK_DELAY_MS", default_delay_ms.min(max), 0, max)?;
        Ok(Self { delay: Duration::from_millis(delay), max: Duration::from_millis(max) })
    }

    /// Waits as asked, then answers `{message, service, delayMs, timestamp}`.
    pub async fn answer(
        &self,
        message: &str,
        service: &str,
        query: Result<Query<WorkQuery>, QueryRejection>,
    ) -> Result<Json<Value>, ApiError> {
        let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
        let delay = match query.ms {
            None => self.delay,
            Some(ms) => match ms.trim().parse::<u64>() {
                Ok(ms) if Duration::from_millis(ms) <= self.max => Duration::from_millis(ms),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "ms must be a whole number of milliseconds from 0 to {}",
                        self.max.as_millis()
                    )));
                }
            },
        };
        tokio::time::sleep(delay).await;
        Ok(Json(json!({
            "message": message,
            "service": service,
            "delayMs": delay.as_millis() as u64,
            "timestamp": crate::time::now_iso(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration() {
        let work = SimulatedWork::from_vars(&Vars::from_pairs([("WORK_DELAY_MS", "20")]), 800).unwrap();
        assert_eq!(work, SimulatedWork { delay: Duration::from_millis(20), max: Duration::from_secs(10) });
        let work = SimulatedWork::from_vars(&Vars::from_pairs::<&str, &str>([]), 550).unwrap();
        assert_eq!(work.delay, Duration::from_millis(550));
        let vars = Vars::from_pairs([("WORK_DELAY_MS", "2000"), ("WORK_DELAY_MAX_MS", "1000")]);
        assert!(SimulatedWork::from_vars(&vars, 500).unwrap_err().to_string().contains("WORK_DELAY_MS"));
    }

    #[tokio::test]
    async fn answers_after_the_delay_asked_for_within_the_cap() {
        let work = SimulatedWork { delay: Duration::from_millis(1), max: Duration::from_millis(50) };
        let query = |ms: Option<&str>| Ok(Query(WorkQuery { ms: ms.map(str::to_owned) }));
        let Json(body) = work.answer("Work completed", "w-1", query(Some("5"))).await.unwrap();
        assert_eq!(
            (body["message"].clone(), body["service"].clone(), body["delayMs"].clone()),
            (json!("Work completed"), json!("w-1"), json!(5))
        );
        assert!(body["timestamp"].is_string());
        let Json(body) = work.answer("Work completed", "w-1", query(None)).await.unwrap();
        assert_eq!(body["delayMs"], 1);
        for bad in ["51", "-1", "soon"] {
            let err = work.answer("Work completed", "w-1", query(Some(bad))).await.unwrap_err();
            assert!(err.message.contains("0 to 50"), "{bad}: {err}");
        }
    }
}

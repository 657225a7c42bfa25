//! `GET /health` (liveness) and `GET /ready` (readiness), the same in every component.
//!
//! Liveness answers as long as the process serves HTTP at all: orch restarts an instance
//! whose `/health` stops answering. Readiness runs the component's own check (its database
//! answers, its first discovery finished) and is 503 until the check passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

type Check = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

#[derive(Clone)]
pub struct Health {
    service: Arc<str>,
    started: Instant,
    check: Option<Arc<Check>>,
}

impl Health {
    /// Health of the instance named `service` (its `SERVICE_NAME`), ready from the start.
    pub fn new(service: &str) -> Self {
        Self { service: service.into(), started: Instant::now(), check: None }
    }

    /// Readiness runs `check`; an `Err` explains what is not ready yet.
    pub fn with_check<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.check = Some(Arc::new(move || Box::pin(check())));
        self
    }

    /// `/health` and `/ready`, ready to merge into a component's router.
    pub fn router(&self) -> Router {
        let (live, ready) = (self.clone(), self.clone());
        Router::new()
            .route("/health", get(move || std::future::ready(live.health())))
            .route("/ready", get(move || async move { ready.ready().await }))
    }

    /// The liveness answer: `{status, service, timestamp, uptime}`.
    pub fn health(&self) -> Response {
        axum::Json(json!({
            "status": "healthy",
            "service": &*self.service,
            "timestamp": crate::time::now_iso(),
            "uptime": self.started.elapsed().as_secs_f64(),
        }))
        .into_response()
    }

    /// The readiness answer: 200 `{status: "ready", ...}` or 503 `{status: "not ready", error}`.
    pub async fn ready(&self) -> Response {
        let outcome = match &self.check {
            Some(check) => check().await,
            None => Ok(()),
        };
        match outcome {
            Ok(()) => axum::Json(json!({
                "status": "ready",
                "service": &*self.service,
                "timestamp": crate::time::now_iso(),
            }))
            .into_response(),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({
                    "status": "not ready",
                    "service": &*self.service,
                    "error": why,
                    "timestamp": crate::time::now_iso(),
                })),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get_json(router: Router, path: &str) -> (StatusCode, serde_json::Value) {
        let res = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let health = Health::new("auth-1").with_check(move || {
            let up = flag.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("database not open".into()) } }
        });

        let (status, body) = get_json(health.router(), "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["service"], "auth-1");
        assert!(body["uptime"].as_f64().unwrap() >= 0.0);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

        let (status, body) = get_json(health.router(), "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"], "database not open");

        up.store(true, Ordering::SeqCst);
        let (status, body) = get_json(health.router(), "/ready").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
    }
}

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

    /// `/health` and `/ready` (other methods: the JSON 405 of [`crate::http`]).
    pub fn router(&self) -> Router {
        let (live, ready) = (self.clone(), self.clone());
        let not_allowed = crate::http::method_not_allowed;
        Router::new()
            .route("/health", get(move || std::future::ready(live.health())).fallback(not_allowed))
            .route("/ready", get(move || async move { ready.ready().await }).fallback(not_allowed))
    }

    /// `app` with `/health` and `/ready` beside it, outside its layers: a probe is answered
    /// without the API's tracing, metrics and body limit, which cost more than the answer
    /// (probes are most of what an idle instance does: orch's every second, the balancer's
    /// and the detector's every 5 s). A component behind `kit::guard` uses
    /// [`Health::beside_guarded`].
    pub fn beside(&self, app: Router) -> Router {
        app.merge(self.router())
    }

    /// [`Health::beside`] for a component behind `guard`: its probes skip the API's layers
    /// but keep the guard (the 421 for a foreign `Host`).
    pub fn beside_guarded(&self, app: Router, guard: crate::guard::Guard) -> Router {
        app.merge(guard.wrap(self.router()))
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

    #[tokio::test]
    async fn probes_beside_an_app_skip_its_layers() {
        use std::sync::atomic::AtomicUsize;
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = seen.clone();
        let app = Router::new().route("/api/x", get(|| async { "x" })).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counted.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
        let router = Health::new("data-1").beside(app);
        let (status, body) = get_json(router.clone(), "/health").await;
        assert_eq!((status, &body["service"]), (StatusCode::OK, &serde_json::json!("data-1")));
        assert_eq!(get_json(router.clone(), "/ready").await.0, StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 0, "the probes went beside the layer");
        let res = router.clone().oneshot(Request::get("/api/x").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the app's routes keep it");
        // Another method on a probe's path: the JSON 405 of every other route.
        let res = router.oneshot(Request::post("/health").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert!(body["error"].as_str().unwrap().contains("POST"), "{body}");
    }

    #[tokio::test]
    async fn guarded_probes_keep_the_guard() {
        let router = Health::new("registry-1").beside_guarded(Router::new(), crate::guard::Guard::loopback());
        let probe = |host: &'static str| {
            let req = Request::get("/health").header("host", host).body(Body::empty()).unwrap();
            router.clone().oneshot(req)
        };
        assert_eq!(probe("localhost:3005").await.unwrap().status(), StatusCode::OK);
        assert_eq!(probe("rebind.example:3005").await.unwrap().status(), StatusCode::MISDIRECTED_REQUEST);
    }
}

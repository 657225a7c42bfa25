//! Stopping an instance on purpose without dropping a request.
//!
//! The sequence: deregister it from the registry (the balancer's registry watch takes it
//! out of rotation within milliseconds); poll each balancer's `GET /status` until the
//! instance is no longer listed, then its `GET /api/metrics` until the instance has no
//! request in flight; then SIGTERM (the component stops accepting and finishes what it
//! has), and SIGKILL if it is still there after the grace period. Waiting on the balancer
//! has a deadline, so a missing or slow balancer never blocks a stop.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::spawn::Spawner;

/// The longest a stop waits for the balancers to stop routing to the instance.
pub const UNROUTE_DEADLINE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(5);

pub struct DrainPlan {
    pub instance: String,
    pub service: String,
    pub pid: u32,
    /// Deregister through this registry first.
    pub registry: Option<kit::registry::RegistryClient>,
    /// Base URLs of the balancers to wait for.
    pub balancers: Vec<String>,
    pub grace: Duration,
    /// Cancelled when the process has exited.
    pub exited: CancellationToken,
    pub http: reqwest::Client,
    /// Sends the signals.
    pub spawner: std::sync::Arc<dyn Spawner>,
}

pub async fn drain(plan: DrainPlan) {
    if let Some(registry) = &plan.registry {
        match tokio::time::timeout(Duration::from_secs(1), registry.deregister(&plan.instance)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(instance = %plan.instance, error = %e, "deregistration failed"),
            Err(_) => tracing::debug!(instance = %plan.instance, "deregistration timed out"),
        }
    }
    let deadline = Instant::now() + UNROUTE_DEADLINE;
    for base in &plan.balancers {
        tokio::select! {
            _ = plan.exited.cancelled() => return,
            _ = wait_unrouted(&plan.http, base, &plan.service, &plan.instance, deadline) => {}
        }
    }
    plan.spawner.signal(plan.pid, Signal::SIGTERM);
    tokio::select! {
        _ = plan.exited.cancelled() => {}
        _ = tokio::time::sleep(plan.grace) => {
            tracing::info!(instance = %plan.instance, "still running after the grace period, killing it");
            plan.spawner.signal(plan.pid, Signal::SIGKILL);
        }
    }
}

/// Waits until the balancer at `base` no longer routes to `instance` and has nothing in
/// flight to it, or until `deadline`, or at once if the balancer does not answer.
pub async fn wait_unrouted(http: &reqwest::Client, base: &str, service: &str, instance: &str, deadline: Instant) {
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let res = http.get(url).timeout(Duration::from_millis(500)).send().await.ok()?;
            res.json::<Value>().await.ok()
        }
    };
    loop {
        let Some(status) = get("/status").await else { return };
        if !listed(&status, service, instance) {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%instance, balancer = base, "the balancer still routes to the instance, stopping it anyway");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    loop {
        let Some(metrics) = get("/api/metrics").await else { return };
        if in_flight(&metrics, service, instance) == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(%instance, balancer = base, "requests still in flight, stopping the instance anyway");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the balancer's `/status` lists `instance` in `service`'s pool.
fn listed(status: &Value, service: &str, instance: &str) -> bool {
    status["services"][service]["instances"]
        .as_array()
        .is_some_and(|list| list.iter().any(|i| i["id"].as_str() == Some(instance)))
}

/// The requests in flight to `instance` by the balancer's `/api/metrics` (0 if unknown).
fn in_flight(metrics: &Value, service: &str, instance: &str) -> u64 {
    metrics["services"][service]["instances"][instance]["inFlight"].as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::routing::get;
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_balancer_contract() {
        let status = json!({"services":{"auth":{"instances":[{"id":"auth-1","inFlight":0},{"id":"auth-2"}]}}});
        assert!(listed(&status, "auth", "auth-2"));
        assert!(!listed(&status, "auth", "auth-3"));
        assert!(!listed(&status, "data", "auth-2"));
        let metrics = json!({"services":{"auth":{"instances":{"auth-1":{"inFlight":2}}}}});
        assert_eq!(in_flight(&metrics, "auth", "auth-1"), 2);
        assert_eq!(in_flight(&metrics, "auth", "auth-9"), 0);
    }

    #[tokio::test]
    async fn waits_until_the_balancer_lets_go() {
        // A fake balancer: lists auth-2 for the first polls, then reports 1 in flight, then 0.
        let polls = Arc::new(Mutex::new(0u32));
        let (p1, p2) = (polls.clone(), polls.clone());
        let app = axum::Router::new()
            .route(
                "/status",
                get(move || {
                    let mut n = p1.lock().unwrap();
                    *n += 1;
                    let instances = if *n < 3 { json!([{"id": "auth-2"}]) } else { json!([]) };
                    async move { axum::Json(json!({"services": {"auth": {"instances": instances}}})) }
                }),
            )
            .route(
                "/api/metrics",
                get(move || {
                    let mut n = p2.lock().unwrap();
                    *n += 1;
                    let in_flight = if *n < 6 { 1 } else { 0 };
                    async move {
                        axum::Json(json!({"services": {"auth": {"instances": {"auth-2": {"inFlight": in_flight}}}}}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        wait_unrouted(&http, &base, "auth", "auth-2", Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(*polls.lock().unwrap(), 6, "3 polls of /status, 3 of /api/metrics");

        // No balancer at all: no wait.
        let started = Instant::now();
        wait_unrouted(&http, "http://127.0.0.1:9", "auth", "auth-2", Instant::now() + Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

//! Readiness and liveness probes: one loop per probe and process.
//!
//! A readiness loop reports changes only: ready after the first success, not ready after
//! `failureThreshold` failures in a row, ready again after a success. Until the first
//! success it probes quickly for a moment (a socket-activated child answers the probe that
//! waited in its backlog the moment it accepts; a program binding its own port is probed
//! every 20 ms until it does). A liveness loop reports every failure and the first
//! success after failures; the reconciler counts them against the threshold.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::manifest::{Check, Probe};

/// Retry pace before the first success, for at most [`STARTUP_WINDOW`] after the start.
const STARTUP_PERIOD: Duration = Duration::from_millis(20);
const STARTUP_WINDOW: Duration = Duration::from_secs(2);

/// An HTTP client for probes: no pooled connections, so every probe meets the current
/// process.
pub fn client() -> reqwest::Client {
    kit::http::client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("building an HTTP client without TLS cannot fail")
}

/// One probe of the instance on `port`.
pub async fn check(http: &reqwest::Client, port: u16, probe: &Probe) -> Result<(), String> {
    let timeout = Duration::from_millis(probe.timeout_ms);
    match &probe.check {
        Check::None => Ok(()),
        Check::Tcp => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("port {port}: {e}")),
            Err(_) => Err(format!("port {port}: no connection within {} ms", probe.timeout_ms)),
        },
        Check::Http(path) => {
            let url = format!("http://127.0.0.1:{port}{path}");
            match http.get(&url).timeout(timeout).send().await {
                Ok(res) if res.status().is_success() => Ok(()),
                Ok(res) => Err(format!("GET {path} answered {}", res.status().as_u16())),
                Err(e) if e.is_timeout() => Err(format!("GET {path}: no answer within {} ms", probe.timeout_ms)),
                Err(e) if e.is_connect() => Err(format!("GET {path}: connection refused")),
                Err(e) => Err(format!("GET {path}: {e}")),
            }
        }
    }
}

/// Runs a readiness probe until `cancel`; `report(ready, detail)` on every change.
pub async fn readiness(
    http: reqwest::Client,
    port: u16,
    probe: Probe,
    cancel: CancellationToken,
    mut report: impl FnMut(bool, String),
) {
    let period = Duration::from_millis(probe.period_ms);
    let began = Instant::now();
    let mut ever_ready = false;
    let mut ready = false;
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = check(&http, port, &probe) => outcome,
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                if !ready {
                    ready = true;
                    ever_ready = true;
                    report(true, String::new());
                }
            }
            Err(why) => {
                failures += 1;
                if ready && failures >= probe.failure_threshold {
                    ready = false;
                    report(false, why);
                }
            }
        }
        let starting = !ever_ready && began.elapsed() < STARTUP_WINDOW;
        let pace = if starting { period.min(STARTUP_PERIOD) } else { period };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(started + pace) => {}
        }
    }
}

/// Runs a liveness probe until `cancel`; `report(ok, detail)` on each failure and on the
/// first success after failures.
pub async fn liveness(
    http: reqwest::Client,
    port: u16,
    probe: Probe,
    cancel: CancellationToken,
    mut report: impl FnMut(bool, String),
) {
    let period = Duration::from_millis(probe.period_ms);
    let mut failing = false;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = check(&http, port, &probe) => outcome,
        };
        match outcome {
            Ok(()) if failing => {
                failing = false;
                report(true, String::new());
            }
            Ok(()) => {}
            Err(why) => {
                failing = true;
                report(false, why);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(started + period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    fn http_probe(path: &str, period_ms: u64, threshold: u32) -> Probe {
        Probe { check: Check::Http(path.into()), period_ms, timeout_ms: 200, failure_threshold: threshold }
    }

    /// A server whose /ready answers 200 while `healthy` is true.
    async fn server(healthy: Arc<Mutex<bool>>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/ready",
            get(move || {
                let ok = *healthy.lock().unwrap();
                async move { if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    #[tokio::test]
    async fn checks_say_what_failed() {
        let healthy = Arc::new(Mutex::new(false));
        let port = server(healthy.clone()).await;
        let http = client();
        assert_eq!(check(&http, port, &http_probe("/ready", 100, 1)).await, Err("GET /ready answered 503".into()));
        *healthy.lock().unwrap() = true;
        assert_eq!(check(&http, port, &http_probe("/ready", 100, 1)).await, Ok(()));
        let tcp = Probe { check: Check::Tcp, period_ms: 100, timeout_ms: 200, failure_threshold: 1 };
        assert_eq!(check(&http, port, &tcp).await, Ok(()));
        // A socket that is bound but never answers: the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let err = check(&http, silent_port, &http_probe("/health", 100, 1)).await.unwrap_err();
        assert_eq!(err, "GET /health: no answer within 200 ms");
        drop(silent);
        let err = check(&http, silent_port, &http_probe("/health", 100, 1)).await.unwrap_err();
        assert_eq!(err, "GET /health: connection refused");
    }

    #[tokio::test]
    async fn readiness_reports_changes_after_the_threshold() {
        let healthy = Arc::new(Mutex::new(true));
        let port = server(healthy.clone()).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let log = seen.clone();
        let task =
            tokio::spawn(readiness(client(), port, http_probe("/ready", 10, 3), cancel.clone(), move |ok, why| {
                log.lock().unwrap().push((ok, why))
            }));
        let changes = |n: usize| {
            let seen = seen.clone();
            async move {
                kit::testing::eventually(Duration::from_secs(5), "probe reports", || {
                    let seen = seen.clone();
                    async move { (seen.lock().unwrap().len() >= n).then_some(()) }
                })
                .await
            }
        };
        changes(1).await;
        *healthy.lock().unwrap() = false;
        changes(2).await;
        *healthy.lock().unwrap() = true;
        changes(3).await;
        cancel.cancel();
        task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![(true, String::new()), (false, "GET /ready answered 503".into()), (true, String::new())]);
    }
}

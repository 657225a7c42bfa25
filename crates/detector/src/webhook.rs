//! Alert delivery to `ALERT_WEBHOOK_URL`: each alert is POSTed as JSON by a background
//! task, retried with exponential backoff, and never waited for by the checks.
//!
//! Alerts wait in a bounded queue ([`QUEUE`]). When the receiver is down for so long that
//! the queue fills, new alerts are dropped (and logged) instead of piling up in memory or
//! slowing the checks. Plain `http://` only: this build carries no TLS.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::cluster::Alert;
use crate::urls::loopback;

/// Alerts waiting for delivery, at most.
pub const QUEUE: usize = 256;
/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to deliver. `Debug` leaves the URL out: it may carry a token.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    /// Attempts per alert (the first included).
    pub attempts: u32,
    /// The pause after the first failed attempt; it doubles after each one.
    pub backoff: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &"[redacted]")
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// The sending side: hands alerts to the delivery task without waiting.
#[derive(Clone, Debug)]
pub struct Webhook {
    queue: mpsc::Sender<Alert>,
}

impl Webhook {
    /// Starts the delivery task (tracked by `shutdown`).
    pub fn spawn(settings: Settings, http: reqwest::Client, shutdown: &kit::Shutdown) -> Self {
        let (queue, alerts) = mpsc::channel(QUEUE);
        shutdown.spawn(deliver(settings, http, alerts, shutdown.clone()));
        Self { queue }
    }

    /// Queues `alert`; drops it, with a warning, if the queue is full.
    pub fn send(&self, alert: Alert) {
        match self.queue.try_send(alert) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(alert)) => {
                tracing::warn!(alert = alert.id, "alert webhook queue full, alert not delivered");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

async fn deliver(
    settings: Settings,
    http: reqwest::Client,
    mut alerts: mpsc::Receiver<Alert>,
    shutdown: kit::Shutdown,
) {
    let url = loopback(&settings.url);
    loop {
        let alert = tokio::select! {
            _ = shutdown.requested() => return,
            alert = alerts.recv() => match alert {
                Some(alert) => alert,
                None => return,
            },
        };
        // Each alert is a trace of its own, sampled: the receiver can log it under the id
        // the detector's lines about its delivery carry.
        let trace = kit::trace::TraceContext::root(true);
        if kit::trace::scope(trace, attempts(&settings, &http, &url, &alert, &shutdown)).await.is_err() {
            return;
        }
    }
}

/// Delivers `alert`, retrying with backoff; gives up after the attempts, or at shutdown
/// (`Err`).
async fn attempts(
    settings: &Settings,
    http: &reqwest::Client,
    url: &str,
    alert: &Alert,
    shutdown: &kit::Shutdown,
) -> Result<(), ()> {
    let mut pause = settings.backoff;
    for attempt in 1..=settings.attempts {
        let post = http.post(url).json(alert).timeout(ATTEMPT_TIMEOUT);
        let outcome = kit::trace::inject(post).send().await;
        let why = match outcome {
            Ok(res) if res.status().is_success() => {
                tracing::debug!(alert = alert.id, attempt, "alert delivered to the webhook");
                break;
            }
            Ok(res) => format!("answered {}", res.status()),
            Err(e) => e.without_url().to_string(),
        };
        if attempt == settings.attempts {
            tracing::warn!(alert = alert.id, attempts = attempt, error = %why, "alert webhook failed, giving up");
            break;
        }
        tracing::info!(alert = alert.id, attempt, error = %why, retry_in = ?pause, "alert webhook failed, retrying");
        tokio::select! {
            _ = shutdown.requested() => return Err(()),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_BACKOFF);
    }
    Ok(())
}

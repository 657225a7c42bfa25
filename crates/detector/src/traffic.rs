//! The balancer's traffic as the dashboard shows it: requests per second overall and the
//! distribution of requests across instances, from the balancer's `GET /api/metrics`.
//!
//! [`Traffic::update`] is pure: it takes a parsed metrics document and the time it was
//! read, and derives the rate from the change of the `requests` counter since the previous
//! document. A counter that goes down means the balancer restarted; the rate then starts
//! over instead of going negative.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::machine::Millis;
use crate::urls::loopback;

/// How many requests-per-second points are kept for the header's sparkline.
pub const RATE_POINTS: usize = 120;

/// The parts of the balancer's `/api/metrics` the dashboard uses (unknown fields ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceMetrics>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMetrics {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceMetrics>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceMetrics {
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub healthy: Option<bool>,
}

/// What the dashboard shows of the balancer's traffic.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// Whether the last read of the metrics succeeded.
    pub available: bool,
    /// When the metrics were last read.
    pub updated_at: Option<String>,
    pub requests_per_second: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    /// Per service, per instance.
    pub services: BTreeMap<String, ServiceTraffic>,
    /// Recent requests-per-second points, oldest first.
    pub rate_history: VecDeque<f64>,
    #[serde(skip)]
    previous: Option<(Millis, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTraffic {
    pub requests: u64,
    pub errors: u64,
    pub instances: BTreeMap<String, InstanceTraffic>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTraffic {
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub healthy: Option<bool>,
}

impl Traffic {
    /// Takes in the metrics read `at`.
    pub fn update(&mut self, at: Millis, metrics: Metrics) {
        let rate = match self.previous {
            Some((then, before)) if at > then && metrics.requests >= before => {
                Some((metrics.requests - before) as f64 * 1000.0 / (at - then) as f64)
            }
            // First reading, or the balancer restarted: no rate yet.
            _ => None,
        };
        if let Some(rate) = rate {
            if self.rate_history.len() == RATE_POINTS {
                self.rate_history.pop_front();
            }
            self.rate_history.push_back((rate * 100.0).round() / 100.0);
        }
        self.previous = Some((at, metrics.requests));
        self.available = true;
        self.updated_at = Some(kit::time::iso_from_millis(at));
        self.requests_per_second = rate.map(|r| (r * 100.0).round() / 100.0);
        self.requests = metrics.requests;
        self.errors = metrics.errors;
        self.in_flight = metrics.in_flight;
        self.services = metrics
            .services
            .into_iter()
            .map(|(name, s)| {
                let instances = s
                    .instances
                    .into_iter()
                    .map(|(id, i)| {
                        let view = InstanceTraffic {
                            requests: i.requests,
                            errors: i.errors,
                            in_flight: i.in_flight,
                            healthy: i.healthy,
                        };
                        (id, view)
                    })
                    .collect();
                (name, ServiceTraffic { requests: s.requests, errors: s.errors, instances })
            })
            .collect();
    }

    /// The metrics could not be read; returns true if that is news.
    pub fn unavailable(&mut self) -> bool {
        let was = self.available;
        self.available = false;
        self.requests_per_second = None;
        self.previous = None;
        was
    }
}

/// Reads the balancer's metrics every `METRICS_INTERVAL_MS` until shutdown.
pub async fn poll(state: AppState, shutdown: kit::Shutdown) {
    let url = format!("{}/api/metrics", loopback(&state.config().balancer_url));
    let period = state.config().metrics_interval;
    let timeout = state.config().check_timeout;
    loop {
        let read = async {
            let res = state.http().get(&url).timeout(timeout).send().await?;
            res.error_for_status()?.json::<Metrics>().await
        };
        match read.await {
            Ok(metrics) => state.update_traffic(Some(metrics)),
            Err(e) => {
                tracing::debug!(error = %e.without_url(), "cannot read the balancer's metrics");
                state.update_traffic(None);
            }
        }
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(requests: u64) -> Metrics {
        serde_json::from_value(serde_json::json!({
            "timestamp": "2026-01-01T00:00:00.000Z", "uptimeSeconds": 1.0,
            "requests": requests, "errors": 1, "inFlight": 0, "retries": 0,
            "services": {"auth": {"requests": requests, "errors": 1, "inFlight": 0, "retries": 0,
                "statusClasses": {"2xx": requests}, "latencyMs": {"p50": 1.0},
                "instances": {"auth-1": {"url": "http://localhost:3001", "healthy": true,
                    "requests": requests, "errors": 1, "inFlight": 0}}}}
        }))
        .unwrap()
    }

    #[test]
    fn rate_from_the_counter() {
        let mut traffic = Traffic::default();
        traffic.update(1_000, metrics(100));
        assert_eq!(traffic.requests_per_second, None, "one reading gives no rate");
        traffic.update(1_500, metrics(150));
        assert_eq!(traffic.requests_per_second, Some(100.0));
        traffic.update(2_500, metrics(160));
        assert_eq!(traffic.requests_per_second, Some(10.0));
        assert_eq!(traffic.rate_history, [100.0, 10.0]);
        assert_eq!(traffic.services["auth"].instances["auth-1"].requests, 160);
        assert_eq!(traffic.services["auth"].instances["auth-1"].healthy, Some(true));
    }

    #[test]
    fn a_restarted_balancer_starts_the_rate_over() {
        let mut traffic = Traffic::default();
        traffic.update(1_000, metrics(500));
        traffic.update(2_000, metrics(3));
        assert_eq!(traffic.requests_per_second, None);
        traffic.update(3_000, metrics(13));
        assert_eq!(traffic.requests_per_second, Some(10.0));
    }

    #[test]
    fn unavailable_is_news_once() {
        let mut traffic = Traffic::default();
        traffic.update(1_000, metrics(1));
        assert!(traffic.unavailable());
        assert!(!traffic.unavailable());
        traffic.update(2_000, metrics(5));
        assert_eq!(traffic.requests_per_second, None, "no rate across a gap");
    }

    #[test]
    fn history_is_bounded() {
        let mut traffic = Traffic::default();
        for i in 0..(RATE_POINTS as i64 + 10) {
            traffic.update(i * 1000, metrics(i as u64));
        }
        assert_eq!(traffic.rate_history.len(), RATE_POINTS);
    }
}

//! The balancer's traffic as the dashboard shows it: requests per second overall and the
//! distribution of requests across instances, from the balancer's `GET /api/metrics`.
//!
//! [`Traffic::update`] is pure: it takes a parsed metrics document and the time it was
//! read, and derives the rate from the change of the `requests` counter since the previous
//! document. A counter that goes down means the balancer restarted; the rate then starts
//! over instead of going negative. Each point of the rate history stands for one period:
//! a read after k periods pushes k points of its average rate, so the history stays exact
//! whatever the pace of the reads.
//!
//! [`Pace`] is the poll's rhythm: every period while anything happens, calmer (doubling up
//! to [`CALM_MAX`]) while the counter stands still and no dashboard is connected.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::machine::Millis;
use crate::urls::loopback;

/// How many requests-per-second points are kept for the header's sparkline.
pub const RATE_POINTS: usize = 120;

/// The longest wait between two reads while nothing happens and nobody looks.
pub const CALM_MAX: Duration = Duration::from_secs(8);

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
    /// Takes in the metrics read `at`; each history point stands for `point` ms (the period).
    pub fn update(&mut self, at: Millis, metrics: Metrics, point: Millis) {
        let rate = match self.previous {
            Some((then, before)) if at > then && metrics.requests >= before => {
                let points = ((at - then + point / 2) / point.max(1)).clamp(1, RATE_POINTS as Millis);
                Some(((metrics.requests - before) as f64 * 1000.0 / (at - then) as f64, points))
            }
            // First reading, or the balancer restarted: no rate yet.
            _ => None,
        };
        let rate = rate.map(|(rate, points)| {
            let rate = (rate * 100.0).round() / 100.0;
            for _ in 0..points {
                if self.rate_history.len() == RATE_POINTS {
                    self.rate_history.pop_front();
                }
                self.rate_history.push_back(rate);
            }
            rate
        });
        self.previous = Some((at, metrics.requests));
        self.available = true;
        self.updated_at = Some(kit::time::iso_from_millis(at));
        self.requests_per_second = rate;
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

/// When the next read is due. While the last two reads saw the same thing (the same
/// `requests` counter, say, or the source unavailable both times) and no dashboard is
/// connected, the wait doubles up to [`CALM_MAX`]; anything else brings back the period.
/// A period set explicitly (`fixed`) is always kept. orch's instance list is read at the
/// same pace ([`crate::orch::poll_instances`]).
#[derive(Debug)]
pub struct Pace<T = u64> {
    period: Duration,
    fixed: bool,
    wait: Duration,
    /// What the previous read saw: `Some(None)` for an unavailable source.
    last: Option<Option<T>>,
}

impl<T: PartialEq> Pace<T> {
    pub fn new(period: Duration, fixed: bool) -> Self {
        Self { period, fixed, wait: period, last: None }
    }

    /// Takes in what a read saw (`None`: the source was unavailable) and whether a
    /// dashboard is connected; returns the wait before the next read.
    pub fn next(&mut self, seen: Option<T>, watched: bool) -> Duration {
        let calm = !self.fixed && !watched && self.last.as_ref() == Some(&seen);
        self.last = Some(seen);
        self.wait = if calm { (self.wait * 2).min(CALM_MAX.max(self.period)) } else { self.period };
        self.wait
    }
}

/// Reads the balancer's metrics at the [`Pace`] of `METRICS_INTERVAL_MS` until shutdown,
/// and at once when a dashboard connects.
pub async fn poll(state: AppState, shutdown: kit::Shutdown) {
    let url = format!("{}/api/metrics", loopback(&state.config().balancer_url));
    let mut pace: Pace = Pace::new(state.config().metrics_interval, state.config().metrics_interval_fixed);
    let timeout = state.config().check_timeout;
    loop {
        let read = async {
            let res = state.http().get(&url).timeout(timeout).send().await?;
            res.error_for_status()?.json::<Metrics>().await
        };
        let seen = match read.await {
            Ok(metrics) => {
                let requests = metrics.requests;
                state.update_traffic(Some(metrics));
                Some(requests)
            }
            Err(e) => {
                tracing::debug!(error = %e.without_url(), "cannot read the balancer's metrics");
                state.update_traffic(None);
                None
            }
        };
        let wait = pace.next(seen, state.dashboard_clients() > 0);
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = state.traffic_poll_woken() => {}
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
        traffic.update(1_000, metrics(100), 1_000);
        assert_eq!(traffic.requests_per_second, None, "one reading gives no rate");
        traffic.update(1_500, metrics(150), 1_000);
        assert_eq!(traffic.requests_per_second, Some(100.0));
        traffic.update(2_500, metrics(160), 1_000);
        assert_eq!(traffic.requests_per_second, Some(10.0));
        assert_eq!(traffic.rate_history, [100.0, 10.0]);
        assert_eq!(traffic.services["auth"].instances["auth-1"].requests, 160);
        assert_eq!(traffic.services["auth"].instances["auth-1"].healthy, Some(true));
    }

    #[test]
    fn a_restarted_balancer_starts_the_rate_over() {
        let mut traffic = Traffic::default();
        traffic.update(1_000, metrics(500), 1_000);
        traffic.update(2_000, metrics(3), 1_000);
        assert_eq!(traffic.requests_per_second, None);
        traffic.update(3_000, metrics(13), 1_000);
        assert_eq!(traffic.requests_per_second, Some(10.0));
    }

    #[test]
    fn unavailable_is_news_once() {
        let mut traffic = Traffic::default();
        traffic.update(1_000, metrics(1), 1_000);
        assert!(traffic.unavailable());
        assert!(!traffic.unavailable());
        traffic.update(2_000, metrics(5), 1_000);
        assert_eq!(traffic.requests_per_second, None, "no rate across a gap");
    }

    #[test]
    fn a_long_read_fills_one_point_per_second() {
        let mut traffic = Traffic::default();
        traffic.update(0, metrics(10), 1_000);
        traffic.update(1_000, metrics(20), 1_000);
        // Four quiet seconds read at once: the rate WAS zero for each of them.
        traffic.update(5_000, metrics(20), 1_000);
        assert_eq!(traffic.rate_history, [10.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(traffic.requests_per_second, Some(0.0));
        // Two seconds with 60 requests: 30 per second, twice.
        traffic.update(7_000, metrics(80), 1_000);
        assert_eq!(traffic.rate_history, [10.0, 0.0, 0.0, 0.0, 0.0, 30.0, 30.0]);
        // A read a little late or early still stands for its whole seconds.
        traffic.update(8_400, metrics(80), 1_000);
        traffic.update(9_000, metrics(80), 1_000);
        assert_eq!(traffic.rate_history.len(), 9);
        // A long gap fills at most the whole history.
        traffic.update(9_000 + 1_000 * (RATE_POINTS as i64 + 50), metrics(80), 1_000);
        assert_eq!(traffic.rate_history.len(), RATE_POINTS);
        assert!(traffic.rate_history.iter().all(|r| *r == 0.0));
    }

    #[test]
    fn the_pace_calms_while_nothing_happens_and_nobody_looks() {
        let s = Duration::from_secs;
        let mut pace = Pace::new(s(1), false);
        assert_eq!(pace.next(Some(5), false), s(1), "a first read is news");
        let waits: Vec<_> = (0..5).map(|_| pace.next(Some(5), false)).collect();
        assert_eq!(waits, [s(2), s(4), s(8), s(8), s(8)]);
        assert_eq!(pace.next(Some(6), false), s(1), "requests moved");
        assert_eq!(pace.next(Some(6), false), s(2));
        assert_eq!(pace.next(Some(6), true), s(1), "a dashboard is connected");
        assert_eq!(pace.next(Some(6), true), s(1));
        assert_eq!(pace.next(None, false), s(1), "the balancer became unavailable");
        assert_eq!(pace.next(None, false), s(2));
        assert_eq!(pace.next(Some(0), false), s(1), "the balancer came back");

        // Any comparable reading calms the same way (orch's instance list, say).
        let mut pace = Pace::new(s(2), false);
        let list = |restarts: u32| Some(vec![("auth-1", restarts)]);
        let waits: Vec<_> =
            [list(0), list(0), list(0), list(1), list(1)].into_iter().map(|l| pace.next(l, false)).collect();
        assert_eq!(waits, [s(2), s(4), s(8), s(2), s(4)]);
    }

    #[test]
    fn an_explicit_period_is_always_kept() {
        let period = Duration::from_millis(300);
        let mut pace = Pace::new(period, true);
        assert!((0..6).all(|_| pace.next(Some(1), false) == period));
    }

    #[test]
    fn history_is_bounded() {
        let mut traffic = Traffic::default();
        for i in 0..(RATE_POINTS as i64 + 10) {
            traffic.update(i * 1000, metrics(i as u64), 1_000);
        }
        assert_eq!(traffic.rate_history.len(), RATE_POINTS);
    }
}

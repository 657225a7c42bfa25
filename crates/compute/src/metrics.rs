//! compute's own Prometheus figures (beside kit's HTTP and process ones): operations by
//! name and place (`direct`, `job`), the time a claim takes (its write lock, the reaping
//! and the claim itself), jobs whose lease expired under a worker that stopped renewing, and
//! the queue's depth: jobs by status, read from the database every [`DEPTH_EVERY`] by
//! [`run`] (a scrape cannot wait for a query).

use std::sync::LazyLock;
use std::time::Duration;

use kit::Shutdown;
use kit::metrics::{Counter, Family, Gauge, Histogram, Labels};

use crate::AppState;
use crate::queue::Status;

/// How often the queue's depth is read for `compute_jobs`.
pub const DEPTH_EVERY: Duration = Duration::from_secs(5);

pub struct Metrics {
    operations: Family<Labels<2>, Counter>,
    pub claim_seconds: Histogram,
    pub lease_expiries: Counter,
    jobs: Family<Labels<1>, Gauge>,
}

impl Metrics {
    /// Counts an accepted operation: computed at once (`direct`) or queued (`job`).
    pub fn operation(&self, operation: &str, place: &'static str) {
        self.operations.get_or_create(&[("operation", operation.to_owned()), ("place", place.to_owned())]).inc();
    }

    /// The queue's depth: jobs by status, in [`Status::ALL`] order.
    pub fn depth(&self, counts: [i64; 5]) {
        for (status, n) in Status::ALL.iter().zip(counts) {
            self.jobs.get_or_create(&[("status", status.as_str().to_owned())]).set(n);
        }
    }
}

/// Keeps `compute_jobs{status}` current: the queue's depth every [`DEPTH_EVERY`].
pub async fn run(state: AppState, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(DEPTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tick.tick() => {}
        }
        match state.queue.counts().await {
            Ok(counts) => get().depth(counts),
            Err(e) => tracing::debug!(error = %e, "reading the queue's depth failed"),
        }
    }
}

/// The process's compute figures, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        operations: kit::metrics::counters("compute_operations", "Operations accepted, by operation and place"),
        claim_seconds: kit::metrics::seconds("compute_claim_duration_seconds", "Time of one claim of the queue"),
        lease_expiries: kit::metrics::counter("compute_lease_expiries", "Jobs whose lease expired, reaped"),
        jobs: kit::metrics::gauges("compute_jobs", "Jobs in the queue's database, by status"),
    });
    &METRICS
}

//! compute's own Prometheus figures (beside kit's HTTP and process ones): operations by
//! name and place (`direct`, `job`), the time a claim takes (its write lock, the reaping
//! and the claim itself), and jobs whose lease expired under a worker that stopped renewing.

use std::sync::LazyLock;

use kit::metrics::{Counter, Family, Histogram, Labels};

pub struct Metrics {
    operations: Family<Labels<2>, Counter>,
    pub claim_seconds: Histogram,
    pub lease_expiries: Counter,
}

impl Metrics {
    /// Counts an accepted operation: computed at once (`direct`) or queued (`job`).
    pub fn operation(&self, operation: &str, place: &'static str) {
        self.operations.get_or_create(&[("operation", operation.to_owned()), ("place", place.to_owned())]).inc();
    }
}

/// The process's compute figures, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        operations: kit::metrics::counters("compute_operations", "Operations accepted, by operation and place"),
        claim_seconds: kit::metrics::seconds("compute_claim_duration_seconds", "Time of one claim of the queue"),
        lease_expiries: kit::metrics::counter("compute_lease_expiries", "Jobs whose lease expired, reaped"),
    });
    &METRICS
}

//! auth's own Prometheus figures (beside kit's HTTP and process ones): logins by outcome
//! (`ok`, `failed`: a wrong password or an unknown account, `locked`: refused by the
//! throttle), and the time argon2 takes per hash or check, on the blocking pool.

use std::sync::LazyLock;

use kit::metrics::{Counter, Family, Histogram, Labels};

pub struct Metrics {
    logins: Family<Labels<1>, Counter>,
    pub hash_seconds: Histogram,
}

impl Metrics {
    /// Counts a login answered with `outcome` (`ok`, `failed` or `locked`).
    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&[("outcome", outcome.to_owned())]).inc();
    }
}

/// The process's auth figures, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        logins: kit::metrics::counters("auth_logins", "Logins by outcome (ok, failed, locked)"),
        hash_seconds: kit::metrics::seconds("auth_hash_duration_seconds", "argon2 time per hash or check"),
    });
    &METRICS
}

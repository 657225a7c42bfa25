//! data's own Prometheus figures (beside kit's HTTP and process ones): reads (one item, a
//! list page), writes by answered status, conflicts (409 a key taken, 412 a version that
//! did not match) and writes answered from an idempotency record.

use std::sync::LazyLock;

use axum::http::StatusCode;
use kit::metrics::{Counter, Family, Labels};

pub struct Metrics {
    /// `data_reads{kind="item"}` and `{kind="list"}`, taken from their family once: a
    /// family's lookup makes and hashes a label set, about 1 % of a read's instructions.
    pub item_reads: Counter,
    pub list_reads: Counter,
    writes: Family<Labels<1>, Counter>,
    conflicts: Family<Labels<1>, Counter>,
    pub replays: Counter,
}

impl Metrics {
    /// Counts a write answered with `status` (and a conflict, if it is one).
    pub fn written(&self, status: StatusCode) {
        let status = [("status", status.as_u16().to_string())];
        if matches!(status[0].1.as_str(), "409" | "412") {
            self.conflicts.get_or_create(&status).inc();
        }
        self.writes.get_or_create(&status).inc();
    }
}

/// The process's data figures, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let reads: Family<Labels<1>, Counter> = kit::metrics::counters("data_reads", "Reads by kind (item, list)");
        let of_kind = |kind: &str| reads.get_or_create(&[("kind", kind.to_owned())]).clone();
        Metrics {
            item_reads: of_kind("item"),
            list_reads: of_kind("list"),
            writes: kit::metrics::counters("data_writes", "Writes (create, update, delete) by answered status"),
            conflicts: kit::metrics::counters("data_conflicts", "Writes refused: 409 key taken, 412 version mismatch"),
            replays: kit::metrics::counter("data_idempotent_replays", "Writes answered from an idempotency record"),
        }
    });
    &METRICS
}

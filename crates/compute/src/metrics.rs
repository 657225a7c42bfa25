//! compute's own Prometheus figures (beside kit's HTTP and process ones): operations by
//! name and place (`direct`, `job`), the time a claim takes (its write lock, the reaping
//! and the claim itself), jobs whose lease expired under a worker that stopped renewing, and
//! the queue's depth: jobs by status, read from the database every [`DEPTH_EVERY`] by
//! [`run`] (a scrape cannot wait for a query) while scrapes come: after [`ACTIVE`] without
//! one it stops reading (an idle instance makes no query for figures nobody reads), and the
//! next scrape starts it again (that scrape shows the figures of the last read).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use kit::Shutdown;
use kit::metrics::{Counter, Family, Gauge, Histogram, Labels};

use crate::AppState;
use crate::ops::{Operation, Place};

/// How often the queue's depth is read for `compute_jobs`.
pub const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// How long after the last scrape the depth is still read.
pub const ACTIVE: Duration = Duration::from_secs(60);

pub struct Metrics {
    /// `compute_operations{operation, place}` in [`Operation::ALL`]'s order, `(direct, job)`
    /// (no direct one for an operation only queued): taken from their family once, as a
    /// family's look-up makes two label strings and hashes them (2 % of a direct operation).
    operations: Vec<(Option<Counter>, Counter)>,
    pub claim_seconds: Histogram,
    pub lease_expiries: Counter,
    jobs: Family<Labels<1>, Gauge>,
}

impl Metrics {
    /// Counts an accepted operation: computed at once (`direct`) or queued (`job`).
    pub fn operation(&self, operation: Operation, place: Place) {
        let at = Operation::ALL.iter().position(|op| *op == operation);
        let Some((direct, job)) = at.and_then(|at| self.operations.get(at)) else { return };
        let counter = match place {
            Place::Direct => direct.as_ref(),
            Place::Job => Some(job),
        };
        if let Some(counter) = counter {
            counter.inc();
        }
    }

    /// The queue's depth: jobs by status.
    pub fn depth(&self, counts: impl IntoIterator<Item = (&'static str, i64)>) {
        for (status, n) in counts {
            self.jobs.get_or_create(&[("status", status.to_owned())]).set(n);
        }
    }
}

/// Keeps `compute_jobs{status}` current while scraped: the queue's depth every
/// [`DEPTH_EVERY`], from a scrape until [`ACTIVE`] passed without one.
pub async fn run(state: AppState, shutdown: Shutdown) {
    let scrapes = Scrapes::default();
    let seen = scrapes.clone();
    kit::metrics::on_scrape(move || seen.scraped());
    while_scraped(&scrapes, &shutdown, || async {
        match state.queue.depth().await {
            Ok(counts) => get().depth(counts),
            Err(e) => tracing::debug!(error = %e, "reading the queue's depth failed"),
        }
    })
    .await
}

/// Told of every scrape.
#[derive(Clone, Default)]
pub struct Scrapes {
    wake: Arc<tokio::sync::Notify>,
    since_read: Arc<AtomicBool>,
}

impl Scrapes {
    pub fn scraped(&self) {
        self.since_read.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Runs `read` every [`DEPTH_EVERY`] from a scrape until [`ACTIVE`] passed without one, and
/// not at all meanwhile, until `shutdown`.
pub async fn while_scraped<F: Future<Output = ()>>(
    scrapes: &Scrapes,
    shutdown: &Shutdown,
    mut read: impl FnMut() -> F,
) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = scrapes.wake.notified() => {}
        }
        // A wake-up left by a scrape that the last reads already served.
        if !scrapes.since_read.swap(false, Ordering::Relaxed) {
            continue;
        }
        let mut quiet = Duration::ZERO;
        while quiet < ACTIVE {
            read().await;
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = tokio::time::sleep(DEPTH_EVERY) => {}
            }
            let scraped = scrapes.since_read.swap(false, Ordering::Relaxed);
            quiet = if scraped { Duration::ZERO } else { quiet + DEPTH_EVERY };
        }
    }
}

/// The process's compute figures, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        operations: operations(kit::metrics::counters(
            "compute_operations",
            "Operations accepted, by operation and place",
        )),
        claim_seconds: kit::metrics::seconds("compute_claim_duration_seconds", "Time of one claim of the queue"),
        lease_expiries: kit::metrics::counter("compute_lease_expiries", "Jobs whose lease expired, reaped"),
        jobs: kit::metrics::gauges("compute_jobs", "Jobs in the queue's database, by status"),
    });
    &METRICS
}

/// The counters of every operation at each place that takes it, from their `family`.
fn operations(family: Family<Labels<2>, Counter>) -> Vec<(Option<Counter>, Counter)> {
    let counter = |op: Operation, place: &str| {
        family.get_or_create(&[("operation", op.name().to_owned()), ("place", place.to_owned())]).clone()
    };
    let direct = Operation::supported(Place::Direct);
    let of = |op: Operation| (direct.contains(&op.name()).then(|| counter(op, "direct")), counter(op, "job"));
    Operation::ALL.iter().map(|&op| of(op)).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_depth_is_read_only_while_scrapes_come() {
        let (scrapes, shutdown) = (Scrapes::default(), Shutdown::new());
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let (s, sd) = (scrapes.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            while_scraped(&s, &sd, || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .await
        });
        let reads_after = |wait: Duration| {
            let reads = reads.clone();
            async move {
                tokio::time::sleep(wait).await;
                reads.load(Ordering::SeqCst)
            }
        };
        // Nobody scrapes: no query at all.
        assert_eq!(reads_after(Duration::from_secs(600)).await, 0);
        // A scrape: read at once, then every DEPTH_EVERY while scrapes keep coming.
        scrapes.scraped();
        assert_eq!(reads_after(Duration::from_millis(1)).await, 1);
        for _ in 0..6 {
            scrapes.scraped();
            tokio::time::sleep(DEPTH_EVERY).await;
        }
        let read = reads.load(Ordering::SeqCst);
        assert!((6..=8).contains(&read), "{read} reads over 30 s of scrapes");
        // Then ACTIVE without one: it stops.
        let stopped = reads_after(ACTIVE + DEPTH_EVERY * 2).await;
        assert_eq!(reads_after(Duration::from_secs(600)).await, stopped, "reads after the scrapes stopped");
        shutdown.trigger();
        task.await.unwrap();
    }
}

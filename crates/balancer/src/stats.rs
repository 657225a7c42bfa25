//! Counters and latency histograms, written on the request path without locks.
//!
//! Every figure is an atomic, kept once per worker thread ([`Shard`], on its own cache
//! lines): a worker only writes its own shard, so the counters of a busy instance do not
//! bounce between cores; a reader adds the shards up. Latencies go into a log-linear histogram (8 buckets per power
//! of two, so a percentile is within about 6% of the true value) kept in time slots: a
//! percentile is read over the last [`WINDOW_SLOTS`] slots of [`SLOT_SECS`] seconds, so it
//! shows recent traffic. A writer that finds its slot belonging to an older period clears
//! it first; two writers racing on that may lose a handful of samples, which a metric can
//! afford and a lock on the request path cannot.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Seconds per histogram slot.
pub const SLOT_SECS: u64 = 10;
/// Slots in the window: percentiles cover the last 50-60 seconds.
pub const WINDOW_SLOTS: usize = 6;

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values below this (in microseconds) get a bucket each.
const LINEAR: u64 = 2 * SUB as u64;
/// Up to 2^36 µs (about 19 hours); beyond goes into the last bucket.
const MAX_BIT: u32 = 36;
const BUCKETS: usize = LINEAR as usize + (MAX_BIT as usize - SUB_BITS as usize) * SUB;

/// The process's time origin for slot numbers.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The slot period `at` falls in (starting from 1, so 0 means "never written").
fn period(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_secs() / SLOT_SECS + 1
}

fn bucket(micros: u64) -> usize {
    if micros < LINEAR {
        return micros as usize;
    }
    let bit = 63 - micros.leading_zeros();
    if bit >= MAX_BIT {
        return BUCKETS - 1;
    }
    let sub = ((micros >> (bit - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR as usize + (bit - SUB_BITS - 1) as usize * SUB + sub
}

/// The middle of a bucket's range, in microseconds.
fn bucket_value(index: usize) -> f64 {
    if index < LINEAR as usize {
        return index as f64;
    }
    let i = index - LINEAR as usize;
    let bit = (i / SUB) as u32 + SUB_BITS + 1;
    let sub = (i % SUB) as u64;
    let width = 1u64 << (bit - SUB_BITS);
    let low = (1u64 << bit) + sub * width;
    low as f64 + width as f64 / 2.0
}

struct Slot {
    period: AtomicU64,
    counts: Box<[AtomicU64]>,
}

/// Latencies over a recent window; see the module docs.
pub struct Histogram {
    slots: [Slot; WINDOW_SLOTS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot {
                period: AtomicU64::new(0),
                counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            }),
        }
    }
}

impl Histogram {
    pub fn record(&self, latency: Duration, now: Instant) {
        let period = period(now);
        let slot = &self.slots[period as usize % WINDOW_SLOTS];
        let seen = slot.period.load(Relaxed);
        if seen < period && slot.period.compare_exchange(seen, period, Relaxed, Relaxed).is_ok() {
            for count in slot.counts.iter() {
                count.store(0, Relaxed);
            }
        }
        slot.counts[bucket(latency.as_micros() as u64)].fetch_add(1, Relaxed);
    }

    /// p50, p90 and p99 in milliseconds over the window ending at `now` (zeros when empty).
    pub fn percentiles(&self, now: Instant) -> Percentiles {
        let mut counts = vec![0u64; BUCKETS];
        self.add_counts(now, &mut counts);
        percentiles(&counts)
    }

    /// Adds this histogram's counts over the window ending at `now` to `counts`.
    fn add_counts(&self, now: Instant, counts: &mut [u64]) {
        let current = period(now);
        for slot in &self.slots {
            let p = slot.period.load(Relaxed);
            if p != 0 && p + WINDOW_SLOTS as u64 > current {
                for (sum, count) in counts.iter_mut().zip(slot.counts.iter()) {
                    *sum += count.load(Relaxed);
                }
            }
        }
    }
}

/// Percentiles of bucket counts.
fn percentiles(counts: &[u64]) -> Percentiles {
    let total: u64 = counts.iter().sum();
    let at = |q: f64| {
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_value(i).round() / 1000.0;
            }
        }
        0.0
    };
    Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99) }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Responses by status class.
#[derive(Default)]
pub struct Classes([AtomicU64; 4]);

impl Classes {
    pub fn record(&self, status: u16) {
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.0[class].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatusClasses {
        let [a, b, c, d] = &self.0;
        StatusClasses {
            ok: a.load(Relaxed),
            redirect: b.load(Relaxed),
            client: c.load(Relaxed),
            server: d.load(Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StatusClasses {
    #[serde(rename = "2xx")]
    pub ok: u64,
    #[serde(rename = "3xx")]
    pub redirect: u64,
    #[serde(rename = "4xx")]
    pub client: u64,
    #[serde(rename = "5xx")]
    pub server: u64,
}

/// One worker's share of the figures of a service (client requests) or an instance
/// (attempts).
#[derive(Default)]
#[repr(align(128))]
pub struct Shard {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Incremented and decremented by the same worker; only the sum over shards means much.
    pub in_flight: AtomicU64,
    pub retries: AtomicU64,
    /// Suspected poison requests (see `error::Failure::Poison`), per service.
    pub poison: AtomicU64,
    pub classes: Classes,
    pub latency: Histogram,
}

impl Shard {
    /// A response with `status` after `latency`; 5xx counts as an error.
    pub fn answered(&self, status: u16, latency: Duration, now: Instant) {
        self.classes.record(status);
        if status >= 500 {
            self.errors.fetch_add(1, Relaxed);
        }
        self.latency.record(latency, now);
    }

    pub fn begin(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The figures of a service or an instance: one [`Shard`] per worker thread.
pub struct Stats {
    shards: Box<[Shard]>,
}

impl Stats {
    pub fn new(workers: usize) -> Self {
        Self { shards: (0..workers.max(1)).map(|_| Shard::default()).collect() }
    }

    /// The shard `worker` writes.
    pub fn at(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().fold(0u64, |sum, shard| sum.wrapping_add(field(shard).load(Relaxed)))
    }

    pub fn requests(&self) -> u64 {
        self.sum(|s| &s.requests)
    }

    pub fn errors(&self) -> u64 {
        self.sum(|s| &s.errors)
    }

    pub fn retries(&self) -> u64 {
        self.sum(|s| &s.retries)
    }

    pub fn poison(&self) -> u64 {
        self.sum(|s| &s.poison)
    }

    pub fn in_flight(&self) -> u64 {
        self.sum(|s| &s.in_flight)
    }

    pub fn classes(&self) -> StatusClasses {
        self.shards.iter().map(|s| s.classes.snapshot()).fold(StatusClasses::default(), |a, b| StatusClasses {
            ok: a.ok + b.ok,
            redirect: a.redirect + b.redirect,
            client: a.client + b.client,
            server: a.server + b.server,
        })
    }

    pub fn percentiles(&self, now: Instant) -> Percentiles {
        let mut counts = vec![0u64; BUCKETS];
        for shard in self.shards.iter() {
            shard.latency.add_counts(now, &mut counts);
        }
        percentiles(&counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for micros in [0, 1, 15, 16, 17, 100, 999, 1_000, 1_234, 50_000, 1_000_000, 60_000_000] {
            let b = bucket(micros);
            assert!(b >= last, "{micros}");
            last = b;
            let value = bucket_value(b);
            let err = (value - micros as f64).abs() / (micros.max(1) as f64);
            assert!(err <= 0.07 || micros < LINEAR, "{micros} -> {value}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_over_the_window() {
        let h = Histogram::default();
        let now = Instant::now();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms), now);
        }
        let p = h.percentiles(now);
        let near = |got: f64, want: f64| (got - want).abs() / want < 0.07;
        assert!(near(p.p50, 50.0) && near(p.p90, 90.0) && near(p.p99, 99.0), "{p:?}");

        // Long after, the old samples have left the window.
        let later = now + Duration::from_secs(SLOT_SECS * (WINDOW_SLOTS as u64 + 1));
        assert_eq!(h.percentiles(later), Percentiles::default());
        h.record(Duration::from_micros(500), later);
        assert!(near(h.percentiles(later).p99, 0.5), "{:?}", h.percentiles(later));
    }

    #[test]
    fn shards_add_up() {
        let stats = Stats::new(2);
        let now = Instant::now();
        stats.at(0).begin();
        stats.at(1).begin();
        stats.at(1).answered(503, Duration::from_millis(1), now);
        stats.at(0).answered(200, Duration::from_millis(3), now);
        stats.at(1).end();
        assert_eq!((stats.requests(), stats.errors(), stats.in_flight()), (2, 1, 1));
        assert_eq!(stats.classes(), StatusClasses { ok: 1, redirect: 0, client: 0, server: 1 });
        assert!(stats.percentiles(now).p99 > 2.5);
    }
}

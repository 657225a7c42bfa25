//! Closed-loop load: `total` calls of an operation from `concurrency` workers on the tokio
//! runtime, every call's latency kept, and the table the crates' benchmarks print of them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{quantile, sorted_ms};
use crate::table::Table;

/// One measured operation.
pub struct Sample {
    pub name: &'static str,
    pub requests: usize,
    pub concurrency: usize,
    pub elapsed: Duration,
    /// Every call's latency, in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl Sample {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of the latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.latencies_ms, q)
    }
}

/// Runs `total` calls of `op` (given the call's number) from `concurrency` workers; each
/// call must succeed, else the benchmark panics naming it.
pub async fn measure<F, Fut>(name: &'static str, total: usize, concurrency: usize, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    if let Err(e) = op(i).await {
                        panic!("{name} #{i} failed: {e}");
                    }
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await.expect("a load worker panicked"));
    }
    let elapsed = started.elapsed();
    Sample { name, requests: total, concurrency, elapsed, latencies_ms: sorted_ms(&latencies) }
}

/// Ok when `res` is an answer with status `expected` (its body read), else what it was.
pub async fn expect_status(res: reqwest::Result<reqwest::Response>, expected: u16) -> Result<(), String> {
    let res = res.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    if status == expected { Ok(()) } else { Err(format!("status {status}")) }
}

/// The table of `samples`: operation, requests, concurrency, seconds, req/s, p50 and p99.
pub fn table(samples: &[Sample]) -> Table {
    let mut t = Table::new()
        .left("operation", 26)
        .right("requests", 9)
        .right("conc", 6)
        .right("seconds", 9)
        .right("req/s", 10)
        .right("p50 ms", 9)
        .right("p99 ms", 9);
    for s in samples {
        t.row([
            s.name.to_owned(),
            s.requests.to_string(),
            s.concurrency.to_string(),
            format!("{:.2}", s.elapsed.as_secs_f64()),
            format!("{:.0}", s.per_second()),
            format!("{:.2}", s.quantile_ms(0.50)),
            format!("{:.2}", s.quantile_ms(0.99)),
        ]);
    }
    t
}

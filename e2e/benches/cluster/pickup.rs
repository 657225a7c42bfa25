//! Job pickup latency (`pickup` step): on an idle cluster, [`PICKUPS`] jobs submitted one
//! after another, each timed from its submit to the moment a worker has claimed it.

use std::time::Instant;

use bench::report::Row;
use bench::stats::{ms, quantile, runs, show_ms};
use e2e::traffic::Api;

use super::{Bench, TIGHT, submit_job, until};

/// Jobs submitted one at a time, each claimed before the next.
const PICKUPS: usize = 50;

impl Bench {
    /// `jobPickup`: submit → the job no longer `queued` (seen by polling `GET
    /// /api/compute/job/:id` every 1 ms), beside the queue's own `startedAt - createdAt`.
    pub(super) async fn pickup(&mut self, api: &Api) {
        self.progress.step(&format!("job pickup latency, {PICKUPS} jobs one at a time on an idle cluster"));
        let (mut seen, mut stamped) = (Vec::new(), Vec::new());
        for n in 0..PICKUPS {
            let t0 = Instant::now();
            let id = submit_job(api, n).await;
            let job = until(TIGHT, &format!("job {id} claimed"), || async {
                let (status, job) = api.get(&format!("/api/compute/job/{id}")).await;
                (status == 200 && job["status"] != "queued").then_some(job)
            })
            .await;
            seen.push(ms(t0.elapsed()));
            let at = |field: &str| job[field].as_str().and_then(iso_millis);
            match (at("createdAt"), at("startedAt")) {
                (Some(created), Some(started)) => stamped.push((started - created) as f64),
                _ => panic!("job {id} without createdAt and startedAt: {job}"),
            }
        }
        let (seen_sorted, stamped_sorted) = (sorted(&seen), sorted(&stamped));
        let (p50, p99) = (quantile(&seen_sorted, 0.5), quantile(&seen_sorted, 0.99));
        let (s50, s99) = (quantile(&stamped_sorted, 0.5), quantile(&stamped_sorted, 0.99));
        self.progress.note(&format!(
            "seen claimed: p50 {}, p99 {}; the queue's own startedAt - createdAt: p50 {}, p99 {}",
            show_ms(p50),
            show_ms(p99),
            show_ms(s50),
            show_ms(s99)
        ));
        self.rows.push(
            Row::new("jobPickup", "job pickup latency on an idle cluster (submit -> claimed)", p50, "ms")
                .shown(format!("p50 {}, p99 {}", show_ms(p50), show_ms(p99)))
                .how(format!(
                    "{PICKUPS} add jobs through the balancer, one at a time on an idle queue: from sending the POST \
                     (202) until GET /api/compute/job/:id, polled every 1 ms, shows it no longer queued (two HTTP \
                     round trips included); the queue's own startedAt - createdAt (ms resolution): p50 {}, p99 {}",
                    show_ms(s50),
                    show_ms(s99)
                ))
                .detail("p99Ms", p99)
                .detail("runsMs", runs(&seen))
                .detail("stampedP50Ms", s50)
                .detail("stampedP99Ms", s99)
                .detail("stampedMs", runs(&stamped)),
        );
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Milliseconds since the Unix epoch of `2026-12-02T15:22:48.123Z` (the API's timestamps).
fn iso_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || !s.ends_with('Z') {
        return None;
    }
    let num = |from: usize, to: usize| s.get(from..to)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let frac = s.get(20..s.len() - 1)?;
    let millis = format!("{frac:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis)
}

//! Rounds of health checks: every target, concurrently, every `CHECK_INTERVAL_MS` and
//! whenever someone asks (`POST /api/check`, a new instance, an orch event).
//!
//! Requests coalesce: asking for a check asks for *the next round to begin* and waits for
//! it to end. However many requests arrive while a round runs, they all share the single
//! round that begins after it, so a flood of `POST /api/check` costs at most one round in
//! progress and one more, never a check storm. Each request still gets results at least
//! as fresh as itself.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::sync::{Notify, watch};

use crate::AppState;
use crate::cluster::CheckOutcome;

/// The biggest health-check body read; the rest is not waited for.
const BODY_CAP: usize = 64 << 10;

/// Round bookkeeping shared by the checker and the requests waiting on it.
#[derive(Debug)]
pub struct Rounds {
    state: Mutex<RoundState>,
    wake: Notify,
    finished: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct RoundState {
    /// The number of the last round begun.
    begun: u64,
    /// Someone asked for a round that has not begun yet.
    wanted: bool,
}

impl Default for Rounds {
    fn default() -> Self {
        Self { state: Mutex::default(), wake: Notify::new(), finished: watch::channel(0).0 }
    }
}

impl Rounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, RoundState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for a round that begins after now; returns its number.
    pub fn request(&self) -> u64 {
        let mut state = self.lock();
        state.wanted = true;
        let round = state.begun + 1;
        drop(state);
        self.wake.notify_one();
        round
    }

    /// Waits until round `round` has ended.
    pub async fn ended(&self, round: u64) {
        let mut finished = self.finished.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = finished.wait_for(|n| *n >= round).await;
    }

    /// The number of the last round that ended.
    pub fn last_ended(&self) -> u64 {
        *self.finished.borrow()
    }

    fn wanted(&self) -> bool {
        self.lock().wanted
    }

    fn begin(&self) -> u64 {
        let mut state = self.lock();
        state.wanted = false;
        state.begun += 1;
        state.begun
    }

    fn end(&self, round: u64) {
        self.finished.send_replace(round);
    }
}

/// Runs rounds until shutdown: at once, then every `interval` after the last one began,
/// and whenever one is asked for.
pub async fn run(state: AppState, shutdown: kit::Shutdown) {
    let rounds = state.rounds();
    let mut due = Instant::now();
    loop {
        while !rounds.wanted() && Instant::now() < due {
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = rounds.wake.notified() => {}
            }
        }
        if shutdown.is_requested() {
            return;
        }
        due = Instant::now() + state.config().check_interval;
        let round = rounds.begin();
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = check_all(&state) => {}
        }
        rounds.end(round);
    }
}

/// One round: checks every target concurrently and records the outcomes.
async fn check_all(state: &AppState) {
    let round = state.begin_round();
    let http = state.http();
    let timeout = state.config().check_timeout;
    let checks = round.targets.into_iter().map(|(key, url)| async move {
        let outcome = check(http, &url, timeout).await;
        (key, kit::time::unix_millis(), outcome)
    });
    let results = join_all(checks).await;
    state.record_checks(round.epoch, results);
}

/// `GET url` within `timeout`: healthy on a 2xx answer.
pub async fn check(http: &reqwest::Client, url: &str, timeout: Duration) -> CheckOutcome {
    let start = Instant::now();
    let answer = tokio::time::timeout(timeout, async {
        let mut res = http.get(url).send().await?;
        let status = res.status();
        let mut read = 0;
        while let Some(chunk) = res.chunk().await? {
            read += chunk.len();
            if read > BODY_CAP {
                break;
            }
        }
        Ok::<_, reqwest::Error>(status)
    })
    .await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match answer {
        Err(_) => CheckOutcome::Failed { ms: None, error: format!("no answer within {} ms", timeout.as_millis()) },
        Ok(Err(e)) if e.is_connect() => CheckOutcome::Failed { ms: None, error: "cannot connect".into() },
        Ok(Err(e)) => CheckOutcome::Failed { ms: None, error: format!("request failed: {}", e.without_url()) },
        Ok(Ok(status)) if status.is_success() => CheckOutcome::Healthy { ms },
        Ok(Ok(status)) => CheckOutcome::Failed { ms: Some(ms), error: format!("answered {status}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_share_the_next_round() {
        let rounds = Rounds::default();
        let a = rounds.request();
        let b = rounds.request();
        assert_eq!((a, b), (1, 1), "both wait for the round that begins next");
        assert!(rounds.wanted());
        assert_eq!(rounds.begin(), 1);
        assert!(!rounds.wanted());
        // Asked while round 1 runs: round 2, which begins after it.
        assert_eq!(rounds.request(), 2);
        rounds.end(1);
        rounds.ended(1).await;
        assert_eq!(rounds.last_ended(), 1);
    }
}

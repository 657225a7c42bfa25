//! Helpers for tests (feature `testing`): waiting for a condition with a deadline, never a
//! bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it returns `Some`; panics naming `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
    }
}

/// Asserts that `future` is still pending after `window` (a blocking call that must block),
/// and gives it back to be awaited later.
pub async fn still_pending<F: Future + Unpin>(mut future: F, window: Duration, what: &str) -> F {
    let finished = tokio::time::timeout(window, &mut future).await.is_ok();
    assert!(!finished, "{what} finished within {window:?}, it should still be waiting");
    future
}

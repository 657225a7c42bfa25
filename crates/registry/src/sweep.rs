//! The background loop that marks silent records unhealthy and then removes them.

use std::time::Instant;

use crate::AppState;

pub async fn run(state: AppState, shutdown: kit::Shutdown) {
    let (stale, remove) = (state.config.stale_after, state.config.remove_after);
    let mut changes = state.changes.subscribe();
    loop {
        let done = state.update(|store| store.sweep(Instant::now(), stale, remove));
        for id in &done.marked_unhealthy {
            tracing::warn!(service_id = %id, "no heartbeat, marked unhealthy");
        }
        for id in &done.removed {
            tracing::warn!(service_id = %id, "no heartbeat, removed");
        }
        // Sleep until the next record falls due; a new record is due no sooner than
        // `stale` from now, so a change only needs a wake-up when nothing was due.
        let next = done.next_due.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = sleep_until(next) => {}
            _ = changes.changed(), if next.is_none() => {}
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

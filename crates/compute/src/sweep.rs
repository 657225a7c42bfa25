//! The periodic clean-up: finished jobs older than `JOB_RETENTION_MS` and idempotency
//! keys older than their retention (24 h) are deleted. Every instance runs it; deleting
//! twice is harmless.

use kit::Shutdown;

use crate::AppState;

pub async fn run(state: AppState, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(state.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tick.tick() => {}
        }
        match state.queue.purge(state.config.retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "purged finished jobs past their retention"),
            Err(e) => tracing::warn!(error = %e, "purging old jobs failed"),
        }
        match kit::idempotency::purge_expired(state.queue.db()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}

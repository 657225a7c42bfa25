//! The workers of one instance, and what wakes them.
//!
//! Each worker (`<SERVICE_NAME>/w<i>`) loops: peek at the queue, claim a job if there may
//! be one, run it while renewing its lease, record the outcome; otherwise sleep until woken.
//!
//! An idle worker is woken by
//! - a submit to this instance (at once, through a `watch` channel);
//! - a commit by anyone to the shared database, seen by [`watch_changes`]. On SQLite every
//!   commit, by any process, writes to the database's WAL file (`compute.sqlite-wal`), which
//!   it watches (inotify): an idle instance sleeps until a write, with no timer at all. Where
//!   the file cannot be watched (no inotify instance left: `fs.inotify.max_user_instances`)
//!   it reads `PRAGMA data_version` on a connection of its own every `JOB_POLL_MS` (20 ms)
//!   instead. That value changes when another connection, in any process, has committed;
//!   reading it touches no table, and it is not read at all while every local worker is
//!   busy. On PostgreSQL it
//!   `LISTEN`s on `compute_jobs`, which a trigger notifies when a job becomes queued (the
//!   commit delivers it), and wakes the workers after a lost connection too (a notification
//!   may have been missed meanwhile);
//! - the earliest lease expiry of a running job (a crashed worker's job is taken over as
//!   soon as its lease runs out), or the safety poll, `JOB_SAFETY_POLL_MS` (5 s).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kit::Shutdown;
use kit::time::unix_millis;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::AppState;
use crate::exec::ExecError;
use crate::ops::{self, Place};
use crate::queue::{Claimed, Status};

/// Starts the workers and the change detector as shutdown-tracked tasks.
pub fn spawn(state: &AppState, shutdown: &Shutdown) {
    let workers = state.config.workers;
    if workers == 0 {
        return;
    }
    for i in 1..=workers {
        let id = format!("{}/w{i}", state.config.kit.service_name);
        shutdown.spawn(run(state.clone(), id, shutdown.clone()));
    }
    shutdown.spawn(watch_changes(state.clone(), shutdown.clone()));
}

/// One worker's loop.
pub async fn run(state: AppState, id: String, shutdown: Shutdown) {
    let mut wake = state.wake.subscribe();
    let safety = state.config.safety_poll;
    let mut failures = 0u32;
    state.stats.idle.fetch_add(1, Ordering::SeqCst);
    while !shutdown.is_requested() {
        wake.borrow_and_update();
        let wait = match state.queue.peek().await {
            Ok(peek) if peek.claimable(unix_millis()) => match state.queue.claim(&id, state.config.lease).await {
                Ok(Some(claimed)) => {
                    failures = 0;
                    state.stats.idle.fetch_sub(1, Ordering::SeqCst);
                    execute(&state, &id, claimed, &shutdown).await;
                    state.stats.idle.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                // Someone else was faster: look again.
                Ok(None) => continue,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(worker = %id, error = %e, "claiming a job failed");
                    backoff(failures)
                }
            },
            Ok(peek) => {
                failures = 0;
                let now = unix_millis();
                match peek.next_expiry {
                    Some(at) if at >= now => safety.min(Duration::from_millis((at - now) as u64 + 1)),
                    _ => safety,
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(worker = %id, error = %e, "reading the queue failed");
                backoff(failures)
            }
        };
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = wake.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    state.stats.idle.fetch_sub(1, Ordering::SeqCst);
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(5))
}

/// Runs a claimed job to its outcome, renewing the lease meanwhile.
async fn execute(state: &AppState, worker: &str, claimed: Claimed, shutdown: &Shutdown) {
    let job = &claimed.job;
    tracing::debug!(%worker, job = %job.id, operation = %job.operation, attempt = job.attempts, "running job");
    let outcome = match ops::parse(&job.operation, &job.operands, Place::Job) {
        // Validated at submit; only a newer version's operation could get here.
        Err(e) => Some(Err(ExecError::Invalid(e))),
        Ok((_, task)) => {
            let work = state.executor.run(task, state.config.job_time_limit);
            let run = async {
                tokio::select! {
                    outcome = work => Some(outcome),
                    () = keep_lease(state, &claimed) => None,
                }
            };
            let mut run = std::pin::pin!(run);
            tokio::select! {
                outcome = &mut run => outcome,
                _ = shutdown.requested() => {
                    // Finish within part of the grace period, else hand the job back.
                    let drain = state.config.kit.shutdown_grace / 2;
                    match tokio::time::timeout(drain, &mut run).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            match state.queue.release(&claimed).await {
                                Ok(true) => tracing::info!(%worker, job = %job.id, "shutting down: job handed back to the queue"),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(%worker, job = %job.id, error = %e, "handing a job back failed; its lease will expire"),
                            }
                            return;
                        }
                    }
                }
            }
        }
    };
    let Some(outcome) = outcome else {
        state.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%worker, job = %job.id, "lost the lease (another worker took the job over); result dropped");
        return;
    };
    record(state, worker, &claimed, outcome).await;
}

/// Renews the lease every third of its length; returns once it is lost.
async fn keep_lease(state: &AppState, claimed: &Claimed) {
    let lease = state.config.lease;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.queue.renew(claimed, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(job = %claimed.job.id, error = %e, "renewing a lease failed, will retry"),
        }
    }
}

/// Writes the outcome (a few tries: the database may be busy for a moment).
async fn record(state: &AppState, worker: &str, claimed: &Claimed, outcome: Result<Box<RawValue>, ExecError>) {
    let job = &claimed.job.id;
    for attempt in 1..=3u32 {
        let written = match &outcome {
            Ok(result) => state.queue.complete(claimed, result).await.map(|held| held.then_some(Status::Completed)),
            Err(e) => state.queue.fail(claimed, &e.to_string(), e.is_permanent()).await,
        };
        match written {
            Ok(Some(status)) => {
                let counter = match status {
                    Status::Completed => &state.stats.completed,
                    Status::Failed => &state.stats.failed,
                    _ => &state.stats.retried,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%worker, %job, status = status.as_str(), "job attempt finished");
                return;
            }
            Ok(None) => {
                state.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%worker, %job, "lost the lease before recording the outcome; dropped");
                return;
            }
            Err(e) => {
                tracing::warn!(%worker, %job, error = %e, attempt, "recording a job outcome failed");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    tracing::error!(%worker, %job, "could not record the outcome; the job runs again when its lease expires");
}

/// Wakes idle workers when the database changes (see the module docs).
pub async fn watch_changes(state: AppState, shutdown: Shutdown) {
    if state.queue.db().dialect() == kit::db::Dialect::Postgres {
        return listen(state, shutdown).await;
    }
    let mut conn = loop {
        match state.queue.db().pool().acquire().await {
            Ok(conn) => break conn.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "change detector cannot get a connection, retrying");
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    match watch_wal(&mut conn).await {
        Ok(wal) => {
            tracing::debug!("idle workers wake on writes to the database's WAL file");
            let mut last = data_version(&mut conn).await.ok();
            // A commit made before the watch began is found by a look at the queue.
            state.wake();
            loop {
                tokio::select! {
                    _ = shutdown.requested() => return,
                    () = wal.lost.notified() => break,
                    () = wal.written.notified() => {}
                }
                // A commit's frames are written before the commit is visible (and synced):
                // wake the workers once `data_version` moves, looking for a moment.
                let (until, mut pause) = (Instant::now() + SETTLE, Duration::from_micros(250));
                loop {
                    match data_version(&mut conn).await {
                        Ok(version) if Some(version) == last => {}
                        seen => {
                            last = seen.ok();
                            state.wake();
                            break;
                        }
                    }
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.requested() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
            tracing::warn!("the database's WAL file went away; polling PRAGMA data_version instead");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the database's WAL file; polling PRAGMA data_version instead")
        }
    }
    let mut tick = tokio::time::interval(state.config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tick.tick() => {}
        }
        if state.stats.idle.load(Ordering::SeqCst) == 0 {
            continue;
        }
        match sqlx::query_scalar::<_, i64>("PRAGMA data_version").fetch_one(&mut conn).await {
            Ok(version) => {
                if last.is_some_and(|v| v != version) {
                    state.wake();
                }
                last = Some(version);
            }
            Err(e) => tracing::warn!(error = %e, "reading PRAGMA data_version failed"),
        }
    }
}

/// How long after a write to the WAL its commit may take to become visible (its sync).
const SETTLE: Duration = Duration::from_secs(1);

async fn data_version(conn: &mut sqlx::AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar::<_, i64>("PRAGMA data_version").fetch_one(conn).await
}

/// A watch on the WAL file: `written` on every write to it (a commit by anyone), `lost` if
/// the file goes away. Dropping it ends the watch.
struct WalWatch {
    _watcher: notify::RecommendedWatcher,
    written: Arc<Notify>,
    lost: Arc<Notify>,
}

/// Watches the WAL file of the database `conn` is connected to (which keeps it in place).
async fn watch_wal(conn: &mut sqlx::AnyConnection) -> Result<WalWatch, String> {
    use notify::{EventKind, Watcher};
    let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("reading the database's file name: {e}"))?;
    if file.is_empty() {
        return Err("the database is in memory".into());
    }
    let wal = PathBuf::from(format!("{file}-wal"));
    // A read opens the WAL (creating it if need be).
    data_version(conn).await.map_err(|e| e.to_string())?;
    let (written, lost) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (on_write, on_lost) = (written.clone(), lost.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) if matches!(event.kind, EventKind::Remove(_)) => on_lost.notify_one(),
        Ok(event) if matches!(event.kind, EventKind::Modify(_)) => on_write.notify_one(),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "watching the WAL file failed"),
    })
    .map_err(|e| e.to_string())?;
    watcher.watch(&wal, notify::RecursiveMode::NonRecursive).map_err(|e| format!("{}: {e}", wal.display()))?;
    Ok(WalWatch { _watcher: watcher, written, lost })
}

/// The channel a trigger notifies when a job becomes queued (migrations/postgres).
pub const CHANNEL: &str = "compute_jobs";

/// [`watch_changes`] on PostgreSQL: a notification on [`CHANNEL`] wakes the workers.
async fn listen(state: AppState, shutdown: Shutdown) {
    let mut failures = 0;
    'connect: loop {
        let mut listener = match kit::db::pg::listen(state.queue.db(), CHANNEL).await {
            Ok(listener) => listener,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot listen for new jobs yet, retrying");
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(backoff(failures)) => continue 'connect,
                }
            }
        };
        failures = 0;
        // Whatever was notified before listening is found by a look at the queue.
        state.wake();
        loop {
            let next = tokio::select! {
                _ = shutdown.requested() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(_)) => state.wake(),
                // The connection was lost and is being made again: notifications sent meanwhile
                // are lost, so look at the queue.
                Ok(None) => state.wake(),
                Err(e) => {
                    tracing::warn!(error = %e, "listening for new jobs failed, reconnecting");
                    continue 'connect;
                }
            }
        }
    }
}

//! What wakes an idle dispatcher besides its own instance's submits: commits by other
//! instances, seen on the database's lock file (or by polling `PRAGMA data_version` where it
//! cannot be watched), or `LISTEN` on PostgreSQL (the [`super`] module's docs tell the whole
//! story).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kit::Shutdown;
use kit::db::Announced;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff;
use crate::AppState;

/// Wakes idle workers when the database changes (see the module docs).
pub async fn watch_changes(state: AppState, shutdown: Shutdown) {
    if state.queue.db().dialect() == kit::db::Dialect::Postgres {
        return listen(state, shutdown).await;
    }
    match state
        .queue
        .db()
        .announce_commits()
        .ok_or_else(|| "the database is in memory".to_owned())
        .and_then(|path| Ok((watch_file(&path)?, std::fs::File::open(&path).map_err(|e| e.to_string())?)))
    {
        Ok((watch, file)) => {
            tracing::debug!("idle workers wake on the commits announced on the database's lock file");
            // What was committed before the watch began is found by a look at the queue.
            state.watching(true);
            let mut seen = Announced::read(&file).ok();
            let mut looked = Instant::now();
            loop {
                tokio::select! {
                    _ = shutdown.requested() => return,
                    () = watch.lost.notified() => break,
                    () = watch.written.notified() => {}
                }
                let now = Announced::read(&file).ok();
                let expiry_known = state.stats.expiry_known.load(Ordering::SeqCst);
                if !look_after(seen, now, expiry_known) {
                    seen = now;
                    continue;
                }
                // Coalesced: the commits since the last look are all covered by the next one.
                let next = looked + COALESCE;
                if Instant::now() < next {
                    tokio::select! {
                        _ = shutdown.requested() => return,
                        _ = tokio::time::sleep_until(next) => {}
                    }
                }
                seen = Announced::read(&file).ok();
                looked = Instant::now();
                state.wake();
            }
            state.watching(false);
            tracing::warn!("the database's lock file went away; polling PRAGMA data_version instead");
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the database's lock file; polling PRAGMA data_version instead")
        }
    }
    poll_changes(state, shutdown).await;
}

/// Whether the idle workers look at the queue after commits announced on the lock file, from
/// the counts read before them (`seen`) and now (`None`: unreadable): when one of them asked
/// for a look (a job queued, a lease given back, any transaction), or when the dispatcher
/// knows no lease expiry (even a job started elsewhere by its submit tells it one, which it
/// must watch in case that instance dies). Commits that were all quiet (jobs started by their
/// submits, outcomes recorded) leave a dispatcher that knows the next expiry asleep: a look
/// after them would find nothing to claim, and under a burst of submits to idle workers
/// everywhere there is one such commit every few jobs.
fn look_after(seen: Option<Announced>, now: Option<Announced>, expiry_known: bool) -> bool {
    match (seen, now) {
        (Some(seen), Some(now)) => now.looks != seen.looks || !expiry_known,
        _ => true,
    }
}

/// [`watch_changes`] without a watch: `PRAGMA data_version` read every `JOB_POLL_MS` on a
/// connection of its own while a local worker is idle; it changes when another connection,
/// in any process, has committed, and reading it touches no table.
async fn poll_changes(state: AppState, shutdown: Shutdown) {
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
    let mut tick = tokio::time::interval(state.config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<i64> = None;
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tick.tick() => {}
        }
        if state.slots.idle_count() == 0 {
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

/// The least time between two looks prompted by announced commits. A busy queue sees
/// hundreds of commits a second, and one look per commit, with the dispatcher's peek it
/// prompts, was a good part of an instance's CPU under a burst of submits (README, "Where a
/// job's time goes"); a job queued elsewhere is seen at most this much later (one submitted
/// here wakes the dispatcher at once).
const COALESCE: Duration = Duration::from_millis(2);

/// A watch on a file: `written` on every write to its content, `lost` if it goes away.
/// Dropping it ends the watch.
struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    written: Arc<Notify>,
    lost: Arc<Notify>,
}

/// Watches `file` (inotify) for writes to its content.
fn watch_file(file: &std::path::Path) -> Result<FileWatch, String> {
    use notify::Watcher;
    let (written, lost) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (on_write, on_lost) = (written.clone(), lost.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => match file_event(&event.kind) {
            Some(FileEvent::Written) => on_write.notify_one(),
            Some(FileEvent::Lost) => on_lost.notify_one(),
            None => {}
        },
        Err(e) => tracing::warn!(error = %e, "watching the lock file failed"),
    })
    .map_err(|e| e.to_string())?;
    watcher.watch(file, notify::RecursiveMode::NonRecursive).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(FileWatch { _watcher: watcher, written, lost })
}

/// What an event on the watched file means to the watchers.
#[derive(Debug, PartialEq, Eq)]
enum FileEvent {
    /// Its content changed: a commit was announced.
    Written,
    /// It is gone.
    Lost,
}

/// The meaning of an event on the watched file, if any: only a change of its content is a
/// write (not an attribute change, an open or a close).
fn file_event(kind: &notify::EventKind) -> Option<FileEvent> {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Remove(_) => Some(FileEvent::Lost),
        EventKind::Modify(ModifyKind::Metadata(_)) => None,
        EventKind::Modify(_) => Some(FileEvent::Written),
        _ => None,
    }
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
        state.watching(true);
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
                    state.watching(false);
                    continue 'connect;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Announced, FileEvent, file_event, look_after};

    /// The events inotify gives for a watched file, through the watcher `watch_file` uses:
    /// an attribute change, an open or a close is not a write; a write is; a removal is the
    /// watch's end.
    #[test]
    fn only_a_change_of_the_files_content_counts_as_a_write() {
        use notify::Watcher;
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("db.sqlite.lock");
        std::fs::write(&wal, b"").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Some(meaning) = file_event(&event.unwrap().kind) {
                let _ = tx.send(meaning);
            }
        })
        .unwrap();
        watcher.watch(&wal, notify::RecursiveMode::NonRecursive).unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::File::open(&wal).unwrap();
        std::fs::OpenOptions::new().append(true).open(&wal).unwrap().write_all(b"frame").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::remove_file(&wal).unwrap();
        let mut seen = Vec::new();
        while seen.last() != Some(&FileEvent::Lost) {
            seen.push(rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the removal is seen"));
        }
        assert_eq!(seen, [FileEvent::Written, FileEvent::Lost]);
    }

    #[test]
    fn quiet_commits_leave_asleep_only_a_dispatcher_that_knows_the_next_expiry() {
        let counts = |looks, commits| Some(Announced { looks, commits });
        assert!(!look_after(counts(3, 10), counts(3, 12), true), "quiet commits, the next expiry known");
        assert!(look_after(counts(3, 10), counts(3, 12), false), "quiet, but no expiry known: a start tells one");
        assert!(look_after(counts(3, 10), counts(4, 12), true), "one of them asked for a look");
        assert!(look_after(None, counts(3, 10), true), "nothing read before");
        assert!(look_after(counts(3, 10), None, true), "unreadable now");
    }
}

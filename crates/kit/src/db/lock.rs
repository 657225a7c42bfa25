//! The write lock of a SQLite file, taken before `BEGIN IMMEDIATE` and held until the
//! transaction ends: a fair wait for the database's one writer across processes.
//!
//! **Why.** Every instance of a service writes the same file. SQLite's own lock is taken with
//! retries: a writer that finds it held sleeps (1, 2, 5, ... up to 100 ms) and tries again, so
//! under contention a write waits out sleeps long after the lock came free, and the tail of
//! the latency is sleep time, not work.
//!
//! **How.** Beside `data.sqlite` lies `data.sqlite.lock`, which every [`super::Db`] opens once
//! and `flock`s (`File::lock`) around each write transaction: the kernel wakes a waiter the
//! moment the holder unlocks, and a process that dies loses its lock with its descriptors.
//! In front of the file lock, a per-`Db` async mutex (tokio's, first come first served)
//! lets one task of the process at a time wait on the file, so one blocking thread per
//! process waits (in `spawn_blocking`), and the tasks queued behind it cost no thread. A
//! [`Held`] lock unlocks the file, then passes the mutex on, when it is dropped.
//!
//! **Cancel-safety.** The waiting future may be dropped at any point: while queued on the
//! mutex nothing is held; while the blocking thread waits on the file, that thread owns the
//! mutex's guard and returns a [`Held`] which tokio drops (unlocking) when nobody is left to
//! take it; so a wait given up after the busy timeout leaves nothing behind. SQLite's busy
//! timeout stays as the backstop for writers that do not come through
//! here (the `sqlite3` shell, an older binary during a rollout) and for the moment between a
//! dropped transaction's unlock and its rollback.
//!
//! **Not a single writer with group commit (yet).** The alternative, one writer task per
//! database fed by a queue, committing many writes at once, does not replace this lock: the
//! three instances of a service are three processes writing one file, so each would still
//! meet the others' lock. It is the next step on top of it: under `synchronous=FULL` every
//! commit is an `fsync` (2.3 ms each on the test machine while it compiled, 434 commits/s from
//! one writer; 104 000 writes/s when 32 writes share a commit as savepoints), so the writes
//! per second are bounded by commits per second times writes per commit, and only a group
//! commit raises the second factor. This lock removes the sleeping; it cannot remove the sync.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

/// The lock file of one SQLite database, shared by the clones of its [`super::Db`].
#[derive(Debug)]
pub(super) struct WriteLock {
    turn: Arc<Mutex<()>>,
    file: Arc<File>,
}

/// The write lock, held until dropped.
#[derive(Debug)]
pub struct Held {
    file: Arc<File>,
    _turn: OwnedMutexGuard<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Before `_turn` passes the turn on (fields drop after this).
        if let Err(e) = self.file.unlock() {
            tracing::error!(error = %e, "unlocking the database's write lock");
        }
    }
}

impl WriteLock {
    /// Opens (creating) `<database>.lock`.
    pub(super) fn open(database: &Path) -> io::Result<Self> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        Ok(Self { turn: Arc::new(Mutex::new(())), file: Arc::new(file) })
    }

    /// Waits for the write lock (for this process's turn, then for the file) for up to
    /// `patience`, after which the error is `TimedOut` (a writer elsewhere holds it that long).
    pub(super) async fn acquire(&self, patience: Duration) -> io::Result<Held> {
        match tokio::time::timeout(patience, self.wait()).await {
            Ok(held) => held,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the database's write lock stayed busy for {patience:?}"),
            )),
        }
    }

    async fn wait(&self) -> io::Result<Held> {
        let turn = self.turn.clone().lock_owned().await;
        let file = self.file.clone();
        match file.try_lock() {
            Ok(()) => return Ok(Held { file, _turn: turn }),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(e),
        }
        tokio::task::spawn_blocking(move || {
            file.lock()?;
            Ok(Held { file, _turn: turn })
        })
        .await
        .map_err(|e| io::Error::other(format!("waiting for the write lock: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_given_up_leaves_the_lock_to_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.sqlite");
        let (a, b) = (WriteLock::open(&file).unwrap(), WriteLock::open(&file).unwrap());
        let held = a.acquire(Duration::from_secs(5)).await.unwrap();
        // `b`'s turn is taken by a thread blocked on the file when the caller gives up.
        let err = b.acquire(Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the database's write lock stayed busy for 50ms");
        drop(held);
        // That thread takes the file, finds nobody to hand it to, and lets go of both.
        let again = b.acquire(Duration::from_secs(5)).await.expect("the abandoned wait kept the lock");
        drop(again);
        a.acquire(Duration::from_secs(5)).await.unwrap();
    }
}

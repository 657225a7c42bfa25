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
//! [`Held`] lock, dropped, unlocks the file and passes the mutex on; except that while more
//! writers of the process wait, it keeps the file for them, up to [`TENURE`] turns in a
//! row: passing it on inside the process costs no wake-up of another process's thread, and
//! the others still get it at least every `TENURE` writes. Whoever leaves last (a holder
//! that kept the file, a waiter that gave up) lets go of a file kept for nobody.
//!
//! **Cancel-safety.** The waiting future may be dropped at any point: while queued on the
//! mutex nothing is held; while the blocking thread waits on the file, that thread owns the
//! mutex's guard and returns a [`Held`] which tokio drops (unlocking) when nobody is left to
//! take it; so a wait given up after the busy timeout leaves nothing behind. SQLite's busy
//! timeout stays as the backstop for writers that do not come through
//! here (the `sqlite3` shell, an older binary during a rollout) and for the moment between a
//! dropped transaction's unlock and its rollback.
//!
//! **Group commit on top.** One writer task per database fed by a queue would not replace
//! this lock: the three instances of a service are three processes writing one file, so each
//! would still meet the others' lock. Under `synchronous=FULL` every commit is an `fsync`
//! (2.3 ms each on the test machine while it compiled, 434 commits/s from one writer; 104 000
//! writes/s when 32 writes share a commit as savepoints), so the writes per second are
//! bounded by commits per second times writes per commit. This lock removes the sleeping;
//! [`group`] raises the writes per commit: the writers that pass the turn on among
//! themselves share one transaction, kept in the [`Tenure`] while the file is held. A turn,
//! for [`TENURE`], is then a group (or a writer outside the groups).
//!
//! **Announcing commits.** A handle told to ([`WriteLock::announce_commits`]; compute's, whose
//! idle workers must learn of jobs queued by other processes) writes the lock file after each
//! commit: a group's end, or the drop of the lock of a write outside the groups. Whoever
//! watches the file (inotify) gets one event per commit, after it is visible; the WAL file
//! would give one per page written, before the commit shows. What it writes is
//! [`Announced`]: the count of every commit, and of the commits that ask the watchers to
//! look, which are all but those whose every write said it was quiet (a write of one
//! statement that tells, from what it wrote, that nobody else has anything to do about it:
//! compute's job started by its own submit, say). Both are shared by the writers: bumped in
//! the file, under the write lock.

// std's `File::lock` family is stable since Rust 1.89, above the workspace's declared 1.85
// (which the let chains in use, 1.88, already exceed); the toolchain that builds it is newer.
#![allow(clippy::incompatible_msrv)]

pub(super) mod group;

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

use group::Group;

/// How many turns in a row (a group commit, or a writer outside a group) one process may
/// pass the file's lock on among its own writers (while more of them wait) before it goes
/// back to the kernel's queue for the others.
const TENURE: u32 = 4;

/// The lock file of one SQLite database, shared by the clones of its [`super::Db`].
#[derive(Debug)]
pub(super) struct WriteLock {
    turn: Arc<Mutex<Tenure>>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    file: File,
    path: std::path::PathBuf,
    /// Whether every commit is announced by a write to the lock file ([`WriteLock::announce_commits`]).
    announce: std::sync::atomic::AtomicBool,
    /// Writers of this process waiting for their turn.
    queued: AtomicUsize,
    /// Group transactions committed (for tests).
    group_commits: AtomicU64,
    /// How long a group takes more members, in µs ([`group::HOLD`]; tests lengthen it).
    hold_micros: AtomicU64,
}

/// Whether this process holds the file's lock between turns, and the group transaction
/// open on it (guarded by the turn).
#[derive(Debug, Default)]
pub(super) struct Tenure {
    file_held: bool,
    turns: u32,
    /// Open only while the file is held.
    pub(super) group: Option<Group>,
}

/// The write lock, held until dropped.
#[derive(Debug)]
pub struct Held {
    turn: Option<OwnedMutexGuard<Tenure>>,
    lock: Arc<Mutex<Tenure>>,
    shared: Arc<Shared>,
    /// Held by a writer outside the groups, whose write (autocommitted) is done when this
    /// is dropped: the drop announces it.
    wrote: bool,
}

impl Held {
    pub(super) fn tenure(&self) -> &Tenure {
        self.turn.as_ref().expect("held until dropped")
    }

    pub(super) fn tenure_mut(&mut self) -> &mut Tenure {
        self.turn.as_mut().expect("held until dropped")
    }

    /// Writers of this process waiting for their turn.
    pub(super) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// How long a group takes more members.
    pub(super) fn hold(&self) -> Duration {
        Duration::from_micros(self.shared.hold_micros.load(Ordering::Relaxed))
    }

    /// Counts a group committed on the file, and announces it (asking for a look when `look`).
    pub(super) fn count_commit(&self, look: bool) {
        self.shared.group_commits.fetch_add(1, Ordering::SeqCst);
        self.shared.announce_commit(look);
    }

    /// Marks the lock as held for a write outside the groups, announced when it is dropped.
    pub(super) fn for_a_write(&mut self) {
        self.wrote = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(mut turn) = self.turn.take() else { return };
        if turn.group.is_some() {
            let mut held =
                Held { turn: Some(turn), lock: self.lock.clone(), shared: self.shared.clone(), wrote: false };
            if group::ends_with(&held) {
                group::end_in_task(held);
                return;
            }
            // The next member of this process takes the group on.
            drop(held.turn.take());
            self.shared.let_go_if_unwanted(&self.lock);
            return;
        }
        if self.wrote {
            self.shared.announce_commit(true);
        }
        let keep = self.shared.queued.load(Ordering::SeqCst) > 0 && turn.turns < TENURE;
        if keep {
            turn.turns += 1;
        } else {
            self.shared.let_go(&mut turn);
        }
        drop(turn);
        if keep {
            // The writers it was kept for may have given up meanwhile.
            self.shared.let_go_if_unwanted(&self.lock);
        }
    }
}

impl Shared {
    /// Bumps the [`Announced`] counters in the lock file, when announcing (under the write
    /// lock, which the caller holds): an inotify `IN_MODIFY` for whoever watches it, once per
    /// commit. A failed read or write is only logged: watchers back their watch up with a
    /// slow poll.
    fn announce_commit(&self, look: bool) {
        use std::os::unix::fs::FileExt;
        if !self.announce.load(Ordering::Relaxed) {
            return;
        }
        let mut announced = Announced::read(&self.file).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "reading the commits announced on the lock file");
            Announced::default()
        });
        announced.commits = announced.commits.wrapping_add(1);
        if look {
            announced.looks = announced.looks.wrapping_add(1);
        }
        if let Err(e) = self.file.write_at(&announced.to_bytes(), 0) {
            tracing::debug!(error = %e, "announcing a commit on the lock file");
        }
    }

    fn let_go(&self, tenure: &mut Tenure) {
        debug_assert!(tenure.group.is_none(), "a group open on a file let go");
        if tenure.file_held
            && let Err(e) = self.file.unlock()
        {
            tracing::error!(error = %e, "unlocking the database's write lock");
        }
        tenure.file_held = false;
        tenure.turns = 0;
    }

    /// Unlocks the file when this process holds it between turns and no writer of it waits
    /// (committing the group open on it first): run by whoever leaves last (a holder that
    /// kept it, a waiter that gave up).
    fn let_go_if_unwanted(self: &Arc<Self>, lock: &Arc<Mutex<Tenure>>) {
        if self.queued.load(Ordering::SeqCst) == 0
            && let Ok(turn) = lock.clone().try_lock_owned()
            && self.queued.load(Ordering::SeqCst) == 0
            && (turn.file_held || turn.group.is_some())
        {
            // Dropped with nobody queued, it ends the group and lets go of the file.
            drop(Held { turn: Some(turn), lock: lock.clone(), shared: self.clone(), wrote: false });
        }
    }
}

/// The commits announced on a lock file ([`WriteLock::announce_commits`]): two little-endian
/// `u64`s at its start, the commits that asked the watchers to look, then every commit. A
/// watcher compares them with what it read last: `looks` moved, something may be there for
/// it; only `commits`, the commits since were quiet. A binary from before the counts were
/// shared wrote its own count of commits in the first eight bytes, which reads as a look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    pub looks: u64,
    pub commits: u64,
}

impl Announced {
    /// Reads the counts from `file` (an empty or shorter file counts zeros for what it lacks).
    pub fn read(file: &File) -> io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            match file.read_at(&mut bytes[filled..], filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"));
        Ok(Self { looks: word(0), commits: word(8) })
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.looks.to_le_bytes());
        bytes[8..].copy_from_slice(&self.commits.to_le_bytes());
        bytes
    }
}

/// A writer counted as waiting until dropped; one that gives up checks that the file's lock
/// was not kept for it in vain.
struct Queued<'a> {
    lock: &'a WriteLock,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.lock.shared.queued.fetch_sub(1, Ordering::SeqCst);
        self.lock.shared.let_go_if_unwanted(&self.lock.turn);
    }
}

impl WriteLock {
    /// Opens (creating) `<database>.lock`.
    pub(super) fn open(database: &Path) -> io::Result<Self> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        Ok(Self {
            turn: Arc::default(),
            shared: Arc::new(Shared {
                file,
                path: path.into(),
                announce: std::sync::atomic::AtomicBool::new(false),
                queued: AtomicUsize::new(0),
                group_commits: AtomicU64::new(0),
                hold_micros: AtomicU64::new(group::HOLD.as_micros() as u64),
            }),
        })
    }

    /// How many group transactions this handle committed.
    pub(super) fn group_commits(&self) -> u64 {
        self.shared.group_commits.load(Ordering::SeqCst)
    }

    /// Writers of this process waiting for their turn.
    pub(super) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// From now on, every commit of this handle's writers (a group's, or a write outside the
    /// groups) is announced in the lock file ([`Announced`]) once it is done; the file's path.
    pub(super) fn announce_commits(&self) -> &Path {
        self.shared.announce.store(true, Ordering::Relaxed);
        &self.shared.path
    }

    /// Sets how long a group takes more members.
    pub(super) fn set_hold(&self, hold: Duration) {
        self.shared.hold_micros.store(hold.as_micros() as u64, Ordering::Relaxed);
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
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let queued = Queued { lock: self };
        let turn = self.turn.clone().lock_owned().await;
        let mut held = Held { turn: Some(turn), lock: self.turn.clone(), shared: self.shared.clone(), wrote: false };
        drop(queued);
        let tenure = held.turn.as_mut().expect("just taken");
        if tenure.file_held {
            return Ok(held);
        }
        match self.shared.file.try_lock() {
            Ok(()) => {
                tenure.file_held = true;
                return Ok(held);
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(e),
        }
        tokio::task::spawn_blocking(move || {
            held.shared.file.lock()?;
            held.turn.as_mut().expect("just taken").file_held = true;
            Ok(held)
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

    /// A writer of the same process waits, so the holder keeps the file for it, and then
    /// gives up: the file is let go all the same (whichever of the two leaves first).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_kept_for_a_writer_who_gives_up_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.sqlite");
        let (a, b) = (Arc::new(WriteLock::open(&file).unwrap()), WriteLock::open(&file).unwrap());
        for holder_leaves_first in [true, false, true, false] {
            let held = a.acquire(Duration::from_secs(5)).await.unwrap();
            let waiter = tokio::spawn({
                let a = a.clone();
                async move { a.acquire(Duration::from_secs(30)).await.map(drop) }
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while a.shared.queued.load(Ordering::SeqCst) == 0 {
                assert!(tokio::time::Instant::now() < deadline, "the writer never queued");
                tokio::task::yield_now().await;
            }
            if holder_leaves_first {
                drop(held);
                waiter.abort();
            } else {
                waiter.abort();
                tokio::task::yield_now().await;
                drop(held);
            }
            let _ = waiter.await;
            // Another process gets the file.
            b.acquire(Duration::from_secs(5)).await.expect("the kept lock was never let go");
        }
    }
}

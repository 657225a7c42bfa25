//! Group commit of a SQLite file's writes: the write transactions of one process share one
//! `BEGIN IMMEDIATE` transaction, each as a savepoint on it, and one `COMMIT` (one `fsync`
//! under `synchronous=FULL`) makes them all durable.
//!
//! **Why.** Under `FULL` every commit waits for the disk, so a file's writes per second are
//! its commits per second times the writes per commit; the [`super`] removed the
//! sleeping between writers, this raises the second factor.
//!
//! **How.** The group lives beside the file's lock, in the [`Tenure`] guarded by the turn
//! (so a member has the group's connection to itself while its turn lasts). [`join`] waits
//! for the turn; the first member opens the group (a pooled connection, `BEGIN IMMEDIATE`),
//! and every member opens `SAVEPOINT member` on it. A member that commits releases its
//! savepoint, one that rolls back (or is dropped) rolls back to it only, and then it passes
//! the turn on: to the next member of its process while one is queued and the group is young
//! ([`MEMBERS`], [`HOLD`]); else the group ends ([`end`]): `COMMIT`, the connection back to
//! the pool, the turn (and the file, by the lock's tenure rules) passed on, and then the
//! outcome told to every member. A committing member returns only then: a write is
//! acknowledged once it is on disk, and if the `COMMIT` fails, every member of the group gets
//! the error (none was acknowledged). A member whose savepoint could not be released or
//! rolled back breaks the group (a statement error of SQLite's that rolled back the whole
//! transaction does that): it takes no more members and ends in a rollback, every member
//! told.
//!
//! **Cancel-safety.** Every step that changes the group (open, savepoint, release, rollback,
//! end) runs in a task of its own, which completes whoever waits on it; a member dropped
//! mid-transaction is rolled back to its savepoint in a task; a group whose last member left
//! is ended by whoever drops the turn ([`super::Held`]'s drop). So a dropped member
//! leaves nothing of its own in the group and never keeps it open.
//!
//! **Invariant:** a group is open only while its process holds the file's lock and the turn;
//! it is ended (committed or rolled back) before the file is let go.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Held, Tenure, WriteLock};
use crate::db::{BUSY_TIMEOUT, Conn, OneWrite, Written};

/// A group takes no more members once it has this many.
pub const MEMBERS: u32 = 64;

/// A group takes no more members once it has been open this long (it holds the file's lock
/// meanwhile, so this bounds another process's wait).
pub const HOLD: Duration = Duration::from_millis(4);

/// How a group ended, told to its members: `None` until it has.
type Outcome = Option<Result<(), Arc<str>>>;

/// The transaction a process's writers share on the file.
#[derive(Debug)]
pub(in crate::db) struct Group {
    /// Taken when the group ends; a group dropped unended (its task dropped by a runtime
    /// shutting down) closes it, which rolls it back, rather than pool it mid-transaction.
    conn: Option<PoolConnection<Any>>,
    done: watch::Sender<Outcome>,
    /// Members that released their savepoint into it.
    members: u32,
    opened: Instant,
    /// Why the transaction is no longer whole, when it is not: it will be rolled back.
    broken: Option<String>,
    /// Whether its commit asks the watchers to look ([`super::Announced`]): some member wrote
    /// without saying it was quiet.
    look: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!("a group dropped before its end is rolled back");
            drop(conn.detach());
        }
    }
}

impl Group {
    fn conn(&mut self) -> &mut PoolConnection<Any> {
        self.conn.as_mut().expect("open until the group ends")
    }

    fn takes_more(&self, hold: Duration) -> bool {
        self.broken.is_none() && self.members < MEMBERS && self.opened.elapsed() < hold
    }
}

/// A member's write transaction: its turn, with the group's connection and its savepoint.
#[derive(Debug)]
pub struct Member {
    held: Option<Held>,
    done: watch::Receiver<Outcome>,
}

impl Member {
    pub(in crate::db) fn conn(&self) -> &Conn {
        group(self.held.as_ref().expect("open until consumed").tenure())
            .conn
            .as_ref()
            .expect("open until the group ends")
    }

    pub(in crate::db) fn conn_mut(&mut self) -> &mut Conn {
        group_mut(self.held.as_mut().expect("open until consumed").tenure_mut()).conn()
    }

    /// Releases the savepoint into the group and waits for the group's end: `Ok` once it is
    /// committed.
    pub(in crate::db) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let held = self.held.take().expect("open until consumed");
        in_task(leave(Leaving(Some(held)), true)).await??;
        ended(&mut self.done).await
    }

    /// Rolls back to the savepoint and leaves the group (ending it if it was the last).
    pub(in crate::db) async fn rollback(mut self) -> Result<(), sqlx::Error> {
        let held = self.held.take().expect("open until consumed");
        in_task(leave(Leaving(Some(held)), false)).await?
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let Some(mut held) = self.held.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = leave(Leaving(Some(held)), false).await {
                        tracing::debug!(error = %e, "rolling back a dropped write transaction");
                    }
                });
            }
            Err(_) => group_mut(held.tenure_mut()).broken = Some("a member was dropped outside a runtime".into()),
        }
    }
}

/// Opens this process's group under `held` unless one is open.
async fn open(held: &mut Held, pool: &sqlx::AnyPool) -> Result<(), sqlx::Error> {
    if held.tenure().group.is_none() {
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let (done, _) = watch::channel(None);
        held.tenure_mut().group =
            Some(Group { conn: Some(conn), done, members: 0, opened: Instant::now(), broken: None, look: false });
    }
    Ok(())
}

/// Joins this process's group on `lock`'s file (opening it when none is open): waits for the
/// turn, then opens the member's savepoint.
pub(in crate::db) async fn join(pool: &sqlx::AnyPool, lock: &WriteLock) -> Result<Member, sqlx::Error> {
    let mut held = lock.acquire(BUSY_TIMEOUT).await.map_err(sqlx::Error::Io)?;
    let pool = pool.clone();
    // In a task: if the caller is gone when it is done, the member is dropped (rolled back).
    in_task(async move {
        open(&mut held, &pool).await?;
        let group = group_mut(held.tenure_mut());
        // A transaction may write anything: its commit asks for a look.
        group.look = true;
        let done = group.done.subscribe();
        if let Err(e) = sqlx::query("SAVEPOINT member").execute(&mut **group.conn()).await {
            group.broken = Some(e.to_string());
            return Err(e);
        }
        Ok(Member { held: Some(held), done })
    })
    .await?
}

/// A write of one statement as a member of the group without a savepoint (a statement is
/// atomic by itself): waits for the turn, runs `query` on the group's connection, passes the
/// turn on and waits for the group's end, like [`Member::commit`]. The statement runs in a
/// task of its own, so a caller dropped meanwhile leaves it to finish and be committed with
/// the group, as a member dropped after its commit began is. A statement refused by a
/// constraint (or a trigger's `RAISE(ABORT)`) is undone alone by SQLite, the transaction
/// kept ([`undone_alone`]; so the statement must use the default `ON CONFLICT ABORT`); any
/// other failure breaks the group (it ends in a rollback, every member told): without a
/// savepoint nothing tells what SQLite undid. The group's commit asks for a look unless
/// `quiet` says so of what the statement wrote (as of every other write in it).
pub(in crate::db) async fn write_one(
    pool: &sqlx::AnyPool,
    lock: &WriteLock,
    query: OneWrite,
    quiet: fn(&Written) -> bool,
) -> Result<Written, sqlx::Error> {
    let mut held = lock.acquire(BUSY_TIMEOUT).await.map_err(sqlx::Error::Io)?;
    let pool = pool.clone();
    let (mut done, result) = in_task(async move {
        open(&mut held, &pool).await?;
        let group = group_mut(held.tenure_mut());
        let done = group.done.subscribe();
        let result = Written::run(query, group.conn()).await;
        match &result {
            Ok(written) => {
                group.members += 1;
                group.look |= !quiet(written);
            }
            Err(e) if undone_alone(e) => {}
            Err(e) => group.broken = Some(e.to_string()),
        }
        if ends_with(&held) {
            end(held).await;
        }
        Ok::<_, sqlx::Error>((done, result))
    })
    .await??;
    let result = result?;
    ended(&mut done).await.map(|()| result)
}

/// Whether SQLite undid only the statement that failed with `e`, keeping the transaction:
/// a constraint (`SQLITE_CONSTRAINT`, 19, and its extended codes, a trigger's
/// `RAISE(ABORT)` among them) under the default `ON CONFLICT ABORT`.
fn undone_alone(e: &sqlx::Error) -> bool {
    let code = match e {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i32>().ok()),
        _ => None,
    };
    code.is_some_and(|c| c & 0xff == 19)
}

/// Waits for the end of the group `done` tells of: `Ok` once it is committed.
async fn ended(done: &mut watch::Receiver<Outcome>) -> Result<(), sqlx::Error> {
    match done.wait_for(Option::is_some).await.map(|o| o.clone()) {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err(why))) => Err(failed(format!("the group commit failed: {why}"))),
        Ok(None) | Err(_) => Err(failed("the group ended without a commit".into())),
    }
}

/// Commits the group open under `held`, if any, keeping the turn: what a writer outside the
/// groups (one statement, a migration) does before it writes on a connection of its own.
pub(in crate::db) async fn end_before(mut held: Held) -> Result<Held, sqlx::Error> {
    if held.tenure().group.is_none() {
        return Ok(held);
    }
    in_task(async move {
        let told = finish(&mut held).await;
        told.tell();
        held
    })
    .await
}

/// Whether the group open under `held` ends when the turn is passed on: nobody of this
/// process waits for it, or the group is full, old or broken.
pub(in crate::db) fn ends_with(held: &Held) -> bool {
    held.tenure().group.as_ref().is_some_and(|g| held.queued() == 0 || !g.takes_more(held.hold()))
}

/// Ends the group under `held` in a task of its own (see [`end`]). The group is taken out
/// first: if the task never runs (no runtime, or one shutting down), the group is dropped
/// (rolled back, its members told it failed) and the turn passed on without it.
pub(in crate::db) fn end_in_task(mut held: Held) {
    let group = held.tenure_mut().group.take();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let told = finish_group(group).await;
            told.count(&held);
            drop(held);
            told.tell();
        });
    }
}

/// Ends the group under `held`: commits it (rolls it back when broken), passes the turn on,
/// and then tells the members.
async fn end(mut held: Held) {
    let told = finish(&mut held).await;
    drop(held);
    told.tell();
}

/// What a group's end tells its members, once the turn is passed on.
struct Told {
    done: Option<watch::Sender<Outcome>>,
    outcome: Result<(), Arc<str>>,
    /// Whether the commit asks for a look.
    look: bool,
}

impl Told {
    /// Counts the commit it tells of, if it does.
    fn count(&self, held: &Held) {
        if self.done.is_some() && self.outcome.is_ok() {
            held.count_commit(self.look);
        }
    }

    fn tell(self) {
        if let Some(done) = self.done {
            done.send_replace(Some(self.outcome));
        }
    }
}

/// Commits (or, broken, rolls back) the group open under `held` and gives its connection
/// back: one that failed to end is closed rather than pooled inside a transaction.
async fn finish(held: &mut Held) -> Told {
    let group = held.tenure_mut().group.take();
    let told = finish_group(group).await;
    told.count(held);
    told
}

/// [`finish`] of a group taken out of `held`'s tenure.
async fn finish_group(group: Option<Group>) -> Told {
    let Some(mut group) = group else { return Told { done: None, outcome: Ok(()), look: false } };
    let outcome = match group.broken.take() {
        None => sqlx::query("COMMIT").execute(&mut **group.conn()).await.map(drop).map_err(|e| e.to_string().into()),
        Some(why) => Err(why.into()),
    };
    let mut conn = group.conn.take().expect("open until the group ends");
    if let Err(why) = &outcome {
        tracing::warn!(error = %why, members = group.members, "a group commit failed");
        // Rolled back, the connection goes back to the pool; else it is closed.
        if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err()
            && let Err(e) = conn.close().await
        {
            tracing::debug!(error = %e, "closing a failed group's connection");
        }
    }
    Told { done: Some(group.done.clone()), outcome, look: group.look }
}

/// A member's turn on its way out: dropped before its savepoint ended (its task dropped by a
/// runtime shutting down), it breaks the group, which then takes nothing of it.
struct Leaving(Option<Held>);

impl Drop for Leaving {
    fn drop(&mut self) {
        if let Some(held) = &mut self.0 {
            group_mut(held.tenure_mut()).broken = Some("a member left without ending its savepoint".into());
        }
    }
}

/// Ends a member's savepoint (released into the group when `keep`, else rolled back) and
/// passes the turn on, ending the group when it was the last.
async fn leave(mut leaving: Leaving, keep: bool) -> Result<(), sqlx::Error> {
    let group = group_mut(leaving.0.as_mut().expect("taken below").tenure_mut());
    let sql = if keep { "RELEASE member" } else { "ROLLBACK TO member; RELEASE member" };
    let done = sqlx::Executor::execute(&mut **group.conn(), sqlx::raw_sql(sql)).await;
    match &done {
        Ok(_) if keep => group.members += 1,
        Ok(_) => {}
        Err(e) => group.broken = Some(e.to_string()),
    }
    let held = leaving.0.take().expect("taken once");
    if ends_with(&held) {
        end(held).await;
    }
    done.map(drop)
}

/// Runs `work` in a task of its own, so that it completes even if the caller is dropped.
async fn in_task<T: Send + 'static>(work: impl Future<Output = T> + Send + 'static) -> Result<T, sqlx::Error> {
    tokio::spawn(work).await.map_err(|e| failed(format!("a write transaction's step: {e}")))
}

fn failed(message: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(message))
}

fn group(tenure: &Tenure) -> &Group {
    tenure.group.as_ref().expect("a member's group is open while it is")
}

fn group_mut(tenure: &mut Tenure) -> &mut Group {
    tenure.group.as_mut().expect("a member's group is open while it is")
}

//! Settling: the outcomes of finished attempts and the claims of the next jobs, written
//! together in ONE write transaction ([`Queue::settle`]); [`Queue::claim`] is its one-sided
//! case, and [`Queue::record`] (with [`Queue::complete`] and [`Queue::fail`]) writes one
//! outcome alone: on SQLite one statement in the process's group commit.
//!
//! Under `synchronous=FULL` every commit is an `fsync`, and the instances of the service
//! take turns at the database's one write lock, so what a job costs is the number of write
//! transactions it needs. Settled one by one, a job needs three (submit, claim, outcome);
//! settled by an instance's dispatcher (`worker`), the outcomes of all its workers that
//! finished and the claims for all its idle workers share one, so a busy queue costs one
//! transaction for the worker side of several jobs.
//!
//! **Invariant:** outcomes and claims commit together or not at all: a crash (or an error)
//! anywhere in a settle leaves every attempt it was recording running under its lease (so
//! it is recorded again, or taken over once the lease expires) and every job it was
//! claiming queued. A lease is stamped with the clock read after the write lock is held
//! (SQLite) and after every statement of the settle that may wait for a row (PostgreSQL), as
//! the queue's module docs require.

use std::time::Duration;

use kit::db::Dialect;
use kit::time::unix_millis;
use serde_json::value::RawValue;

use sqlx::Row;

use super::{COLUMNS, Claimed, Job, Queue, Status, new_id};

/// How one attempt of a job ended, to be recorded under its lease.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The result, as the JSON text the operation gave.
    Completed(Box<RawValue>),
    /// Back in the queue, or `failed` when `permanent` or out of attempts.
    Failed { error: String, permanent: bool },
}

/// What a [`Queue::settle`] wrote.
#[derive(Debug, Default)]
pub struct Settled {
    /// For each outcome, in order: the job's new status, or `None` when the worker no
    /// longer held the lease (the outcome was not written).
    pub recorded: Vec<Option<Status>>,
    /// The jobs claimed, in queue order, the `i`-th for the `i`-th worker named; fewer than
    /// asked when the queue ran short.
    pub claimed: Vec<Claimed>,
}

/// The claim of the next queued job (highest priority, then oldest) for one worker, with
/// its lease; on PostgreSQL it skips rows another claimer holds, so claimers never wait for
/// each other.
fn claim_statement(dialect: Dialect) -> String {
    let skip = if dialect == Dialect::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
    format!(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = $1, lease_token = $2,
            lease_expires_at = $3, started_at = $4
         WHERE seq = (SELECT seq FROM jobs WHERE status = 'queued' ORDER BY priority DESC, seq LIMIT 1{skip})
         RETURNING {COLUMNS}"
    )
}

impl Queue {
    /// Records `finished` (each attempt under its lease) and claims up to one job for each
    /// of `workers` with a lease of `lease`, after putting jobs whose lease expired back in
    /// the queue (only when claiming), all in one write transaction (module docs).
    pub async fn settle(
        &self,
        finished: &[(&Claimed, &Outcome)],
        workers: &[&str],
        lease: Duration,
    ) -> Result<Settled, sqlx::Error> {
        let started = std::time::Instant::now();
        let db = &self.db;
        let settled = kit::db::retry(db, move || async move {
            match db.dialect() {
                Dialect::Sqlite => {
                    let mut tx = kit::db::begin_write(db).await?;
                    let settled = settle_in(&mut tx, Dialect::Sqlite, finished, workers, lease).await?;
                    kit::db::commit(tx).await?;
                    Ok(settled)
                }
                // Read committed: the claim's `SKIP LOCKED` is the concurrency control, and a
                // serializable transaction would fail claimers that merely read the same rows.
                Dialect::Postgres => {
                    let mut tx = db.pool().begin().await?;
                    let settled = settle_in(&mut tx, Dialect::Postgres, finished, workers, lease).await?;
                    tx.commit().await.map_err(unknown_commit)?;
                    Ok(settled)
                }
            }
        })
        .await;
        if !workers.is_empty() {
            crate::metrics::get().claim_seconds.observe(started.elapsed().as_secs_f64());
        }
        settled
    }

    /// Claims the next job for `worker` with a lease of `lease`, after putting jobs whose
    /// lease expired back in the queue (or failing them when out of attempts).
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Claimed>, sqlx::Error> {
        Ok(self.settle(&[], &[worker], lease).await?.claimed.pop())
    }

    /// Marks the job completed; false if the worker no longer holds the lease.
    pub async fn complete(&self, claimed: &Claimed, result: &RawValue) -> Result<bool, sqlx::Error> {
        let status = self.record(claimed, &Outcome::Completed(result.to_owned())).await?;
        Ok(status == Some(Status::Completed))
    }

    /// Records a failed attempt: back in the queue, or `failed` when `permanent` or out of
    /// attempts. The new status, or `None` if the worker no longer holds the lease.
    pub async fn fail(&self, claimed: &Claimed, error: &str, permanent: bool) -> Result<Option<Status>, sqlx::Error> {
        self.record(claimed, &Outcome::Failed { error: error.to_owned(), permanent }).await
    }

    /// Records one attempt's outcome under its lease, on its own: on SQLite one statement in
    /// the process's group commit (`kit::db::write_one`), beside the submits and the other
    /// outcomes written meanwhile, with no transaction of its own; elsewhere a settle of it
    /// alone. The job's new status, or `None` if the worker no longer holds the lease.
    pub async fn record(&self, claimed: &Claimed, outcome: &Outcome) -> Result<Option<Status>, sqlx::Error> {
        if self.db.dialect() == Dialect::Sqlite {
            // Quiet unless the job went back to the queue, for the others' idle workers to take.
            let not_requeued = |written: &kit::db::Written| Status::returned(written) != Some(Status::Queued);
            let statement = record_statement(claimed, outcome, unix_millis());
            let written = kit::db::write_one_quiet_if(&self.db, statement, not_requeued).await?;
            return recorded(written.rows.first());
        }
        let settled = self.settle(&[(claimed, outcome)], &[], Duration::ZERO).await?;
        Ok(settled.recorded.into_iter().next().flatten())
    }
}

/// A commit that failed on a lost connection may have happened: not [`kit::db::transient`],
/// so [`kit::db::retry`] does not claim again (the caller records its outcomes again, which
/// the lease tokens make harmless).
fn unknown_commit(e: sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => {
            sqlx::Error::Protocol(format!("the commit's outcome is unknown: {e}"))
        }
        e => e,
    }
}

/// [`Queue::settle`]'s statements, inside its transaction.
async fn settle_in(
    conn: &mut kit::db::Conn,
    dialect: Dialect,
    finished: &[(&Claimed, &Outcome)],
    workers: &[&str],
    lease: Duration,
) -> Result<Settled, sqlx::Error> {
    // After the lock is held: the wait for it must not shorten the lease (module docs).
    let now = unix_millis();
    let mut settled = Settled::default();
    for (claimed, outcome) in finished {
        settled.recorded.push(record(conn, claimed, outcome, now).await?);
    }
    if workers.is_empty() {
        return Ok(settled);
    }
    reap_expired(conn, now).await?;
    // Read again for the leases: on PostgreSQL the statements above may have waited for rows
    // another settle held, and the claims, which skip held rows, wait for nothing.
    let now = unix_millis();
    let claim = claim_statement(dialect);
    let expires_at = now + lease.as_millis() as i64;
    for worker in workers {
        let token = new_id();
        let row = sqlx::query(&claim)
            .bind(*worker)
            .bind(&token)
            .bind(expires_at)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { break };
        settled.claimed.push(Claimed { job: Job::from_row(&row)?, token, expires_at });
    }
    Ok(settled)
}

/// Writes one attempt's outcome if `claimed`'s lease is still held: its new status.
async fn record(
    conn: &mut kit::db::Conn,
    claimed: &Claimed,
    outcome: &Outcome,
    now: i64,
) -> Result<Option<Status>, sqlx::Error> {
    let row = record_statement(claimed, outcome, now).fetch_optional(&mut *conn).await?;
    recorded(row.as_ref())
}

/// The status a [`record_statement`] returned: `None` when it wrote nothing (the lease
/// was no longer held).
fn recorded(row: Option<&sqlx::any::AnyRow>) -> Result<Option<Status>, sqlx::Error> {
    row.map(|row| Status::parse(&row.try_get::<String, _>(0)?)).transpose()
}

/// The write of one attempt's outcome under `claimed`'s lease, returning the job's new
/// status (no row when the lease is no longer held).
fn record_statement(claimed: &Claimed, outcome: &Outcome, now: i64) -> kit::db::OneWrite {
    let query = match outcome {
        Outcome::Completed(result) => sqlx::query(
            "UPDATE jobs SET status = 'completed', result = $1, error = NULL, finished_at = $2,
                lease_token = NULL, lease_expires_at = NULL
             WHERE id = $3 AND lease_token = $4 AND status = 'running' RETURNING status",
        )
        .bind(result.get().to_owned())
        .bind(now),
        Outcome::Failed { error, permanent } => sqlx::query(
            "UPDATE jobs SET
                status = CASE WHEN $1 OR attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                finished_at = CASE WHEN $1 OR attempts >= max_attempts THEN $2 ELSE NULL END,
                error = $3, lease_token = NULL, lease_expires_at = NULL
             WHERE id = $4 AND lease_token = $5 AND status = 'running' RETURNING status",
        )
        .bind(*permanent)
        .bind(now)
        .bind(error.clone()),
    };
    query.bind(claimed.job.id.clone()).bind(claimed.token.clone())
}

/// Running jobs whose lease expired before `now`: queued again, or failed when they have
/// had all their attempts. Runs inside the settle's transaction; on PostgreSQL a row another
/// reaper changed first is checked again after its commit, and no longer matches.
async fn reap_expired(conn: &mut kit::db::Conn, now: i64) -> Result<(), sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET
            status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
            finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END,
            error = 'the lease of ' || COALESCE(worker, 'a worker') || ' expired during attempt ' || attempts,
            lease_token = NULL, lease_expires_at = NULL
         WHERE status = 'running' AND lease_expires_at < $1",
    )
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() > 0 {
        tracing::info!(jobs = done.rows_affected(), "reclaimed jobs whose worker stopped renewing its lease");
        crate::metrics::get().lease_expiries.inc_by(done.rows_affected());
    }
    Ok(())
}

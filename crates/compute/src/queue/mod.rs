//! The job queue: a table in the database every compute instance shares.
//!
//! # Theory of operation
//!
//! A job is a row. Submitting inserts it `queued` (or, for an idle worker of the instance
//! that took the submit, `running` under that worker's lease when nothing queued comes
//! before it: [`Queue::submit_to`]). A worker *claims* the oldest queued job
//! of the highest priority inside one write transaction ([`kit::db::begin_write`], so two
//! claimers in two processes never take the same row): it sets `running`, counts the
//! attempt, and writes a fresh random *lease token* with an expiry. While it runs the job the
//! worker renews the expiry. Completing or failing is an `UPDATE ... WHERE id = ? AND
//! lease_token = ?`: it counts only while the worker still holds the lease, so whatever
//! happens to workers, a job's outcome is written exactly once.
//!
//! A worker that dies stops renewing. The next claim (by any instance) first *reaps*
//! running jobs whose lease expired: back to `queued`, or `failed` when they have used all
//! their attempts, with the last error. An error from the job itself does the same at once;
//! an error that the same input would give again (the result is not a finite number, say)
//! fails the job without retrying.
//!
//! Idle workers do not scan the table: [`Queue::peek`] is one cheap indexed read, and the
//! dispatcher (`worker`) only calls it when woken. Outcomes and claims are written by
//! [`Queue::settle`] (`settle`): an instance records all the outcomes its workers have
//! ready and claims a job for each of its idle workers in one write transaction.
//!
//! **Invariant:** a lease is stamped with the clock read *after* the write lock is held
//! (claim and renew both run in [`kit::db::begin_write`]), so however long a worker waited
//! for the lock (up to [`kit::db::BUSY_TIMEOUT`], 10 s, which is longer than the default
//! lease), the lease it writes is a whole lease from that moment, and the reaper, which
//! runs under the same lock, never sees it expired. A worker renews every third of a lease,
//! so it keeps its job unless it cannot get the lock for two thirds of a lease in a row;
//! then the job counts as abandoned and is taken over, and the lease token still lets only
//! one outcome through. The queue's own transactions are a few statements each (the purge
//! deletes in batches), so none holds the lock for a noticeable part of a lease.
//!
//! Operands and results are stored as the JSON text that came in and went out, and given
//! back as that text ([`RawValue`]), never re-read as numbers: what a client sent is what
//! it reads back.

use std::time::Duration;

use axum::http::StatusCode;
use kit::db::Db;
use kit::idempotency::{self, Stored};
use kit::time::unix_millis;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;

mod job;
mod settle;

pub use job::{Job, JobView, Status};
pub use settle::{Outcome, Settled};

/// The idempotency scope of job submissions.
pub const SUBMIT_SCOPE: &str = "POST /api/compute/job";

/// The columns of a [`Job`], as a literal (for `concat!`).
macro_rules! columns {
    () => {
        "id, operation, operands, priority, status, result, error, attempts, max_attempts, worker, created_at, \
         started_at, finished_at"
    };
}

const COLUMNS: &str = columns!();

/// One job by its id.
const GET: &str = concat!("SELECT ", columns!(), " FROM jobs WHERE id = $1");

/// What a submit is made of (already validated).
#[derive(Clone, Debug)]
pub struct NewJob {
    pub operation: String,
    /// The JSON text the client sent (already checked by `ops::parse`).
    pub operands: Box<RawValue>,
    pub priority: i64,
    pub max_attempts: i64,
}

/// An idle worker a submit may start its job on at once ([`Queue::submit`]), and the lease
/// it would hold.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    pub worker: &'a str,
    pub lease: Duration,
}

/// An `Idempotency-Key` and the fingerprint of the request that carried it.
#[derive(Clone, Copy, Debug)]
pub struct Idempotency<'a> {
    pub key: &'a idempotency::Key,
    pub fingerprint: &'a str,
}

#[derive(Debug)]
pub enum Submitted {
    /// A new job, with the 202 body.
    /// A new job, with the 202 body; `started` when its insert claimed it (`start`).
    Queued { id: String, body: Accepted, started: Option<Box<Claimed>> },
    /// The key was seen before: the first answer.
    Replayed(Stored),
}

/// The 202 body of a submit.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub job_id: String,
    pub status: &'static str,
    pub message: &'static str,
}

impl Accepted {
    pub fn new(id: &str) -> Self {
        Self { job_id: id.to_owned(), status: Status::Queued.as_str(), message: "job submitted" }
    }

    /// The body as JSON text (what is stored for an idempotent replay).
    pub fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A job claimed by a worker, with the lease token that proves it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub job: Job,
    pub token: String,
    /// When the lease, as claimed, expires (Unix ms).
    pub expires_at: i64,
}

/// What an idle worker needs to know, from one cheap read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek {
    /// Queued jobs, counted up to the number the peek was asked about.
    pub queued: usize,
    /// The earliest lease expiry of a running job (Unix ms).
    pub next_expiry: Option<i64>,
}

impl Peek {
    /// How many of `idle` workers a settle at `now` may find a job for: as many as are
    /// queued, or all of them when a lease has expired (how many did is not counted). A
    /// settle holds the workers it asks for until it commits, so asking for more than can be
    /// found would leave the submits meanwhile no idle worker to start their jobs on.
    pub fn claims(&self, now: i64, idle: usize) -> usize {
        if self.next_expiry.is_some_and(|at| at < now) { idle } else { self.queued.min(idle) }
    }
}

#[derive(Debug)]
pub enum Cancel {
    Cancelled(Box<Job>),
    NotFound,
    /// Running or finished: the current status.
    Conflict(Status),
}

/// The queue's figures for `GET /api/compute/stats`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Jobs by status, in [`Status::ALL`] order.
    pub counts: [i64; 5],
    pub completed_last_minute: i64,
    pub workers: Vec<WorkerStats>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    pub worker: String,
    pub running: i64,
    pub completed: i64,
    pub failed: i64,
    pub completed_last_minute: i64,
    /// Mean time from the last claim to completion, over its completed jobs.
    pub mean_duration_ms: Option<f64>,
    pub last_finished_at: Option<i64>,
}

/// The queue over a pool of the shared database.
#[derive(Clone, Debug)]
pub struct Queue {
    db: Db,
}

impl Queue {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Queues `job`; with an idempotency key already seen, answers the first outcome and
    /// queues nothing. The lookup, the insert and the record are one write transaction,
    /// committed before this returns; on SQLite it is a member of the process's group commit
    /// (`kit::db::lock::group`), so the submits that wait meanwhile share one `fsync`.
    pub async fn submit(&self, job: &NewJob, idem: Option<Idempotency<'_>>) -> Result<Submitted, sqlx::Error> {
        let db = &self.db;
        if idem.is_none() && db.dialect() == kit::db::Dialect::Sqlite {
            // One statement: a member of the group commit without a savepoint of its own.
            let id = new_job_id();
            kit::db::write_one(db, insert(&id, job, unix_millis())).await?;
            let body = Accepted::new(&id);
            return Ok(Submitted::Queued { id, body, started: None });
        }
        let idem = idem.as_ref();
        kit::db::retry(db, move || async move {
            let mut tx = kit::db::begin_write(db).await?;
            let submitted = submit_in(&mut tx, job, idem.copied(), unix_millis()).await?;
            kit::db::commit(tx).await?;
            Ok(submitted)
        })
        .await
    }

    /// [`submit`](Self::submit)s `job` (no idempotency key) for `start`'s idle worker: on
    /// SQLite, when no queued job comes before it (none of its priority or higher), its own
    /// insert claims it for that worker, written `running` under a lease as a claim would
    /// have left it, and [`Submitted::Queued`] carries the claim; a job that would have
    /// waited is queued, as on PostgreSQL (where concurrent submits do not take turns).
    pub async fn submit_to(&self, job: &NewJob, start: Start<'_>) -> Result<Submitted, sqlx::Error> {
        let db = &self.db;
        if db.dialect() != kit::db::Dialect::Sqlite {
            return self.submit(job, None).await;
        }
        let (id, token, began) = (new_job_id(), new_id(), std::time::Instant::now());
        // Started, its commit is quiet: nobody else has anything to do about it (a job queued
        // instead asks the others' idle workers to look).
        let started = |written: &kit::db::Written| Status::returned(written) == Some(Status::Running);
        let statement = insert_started(&id, job, unix_millis(), start, &token);
        let written = kit::db::write_one_quiet_if(db, statement, started).await?;
        let row = written.rows.first().ok_or(sqlx::Error::RowNotFound)?;
        let inserted = Job::from_row(row)?;
        let started = match inserted.status {
            Status::Running => {
                // A claim as much as a settle's: its time counts among the claims'.
                crate::metrics::get().claim_seconds.observe(began.elapsed().as_secs_f64());
                Some(Box::new(Claimed { expires_at: row.try_get("lease_expires_at")?, job: inserted, token }))
            }
            _ => None,
        };
        let body = Accepted::new(&id);
        Ok(Submitted::Queued { id, body, started })
    }

    /// The job `id`: on a SQLite file read on the caller's thread where it can be
    /// ([`Db::read_now`]: a status poll costs no hop to sqlx's thread), else through the pool.
    pub async fn get(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let db = &self.db;
        let now = db.read_now(|conn| -> Result<_, Box<dyn std::error::Error>> {
            let mut statement = conn.prepare_cached(GET)?;
            let mut rows = statement.query([id])?;
            Ok(rows.next()?.map(Job::from_row).transpose()?)
        });
        if let Some(job) = now {
            return Ok(job);
        }
        let row = kit::db::retry(db, move || async move {
            sqlx::query(GET).bind(id).fetch_optional(&mut *db.read().await?).await
        })
        .await?;
        row.as_ref().map(Job::from_row).transpose()
    }

    /// Cancels a queued job.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, sqlx::Error> {
        let db = &self.db;
        kit::db::retry(db, move || async move {
            let mut tx = kit::db::begin_write(db).await?;
            let row = sqlx::query(&format!(
                "UPDATE jobs SET status = 'cancelled', finished_at = $1
                 WHERE id = $2 AND status = 'queued' RETURNING {COLUMNS}"
            ))
            .bind(unix_millis())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = match row {
                Some(row) => Cancel::Cancelled(Box::new(Job::from_row(&row)?)),
                None => {
                    let status: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match status {
                        None => Cancel::NotFound,
                        Some(s) => Cancel::Conflict(Status::parse(&s)?),
                    }
                }
            };
            kit::db::commit(tx).await?;
            Ok(outcome)
        })
        .await
    }

    /// Whether there may be work, without taking the write lock: the queued jobs counted up
    /// to `up_to`.
    pub async fn peek(&self, up_to: usize) -> Result<Peek, sqlx::Error> {
        Self::peek_on(&mut *self.db.acquire().await?, up_to).await
    }

    /// [`Queue::peek`] on a connection of the caller's (the dispatcher keeps one: a pooled
    /// connection costs a round trip to its worker thread each time it goes back).
    pub async fn peek_on(conn: &mut kit::db::Conn, up_to: usize) -> Result<Peek, sqlx::Error> {
        let (queued, next_expiry): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE status = 'queued' LIMIT $1) AS q),
                    (SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running')",
        )
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_one(conn)
        .await?;
        Ok(Peek { queued: usize::try_from(queued).unwrap_or(0), next_expiry })
    }

    /// Extends the lease to `lease` from now; false if the worker no longer holds it.
    pub async fn renew(&self, claimed: &Claimed, lease: Duration) -> Result<bool, sqlx::Error> {
        let db = &self.db;
        kit::db::retry(db, move || async move {
            let mut tx = kit::db::begin_write(db).await?;
            // After the lock is held, as for a claim.
            let done = sqlx::query(
                "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND lease_token = $3 AND status = 'running'",
            )
            .bind(unix_millis() + lease.as_millis() as i64)
            .bind(&claimed.job.id)
            .bind(&claimed.token)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Gives the job back untouched (a graceful shutdown interrupted it): queued again, and
    /// the interrupted attempt does not count. False if the lease was lost already.
    pub async fn release(&self, claimed: &Claimed) -> Result<bool, sqlx::Error> {
        let db = &self.db;
        let done = kit::db::retry(db, move || async move {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_token = NULL, lease_expires_at = NULL
                 WHERE id = $1 AND lease_token = $2 AND status = 'running'",
            )
            .bind(&claimed.job.id)
            .bind(&claimed.token)
            .execute(&mut *kit::db::acquire_write(db).await?)
            .await
        })
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The queue's figures, from one snapshot: on SQLite read from the tallies its triggers
    /// keep (migrations/0004_tally.sql), a few rows whatever the number of jobs retained; on
    /// PostgreSQL computed from every job ([`Queue::stats_by_scan`]).
    pub async fn stats(&self) -> Result<Stats, sqlx::Error> {
        self.read_stats(self.tallied()).await
    }

    /// [`Queue::stats`] computed from every job retained, whatever the database: what the
    /// SQLite tallies must always agree with.
    pub async fn stats_by_scan(&self) -> Result<Stats, sqlx::Error> {
        self.read_stats(false).await
    }

    /// Whether the database keeps the job tallies (SQLite).
    fn tallied(&self) -> bool {
        self.db.dialect() == kit::db::Dialect::Sqlite
    }

    async fn read_stats(&self, tallied: bool) -> Result<Stats, sqlx::Error> {
        let db = &self.db;
        kit::db::retry(db, move || async move {
            // One snapshot for all the reads.
            let mut tx = kit::db::begin_read(db).await?;
            let stats =
                if tallied { Self::stats_tallied(&mut tx).await? } else { Self::stats_scanned(&mut tx).await? };
            tx.commit().await?;
            Ok(stats)
        })
        .await
    }

    /// Jobs by status, each beside its status's name (for `/metrics`).
    pub async fn depth(&self) -> Result<[(&'static str, i64); 5], sqlx::Error> {
        let counts = self.counts().await?;
        Ok(std::array::from_fn(|i| (Status::ALL[i].as_str(), counts[i])))
    }

    /// Jobs by status, in [`Status::ALL`] order (the queue's depth, for `/metrics`).
    pub async fn counts(&self) -> Result<[i64; 5], sqlx::Error> {
        let db = &self.db;
        let query = if self.tallied() { TALLIED_COUNTS } else { COUNTS };
        kit::db::retry(db, move || async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(query).fetch_all(&mut *db.acquire().await?).await?;
            Ok(by_status(rows))
        })
        .await
    }

    async fn stats_scanned(conn: &mut kit::db::Conn) -> Result<Stats, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(COUNTS).fetch_all(&mut *conn).await?;
        let mut stats = Stats { counts: by_status(rows), ..Stats::default() };
        let minute_ago = unix_millis() - 60_000;
        stats.completed_last_minute =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'completed' AND finished_at >= $1")
                .bind(minute_ago)
                .fetch_one(&mut *conn)
                .await?;
        // Sums of integers and a mean cast to a double: PostgreSQL's AVG would be NUMERIC.
        let rows = sqlx::query(
            "SELECT worker,
                SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running,
                SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed,
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
                SUM(CASE WHEN status = 'completed' AND finished_at >= $1 THEN 1 ELSE 0 END) AS recent,
                CAST(AVG(CASE WHEN status = 'completed' THEN finished_at - started_at END) AS DOUBLE PRECISION)
                    AS mean_ms,
                MAX(finished_at) AS last_finished
             FROM jobs WHERE worker IS NOT NULL GROUP BY worker ORDER BY worker",
        )
        .bind(minute_ago)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            stats.workers.push(WorkerStats {
                worker: row.try_get("worker")?,
                running: row.try_get("running")?,
                completed: row.try_get("completed")?,
                failed: row.try_get("failed")?,
                completed_last_minute: row.try_get("recent")?,
                mean_duration_ms: row.try_get("mean_ms")?,
                last_finished_at: row.try_get("last_finished")?,
            });
        }
        Ok(stats)
    }

    /// [`Queue::stats`] from the tallies (SQLite): a row per worker and status, and the last
    /// minute's completions read from the `jobs_finished` index alone.
    async fn stats_tallied(conn: &mut kit::db::Conn) -> Result<Stats, sqlx::Error> {
        let tallies: Vec<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT worker, status, jobs, run_ms, last_finished_at FROM job_tally WHERE jobs > 0 ORDER BY worker",
        )
        .fetch_all(&mut *conn)
        .await?;
        let recent: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT worker, COUNT(*) FROM jobs WHERE status = 'completed' AND finished_at >= $1 GROUP BY worker",
        )
        .bind(unix_millis() - 60_000)
        .fetch_all(&mut *conn)
        .await?;
        let mut stats = Stats::default();
        for (worker, status, jobs, run_ms, last_finished_at) in tallies {
            let status = Status::parse(&status)?;
            stats.counts[status.index()] += jobs;
            if worker.is_empty() {
                continue;
            }
            let w = match stats.workers.last_mut() {
                Some(w) if w.worker == worker => w,
                _ => {
                    stats.workers.push(WorkerStats { worker, ..WorkerStats::default() });
                    stats.workers.last_mut().expect("just pushed")
                }
            };
            match status {
                Status::Running => w.running = jobs,
                Status::Completed => {
                    w.completed = jobs;
                    w.mean_duration_ms = Some(run_ms as f64 / jobs as f64);
                }
                Status::Failed => w.failed = jobs,
                Status::Queued | Status::Cancelled => {}
            }
            // A tally keeps the latest finish it counted: that of the worker's last job in
            // this status, which a purge (oldest first) removes last.
            w.last_finished_at = w.last_finished_at.max(last_finished_at);
        }
        for (worker, n) in recent {
            stats.completed_last_minute += n;
            if let Some(w) = stats.workers.iter_mut().find(|w| worker.as_deref() == Some(w.worker.as_str())) {
                w.completed_last_minute = n;
            }
        }
        Ok(stats)
    }

    /// Deletes finished (completed, failed, cancelled) jobs that finished more than
    /// `retention` ago; returns how many. In batches, each its own transaction, so the
    /// write lock is never held for long.
    pub async fn purge(&self, retention: Duration) -> Result<u64, sqlx::Error> {
        const BATCH: u64 = 1_000;
        let cutoff = unix_millis() - retention.as_millis() as i64;
        let db = &self.db;
        // With nothing to delete, only a read: no write lock, no commit (every instance
        // sweeps, a hundred of them in the same second after a start together).
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < $1 LIMIT 1",
        )
        .bind(cutoff)
        .fetch_optional(db.pool())
        .await?;
        if any.is_none() {
            return Ok(0);
        }
        let mut purged = 0;
        loop {
            let done = kit::db::retry(db, move || async move {
                sqlx::query(
                    "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs
                        WHERE status IN ('completed', 'failed', 'cancelled') AND finished_at < $1 LIMIT $2)",
                )
                .bind(cutoff)
                .bind(BATCH as i64)
                .execute(&mut *kit::db::acquire_write(db).await?)
                .await
            })
            .await?;
            purged += done.rows_affected();
            if done.rows_affected() < BATCH {
                return Ok(purged);
            }
        }
    }
}

/// A submit's statements, inside a write transaction: the key's first outcome if it was
/// seen, else the insert (created at `now`) and the key's record.
async fn submit_in(
    conn: &mut kit::db::Conn,
    job: &NewJob,
    idem: Option<Idempotency<'_>>,
    now: i64,
) -> Result<Submitted, sqlx::Error> {
    if let Some(idem) = idem
        && let Some(stored) = idempotency::lookup(&mut *conn, SUBMIT_SCOPE, idem.key).await?
    {
        return Ok(Submitted::Replayed(stored));
    }
    let id = new_job_id();
    insert(&id, job, now).execute(&mut *conn).await?;
    let body = Accepted::new(&id);
    if let Some(idem) = idem {
        idempotency::record(&mut *conn, SUBMIT_SCOPE, idem.key, idem.fingerprint, StatusCode::ACCEPTED, &body.text())
            .await?;
    }
    Ok(Submitted::Queued { id, body, started: None })
}

/// The insert of a queued job (its values owned, so it can run in a task of its own).
fn insert(id: &str, job: &NewJob, now: i64) -> kit::db::OneWrite {
    let query = sqlx::query(
        "INSERT INTO jobs (id, operation, operands, priority, status, max_attempts, created_at)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6)",
    );
    bind_job(query, id, job, now)
}

/// Binds a new job's id, operation, operands, priority, attempts allowed and creation time
/// as `$1` to `$6`.
fn bind_job(query: kit::db::OneWrite, id: &str, job: &NewJob, now: i64) -> kit::db::OneWrite {
    query
        .bind(id.to_owned())
        .bind(job.operation.clone())
        .bind(job.operands.get().to_owned())
        .bind(job.priority)
        .bind(job.max_attempts)
        .bind(now)
}

/// The insert of a job claimed at once for `start`'s worker when no queued job comes before
/// it (SQLite; as [`insert`], queued otherwise). The lease and the start are stamped with
/// SQLite's clock, read while the statement holds the write lock (the module's invariant).
fn insert_started(id: &str, job: &NewJob, now: i64, start: Start<'_>, token: &str) -> kit::db::OneWrite {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO jobs (id, operation, operands, priority, status, max_attempts, created_at,
                    attempts, worker, lease_token, lease_expires_at, started_at)
             SELECT $1, $2, $3, $4, CASE WHEN go THEN 'running' ELSE 'queued' END, $5, $6,
                    go, CASE WHEN go THEN $7 END, CASE WHEN go THEN $8 END,
                    CASE WHEN go THEN at + $9 END, CASE WHEN go THEN at END
             FROM (SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND priority >= $4) AS go,
                          MAX($6, CAST(unixepoch('subsec') * 1000 AS INTEGER)) AS at)
             RETURNING {COLUMNS}, lease_expires_at"
        )
    });
    bind_job(sqlx::query(SQL.as_str()), id, job, now)
        .bind(start.worker.to_owned())
        .bind(token.to_owned())
        .bind(start.lease.as_millis() as i64)
}

/// Jobs by status, from every job (what the tallies keep on SQLite).
const COUNTS: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

/// Jobs by status, from the tallies (SQLite).
const TALLIED_COUNTS: &str = "SELECT status, SUM(jobs) FROM job_tally GROUP BY status";

/// Counts by status name, in [`Status::ALL`] order (an unknown name counts as queued).
fn by_status(rows: Vec<(String, i64)>) -> [i64; 5] {
    let mut counts = [0; 5];
    for (status, n) in rows {
        counts[Status::parse(&status).map_or(0, Status::index)] += n;
    }
    counts
}

/// A random id shaped like a UUID v4: a lease's token.
pub fn new_id() -> String {
    let bits: u128 = rand::random();
    uuid_text((bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62))
}

/// A job's id: a UUID v7 (RFC 9562), the Unix time in milliseconds in its first 48 bits and
/// 74 random bits after. Ids made later sort later, so a submit's entry in the `id` index
/// goes to its last page, as its row goes to the table's: a group commit of submits writes
/// one or two index pages instead of one scattered page per job (random ids made every
/// submit dirty a page of its own, written to the WAL and then again by the checkpoint).
pub fn new_job_id() -> String {
    let millis = u128::from(unix_millis().max(0) as u64 & 0xffff_ffff_ffff);
    let random: u128 = rand::random();
    let bits = millis << 80 | 0x7 << 76 | (random >> 52 & 0xfff) << 64 | 0x2 << 62 | random & ((1 << 62) - 1);
    uuid_text(bits)
}

/// 128 bits in the UUID text layout: 8-4-4-4-12 lowercase hex digits.
fn uuid_text(bits: u128) -> String {
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_look_like_uuids() {
        let id = super::new_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!("89ab".contains(&id[19..20]), "{id}");
        assert_ne!(id, super::new_id());
    }

    #[test]
    fn job_ids_are_uuid_v7_in_time_order() {
        let before = super::unix_millis();
        let id = super::new_job_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "7", "{id}");
        assert!("89ab".contains(&id[19..20]), "{id}");
        let millis = i64::from_str_radix(&id[..8], 16).unwrap() << 16 | i64::from_str_radix(&id[9..13], 16).unwrap();
        assert!(millis >= before && millis <= super::unix_millis(), "{id}: {millis} not now ({before})");
        // Made in a later millisecond, an id sorts after (as text, which the index compares).
        let later = std::iter::repeat_with(super::new_job_id).find(|next| next[..13] != id[..13]).unwrap();
        assert!(later > id, "{later} <= {id}");
        assert_ne!(id, super::new_job_id());
    }
}

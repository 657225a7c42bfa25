//! The services' database, SQLite or PostgreSQL, behind one [`Db`]: the pool (sqlx's `Any`
//! driver, so each query is written once), the dialect, how a transaction begins, the
//! migrator, which errors are transient and the bounded retry of them.
//!
//! **SQLite** (the default: one file per service in the data dir, shared by its instances):
//! WAL (readers never block the writer), a busy timeout (a writer waits for the lock instead
//! of failing with "database is locked"), and every read-then-write transaction starts with
//! `BEGIN IMMEDIATE` ([`begin_write`]), which takes the write lock up front. A deferred
//! transaction that read first could not upgrade once another process had committed. Before
//! it, the writer waits its turn on the file's [`lock`] (`<file>.lock`, `flock`ed), which
//! wakes it when the lock comes free rather than after SQLite's sleeping retries; writes
//! outside a transaction go through [`acquire_write`] for the same reason.
//! Durability: `synchronous=FULL` (the default) syncs the WAL on every commit; `NORMAL`
//! (`SQLITE_SYNCHRONOUS`, [`Synchronous`]) only at checkpoints.
//!
//! **PostgreSQL** (`DATABASE_URL=postgres://...`): each service keeps its tables in its own
//! schema (`auth`, `data`, `compute`; `search_path` is set on every connection), migrated
//! under an advisory lock ([`pg`]). A write transaction is `SERIALIZABLE`, so every
//! read-then-write the services do (a version check, an idempotency lookup) is atomic as it
//! is under SQLite's write lock; a serialisation failure is retried by [`retry`], as are lost
//! connections, with a bound, after which the error is [`transient`] (a 503, never a wrong
//! answer). The job queue's claim is one `FOR UPDATE SKIP LOCKED` statement of its own.
//!
//! Queries are built at run time (`sqlx::query`) with `$n` placeholders, which both dialects
//! take, so a build needs no database. Where the dialects differ the code asks
//! [`Db::dialect`]; that is only in the migrations and in a few statements.

mod lock;
pub mod pg;
mod read;

use read::Readers;
pub use read::{READERS, ReadConn};
mod written;
pub use written::{OneWrite, Written};

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};

/// A connection of either dialect (what the services' queries run on).
pub type Conn = sqlx::AnyConnection;
pub use lock::{Announced, Held};

/// A transaction of either dialect. One of [`begin_write`] on a SQLite file is a member of
/// its process's [`group`] commit: a savepoint on the group's transaction, which it has to
/// itself (and so the write lock) until it is committed, rolled back or dropped, and whose
/// commit returns once the group is committed.
///
/// Dropped without a commit, it is rolled back in a task of its own (on the runtime of the
/// drop), which releases the write lock only after SQLite's: the next writer then finds the
/// database free instead of meeting SQLite's sleeping retries.
#[derive(Debug)]
pub struct Tx {
    tx: Option<Transaction<'static, Any>>,
    lock: Option<Held>,
    member: Option<lock::group::Member>,
}

impl Tx {
    fn plain(tx: Transaction<'static, Any>, lock: Option<Held>) -> Self {
        Self { tx: Some(tx), lock, member: None }
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if let Some(member) = self.member.take() {
            return member.commit().await;
        }
        let tx = self.tx.take().expect("a transaction is open until consumed");
        tx.commit().await
        // `self`, the lock, drops here: after the commit.
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if let Some(member) = self.member.take() {
            return member.rollback().await;
        }
        let tx = self.tx.take().expect("a transaction is open until consumed");
        tx.rollback().await
    }
}

impl Deref for Tx {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        match &self.member {
            Some(member) => member.conn(),
            None => self.tx.as_ref().expect("a transaction is open until consumed"),
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        match &mut self.member {
            Some(member) => member.conn_mut(),
            None => self.tx.as_mut().expect("a transaction is open until consumed"),
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        let (Some(tx), Some(lock)) = (self.tx.take(), self.lock.take()) else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rolling back a dropped write transaction");
                }
                drop(lock);
            });
        }
    }
}

/// A pooled connection holding the write lock (SQLite), for writes outside a transaction
/// ([`acquire_write`]); the lock is released when it is dropped.
#[derive(Debug)]
pub struct WriteConn {
    // Dropped in this order: the connection goes back to the pool, then the lock.
    conn: sqlx::pool::PoolConnection<Any>,
    _lock: Option<Held>,
}

impl Deref for WriteConn {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// How long a writer waits for another process's write lock (SQLite: the file's [`lock`],
/// then SQLite's own); then the error is [`transient`], a 503.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`retry`] keeps retrying a transient PostgreSQL error.
pub const RETRY_FOR: Duration = Duration::from_secs(5);

/// When a commit waits for the disk (`SQLITE_SYNCHRONOUS`, `PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (the default).
    #[default]
    Full,
    /// Commits reach the disk at the next checkpoint: faster, and the last ones before a
    /// power loss (not a process crash) can be lost.
    Normal,
}

impl FromStr for Synchronous {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_uppercase().as_str() {
            "FULL" => Ok(Self::Full),
            "NORMAL" => Ok(Self::Normal),
            _ => Err(()),
        }
    }
}

/// Which SQL the database speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a database URL, `None` for another scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// A service's migrations, one list per dialect (a PostgreSQL schema is not SQLite's: identity
/// columns, `COLLATE "C"` keys, `BIGINT` wherever Rust reads an `i64`).
#[derive(Clone, Copy, Debug)]
pub struct Migrations {
    pub sqlite: &'static [Migration],
    pub postgres: &'static [Migration],
}

/// One step of a schema, embedded in the binary (`include_str!`).
///
/// A migration is known by its `name`, which must be unique across every service that may
/// share a SQLite file (pointing auth, data and compute at one file reproduces the original
/// single `local-db.sqlite`); `version` orders a service's own migrations.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// A service's database: the pool, its dialect, and whether it is ready (migrated).
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    dialect: Dialect,
    /// `None` once migrated; until then why not.
    not_ready: Arc<Mutex<Option<String>>>,
    /// When the database last answered a readiness [`ping`].
    answered: Arc<Mutex<Option<Instant>>>,
    url: Arc<str>,
    schema: Arc<str>,
    /// The file's write lock (SQLite on a file; not in memory, not PostgreSQL).
    write_lock: Option<Arc<lock::WriteLock>>,
    /// The connections kept for [`Db::read`] and [`Db::read_now`] (SQLite on a file).
    readers: Option<Arc<Readers>>,
}

impl Db {
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL it was opened with (PostgreSQL's listener connects to it too).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PostgreSQL schema of the service (unused on SQLite).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A pooled connection, once the database is ready.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Any>, sqlx::Error> {
        self.check_ready()?;
        self.pool.acquire().await
    }

    /// Closes the pool and the connections kept for reads (the last connection to close a
    /// SQLite file checkpoints its WAL into it).
    pub async fn close(&self) {
        if let Some(readers) = &self.readers {
            readers.close().await;
        }
        self.pool.close().await;
    }

    /// How many group transactions this handle committed on its SQLite file (tests).
    #[doc(hidden)]
    pub fn group_commits(&self) -> u64 {
        self.write_lock.as_ref().map_or(0, |lock| lock.group_commits())
    }

    /// Makes every commit of this handle's writers on its SQLite file announce itself, once
    /// done, in the file's lock file (`<file>.lock`, [`Announced`]), whose path this returns:
    /// other processes learn of commits by watching it (inotify), one event per commit where
    /// the WAL file gives one per page written, and tell from its counts whether a commit
    /// asked them to look ([`write_one_quiet_if`]). `None` where there is no lock file
    /// (memory, PostgreSQL). Writers of other processes announce their commits only if they
    /// were told to as well.
    pub fn announce_commits(&self) -> Option<PathBuf> {
        self.write_lock.as_ref().map(|lock| lock.announce_commits().to_owned())
    }

    /// How many writers of this handle wait for their turn at its SQLite file (tests).
    #[doc(hidden)]
    pub fn writers_queued(&self) -> usize {
        self.write_lock.as_ref().map_or(0, |lock| lock.queued())
    }

    /// Lets this handle's groups take members for `hold` (tests: [`lock::group::HOLD`] is short
    /// enough for a slow build to end a group between two members).
    #[doc(hidden)]
    pub fn hold_groups_for(&self, hold: std::time::Duration) {
        if let Some(lock) = &self.write_lock {
            lock.set_hold(hold);
        }
    }

    fn check_ready(&self) -> Result<(), sqlx::Error> {
        match &*self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(why) => Err(not_ready(why)),
        }
    }

    fn set_not_ready(&self, why: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// The error of a database that is not ready yet (transient: a 503).
fn not_ready(why: &str) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::NotConnected, format!("database not ready: {why}")))
}

/// Opens a component's database (`DATABASE_URL`, else `file` in the data dir) and migrates
/// it. On SQLite, a failure is returned. On PostgreSQL a server that is not there yet is no
/// failure: the instance serves, [`ping`] reports why it is not ready, and a task keeps
/// connecting and migrating until it is.
pub async fn open(config: &crate::Config, file: &str, migrations: &Migrations) -> Result<Db, sqlx::Error> {
    let url = config.database_url_or(file);
    let schema = file.split('.').next().unwrap_or(file);
    let db = connect_as(&url, schema, config.sqlite_synchronous).await?;
    match db.dialect {
        Dialect::Sqlite => migrate(&db, migrations).await?,
        Dialect::Postgres => {
            db.set_not_ready(Some("migrating".into()));
            if let Err(e) = migrate(&db, migrations).await {
                tracing::warn!(error = %e, "database not ready yet; retrying");
                db.set_not_ready(Some(e.to_string()));
                tokio::spawn(pg::keep_migrating(db.clone(), *migrations));
            }
        }
    }
    Ok(db)
}

/// Opens (creating if needed) the database at `url` (`sqlite://path`, `sqlite::memory:` or
/// `postgres://...`, whose tables then live in the schema `test`), durable
/// ([`Synchronous::Full`]). Not migrated.
pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
    connect_as(url, "test", Synchronous::default()).await
}

/// [`connect`] with the PostgreSQL schema `schema` and SQLite's `synchronous`.
pub async fn connect_as(url: &str, schema: &str, synchronous: Synchronous) -> Result<Db, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let dialect = Dialect::of_url(url)
        .ok_or_else(|| sqlx::Error::Configuration(format!("unsupported database URL scheme in {url:?}").into()))?;
    let (pool, file) = match dialect {
        Dialect::Sqlite => sqlite_pool(url, synchronous).await?,
        Dialect::Postgres => (pg::pool(url, schema)?, None),
    };
    let write_lock =
        file.as_ref().map(|f| lock::WriteLock::open(f).map(Arc::new)).transpose().map_err(sqlx::Error::Io)?;
    let readers = file.map(|f| Arc::new(Readers::new(f)));
    Ok(Db {
        pool,
        dialect,
        not_ready: Arc::default(),
        answered: Arc::default(),
        url: url.into(),
        schema: schema.into(),
        write_lock,
        readers,
    })
}

/// A SQLite pool: the file created when missing (and its directory), WAL, the busy timeout,
/// foreign keys and `synchronous` set on every connection; and the file's path (`None` in
/// memory).
async fn sqlite_pool(url: &str, synchronous: Synchronous) -> Result<(AnyPool, Option<PathBuf>), sqlx::Error> {
    let (path, query) = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split_once('?')
        .map_or((url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"), None), |(p, q)| (p, Some(q)));
    let memory = path.is_empty() || path.starts_with(":memory:");
    if !memory && let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
    }
    let url = match query {
        Some(q) if q.contains("mode=") => url.to_owned(),
        Some(_) => format!("{url}&mode=rwc"),
        None if memory => url.to_owned(),
        None => format!("{url}?mode=rwc"),
    };
    let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
    let pragmas = format!(
        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; PRAGMA synchronous = {};",
        BUSY_TIMEOUT.as_millis(),
        match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    );
    // Switching a new file to WAL takes an exclusive lock; when several processes open the
    // file at once, SQLite's deadlock avoidance answers SQLITE_BUSY at once rather than
    // waiting out the busy timeout, so opening is retried for as long.
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let pragmas = pragmas.clone();
        let opened = AnyPoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
            // No ping before handing out a connection: a SQLite connection is a file in this
            // process and does not go stale, and the ping is a round trip to the
            // connection's worker thread (two thread switches) on every acquire (sqlx still
            // pings once on release).
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move { conn.execute(sqlx::raw_sql(&pragmas)).await.map(|_| ()) })
            })
            .connect_with(options.clone())
            .await;
        match opened {
            Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            opened => return opened.map(|pool| (pool, (!memory).then(|| PathBuf::from(path)))),
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, with any extended code (a SQLite error: PostgreSQL's codes
/// are not numbers of that kind).
fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_none() {
        return false;
    }
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    matches!(code & 0xff, 5 | 6)
}

/// A write transaction: on SQLite it holds the write lock from its first statement
/// (`BEGIN IMMEDIATE`); on PostgreSQL it is `SERIALIZABLE` (run it through [`retry`]).
///
/// On a SQLite file it is a member of its process's [`group`] commit, which holds the file's
/// [`lock`] (so `BEGIN IMMEDIATE` finds SQLite's lock free, unless a writer that does not
/// take it holds it: then SQLite's busy timeout still waits); its commit returns once the
/// group's is done (on disk).
///
/// Cancel-safe: the wait for the file's lock is, and sqlx's `begin` is not
/// (launchbadge/sqlx#3932). A caller dropped while `BEGIN IMMEDIATE` waits for another
/// process's lock (a client that hangs up) would leave the statement to complete on a pooled
/// connection that no `Transaction` owns: that connection then holds the database's write
/// lock for the life of the process, and every other instance's writes fail. The begin
/// therefore runs in a task of its own; if nobody is left to take the transaction, it is
/// dropped there and rolled back.
pub async fn begin_write(db: &Db) -> Result<Tx, sqlx::Error> {
    let statement = match db.dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN ISOLATION LEVEL SERIALIZABLE",
    };
    db.check_ready()?;
    if let Some(lock) = &db.write_lock {
        return Ok(Tx { tx: None, lock: None, member: Some(lock::group::join(&db.pool, lock).await?) });
    }
    begin_in_task(db, statement, None).await
}

/// A write of one statement, committed (durable under `synchronous=FULL`) before this
/// returns. On a SQLite file it joins the process's [`group`] commit as [`begin_write`] does
/// but without a savepoint of its own (a statement is atomic by itself), so it costs one
/// statement on the group's connection instead of three; it runs in a task of its own, so a
/// caller that goes away leaves it to commit (or fail) with its group. Elsewhere the
/// statement is autocommitted, holding the write lock as [`acquire_write`] does. An error
/// that may have come after the write (a lost connection, a failed group commit) is an
/// [`UnknownOutcome`], as [`commit`]'s are.
pub async fn write_one(db: &Db, query: OneWrite) -> Result<Written, sqlx::Error> {
    write_one_quiet_if(db, query, |_| false).await
}

/// [`write_one`], announced as quiet ([`Announced`]) when `quiet` says so of what it wrote:
/// its commit then asks the watchers of the announcements to look only if another write in
/// it does.
pub async fn write_one_quiet_if(db: &Db, query: OneWrite, quiet: fn(&Written) -> bool) -> Result<Written, sqlx::Error> {
    db.check_ready()?;
    let done = match &db.write_lock {
        Some(lock) => lock::group::write_one(&db.pool, lock, query, quiet).await,
        None => {
            let mut conn = acquire_write(db).await?;
            Written::run(query, &mut conn).await
        }
    };
    // As for [`commit`]: [`retry`] must not run it again.
    done.map_err(outcome_unknown)
}

/// A pooled connection for a write outside a transaction (one statement, autocommitted),
/// holding the file's write lock on SQLite as [`begin_write`] does.
pub async fn acquire_write(db: &Db) -> Result<WriteConn, sqlx::Error> {
    db.check_ready()?;
    let mut lock = write_lock(db).await?;
    if let Some(held) = &mut lock {
        held.for_a_write();
    }
    Ok(WriteConn { conn: db.acquire().await?, _lock: lock })
}

/// The file's write lock, when the database has one, for a writer outside the groups: the
/// group open on it, if any, committed first.
async fn write_lock(db: &Db) -> Result<Option<Held>, sqlx::Error> {
    match &db.write_lock {
        Some(lock) => {
            let held = lock.acquire(BUSY_TIMEOUT).await.map_err(sqlx::Error::Io)?;
            lock::group::end_before(held).await.map(Some)
        }
        None => Ok(None),
    }
}

/// A read transaction: its statements see one snapshot of the database. Cancel-safe for
/// the reason [`begin_write`] gives.
pub async fn begin_read(db: &Db) -> Result<Tx, sqlx::Error> {
    let statement = match db.dialect {
        Dialect::Sqlite => "BEGIN",
        Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    db.check_ready()?;
    begin_in_task(db, statement, None).await
}

/// Runs `statement` to begin a transaction in a task of its own (see [`begin_write`]),
/// which then holds `lock`.
async fn begin_in_task(db: &Db, statement: &'static str, lock: Option<Held>) -> Result<Tx, sqlx::Error> {
    let pool = db.pool.clone();
    tokio::spawn(async move { Ok(Tx::plain(pool.begin_with(statement).await?, lock)) })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(format!("beginning a transaction: {e}"))))?
}

/// Runs `op` (a whole transaction, begun inside it) and, on PostgreSQL, runs it again while
/// it fails with a [`transient`] error, for up to [`RETRY_FOR`] with a growing pause. SQLite
/// runs it once: its writers wait for the lock instead.
///
/// `op` is a closure returning a future (`move || async move { .. }` over references), not an
/// async closure, whose future could not be shown `Send` to a spawned task.
pub async fn retry<T, F, Fut>(db: &Db, mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    if db.dialect == Dialect::Sqlite {
        return op().await;
    }
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(2);
    loop {
        match op().await {
            Err(e) if transient(&e) && !unknown_outcome(&e) && tokio::time::Instant::now() + pause < deadline => {
                tracing::debug!(error = %e, "retrying a transient database error");
                let jitter = Duration::from_micros(rand::random::<u64>() % (pause.as_micros() as u64 + 1));
                tokio::time::sleep(pause + jitter).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            done => return done,
        }
    }
}

/// Commits `tx`. A commit whose connection was lost may have happened or not: that error
/// is marked so that [`retry`] does not run the work again (a write without an
/// `Idempotency-Key` would then be applied twice); it is still [`transient`], a 503.
pub async fn commit(tx: Tx) -> Result<(), sqlx::Error> {
    tx.commit().await.map_err(outcome_unknown)
}

/// A lost connection or a failed commit, marked as an [`UnknownOutcome`].
fn outcome_unknown(e: sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => sqlx::Error::Io(std::io::Error::other(UnknownOutcome(e))),
        e => e,
    }
}

/// The cause of an error from [`commit`] whose outcome is unknown.
#[derive(Debug, thiserror::Error)]
#[error("the commit's outcome is unknown: {0}")]
pub struct UnknownOutcome(sqlx::Error);

/// An error of [`commit`] after which the transaction may or may not have been committed.
pub fn unknown_outcome(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<UnknownOutcome>()))
}

/// True for an error that says nothing about the request and may pass: a serialisation
/// failure or deadlock (PostgreSQL 40001, 40P01), a lost or refused connection, a server
/// shutting down or starting (57P01-57P03, class 08), too many connections (53300), a
/// database not ready yet, SQLite's lock still busy after the busy timeout.
pub fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            matches!(&*code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
                || code.starts_with("08")
                || is_busy(e)
        }
        _ => false,
    }
}

/// The HTTP error of a database failure: 503 when [`transient`] (the client may try again),
/// else 500. The cause is logged, never answered.
pub fn api_error(e: sqlx::Error) -> crate::http::ApiError {
    if transient(&e) {
        tracing::warn!(error = %e, "database unavailable");
        crate::http::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable, try again",
        )
    } else {
        crate::http::ApiError::internal(e)
    }
}

/// Applies the migrations not applied yet, in order of version.
///
/// Safe when several processes start at once on a new database: on SQLite the check and the
/// changes run in one write transaction, on PostgreSQL under an advisory lock, so one
/// process migrates and the others then find nothing to do.
pub async fn migrate(db: &Db, migrations: &Migrations) -> Result<(), sqlx::Error> {
    let (mut tx, list) = match db.dialect {
        Dialect::Sqlite => (begin_in_task(db, "BEGIN IMMEDIATE", write_lock(db).await?).await?, migrations.sqlite),
        Dialect::Postgres => (pg::begin_migrating(db).await?, migrations.postgres),
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            name TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            applied_at BIGINT NOT NULL
        )",
    )
    .execute(&mut *tx)
    .await?;
    let applied: Vec<String> = sqlx::query_scalar("SELECT name FROM schema_migrations").fetch_all(&mut *tx).await?;
    let mut pending: Vec<&Migration> = list.iter().filter(|m| !applied.iter().any(|a| a == m.name)).collect();
    pending.sort_by_key(|m| m.version);
    for m in pending {
        tracing::info!(version = m.version, name = m.name, "applying migration");
        // `Executor::execute(conn, raw_sql)`, not `raw_sql.execute(conn)`: the latter's future
        // is not `Send` for every lifetime (a rustc/sqlx quirk), so a component's `serve`
        // could not be `tokio::spawn`ed.
        sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(m.sql)).await?;
        sqlx::query("INSERT INTO schema_migrations (name, version, applied_at) VALUES ($1, $2, $3)")
            .bind(m.name)
            .bind(m.version)
            .bind(crate::time::unix_millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    db.set_not_ready(None);
    Ok(())
}

/// How long a database that answered a [`ping`] counts as answering without another query.
pub const PING_FRESH: Duration = Duration::from_secs(5);

/// The readiness check of a database-backed component: the database answers a query.
///
/// An answer counts for [`PING_FRESH`]: a ready instance probed every 2 s queries every
/// third probe, not on each (each query is a round trip to the driver's thread, which an
/// idle instance would otherwise pay every probe). A failure counts for nothing: until the
/// next answer, every ping queries again.
pub async fn ping(db: &Db) -> Result<(), String> {
    db.check_ready().map_err(|e| e.to_string())?;
    let fresh = |at: &Option<Instant>| at.is_some_and(|at| at.elapsed() < PING_FRESH);
    if fresh(&db.answered.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(());
    }
    let outcome = sqlx::query("SELECT 1").execute(&db.pool).await.map(|_| ()).map_err(|e| format!("database: {e}"));
    *db.answered.lock().unwrap_or_else(|e| e.into_inner()) = outcome.is_ok().then(Instant::now);
    outcome
}

/// True for a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests;

//! SQLite through sqlx: one pool per process, one database file per service shared by all
//! of its instances.
//!
//! Several processes write the same file, so: WAL (readers never block the writer), a busy
//! timeout (a writer waits for the lock instead of failing with "database is locked"), and
//! every read-then-write transaction starts with `BEGIN IMMEDIATE` ([`begin_write`]), which
//! takes the write lock up front. A deferred transaction that read first could not upgrade
//! once another process had committed, and would fail however long the busy timeout.
//!
//! Durability: a write acknowledged to a client survives a power loss. In WAL mode,
//! `synchronous=FULL` (the default here) syncs the WAL on every commit; `NORMAL` syncs only
//! at checkpoints, so the last commits before a power cut can be lost (never corrupted). That
//! trade is a setting, `SQLITE_SYNCHRONOUS=FULL|NORMAL` ([`Synchronous`], read by
//! `kit::Config`), and [`open`] applies it.
//!
//! Queries are built at run time (`sqlx::query`), so a build needs no database. The SQL
//! sticks to what PostgreSQL also runs.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// How long a writer waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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

impl From<Synchronous> for SqliteSynchronous {
    fn from(s: Synchronous) -> Self {
        match s {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        }
    }
}

/// Opens a component's database: `DATABASE_URL`, else `file` in the data dir, with the
/// configured `SQLITE_SYNCHRONOUS`.
pub async fn open(config: &crate::Config, file: &str) -> Result<SqlitePool, sqlx::Error> {
    connect_with(&config.database_url_or(file), config.sqlite_synchronous).await
}

/// Opens (creating if needed) the database at `url` (`sqlite://path` or `sqlite::memory:`),
/// durable ([`Synchronous::Full`]).
pub async fn connect(url: &str) -> Result<SqlitePool, sqlx::Error> {
    connect_with(url, Synchronous::default()).await
}

/// [`connect`] with another [`Synchronous`].
pub async fn connect_with(url: &str, synchronous: Synchronous) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous.into())
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
    }
    // Switching a new file to WAL takes an exclusive lock; when several processes open the
    // file at once, SQLite's deadlock avoidance answers SQLITE_BUSY at once rather than
    // waiting out the busy timeout, so opening is retried for as long.
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let opened = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT + Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match opened {
            Err(e) if is_busy(&e) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            opened => return opened,
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, with any extended code.
fn is_busy(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
    matches!(code & 0xff, 5 | 6)
}

/// A write transaction holding the write lock from its first statement.
///
/// Cancel-safe: sqlx's `begin` is not (launchbadge/sqlx#3932). A caller dropped while
/// `BEGIN IMMEDIATE` waits for another process's lock (a client that hangs up) would leave
/// the statement to complete on a pooled connection that no `Transaction` owns: that
/// connection then holds the database's write lock for the life of the process, and every
/// other instance's writes fail. The begin therefore runs in a task of its own; if nobody
/// is left to take the transaction, it is dropped there and rolled back.
pub async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    begin_in_task(pool, "BEGIN IMMEDIATE").await
}

/// A read transaction: its statements see one snapshot of the database. Cancel-safe for
/// the reason [`begin_write`] gives.
pub async fn begin_read(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    begin_in_task(pool, "BEGIN").await
}

/// Runs `statement` to begin a transaction in a task of its own (see [`begin_write`]).
async fn begin_in_task(
    pool: &SqlitePool,
    statement: &'static str,
) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin_with(statement).await })
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(format!("beginning a transaction: {e}"))))?
}

/// One step of a schema, embedded in the binary (`include_str!`).
///
/// A migration is known by its `name`, which must be unique across every service that may
/// share a database file (pointing auth, data and compute at one file reproduces the
/// original single `local-db.sqlite`); `version` orders a service's own migrations.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Applies the migrations not applied yet, in order of version.
///
/// Safe when several processes start at once on a new file: the check and the changes run
/// in one write transaction, so one process migrates and the others then find nothing to do.
pub async fn migrate(pool: &SqlitePool, migrations: &[Migration]) -> Result<(), sqlx::Error> {
    let mut tx = begin_write(pool).await?;
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
    let mut pending: Vec<&Migration> = migrations.iter().filter(|m| !applied.iter().any(|a| a == m.name)).collect();
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
    tx.commit().await
}

/// The readiness check of a database-backed component.
pub async fn ping(pool: &SqlitePool) -> Result<(), String> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|e| format!("database: {e}"))
}

/// True for a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[Migration] = &[
        Migration {
            version: 1,
            name: "things",
            sql: "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);",
        },
        Migration { version: 2, name: "colour", sql: "ALTER TABLE things ADD COLUMN colour TEXT;" },
    ];

    /// `PRAGMA synchronous` on two connections of the pool `vars` configure.
    async fn synchronous_of(vars: &[(&str, &str)]) -> Vec<i64> {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().display().to_string();
        let mut pairs = vec![("DATA_DIR", data_dir.as_str())];
        pairs.extend_from_slice(vars);
        let config = crate::Config::from_vars(&crate::Vars::from_pairs(pairs), "test").unwrap();
        let pool = open(&config, "s.sqlite").await.unwrap();
        let (mut a, mut b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        let mut levels = Vec::new();
        for conn in [&mut a, &mut b] {
            levels.push(sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **conn).await.unwrap());
        }
        levels
    }

    #[tokio::test]
    async fn acknowledged_writes_are_durable_by_default() {
        // 2 is FULL, 1 is NORMAL.
        assert_eq!(synchronous_of(&[]).await, [2, 2]);
        assert_eq!(synchronous_of(&[("SQLITE_SYNCHRONOUS", "NORMAL")]).await, [1, 1]);
        assert_eq!(synchronous_of(&[("SQLITE_SYNCHRONOUS", "full")]).await, [2, 2]);
    }

    #[test]
    fn a_bad_synchronous_setting_is_refused_at_startup() {
        for bad in ["OFF", "EXTRA", "2", "fast"] {
            let vars = crate::Vars::from_pairs([("SQLITE_SYNCHRONOUS", bad)]);
            let err = crate::Config::from_vars(&vars, "test").unwrap_err().to_string();
            assert_eq!(err, format!("invalid SQLITE_SYNCHRONOUS={bad:?}: expected FULL or NORMAL"));
        }
    }

    #[tokio::test]
    async fn services_sharing_one_file_each_get_their_schema() {
        let dir = tempfile::tempdir().unwrap();
        let pool = connect(&format!("sqlite://{}", dir.path().join("shared.sqlite").display())).await.unwrap();
        let other: &[Migration] =
            &[Migration { version: 1, name: "gadgets", sql: "CREATE TABLE gadgets (id INTEGER PRIMARY KEY);" }];
        migrate(&pool, MIGRATIONS).await.unwrap();
        migrate(&pool, other).await.unwrap();
        migrate(&pool, MIGRATIONS).await.unwrap();
        sqlx::query("INSERT INTO gadgets (id) VALUES (1)").execute(&pool).await.unwrap();
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM schema_migrations ORDER BY name").fetch_all(&pool).await.unwrap();
        assert_eq!(names, ["colour", "gadgets", "things"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn begins_cancelled_at_any_moment_leave_nothing_locked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.sqlite").display());
        let (a, b) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
        migrate(&a, MIGRATIONS).await.unwrap();

        // Another process holds the write lock; a begin waits for it and is abandoned at a
        // different moment each time, around when the lock is released (a client hanging up).
        for i in 0..400u64 {
            let holder = begin_write(&b).await.unwrap();
            let waiting = begin_write(&a);
            let release = async {
                holder.commit().await.unwrap();
                tokio::time::sleep(Duration::from_micros(i * 13 % 700)).await;
            };
            tokio::select! {
                _ = waiting => {}
                _ = release => {}
            }
        }

        // Nothing is left holding the lock: the other process writes, within far less than
        // the busy timeout, and so does this one, on every pooled connection.
        let write = async {
            let mut tx = begin_write(&b).await?;
            sqlx::query("INSERT INTO things (name) VALUES ('b')").execute(&mut *tx).await?;
            tx.commit().await
        };
        tokio::time::timeout(Duration::from_secs(3), write).await.expect("the write lock was left held").unwrap();
        for i in 0..8 {
            let mut tx = begin_write(&a).await.unwrap();
            sqlx::query("INSERT INTO things (name) VALUES ($1)").bind(format!("a{i}")).execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    #[tokio::test]
    async fn migrating_runs_on_a_spawned_task() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.sqlite").display());
        let task = tokio::spawn(async move {
            let pool = connect(&url).await?;
            migrate(&pool, MIGRATIONS).await
        });
        task.await.unwrap().unwrap();
    }

    /// Instances of a service start together on a new data dir: every one opens the file
    /// and migrates, although switching a new file to WAL meets SQLite's deadlock
    /// avoidance (SQLITE_BUSY at once, without the busy timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_starting_at_once_on_a_new_file_all_open_it() {
        for round in 0..25 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("new.sqlite").display());
            let starts = (0..6).map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let pool = connect(&url).await.map_err(|e| format!("connect: {e}"))?;
                    migrate(&pool, MIGRATIONS).await.map_err(|e| format!("migrate: {e}"))
                })
            });
            for start in futures_util::future::join_all(starts).await {
                if let Err(e) = start.unwrap() {
                    panic!("round {round}: {e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn concurrent_migrations_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("nested/t.sqlite").display());
        let pools: Vec<SqlitePool> = futures_util::future::try_join_all((0..4).map(|_| connect(&url))).await.unwrap();
        futures_util::future::try_join_all(pools.iter().map(|p| migrate(p, MIGRATIONS))).await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&pools[0])
            .await
            .unwrap();
        assert_eq!(versions, vec![1, 2]);

        sqlx::query("INSERT INTO things (name, colour) VALUES ('a', 'red')").execute(&pools[1]).await.unwrap();
        let dup = sqlx::query("INSERT INTO things (name) VALUES ('a')").execute(&pools[2]).await.unwrap_err();
        assert!(is_unique_violation(&dup));
        assert!(ping(&pools[3]).await.is_ok());
    }
}

use super::*;

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "things",
        sql: "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);",
    },
    Migration { version: 2, name: "colour", sql: "ALTER TABLE things ADD COLUMN colour TEXT;" },
];
const PG: &[Migration] = &[
    Migration {
        version: 1,
        name: "things",
        sql: "CREATE TABLE things (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL UNIQUE);",
    },
    Migration { version: 2, name: "colour", sql: "ALTER TABLE things ADD COLUMN colour TEXT;" },
];
const MIGRATIONS: &Migrations = &Migrations { sqlite: SQLITE, postgres: PG };

/// `PRAGMA synchronous` on two connections of the pool `vars` configure.
async fn synchronous_of(vars: &[(&str, &str)]) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let mut pairs = vec![("DATA_DIR", data_dir.as_str())];
    pairs.extend_from_slice(vars);
    let config = crate::Config::from_vars(&crate::Vars::from_pairs(pairs), "test").unwrap();
    let pool = open(&config, "s.sqlite", MIGRATIONS).await.unwrap();
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
    let other = &Migrations {
        sqlite: &[Migration { version: 1, name: "gadgets", sql: "CREATE TABLE gadgets (id INTEGER PRIMARY KEY);" }],
        postgres: &[],
    };
    migrate(&pool, MIGRATIONS).await.unwrap();
    migrate(&pool, other).await.unwrap();
    migrate(&pool, MIGRATIONS).await.unwrap();
    sqlx::query("INSERT INTO gadgets (id) VALUES (1)").execute(pool.pool()).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM schema_migrations ORDER BY name").fetch_all(pool.pool()).await.unwrap();
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
    let url = crate::testing::database_url(&dir.path().join("nested"), "t.sqlite").await;
    let pools: Vec<Db> = futures_util::future::try_join_all((0..4).map(|_| connect(&url))).await.unwrap();
    futures_util::future::try_join_all(pools.iter().map(|p| migrate(p, MIGRATIONS))).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(pools[0].pool())
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2]);

    sqlx::query("INSERT INTO things (name, colour) VALUES ('a', 'red')").execute(pools[1].pool()).await.unwrap();
    let dup = sqlx::query("INSERT INTO things (name) VALUES ('a')").execute(pools[2].pool()).await.unwrap_err();
    assert!(is_unique_violation(&dup));
    assert!(ping(&pools[3]).await.is_ok());
}

/// Six instances migrate one fresh PostgreSQL database at once: every one succeeds, each
/// migration is applied once, and the tables are in the service's schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_six_instances_migrate_a_fresh_database_at_once() {
    let Some(url) = crate::testing::pg_database().await else {
        return eprintln!("skipped: PostgreSQL only (ORCH_TEST_DATABASE_URL unset)");
    };
    let starts = (0..6).map(|i| {
        let url = url.clone();
        // Two services, three instances each: both schemas appear, under one lock.
        let schema = if i % 2 == 0 { "alpha" } else { "beta" };
        tokio::spawn(async move {
            let db = connect_as(&url, schema, Synchronous::Full).await.map_err(|e| format!("connect: {e}"))?;
            migrate(&db, MIGRATIONS).await.map_err(|e| format!("migrate: {e}"))?;
            Ok::<_, String>(db)
        })
    });
    let dbs: Vec<Db> = futures_util::future::join_all(starts).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    for db in &dbs[..2] {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM schema_migrations ORDER BY version")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(names, ["things", "colour"], "in {}", db.schema());
        let schema: String =
            sqlx::query_scalar("SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'things' AND table_schema = $1")
                .bind(db.schema())
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(schema, db.schema());
        assert!(ping(db).await.is_ok());
    }
    // The schemas are apart: a row in one is not in the other.
    sqlx::query("INSERT INTO things (name) VALUES ('x')").execute(dbs[0].pool()).await.unwrap();
    let other: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things").fetch_one(dbs[1].pool()).await.unwrap();
    assert_eq!(other, 0);
}

/// No server at the URL: the instance opens anyway, is not ready with the reason, and
/// becomes ready once the database answers (here: never, so it stays not ready), and a
/// write is a transient error (a 503), not a crash.
#[tokio::test]
async fn pg_without_a_server_an_instance_opens_not_ready() {
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://orch@127.0.0.1:{port}/orch");
    let pairs = [("DATA_DIR", dir.path().to_str().unwrap()), ("DATABASE_URL", url.as_str())];
    let config = crate::Config::from_vars(&crate::Vars::from_pairs(pairs), "test").unwrap();
    let db = open(&config, "data.sqlite", MIGRATIONS).await.expect("opening never fails for want of a server");
    let why = ping(&db).await.unwrap_err();
    assert!(why.contains("not ready"), "{why}");
    let err = begin_write(&db).await.unwrap_err();
    assert!(transient(&err), "{err}");
    assert_eq!(api_error(err).status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn dialects_of_urls() {
    assert_eq!(Dialect::of_url("sqlite://x.db"), Some(Dialect::Sqlite));
    assert_eq!(Dialect::of_url("sqlite::memory:"), Some(Dialect::Sqlite));
    assert_eq!(Dialect::of_url("postgres://u@h/d"), Some(Dialect::Postgres));
    assert_eq!(Dialect::of_url("postgresql://u@h/d"), Some(Dialect::Postgres));
    assert_eq!(Dialect::of_url("mysql://u@h/d"), None);
}

/// The server comes after the instance: it starts not ready (saying why), keeps trying, and
/// becomes ready and usable once the server answers, without a restart. The server "comes"
/// as a loopback forwarder to the test server, bound on a port that refused at first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_an_instance_becomes_ready_when_the_server_comes() {
    let Some(url) = crate::testing::pg_database().await else {
        return eprintln!("skipped: PostgreSQL only (ORCH_TEST_DATABASE_URL unset)");
    };
    let server = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let late_url = url.replace(&server, &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let pairs = [("DATA_DIR", dir.path().to_str().unwrap()), ("DATABASE_URL", late_url.as_str())];
    let config = crate::Config::from_vars(&crate::Vars::from_pairs(pairs), "test").unwrap();
    let db = open(&config, "data.sqlite", MIGRATIONS).await.unwrap();
    let why = ping(&db).await.unwrap_err();
    assert!(why.contains("not ready"), "{why}");

    // The server comes.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let forward = tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let server = server.clone();
            tokio::spawn(async move {
                let mut upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    crate::testing::eventually(Duration::from_secs(20), "ready once the server is there", || async {
        ping(&db).await.ok()
    })
    .await;
    sqlx::query("INSERT INTO things (name) VALUES ('late')").execute(db.pool()).await.unwrap();
    let mut tx = begin_write(&db).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things").fetch_one(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 1);
    db.close().await;
    forward.abort();
}

/// On PostgreSQL a transient error runs the work again, and the end of it is a 503; a commit
/// whose outcome is unknown is not run again (it may have been applied); nor is any error on
/// SQLite, whose writers wait for the lock instead.
#[tokio::test]
async fn retry_runs_again_only_what_is_transient_and_surely_not_applied() {
    use std::sync::atomic::{AtomicU32, Ordering};
    // A lazy pool: nothing connects to this address.
    let pg = connect("postgres://orch@127.0.0.1:1/orch").await.unwrap();
    let runs = AtomicU32::new(0);
    let flaky = || async {
        match runs.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Err(sqlx::Error::PoolTimedOut),
            n => Ok(n),
        }
    };
    assert_eq!(retry(&pg, flaky).await.unwrap(), 2);
    assert_eq!(runs.swap(0, Ordering::SeqCst), 3);

    let unknown = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(sqlx::Error::Io(std::io::Error::other(UnknownOutcome(sqlx::Error::WorkerCrashed))))
    };
    let err = retry(&pg, unknown).await.unwrap_err();
    assert!(unknown_outcome(&err) && transient(&err), "{err}");
    assert_eq!(api_error(err).status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(runs.swap(0, Ordering::SeqCst), 1);

    let refused = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(sqlx::Error::RowNotFound)
    };
    assert!(!transient(&retry(&pg, refused).await.unwrap_err()));
    assert_eq!(runs.swap(0, Ordering::SeqCst), 1);

    let dir = tempfile::tempdir().unwrap();
    let sqlite = connect(&format!("sqlite://{}", dir.path().join("r.sqlite").display())).await.unwrap();
    assert!(retry(&sqlite, flaky).await.is_err());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A handle on the file at `url` as another process would have, with SQLite's own wait for
/// its lock turned off on every pooled connection: a writer that met SQLite's lock held
/// would fail at once (SQLITE_BUSY) instead of sleeping and retrying.
async fn impatient(url: &str) -> Db {
    let db = connect(url).await.unwrap();
    let mut conns = futures_util::future::try_join_all((0..4).map(|_| db.pool().acquire())).await.unwrap();
    for conn in &mut conns {
        sqlx::query("PRAGMA busy_timeout = 0").execute(&mut **conn).await.unwrap();
    }
    db
}

/// Whether another process could take the write lock of `file` now.
#[allow(clippy::incompatible_msrv)] // as in `lock`
fn lock_is_free(file: &std::path::Path) -> bool {
    let lock = std::fs::File::open(format!("{}.lock", file.display())).unwrap();
    match lock.try_lock() {
        Ok(()) => true,
        Err(std::fs::TryLockError::WouldBlock) => false,
        Err(std::fs::TryLockError::Error(e)) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_lock_is_held_from_begin_to_commit_and_serialises_two_handles() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("l.sqlite");
    let url = format!("sqlite://{}", file.display());
    let (a, b) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    migrate(&a, MIGRATIONS).await.unwrap();
    assert!(lock_is_free(&file));

    let mut held = begin_write(&a).await.unwrap();
    assert!(!lock_is_free(&file), "a write transaction holds the file's lock");
    // Reads do not wait for it.
    let mut read = begin_read(&b).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things").fetch_one(&mut *read).await.unwrap();
    assert_eq!(n, 0);
    read.commit().await.unwrap();

    // The other handle's writer waits for the commit, then sees what it committed.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let mut tx = begin_write(&b).await?;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM things").fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        }
    });
    sqlx::query("INSERT INTO things (name) VALUES ('a')").execute(&mut *held).await.unwrap();
    assert!(!waiting.is_finished());
    held.commit().await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the waiter was not woken");
    assert_eq!(seen.unwrap().unwrap(), 1);
    assert!(lock_is_free(&file), "committed and released");

    // Rolled back, and dropped: released either way.
    begin_write(&a).await.unwrap().rollback().await.unwrap();
    assert!(lock_is_free(&file));
    drop(begin_write(&a).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !lock_is_free(&file) {
        assert!(tokio::time::Instant::now() < deadline, "a dropped transaction kept the lock");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_for_the_write_lock_leaves_it_to_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.sqlite").display());
    let (a, b) = (connect(&url).await.unwrap(), impatient(&url).await);
    migrate(&a, MIGRATIONS).await.unwrap();

    for _ in 0..50 {
        let holder = begin_write(&a).await.unwrap();
        // Waiting in both places a writer waits: queued behind another task of its own
        // process, and first in line on the file.
        let first = tokio::spawn({
            let b = b.clone();
            async move { begin_write(&b).await.map(drop) }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move { begin_write(&b).await.map(drop) }
        });
        tokio::task::yield_now().await;
        first.abort();
        second.abort();
        assert!(first.await.unwrap_err().is_cancelled() || second.await.unwrap_err().is_cancelled());
        holder.commit().await.unwrap();

        // SQLite does not wait on `b`: if anything still held a lock, this would be BUSY.
        let write = async {
            let mut tx = begin_write(&b).await?;
            sqlx::query("INSERT INTO things (name) VALUES ($1)")
                .bind(crate::time::unix_millis().to_string() + &rand::random::<u64>().to_string())
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        tokio::time::timeout(Duration::from_secs(5), write).await.expect("the write lock was left held").unwrap();
        let dropped = begin_write(&a).await.unwrap();
        drop(dropped);
        tokio::time::timeout(Duration::from_secs(5), begin_write(&b))
            .await
            .expect("a dropped transaction kept the lock")
            .unwrap()
            .commit()
            .await
            .unwrap();
    }
}

/// Two handles (two processes) x 16 tasks, each a read-then-write of one counter, with
/// SQLite's busy wait off: every write succeeds (none meets SQLite's lock held) and none is
/// lost. Single statements through `acquire_write` take their turn alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_two_handles_never_meet_a_busy_database() {
    const TASKS: usize = 16;
    const WRITES: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("b.sqlite").display());
    let setup = connect(&url).await.unwrap();
    migrate(&setup, MIGRATIONS).await.unwrap();
    sqlx::query("INSERT INTO things (id, name, colour) VALUES (1, 'counter', '0')")
        .execute(setup.pool())
        .await
        .unwrap();
    let handles = [impatient(&url).await, impatient(&url).await];

    let tasks = handles.iter().flat_map(|db| {
        (0..TASKS).map(move |t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..WRITES {
                    if (t + i) % 5 == 0 {
                        sqlx::query("INSERT INTO things (name) VALUES ($1)")
                            .bind(format!("{}-{t}-{i}", rand::random::<u64>()))
                            .execute(&mut *acquire_write(&db).await?)
                            .await?;
                    }
                    let mut tx = begin_write(&db).await?;
                    let n: String =
                        sqlx::query_scalar("SELECT colour FROM things WHERE id = 1").fetch_one(&mut *tx).await?;
                    let n: i64 = n.parse().unwrap();
                    sqlx::query("UPDATE things SET colour = $1 WHERE id = 1")
                        .bind((n + 1).to_string())
                        .execute(&mut *tx)
                        .await?;
                    commit(tx).await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
    });
    for done in futures_util::future::join_all(tasks.collect::<Vec<_>>()).await {
        done.unwrap().unwrap();
    }
    let n: String = sqlx::query_scalar("SELECT colour FROM things WHERE id = 1").fetch_one(setup.pool()).await.unwrap();
    assert_eq!(n, (2 * TASKS * WRITES).to_string());
}

/// A migrated database on a file, its handle with groups that take members for a minute
/// (so that a test's group does not end early on a slow machine), and its URL.
async fn grouped(dir: &tempfile::TempDir, name: &str) -> (Db, String) {
    let url = format!("sqlite://{}", dir.path().join(name).display());
    let db = connect(&url).await.unwrap();
    migrate(&db, MIGRATIONS).await.unwrap();
    db.write_lock.as_ref().unwrap().set_hold(Duration::from_secs(60));
    (db, url)
}

/// Waits until `n` writers of `db` wait for their turn.
async fn until_queued(db: &Db, n: usize) {
    let lock = db.write_lock.as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lock.queued() < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} writers never queued");
        tokio::task::yield_now().await;
    }
}

async fn names(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM things ORDER BY name").fetch_all(db.pool()).await.unwrap()
}

/// A member that inserts `name` and then commits, or rolls back, or is dropped.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Commit,
    Rollback,
    Drop,
}

fn member(db: &Db, name: &str, end: End) -> tokio::task::JoinHandle<Result<(), sqlx::Error>> {
    let (db, name) = (db.clone(), name.to_owned());
    tokio::spawn(async move {
        let mut tx = begin_write(&db).await?;
        sqlx::query("INSERT INTO things (name) VALUES ($1)").bind(&name).execute(&mut *tx).await?;
        match end {
            End::Commit => tx.commit().await,
            End::Rollback => tx.rollback().await,
            End::Drop => {
                drop(tx);
                Ok(())
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_members_commit_in_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = grouped(&dir, "g.sqlite").await;
    let before = db.group_commits();
    // The first member holds the turn while the others queue behind it.
    let mut first = begin_write(&db).await.unwrap();
    sqlx::query("INSERT INTO things (name) VALUES ('m0')").execute(&mut *first).await.unwrap();
    let others: Vec<_> = (1..8).map(|i| member(&db, &format!("m{i}"), End::Commit)).collect();
    until_queued(&db, 7).await;
    first.commit().await.unwrap();
    for done in others {
        done.await.unwrap().unwrap();
    }
    assert_eq!(db.group_commits() - before, 1, "eight members, one commit");
    assert_eq!(names(&db).await, ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
}

/// In one group, members that roll back, are dropped, or are cancelled mid-transaction
/// leave no trace; their group-mates' writes are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rolled_back_or_dropped_leaves_no_trace_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = grouped(&dir, "r.sqlite").await;
    let before = db.group_commits();
    let first = begin_write(&db).await.unwrap();
    let mut members = Vec::new();
    for (n, (end, name)) in
        [(End::Commit, "a"), (End::Rollback, "b"), (End::Drop, "c"), (End::Commit, "d")].into_iter().enumerate()
    {
        members.push(member(&db, name, end));
        until_queued(&db, n + 1).await;
    }
    // One more, cancelled while its transaction is open (a client that hangs up).
    let (inserted, was_inserted) = tokio::sync::oneshot::channel();
    let cancelled = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = begin_write(&db).await.unwrap();
            sqlx::query("INSERT INTO things (name) VALUES ('e')").execute(&mut *tx).await.unwrap();
            inserted.send(()).unwrap();
            std::future::pending::<()>().await;
        }
    });
    until_queued(&db, 5).await;
    let last = member(&db, "f", End::Commit);
    until_queued(&db, 6).await;
    // Its commit returns once the group's is done, after the cancelled member is gone.
    let first = tokio::spawn(first.commit());
    was_inserted.await.unwrap();
    cancelled.abort();
    first.await.unwrap().unwrap();
    for done in members.into_iter().chain([last]) {
        done.await.unwrap().unwrap();
    }
    assert_eq!(names(&db).await, ["a", "d", "f"]);
    assert_eq!(db.group_commits() - before, 1);
}

/// The group's COMMIT fails (a deferred foreign key, checked only there): every member of
/// the group gets the error, none of their writes is there, and the next writes work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_errors_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = grouped(&dir, "f.sqlite").await;
    sqlx::raw_sql(
        "CREATE TABLE parents (id INTEGER PRIMARY KEY);
         CREATE TABLE children (id INTEGER PRIMARY KEY,
             parent INTEGER NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let first = begin_write(&db).await.unwrap();
    let good = member(&db, "good", End::Commit);
    until_queued(&db, 1).await;
    let orphan = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = begin_write(&db).await?;
            sqlx::query("INSERT INTO children (parent) VALUES (42)").execute(&mut *tx).await?;
            tx.commit().await
        }
    });
    until_queued(&db, 2).await;
    let first = first.commit().await.unwrap_err();
    let (good, orphan) = (good.await.unwrap().unwrap_err(), orphan.await.unwrap().unwrap_err());
    for e in [&first, &good, &orphan] {
        assert!(e.to_string().contains("the group commit failed"), "{e}");
        assert!(e.to_string().contains("FOREIGN KEY constraint failed"), "{e}");
        assert!(transient(e), "a 503: {e}");
    }
    assert!(names(&db).await.is_empty());
    let children: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM children").fetch_one(db.pool()).await.unwrap();
    assert_eq!(children, 0);
    member(&db, "after", End::Commit).await.unwrap().unwrap();
    assert_eq!(names(&db).await, ["after"]);
}

/// Two handles (two processes) with many writers each: both make progress, every write is
/// there, and their writes shared commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_both_make_progress_in_groups() {
    const TASKS: usize = 8;
    const WRITES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (a, url) = grouped(&dir, "two.sqlite").await;
    let b = impatient(&url).await;
    let before = a.group_commits();
    let tasks = [&a, &b].into_iter().enumerate().flat_map(|(h, db)| {
        (0..TASKS).map(move |t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..WRITES {
                    member(&db, &format!("{h}-{t}-{i}"), End::Commit).await.unwrap()?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
    });
    for done in futures_util::future::join_all(tasks.collect::<Vec<_>>()).await {
        done.unwrap().unwrap();
    }
    assert_eq!(names(&a).await.len(), 2 * TASKS * WRITES);
    let (by_a, by_b) = (a.group_commits() - before, b.group_commits());
    assert!(by_a > 0 && by_b > 0, "{by_a} and {by_b} commits");
    assert!(by_a + by_b < (2 * TASKS * WRITES) as u64, "{by_a} + {by_b} commits for as many writes");
}

/// A database that answered a ping counts as answering for `PING_FRESH` (an idle instance's
/// readiness probes do not each query it); a failed ping counts for nothing, so every ping
/// after a failure queries again until one is answered.
#[tokio::test]
async fn a_ping_answer_counts_for_a_while_and_a_failure_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        crate::Config::from_vars(&crate::Vars::from_pairs([("DATA_DIR", dir.path().to_str().unwrap())]), "test")
            .unwrap();
    let db = open(&config, "ping.sqlite", MIGRATIONS).await.unwrap();
    assert_eq!(ping(&db).await, Ok(()));
    db.pool.close().await;
    assert_eq!(ping(&db).await, Ok(()), "answered a moment ago: no query");
    // The answer grows old: the next ping queries, and fails, and so does the one after.
    *db.answered.lock().unwrap() = Some(Instant::now() - PING_FRESH);
    for _ in 0..2 {
        let why = ping(&db).await.unwrap_err();
        assert!(why.starts_with("database: "), "{why}");
    }
}

/// `write_one` joins the group without a savepoint: writes that wait together share one
/// commit with the transactions beside them, and one refused by a constraint (a trigger's
/// `RAISE(ABORT)`) is undone alone while its group-mates commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_writes_share_a_group_and_a_refused_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = grouped(&dir, "o.sqlite").await;
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON things WHEN NEW.name = 'bad'
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let before = db.group_commits();
    let one = |name: &str| {
        let (db, name) = (db.clone(), name.to_owned());
        tokio::spawn(
            async move { write_one(&db, sqlx::query("INSERT INTO things (name) VALUES ($1)").bind(name)).await },
        )
    };
    let mut first = begin_write(&db).await.unwrap();
    sqlx::query("INSERT INTO things (name) VALUES ('w0')").execute(&mut *first).await.unwrap();
    let (good, bad, last) = (one("w1"), one("bad"), member(&db, "w2", End::Commit));
    until_queued(&db, 3).await;
    first.commit().await.unwrap();
    assert_eq!(good.await.unwrap().unwrap().rows_affected(), 1);
    let refused = bad.await.unwrap().unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused}");
    last.await.unwrap().unwrap();
    assert_eq!(db.group_commits() - before, 1, "four writers, one commit");
    assert_eq!(names(&db).await, ["w0", "w1", "w2"]);
}

/// With `announce_commits`, each commit (a group's, or a write outside the groups) bumps the
/// counts in the lock file once it is done: every commit, and those that ask for a look,
/// which all do but a commit whose writes all said they were quiet. The counts are the
/// file's, shared by every handle that announces; a handle that was not told to leaves them.
#[tokio::test]
async fn announced_commits_count_in_the_lock_file_with_the_looks_they_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let (db, url) = grouped(&dir, "a.sqlite").await;
    let path = db.announce_commits().expect("a file has a lock file");
    assert_eq!(path, dir.path().join("a.sqlite.lock"));
    let announced = || {
        let Announced { looks, commits } = Announced::read(&std::fs::File::open(&path).unwrap()).unwrap();
        (looks, commits)
    };
    assert_eq!(announced(), (0, 0), "nothing committed yet");
    let insert = |name: &str| sqlx::query("INSERT INTO things (name) VALUES ($1) RETURNING name").bind(name.to_owned());

    write_one(&db, insert("a")).await.unwrap();
    assert_eq!(announced(), (1, 1), "a group commit");
    let written = write_one_quiet_if(&db, insert("b"), |w| w.rows.len() == 1).await.unwrap();
    assert_eq!(written.rows.len(), 1);
    assert_eq!(announced(), (1, 2), "a quiet one");
    write_one_quiet_if(&db, insert("c"), |w| w.rows.is_empty()).await.unwrap();
    assert_eq!(announced(), (2, 3), "quiet only if nothing came back: a look");
    let mut tx = begin_write(&db).await.unwrap();
    sqlx::query("INSERT INTO things (name) VALUES ('d')").execute(&mut *tx).await.unwrap();
    commit(tx).await.unwrap();
    assert_eq!(announced(), (3, 4), "a member's group");
    sqlx::query("INSERT INTO things (name) VALUES ('e')")
        .execute(&mut *acquire_write(&db).await.unwrap())
        .await
        .unwrap();
    assert_eq!(announced(), (4, 5), "a write outside the groups, once its lock is let go");

    // Another handle on the file (another process's): announcing, it counts on in the file;
    // not told to, its commits are silent.
    let other = connect(&url).await.unwrap();
    write_one(&other, insert("f")).await.unwrap();
    assert_eq!(announced(), (4, 5));
    other.announce_commits();
    write_one_quiet_if(&other, insert("g"), |_| true).await.unwrap();
    assert_eq!(announced(), (4, 6));
    assert_eq!(names(&db).await, ["a", "b", "c", "d", "e", "f", "g"]);
    assert!(connect("sqlite::memory:").await.unwrap().announce_commits().is_none(), "no lock file in memory");
}

/// `read` serves reads on connections kept out of the pool: one serves reads in turn, at
/// most [`READERS`] are opened however many read at once (the rest pooled), and a read
/// dropped mid-statement leaves its connection answering the next one.
#[tokio::test]
async fn reads_run_on_kept_connections_given_back_without_the_pool() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (db, _) = grouped(&dir, "r.sqlite").await;
    write_one(&db, sqlx::query("INSERT INTO things (name) VALUES ('a')")).await.unwrap();
    let count = "SELECT COUNT(*) FROM things";
    for _ in 0..10 {
        let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *db.read().await.unwrap()).await.unwrap();
        assert_eq!(n, 1);
    }
    let readers = db.readers.clone().expect("a file keeps readers");
    assert_eq!(readers.open.load(Ordering::SeqCst), 1, "one connection served the reads in turn");

    let at_once = futures_util::future::join_all((0..READERS + 2).map(|_| db.read())).await;
    assert!(at_once.iter().all(Result::is_ok));
    assert_eq!(readers.open.load(Ordering::SeqCst), READERS, "the rest from the pool");
    drop(at_once);
    assert_eq!(readers.idle.lock().unwrap().len(), READERS, "all given back");

    // A long statement given up on: its connection still answers the next read.
    let slow =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000000) SELECT COUNT(*) FROM n";
    let mut conn = db.read().await.unwrap();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(1), sqlx::query_scalar::<_, i64>(slow).fetch_one(&mut *conn)).await;
    assert!(gave_up.is_err(), "the slow read is still running");
    drop(conn);
    for _ in 0..READERS {
        let n: i64 = sqlx::query_scalar(count).fetch_one(&mut *db.read().await.unwrap()).await.unwrap();
        assert_eq!(n, 1);
    }
    db.close().await;
    assert!(readers.idle.lock().unwrap().is_empty(), "closed with the pool");
}

/// `read_now` reads on the caller's thread what any handle of the file committed, keeps its
/// connection for the next read, never writes, drops a connection whose read failed, and
/// declines where there is no file (the caller then reads through `read`).
#[tokio::test]
async fn reads_now_see_what_every_handle_committed() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("now.sqlite").display());
    let (db, other) = (connect(&url).await.unwrap(), connect(&url).await.unwrap());
    migrate(&db, MIGRATIONS).await.unwrap();
    migrate(&other, MIGRATIONS).await.unwrap();
    let count = |db: &Db| db.read_now(|c| c.query_row("SELECT COUNT(*) FROM things", [], |r| r.get::<_, i64>(0)));
    let kept = |db: &Db| db.readers.as_ref().unwrap().direct.lock().unwrap().len();
    assert_eq!(count(&db), Some(0));
    for n in 1..=3 {
        sqlx::query("INSERT INTO things (name) VALUES ($1)").bind(format!("t{n}")).execute(other.pool()).await.unwrap();
        assert_eq!(count(&db), Some(n), "the other handle's commit {n} is seen at once");
    }
    assert_eq!(kept(&db), 1, "one connection served the reads in turn");

    let write = db.read_now(|c| c.execute("INSERT INTO things (name) VALUES ('w')", []));
    assert_eq!(write, None, "a read connection does not write");
    assert_eq!(kept(&db), 0, "a connection whose read failed is not kept");
    let failed = db.read_now(|c| c.query_row("SELECT nothing FROM things", [], |r| r.get::<_, i64>(0)));
    assert_eq!(failed, None);
    assert_eq!(count(&db), Some(3), "nothing written, and the next read opens a connection");

    // A transaction of the other handle, uncommitted: its row is not seen, nor waited for.
    let mut tx = other.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO things (name) VALUES ('open')").execute(&mut *tx).await.unwrap();
    assert_eq!(count(&db), Some(3));
    tx.rollback().await.unwrap();

    assert!(
        connect("sqlite::memory:").await.unwrap().read_now(|_| Ok::<(), rusqlite::Error>(())).is_none(),
        "in memory: no file to share"
    );
    db.close().await;
    assert_eq!(kept(&db), 0, "closed with the pool");
    assert_eq!(count(&db), None, "closed: left to the pool, which says so");
    assert_eq!(kept(&db), 0);
}

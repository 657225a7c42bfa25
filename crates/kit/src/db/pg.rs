//! What only PostgreSQL does: the pool with the service's schema on its `search_path`, the
//! migration lock, connecting and migrating until the server comes, and notifications.
//!
//! Every service keeps its tables in a schema of its own (`auth`, `data`, `compute`) of the
//! one database, so they can share a server without sharing a table name. Migrating takes a
//! transaction-scoped advisory lock first ([`MIGRATION_LOCK`], the same for every service
//! and instance): instances starting at once migrate one after the other, and all but the
//! first find nothing to do.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

use super::{Db, Migrations, Tx};

/// The advisory lock key held while migrating ("orch" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x6f72_6368;

/// How many connections one instance keeps to the server.
pub const MAX_CONNECTIONS: u32 = 6;

/// A lazy pool: no connection is made until one is wanted, so an instance starts (and says
/// why it is not ready) while the server is away. Each connection's `search_path` is
/// `schema` (a fixed lowercase name, never from a request).
pub(super) fn pool(url: &str, schema: &str) -> Result<AnyPool, sqlx::Error> {
    if !schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') || schema.is_empty() {
        return Err(sqlx::Error::Configuration(format!("invalid schema name {schema:?}").into()));
    }
    let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
    let set_path = format!("SET search_path TO {schema}");
    Ok(AnyPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move { conn.execute(sqlx::raw_sql(&set_path)).await.map(|_| ()) })
        })
        .connect_lazy_with(options))
}

/// The migration's transaction: the advisory lock held, the schema created.
pub(super) async fn begin_migrating(db: &Db) -> Result<Tx, sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
    sqlx::Executor::execute(&mut *tx, sqlx::raw_sql(&format!("CREATE SCHEMA IF NOT EXISTS {}", db.schema()))).await?;
    Ok(Tx::plain(tx, None))
}

/// Connects and migrates until it works (the server may come later), pausing up to 2 s
/// between tries; the reason it is not ready meanwhile is what [`super::ping`] says.
pub(super) async fn keep_migrating(db: Db, migrations: Migrations) {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::time::sleep(pause).await;
        match super::migrate(&db, &migrations).await {
            Ok(()) => {
                tracing::info!("database ready");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "database still not ready");
                db.set_not_ready(Some(e.to_string()));
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Sends `payload` on `channel` to every listener (at the commit of the transaction it is
/// part of, or at once outside one).
pub async fn notify(conn: &mut super::Conn, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM pg_notify($1, $2)").bind(channel).bind(payload).execute(conn).await.map(|_| ())
}

/// A listener on `channel` of the database `db` opened.
pub async fn listen(db: &Db, channel: &str) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(db.url()).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// A new, empty database on the server of `admin_url` (tests: each its own), and its URL.
pub async fn create_database(admin_url: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection;
    let name = format!("t_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::postgres::PgConnection::connect(admin_url).await?;
    sqlx::Executor::execute(&mut conn, &*format!("CREATE DATABASE {name}")).await?;
    conn.close().await?;
    let (base, query) = admin_url.split_once('?').map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    let server = if server.ends_with('/') || server.ends_with(':') { base } else { server };
    Ok(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

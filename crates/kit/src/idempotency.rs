//! `Idempotency-Key`: a write sent twice with the same key has one effect, and the second
//! answer is the first one, byte for byte, whichever instance receives it.
//!
//! The store is a table in the service's own database (shared by all its instances). A
//! write handler, inside its [`crate::db::begin_write`] transaction, first calls [`lookup`]:
//! a hit is answered as stored; otherwise it does the work and calls [`record`] with the
//! response, and commits both together. The write lock makes check-and-act atomic across
//! processes. Keys are scoped by route (`POST /api/data`) and by owner, kept at least 24 h
//! (while their owner stays within its limits), then purged.
//!
//! # Bounds
//!
//! Every record belongs to an *owner*: the JWT subject of the request (the [`Claims`] a
//! guard put in the request's extensions), or the anonymous owner `""` when there is none
//! (auth off: every client shares one allowance, since nothing that a client sends can
//! tell clients apart without being forged). An owner keeps at most [`Limits::max_keys`]
//! records and [`Limits::max_bytes`] bytes of them (`IDEMPOTENCY_MAX_KEYS_PER_USER`,
//! `IDEMPOTENCY_MAX_BYTES_PER_USER`); [`record`] evicts the owner's oldest records beyond
//! that, never the one it just wrote. Per-owner totals live in `idempotency_owners`,
//! updated in the same transaction as the records, so checking the bounds costs one upsert
//! rather than a scan. The extractor gives a key [`Limits::default`]; a service with limits
//! of its own sets them with [`Key::with_limits`].
//!
//! [`Claims`]: crate::jwt::Claims

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use crate::db::Conn;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::config::{ConfigError, Vars};
use crate::http::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The first table (kept for the services' migration history; [`RECORDS_MIGRATION_SQL`]
/// replaces it). Add both migrations, in this order, to a service's list.
pub const MIGRATION_SQL: &str = "CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);";

/// The store with owners and their totals. Safe to apply twice (services that share one
/// database file each apply it). Keys recorded before it are forgotten: they had no owner.
pub const RECORDS_MIGRATION_SQL: &str = "CREATE TABLE IF NOT EXISTS idempotency_records (
    seq INTEGER PRIMARY KEY,             -- the order of recording: the oldest go first
    owner TEXT NOT NULL,                 -- the JWT subject, '' when there is none
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    bytes BIGINT NOT NULL,               -- what the record counts against its owner
    created_at BIGINT NOT NULL,
    UNIQUE (owner, scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_records_owner ON idempotency_records (owner, seq);
CREATE INDEX IF NOT EXISTS idempotency_records_created ON idempotency_records (created_at);
CREATE TABLE IF NOT EXISTS idempotency_owners (
    owner TEXT PRIMARY KEY,
    keys BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
DROP TABLE IF EXISTS idempotency_keys;";

/// The same store on PostgreSQL (one migration: there is no history to keep), with an identity
/// column for the order of recording.
pub const PG_MIGRATION_SQL: &str = "CREATE TABLE idempotency_records (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT NOT NULL,
    body TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (owner, scope, key)
);
CREATE INDEX idempotency_records_owner ON idempotency_records (owner, seq);
CREATE INDEX idempotency_records_created ON idempotency_records (created_at);
CREATE TABLE idempotency_owners (
    owner TEXT PRIMARY KEY,
    keys BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);";

/// How much one owner may keep (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `IDEMPOTENCY_MAX_KEYS_PER_USER` (default 10000).
    pub max_keys: u64,
    /// `IDEMPOTENCY_MAX_BYTES_PER_USER` (default 16 MiB): keys, scopes, fingerprints and
    /// stored answers together.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_keys: 10_000, max_bytes: 16 << 20 }
    }
}

impl Limits {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let default = Self::default();
        Ok(Self {
            max_keys: vars.number("IDEMPOTENCY_MAX_KEYS_PER_USER", default.max_keys, 1, 100_000_000)?,
            max_bytes: vars.number("IDEMPOTENCY_MAX_BYTES_PER_USER", default.max_bytes, 1_024, 1 << 40)?,
        })
    }
}

/// A client's key, with who sent it and the limits that owner has. Reads as the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    key: String,
    owner: String,
    limits: Limits,
}

impl Key {
    pub fn new(key: impl Into<String>, owner: impl Into<String>, limits: Limits) -> Self {
        Self { key: key.into(), owner: owner.into(), limits }
    }

    /// The JWT subject that sent it, `""` when none.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The same key under `limits` (a service's configured ones).
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }
}

impl Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// The request's `Idempotency-Key`, if any: 1-255 visible ASCII characters, else 400. Its
/// owner is the JWT subject when a guard has verified one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<Key>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else { return Ok(Self(None)) };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        let Some(key) = key else {
            return Err(ApiError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters"));
        };
        let owner = parts.extensions.get::<crate::jwt::Claims>().map(|c| c.sub.as_str()).unwrap_or_default();
        Ok(Self(Some(Key::new(key, owner, Limits::default()))))
    }
}

/// A stored first outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub status: u16,
    pub body: String,
    /// What identified the first request's content (a hash of its body, say).
    pub fingerprint: String,
}

impl Stored {
    /// The stored answer, marked as a replay, or 422 if this request's content differs from
    /// the first one's (the same key reused for another operation is a client bug).
    pub fn replay(self, fingerprint: &str) -> Response {
        if self.fingerprint != fingerprint {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency-Key was already used with a different request body",
            )
            .into_response();
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut res = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], self.body).into_response();
        res.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        res
    }
}

/// The outcome its owner stored for `key` in `scope`, if any (and younger than the
/// retention).
pub async fn lookup(conn: &mut Conn, scope: &str, key: &Key) -> Result<Option<Stored>, sqlx::Error> {
    let cutoff = crate::time::unix_millis() - RETENTION.as_millis() as i64;
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT status, body, fingerprint FROM idempotency_records
         WHERE owner = $1 AND scope = $2 AND key = $3 AND created_at >= $4",
    )
    .bind(key.owner())
    .bind(scope)
    .bind(&**key)
    .bind(cutoff)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(status, body, fingerprint)| Stored { status: status as u16, body, fingerprint }))
}

/// Stores the outcome for `key` in `scope` (replacing an expired one), then evicts the
/// owner's oldest records beyond its limits. Call inside the write transaction of the work.
pub async fn record(
    conn: &mut Conn,
    scope: &str,
    key: &Key,
    fingerprint: &str,
    status: StatusCode,
    body: &str,
) -> Result<(), sqlx::Error> {
    let owner = key.owner();
    let bytes = (scope.len() + key.len() + fingerprint.len() + body.len()) as i64;
    let replaced: Option<i64> = sqlx::query_scalar(
        "DELETE FROM idempotency_records WHERE owner = $1 AND scope = $2 AND key = $3 RETURNING bytes",
    )
    .bind(owner)
    .bind(scope)
    .bind(&**key)
    .fetch_optional(&mut *conn)
    .await?;
    let newest: i64 = sqlx::query_scalar(
        "INSERT INTO idempotency_records (owner, scope, key, fingerprint, status, body, bytes, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq",
    )
    .bind(owner)
    .bind(scope)
    .bind(&**key)
    .bind(fingerprint)
    .bind(i64::from(status.as_u16()))
    .bind(body)
    .bind(bytes)
    .bind(crate::time::unix_millis())
    .fetch_one(&mut *conn)
    .await?;
    let (added_keys, added_bytes) = match replaced {
        Some(old) => (0, bytes - old),
        None => (1, bytes),
    };
    let (keys, total): (i64, i64) = sqlx::query_as(
        "INSERT INTO idempotency_owners (owner, keys, bytes) VALUES ($1, $2, $3)
         ON CONFLICT (owner) DO UPDATE SET keys = idempotency_owners.keys + excluded.keys,
            bytes = idempotency_owners.bytes + excluded.bytes
         RETURNING keys, bytes",
    )
    .bind(owner)
    .bind(added_keys)
    .bind(added_bytes)
    .fetch_one(&mut *conn)
    .await?;
    evict(conn, owner, key.limits(), newest, (keys, total)).await
}

/// Deletes `owner`'s oldest records, never `newest`, until `totals` (keys, bytes) are
/// within `limits`.
async fn evict(
    conn: &mut Conn,
    owner: &str,
    limits: Limits,
    newest: i64,
    totals: (i64, i64),
) -> Result<(), sqlx::Error> {
    let (max_keys, max_bytes) = (limits.max_keys as i64, limits.max_bytes as i64);
    let (mut keys, mut bytes) = totals;
    let (mut evicted, mut freed, mut last) = (0i64, 0i64, None);
    'scan: while keys > max_keys || bytes > max_bytes {
        let oldest: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, bytes FROM idempotency_records WHERE owner = $1 AND seq > $2 AND seq < $3
             ORDER BY seq LIMIT 64",
        )
        .bind(owner)
        .bind(last.unwrap_or(i64::MIN))
        .bind(newest)
        .fetch_all(&mut *conn)
        .await?;
        if oldest.is_empty() {
            break;
        }
        for (seq, size) in oldest {
            if keys <= max_keys && bytes <= max_bytes {
                break 'scan;
            }
            (keys, bytes) = (keys - 1, bytes - size);
            (evicted, freed, last) = (evicted + 1, freed + size, Some(seq));
        }
    }
    let Some(last) = last else { return Ok(()) };
    sqlx::query("DELETE FROM idempotency_records WHERE owner = $1 AND seq <= $2")
        .bind(owner)
        .bind(last)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE idempotency_owners SET keys = keys - $2, bytes = bytes - $3 WHERE owner = $1")
        .bind(owner)
        .bind(evicted)
        .bind(freed)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes records older than the retention, in batches of a write transaction each;
/// returns how many. With none to delete, it only reads (no write lock, no commit).
pub async fn purge_expired(db: &crate::db::Db) -> Result<u64, sqlx::Error> {
    let cutoff = crate::time::unix_millis() - RETENTION.as_millis() as i64;
    let any: Option<i64> = sqlx::query_scalar("SELECT seq FROM idempotency_records WHERE created_at < $1 LIMIT 1")
        .bind(cutoff)
        .fetch_optional(db.pool())
        .await?;
    if any.is_none() {
        return Ok(0);
    }
    let mut purged = 0;
    loop {
        let gone = crate::db::retry(db, || purge_batch(db, cutoff)).await?;
        purged += gone as u64;
        if gone < PURGE_BATCH {
            return Ok(purged);
        }
    }
}

const PURGE_BATCH: usize = 1_000;

/// One batch of [`purge_expired`]: how many records it deleted.
async fn purge_batch(db: &crate::db::Db, cutoff: i64) -> Result<usize, sqlx::Error> {
    const BATCH: usize = PURGE_BATCH;
    {
        let mut tx = crate::db::begin_write(db).await?;
        let gone: Vec<(String, i64)> = sqlx::query_as(
            "DELETE FROM idempotency_records WHERE seq IN
                (SELECT seq FROM idempotency_records WHERE created_at < $1 LIMIT $2)
             RETURNING owner, bytes",
        )
        .bind(cutoff)
        .bind(BATCH as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut per_owner: HashMap<&str, (i64, i64)> = HashMap::new();
        for (owner, bytes) in &gone {
            let totals = per_owner.entry(owner).or_default();
            *totals = (totals.0 + 1, totals.1 + bytes);
        }
        for (owner, (keys, bytes)) in per_owner {
            sqlx::query("UPDATE idempotency_owners SET keys = keys - $2, bytes = bytes - $3 WHERE owner = $1")
                .bind(owner)
                .bind(keys)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM idempotency_owners WHERE owner = $1 AND keys <= 0")
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.len())
    }
}

/// A stable fingerprint of a request body (FNV-1a, 64 bit, hex): enough to tell a reused
/// key from a retry, not a security boundary.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{self, Migration};

    const MIGRATIONS: db::Migrations = db::Migrations {
        sqlite: &[
            Migration { version: 1, name: "idempotency", sql: MIGRATION_SQL },
            Migration { version: 2, name: "idempotency records", sql: RECORDS_MIGRATION_SQL },
        ],
        postgres: &[Migration { version: 1, name: "idempotency", sql: PG_MIGRATION_SQL }],
    };

    /// A migrated database: SQLite, or PostgreSQL under `ORCH_TEST_DATABASE_URL`.
    async fn pool() -> (tempfile::TempDir, db::Db) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&crate::testing::database_url(dir.path(), "i.sqlite").await).await.unwrap();
        db::migrate(&pool, &MIGRATIONS).await.unwrap();
        (dir, pool)
    }

    fn key(key: &str, owner: &str) -> Key {
        Key::new(key, owner, Limits::default())
    }

    #[tokio::test]
    async fn first_outcome_wins() {
        let (_dir, pool) = pool().await;
        let k1 = key("k1", "7");
        let mut tx = db::begin_write(&pool).await.unwrap();
        assert_eq!(lookup(&mut tx, "POST /x", &k1).await.unwrap(), None);
        record(&mut tx, "POST /x", &k1, "f1", StatusCode::CREATED, r#"{"a":1}"#).await.unwrap();
        tx.commit().await.unwrap();

        let mut conn = pool.acquire().await.unwrap();
        let stored = lookup(&mut conn, "POST /x", &k1).await.unwrap().unwrap();
        assert_eq!(stored, Stored { status: 201, body: r#"{"a":1}"#.into(), fingerprint: "f1".into() });
        assert_eq!(lookup(&mut conn, "PUT /x", &k1).await.unwrap(), None, "scoped by route");
        assert_eq!(lookup(&mut conn, "POST /x", &key("k1", "8")).await.unwrap(), None, "scoped by owner");
        assert_eq!(lookup(&mut conn, "POST /x", &key("k1", "")).await.unwrap(), None, "scoped by owner");

        let res = stored.clone().replay("f1");
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()[REPLAYED_HEADER], "true");
        assert_eq!(stored.replay("f2").status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(purge_expired(&pool).await.unwrap(), 0);
    }

    /// The rows and the per-owner totals of `owner`: (keys in order of recording, totals).
    async fn store_of(pool: &db::Db, owner: &str) -> (Vec<String>, Option<(i64, i64)>) {
        let keys = sqlx::query_scalar("SELECT key FROM idempotency_records WHERE owner = $1 ORDER BY seq")
            .bind(owner)
            .fetch_all(pool.pool())
            .await
            .unwrap();
        let totals = sqlx::query_as("SELECT keys, bytes FROM idempotency_owners WHERE owner = $1")
            .bind(owner)
            .fetch_optional(pool.pool())
            .await
            .unwrap();
        (keys, totals)
    }

    async fn record_one(pool: &db::Db, key: &Key, body: &str) {
        let mut tx = db::begin_write(pool).await.unwrap();
        assert_eq!(lookup(&mut tx, "POST /x", key).await.unwrap(), None, "{key} is new");
        record(&mut tx, "POST /x", key, "f", StatusCode::OK, body).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn an_owner_keeps_at_most_max_keys_the_oldest_go_first() {
        let (_dir, pool) = pool().await;
        let limits = Limits { max_keys: 3, max_bytes: 1 << 20 };
        for i in 0..10 {
            record_one(&pool, &Key::new(format!("k{i}"), "ada", limits), "{}").await;
            let (keys, totals) = store_of(&pool, "ada").await;
            assert_eq!(keys.len(), (i + 1).min(3), "the store never grows past the cap");
            assert_eq!(totals.unwrap().0, keys.len() as i64, "the totals agree with the rows");
        }
        let (keys, _) = store_of(&pool, "ada").await;
        assert_eq!(keys, ["k7", "k8", "k9"], "the newest stay");
        let mut conn = pool.acquire().await.unwrap();
        assert!(lookup(&mut conn, "POST /x", &Key::new("k9", "ada", limits)).await.unwrap().is_some());
        assert!(lookup(&mut conn, "POST /x", &Key::new("k6", "ada", limits)).await.unwrap().is_none());
        drop(conn);

        // Another owner has an allowance of its own.
        record_one(&pool, &Key::new("k0", "bob", limits), "{}").await;
        assert_eq!(store_of(&pool, "bob").await.0, ["k0"]);
        assert_eq!(store_of(&pool, "ada").await.0.len(), 3);
    }

    #[tokio::test]
    async fn an_owner_keeps_at_most_max_bytes_but_always_the_newest() {
        let (_dir, pool) = pool().await;
        // Each record counts its scope (7), key (2), fingerprint (1) and body: 10 + 90.
        let limits = Limits { max_keys: 100, max_bytes: 250 };
        let body = "x".repeat(90);
        for i in 0..5 {
            record_one(&pool, &Key::new(format!("k{i}"), "ada", limits), &body).await;
        }
        assert_eq!(store_of(&pool, "ada").await, (vec!["k3".to_owned(), "k4".to_owned()], Some((2, 200))));
        // A record larger than the whole allowance stays, alone, until the next one.
        record_one(&pool, &Key::new("k5", "ada", limits), &"y".repeat(500)).await;
        assert_eq!(store_of(&pool, "ada").await, (vec!["k5".to_owned()], Some((1, 510))));
        record_one(&pool, &Key::new("k6", "ada", limits), &body).await;
        assert_eq!(store_of(&pool, "ada").await, (vec!["k6".to_owned()], Some((1, 100))));
    }

    #[tokio::test]
    async fn purging_keeps_the_totals_right() {
        let (_dir, pool) = pool().await;
        for i in 0..4 {
            record_one(&pool, &key(&format!("k{i}"), "ada"), "{}").await;
        }
        // Two records as if written two days ago; an expired key is recorded anew.
        let old = crate::time::unix_millis() - 2 * RETENTION.as_millis() as i64;
        sqlx::query("UPDATE idempotency_records SET created_at = $1 WHERE key IN ('k0', 'k1')")
            .bind(old)
            .execute(pool.pool())
            .await
            .unwrap();
        record_one(&pool, &key("k0", "ada"), "{}").await;
        let ada = |keys: &[&str], totals| (keys.iter().map(|k| k.to_string()).collect::<Vec<_>>(), Some(totals));
        // Each record counts "POST /x" (7), its key (2), "f" and "{}": 12 bytes.
        assert_eq!(store_of(&pool, "ada").await, ada(&["k1", "k2", "k3", "k0"], (4, 48)));
        assert_eq!(purge_expired(&pool).await.unwrap(), 1);
        assert_eq!(store_of(&pool, "ada").await, ada(&["k2", "k3", "k0"], (3, 36)));
    }

    #[test]
    fn limits_from_vars() {
        assert_eq!(Limits::from_vars(&Vars::from_pairs([("X", "1")])).unwrap(), Limits::default());
        let vars =
            Vars::from_pairs([("IDEMPOTENCY_MAX_KEYS_PER_USER", "5"), ("IDEMPOTENCY_MAX_BYTES_PER_USER", "4096")]);
        assert_eq!(Limits::from_vars(&vars).unwrap(), Limits { max_keys: 5, max_bytes: 4096 });
        let bad = Vars::from_pairs([("IDEMPOTENCY_MAX_KEYS_PER_USER", "0")]);
        assert!(Limits::from_vars(&bad).unwrap_err().to_string().contains("IDEMPOTENCY_MAX_KEYS_PER_USER"));
    }

    #[test]
    fn fingerprints() {
        assert_eq!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"a", b"b"]));
        assert_ne!(fingerprint(&[b"ab", b""]), fingerprint(&[b"a", b"b"]));
    }
}

//! `Idempotency-Key`: a write sent twice with the same key has one effect, and the second
//! answer is the first one, byte for byte, whichever instance receives it.
//!
//! The store is a table in the service's own database (shared by all its instances). A
//! write handler, inside its [`crate::db::begin_write`] transaction, first calls [`lookup`]:
//! a hit is answered as stored; otherwise it does the work and calls [`record`] with the
//! response, and commits both together. The write lock makes check-and-act atomic across
//! processes. Keys are scoped by route (`POST /api/data`), kept at least 24 h, then purged.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sqlx::SqliteConnection;

use crate::http::ApiError;

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replayed answer.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Add this migration to a service's list to get the table.
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

/// The request's `Idempotency-Key`, if any: 1-255 visible ASCII characters, else 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else { return Ok(Self(None)) };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        match key {
            Some(k) => Ok(Self(Some(k.to_owned()))),
            None => Err(ApiError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters")),
        }
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

/// The outcome stored for `key` in `scope`, if any (and younger than the retention).
pub async fn lookup(conn: &mut SqliteConnection, scope: &str, key: &str) -> Result<Option<Stored>, sqlx::Error> {
    let cutoff = crate::time::unix_millis() - RETENTION.as_millis() as i64;
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT status, body, fingerprint FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at >= $3",
    )
    .bind(scope)
    .bind(key)
    .bind(cutoff)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(status, body, fingerprint)| Stored { status: status as u16, body, fingerprint }))
}

/// Stores the outcome for `key` in `scope` (replacing an expired one).
pub async fn record(
    conn: &mut SqliteConnection,
    scope: &str,
    key: &str,
    fingerprint: &str,
    status: StatusCode,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (scope, key) DO UPDATE SET
            fingerprint = excluded.fingerprint, status = excluded.status,
            body = excluded.body, created_at = excluded.created_at",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(i64::from(status.as_u16()))
    .bind(body)
    .bind(crate::time::unix_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes keys older than the retention; returns how many.
pub async fn purge_expired(pool: &sqlx::SqlitePool) -> Result<u64, sqlx::Error> {
    let cutoff = crate::time::unix_millis() - RETENTION.as_millis() as i64;
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(cutoff).execute(pool).await?;
    Ok(done.rows_affected())
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

    #[tokio::test]
    async fn first_outcome_wins() {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::connect(&format!("sqlite://{}", dir.path().join("i.sqlite").display())).await.unwrap();
        db::migrate(&pool, &[Migration { version: 1, name: "idempotency", sql: MIGRATION_SQL }]).await.unwrap();

        let mut tx = db::begin_write(&pool).await.unwrap();
        assert_eq!(lookup(&mut tx, "POST /x", "k1").await.unwrap(), None);
        record(&mut tx, "POST /x", "k1", "f1", StatusCode::CREATED, r#"{"a":1}"#).await.unwrap();
        tx.commit().await.unwrap();

        let mut conn = pool.acquire().await.unwrap();
        let stored = lookup(&mut conn, "POST /x", "k1").await.unwrap().unwrap();
        assert_eq!(stored, Stored { status: 201, body: r#"{"a":1}"#.into(), fingerprint: "f1".into() });
        assert_eq!(lookup(&mut conn, "PUT /x", "k1").await.unwrap(), None, "scoped by route");

        let res = stored.clone().replay("f1");
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()[REPLAYED_HEADER], "true");
        assert_eq!(stored.replay("f2").status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(purge_expired(&pool).await.unwrap(), 0);
    }

    #[test]
    fn fingerprints() {
        assert_eq!(fingerprint(&[b"a", b"b"]), fingerprint(&[b"a", b"b"]));
        assert_ne!(fingerprint(&[b"ab", b""]), fingerprint(&[b"a", b"b"]));
    }
}

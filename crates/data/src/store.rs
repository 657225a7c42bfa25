//! The `items` table: reads on the pool, writes as [`Change`]s applied inside the caller's
//! write transaction.
//!
//! A change's outcome, success or refusal (404, 409, 412), is an [`Answer`]: a status and a
//! JSON body, which the API stores with the `Idempotency-Key` so a repeat gets it again.
//! Only database failures are errors; they roll the transaction back.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use sqlx::{SqliteConnection, SqlitePool};

/// An item as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub key: String,
    pub value: Value,
    pub metadata: Map<String, Value>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Item {
    pub fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "value": self.value,
            "metadata": self.metadata,
            "version": self.version,
            "createdAt": kit::time::iso_from_millis(self.created_at),
            "updatedAt": kit::time::iso_from_millis(self.updated_at),
        })
    }
}

type Row = (String, String, String, i64, i64, i64);

const COLUMNS: &str = "key, value, metadata, version, created_at, updated_at";

fn item_of((key, value, metadata, version, created_at, updated_at): Row) -> Result<Item, sqlx::Error> {
    let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
    Ok(Item {
        key,
        value: serde_json::from_str(&value).map_err(decode)?,
        metadata: serde_json::from_str(&metadata).map_err(decode)?,
        version,
        created_at,
        updated_at,
    })
}

pub async fn get(conn: impl sqlx::SqliteExecutor<'_>, key: &str) -> Result<Option<Item>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM items WHERE key = $1")).bind(key).fetch_optional(conn).await?;
    row.map(item_of).transpose()
}

/// Up to `limit` items with keys starting with `prefix`, after the key `after`, in key order.
pub async fn list(pool: &SqlitePool, prefix: &str, after: Option<&str>, limit: u32) -> Result<Vec<Item>, sqlx::Error> {
    let upper = crate::key::successor(prefix);
    // Bounds as an index range; the statement text varies only with which bounds exist.
    let mut sql = format!("SELECT {COLUMNS} FROM items WHERE key >= $1");
    if upper.is_some() {
        sql.push_str(" AND key < $2");
    }
    if after.is_some() {
        sql.push_str(" AND key > $3");
    }
    sql.push_str(" ORDER BY key LIMIT $4");
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(prefix)
        .bind(upper.as_deref().unwrap_or(""))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(item_of).collect()
}

/// What a write expects of the current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// `If-Match: *`: the item must exist.
    Any,
    Version(i64),
}

/// A write, fully validated.
#[derive(Clone, Debug)]
pub enum Change {
    Create { key: String, value: Value, metadata: Map<String, Value> },
    Update { key: String, value: Option<Value>, metadata: Option<Map<String, Value>>, expected: Option<Expected> },
    Delete { key: String, expected: Option<Expected> },
}

/// The outcome of a change as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    fn ok(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }

    fn refused(status: StatusCode, message: String, current: Option<i64>) -> Self {
        let mut body = json!({ "error": message });
        if let Some(v) = current {
            body["currentVersion"] = v.into();
        }
        Self { status, body }
    }

    fn not_found(key: &str) -> Self {
        Self::refused(StatusCode::NOT_FOUND, format!("no item with key {key:?}"), None)
    }
}

/// 412 unless `expected` allows changing an item at `current`.
fn precondition(expected: Option<Expected>, current: i64) -> Option<Answer> {
    match expected {
        Some(Expected::Version(v)) if v != current => Some(Answer::refused(
            StatusCode::PRECONDITION_FAILED,
            format!("version mismatch: expected version {v}, current version is {current}"),
            Some(current),
        )),
        _ => None,
    }
}

/// Applies `change` on `conn`, which must be inside a write transaction
/// ([`kit::db::begin_write`]): the read and the write below then see no other writer.
pub async fn apply(conn: &mut SqliteConnection, change: Change) -> Result<Answer, sqlx::Error> {
    let now = kit::time::unix_millis();
    match change {
        Change::Create { key, value, metadata } => {
            let done = sqlx::query(
                "INSERT INTO items (key, value, metadata, version, created_at, updated_at)
                 VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (key) DO NOTHING",
            )
            .bind(&key)
            .bind(value.to_string())
            .bind(Value::Object(metadata.clone()).to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                let current = get(&mut *conn, &key).await?.map(|i| i.version);
                let message = format!("an item with key {key:?} already exists");
                return Ok(Answer::refused(StatusCode::CONFLICT, message, current));
            }
            let item = Item { key, value, metadata, version: 1, created_at: now, updated_at: now };
            Ok(Answer::ok(StatusCode::CREATED, item.to_json()))
        }
        Change::Update { key, value, metadata, expected } => {
            let Some(mut item) = get(&mut *conn, &key).await? else { return Ok(Answer::not_found(&key)) };
            if let Some(refused) = precondition(expected, item.version) {
                return Ok(refused);
            }
            if let Some(value) = value {
                item.value = value;
            }
            if let Some(metadata) = metadata {
                item.metadata = metadata;
            }
            let done = sqlx::query(
                "UPDATE items SET value = $1, metadata = $2, version = version + 1, updated_at = $3
                 WHERE key = $4 AND version = $5",
            )
            .bind(item.value.to_string())
            .bind(Value::Object(item.metadata.clone()).to_string())
            .bind(now)
            .bind(&key)
            .bind(item.version)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() != 1 {
                // Cannot happen under the write lock; refuse rather than report a lost write.
                return Err(sqlx::Error::Protocol(format!("item {key:?} changed under the write lock")));
            }
            item.version += 1;
            item.updated_at = now;
            Ok(Answer::ok(StatusCode::OK, item.to_json()))
        }
        Change::Delete { key, expected } => {
            let Some(item) = get(&mut *conn, &key).await? else { return Ok(Answer::not_found(&key)) };
            if let Some(refused) = precondition(expected, item.version) {
                return Ok(refused);
            }
            sqlx::query("DELETE FROM items WHERE key = $1").bind(&key).execute(&mut *conn).await?;
            Ok(Answer::ok(StatusCode::OK, json!({ "message": "item deleted", "key": key, "version": item.version })))
        }
    }
}

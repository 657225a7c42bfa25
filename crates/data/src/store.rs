//! The `items` table: reads on the pool, writes as [`Change`]s applied inside the caller's
//! write transaction.
//!
//! `value` and `metadata` are stored as the JSON text the client sent and read back as
//! [`RawValue`]s, never as trees (see [`crate::json`]): what is written is what is read.
//!
//! A change's outcome, success or refusal (404, 409, 412), is an [`Answer`]: a status and a
//! JSON body, which the API stores with the `Idempotency-Key` so a repeat gets it again.
//! Only database failures are errors; they roll the transaction back.
//!
//! A list page ([`page`]) is bounded in bytes as well as in items: it first reads only the
//! keys and the stored lengths of the candidates, adds up the JSON each would take until the
//! byte budget is spent, and only then reads the texts of exactly those items, in the same
//! read transaction (one snapshot). A page therefore never holds more than its budget (or one
//! item, when that item alone is larger), whatever `limit` and however large the items.

use axum::http::StatusCode;
use futures_util::TryStreamExt;
use kit::db::{Conn, Db};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// An item as the API shows it: `{key, value, metadata, version, createdAt, updatedAt}`.
///
/// `J` is the JSON text of value and metadata: owned when read, borrowed when only the size
/// of an item's JSON is wanted ([`json_len`]), so both are written by one definition.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item<J = Box<RawValue>> {
    pub key: String,
    pub value: J,
    pub metadata: J,
    pub version: i64,
    #[serde(serialize_with = "iso")]
    pub created_at: i64,
    #[serde(serialize_with = "iso")]
    pub updated_at: i64,
}

fn iso<S: Serializer>(millis: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&kit::time::iso_from_millis(*millis))
}

type Row = (String, String, String, i64, i64, i64);

/// The columns of a [`Row`], as a literal (for `concat!`).
macro_rules! columns {
    () => {
        "key, value, metadata, version, created_at, updated_at"
    };
}

const COLUMNS: &str = columns!();

fn item_of(row: Row) -> Result<Item, sqlx::Error> {
    item_of_json(row).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn item_of_json((key, value, metadata, version, created_at, updated_at): Row) -> Result<Item, serde_json::Error> {
    Ok(Item {
        key,
        value: RawValue::from_string(value)?,
        metadata: RawValue::from_string(metadata)?,
        version,
        created_at,
        updated_at,
    })
}

/// `value` as JSON text (serialising a type of ours does not fail; if it did, it would be
/// reported like a database failure, as a 500).
fn to_json<T: Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

pub async fn get(conn: &mut Conn, key: &str) -> Result<Option<Item>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(GET).bind(key).fetch_optional(conn).await?;
    row.map(item_of).transpose()
}

const GET: &str = concat!("SELECT ", columns!(), " FROM items WHERE key = $1");

/// The item `key`, read on the caller's thread where the database allows it
/// ([`Db::read_now`]); `None`: read it with [`get`].
pub fn get_now(db: &Db, key: &str) -> Option<Option<Item>> {
    db.read_now(|conn| -> Result<_, Box<dyn std::error::Error>> {
        let mut statement = conn.prepare_cached(GET)?;
        let mut rows = statement.query([key])?;
        let Some(row) = rows.next()? else { return Ok(None) };
        let columns: Row = (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?);
        Ok(Some(item_of_json(columns)?))
    })
}

async fn version(conn: &mut Conn, key: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM items WHERE key = $1").bind(key).fetch_optional(conn).await
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<Item>,
    /// The key of the last item, when more items follow it.
    pub more_after: Option<String>,
    /// The JSON of the items, in bytes, with the commas between them.
    pub bytes: usize,
}

/// The bytes of an [`Item`]'s JSON whose value and metadata texts are `value_len` and
/// `metadata_len` bytes long.
fn json_len(item: &Item<&RawValue>, value_len: usize, metadata_len: usize) -> usize {
    /// Counts what is written to it.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter fails only if serialising fails, and ours does not.
    let _ = serde_json::to_writer(&mut count, item);
    count.0 - item.value.get().len() - item.metadata.get().len() + value_len + metadata_len
}

/// The `WHERE` and `ORDER BY` of a listing: keys in the prefix range `$1 <= key < $2` (no
/// upper bound when the prefix has no successor), after the cursor `$3`. The statement text
/// varies only with which bounds exist.
fn range(prefix: &str, after: Option<&str>) -> (String, Option<String>) {
    let upper = crate::key::successor(prefix);
    let mut sql = String::from("FROM items WHERE key >= $1");
    if upper.is_some() {
        sql.push_str(" AND key < $2");
    }
    if after.is_some() {
        sql.push_str(" AND key > $3");
    }
    (sql, upper)
}

/// Up to `limit` items with keys starting with `prefix`, after the key `after`, in key order,
/// whose JSON takes at most `max_bytes` (but at least one item, so paging always moves on).
pub async fn page(
    pool: &Db,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
    max_bytes: usize,
) -> Result<Page, sqlx::Error> {
    /// key, value and metadata lengths, version, created_at, updated_at.
    type Candidate = (String, i64, i64, i64, i64, i64);

    let (range, upper) = range(prefix, after);
    let mut tx = kit::db::begin_read(pool).await?;
    // The sizes first, one row at a time: keys, stored lengths and the small columns only.
    let sizes = format!(
        "SELECT key, octet_length(value), octet_length(metadata), version, created_at, updated_at
         {range} ORDER BY key LIMIT $4"
    );
    let (mut count, mut bytes, mut first, mut last, mut more) = (0_u32, 0_usize, None, None, false);
    {
        let mut candidates = sqlx::query_as::<_, Candidate>(&sizes)
            .bind(prefix)
            .bind(upper.as_deref().unwrap_or(""))
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit) + 1)
            .fetch(&mut *tx);
        while let Some((key, value_len, metadata_len, version, created_at, updated_at)) = candidates.try_next().await? {
            let shape = Item { key, value: RawValue::NULL, metadata: RawValue::NULL, version, created_at, updated_at };
            let size = json_len(&shape, value_len as usize, metadata_len as usize) + usize::from(count > 0);
            if count == limit || (count > 0 && bytes + size > max_bytes) {
                more = true;
                break;
            }
            count += 1;
            bytes += size;
            if first.is_none() {
                first = Some(shape.key.clone());
            }
            last = Some(shape.key);
        }
    }
    let (Some(first), Some(last)) = (first, last) else { return Ok(Page::default()) };
    // Then the texts of exactly those items, from the same snapshot.
    let rows: Vec<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM items WHERE key >= $1 AND key <= $2 ORDER BY key LIMIT $3"))
            .bind(&first)
            .bind(&last)
            .bind(i64::from(count))
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let items = rows.into_iter().map(item_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Page { items, more_after: more.then_some(last), bytes })
}

/// What a write expects of the current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// `If-Match: *`: the item must exist.
    Any,
    Version(i64),
}

/// A write, fully validated; value and metadata are JSON texts as the client sent them.
#[derive(Clone, Debug)]
pub enum Change {
    Create { key: String, value: Box<RawValue>, metadata: Box<RawValue> },
    Update { key: String, value: Option<Box<RawValue>>, metadata: Option<Box<RawValue>>, expected: Option<Expected> },
    Delete { key: String, expected: Option<Expected> },
}

/// The outcome of a change as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    /// The JSON body.
    pub body: String,
    /// The item version the body names (for the `ETag`), if any.
    pub version: Option<i64>,
}

/// A refusal's body: `{error, currentVersion?}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Refusal<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<i64>,
}

/// A deletion's body.
#[derive(Serialize)]
struct Deleted<'a> {
    message: &'static str,
    key: &'a str,
    version: i64,
}

/// The version an answer's body names (`{"version": ..}`), read without parsing the rest
/// into a tree: what the `ETag` of a replayed answer needs.
pub fn version_of(body: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Versioned {
        version: Option<i64>,
    }
    serde_json::from_str::<Versioned>(body).ok()?.version
}

impl Answer {
    fn item(status: StatusCode, item: &Item) -> Result<Self, sqlx::Error> {
        Ok(Self { status, body: to_json(item)?, version: Some(item.version) })
    }

    fn refused(status: StatusCode, message: String, current: Option<i64>) -> Result<Self, sqlx::Error> {
        let body = to_json(&Refusal { error: &message, current_version: current })?;
        Ok(Self { status, body, version: None })
    }

    fn not_found(key: &str) -> Result<Self, sqlx::Error> {
        Self::refused(StatusCode::NOT_FOUND, format!("no item with key {key:?}"), None)
    }
}

/// 412 unless `expected` allows changing an item at `current`.
fn precondition(expected: Option<Expected>, current: i64) -> Option<Result<Answer, sqlx::Error>> {
    match expected {
        Some(Expected::Version(v)) if v != current => Some(Answer::refused(
            StatusCode::PRECONDITION_FAILED,
            format!("version mismatch: expected version {v}, current version is {current}"),
            Some(current),
        )),
        _ => None,
    }
}

/// A create on its own, outside a transaction: one `INSERT` committed with the process's
/// group ([`kit::db::write_one`]: no savepoint, no statements but this one on the group's
/// connection), for a write with no idempotency record to keep beside it. An item already
/// there is refused as [`apply`] refuses it, with the version read just after.
pub async fn create_alone(
    db: &Db,
    key: String,
    value: Box<RawValue>,
    metadata: Box<RawValue>,
) -> Result<Answer, sqlx::Error> {
    let now = kit::time::unix_millis();
    let done = kit::db::write_one(db, insert(&key, &value, &metadata, now)).await?;
    let item = Item { key, value, metadata, version: 1, created_at: now, updated_at: now };
    created(&mut *db.read().await?, done.rows_affected() == 1, item).await
}

/// The insert of a new item at version 1, nothing when the key is taken (its values owned,
/// so it can run in a task of its own).
fn insert(
    key: &str,
    value: &RawValue,
    metadata: &RawValue,
    now: i64,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    sqlx::query(
        "INSERT INTO items (key, value, metadata, version, created_at, updated_at)
         VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key.to_owned())
    .bind(value.get().to_owned())
    .bind(metadata.get().to_owned())
    .bind(now)
}

/// A create's answer: `item` if `inserted`, else a 409 naming the version of the item that
/// holds the key (read on `conn`).
async fn created(conn: &mut Conn, inserted: bool, item: Item) -> Result<Answer, sqlx::Error> {
    if inserted {
        return Answer::item(StatusCode::CREATED, &item);
    }
    let current = version(conn, &item.key).await?;
    let message = format!("an item with key {:?} already exists", item.key);
    Answer::refused(StatusCode::CONFLICT, message, current)
}

/// Applies `change` on `conn`, which must be inside a write transaction
/// ([`kit::db::begin_write`]): the read and the write below then see no other writer (on
/// PostgreSQL, a serialisation failure instead, which the caller retries).
pub async fn apply(conn: &mut Conn, change: Change) -> Result<Answer, sqlx::Error> {
    let now = kit::time::unix_millis();
    match change {
        Change::Create { key, value, metadata } => {
            let done = insert(&key, &value, &metadata, now).execute(&mut *conn).await?;
            created(
                conn,
                done.rows_affected() == 1,
                Item { key, value, metadata, version: 1, created_at: now, updated_at: now },
            )
            .await
        }
        Change::Update { key, value, metadata, expected } => {
            let Some(mut item) = get(&mut *conn, &key).await? else { return Answer::not_found(&key) };
            if let Some(refused) = precondition(expected, item.version) {
                return refused;
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
            .bind(item.value.get())
            .bind(item.metadata.get())
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
            Answer::item(StatusCode::OK, &item)
        }
        Change::Delete { key, expected } => {
            let Some(current) = version(conn, &key).await? else { return Answer::not_found(&key) };
            if let Some(refused) = precondition(expected, current) {
                return refused;
            }
            sqlx::query("DELETE FROM items WHERE key = $1").bind(&key).execute(&mut *conn).await?;
            let body = to_json(&Deleted { message: "item deleted", key: &key, version: current })?;
            Ok(Answer { status: StatusCode::OK, body, version: Some(current) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_is_the_length_of_the_json() {
        for (key, value, metadata, version) in [
            ("k", "1", "{}", 1),
            ("ключ \"🔑\"\n\u{1}", r#"{"a": [1, 2.50, "\u00e9"]}"#, r#"{ "tag" : "x" }"#, 12345),
            (&"k".repeat(256), "null", "{}", i64::MAX),
        ] {
            let item = Item {
                key: key.to_owned(),
                value: RawValue::from_string(value.to_owned()).unwrap(),
                metadata: RawValue::from_string(metadata.to_owned()).unwrap(),
                version,
                created_at: 1_700_000_000_123,
                updated_at: 0,
            };
            let shape = Item {
                key: key.to_owned(),
                value: RawValue::NULL,
                metadata: RawValue::NULL,
                version,
                created_at: item.created_at,
                updated_at: item.updated_at,
            };
            assert_eq!(json_len(&shape, value.len(), metadata.len()), to_json(&item).unwrap().len(), "{key:?}");
        }
    }

    /// A point read on the caller's thread ([`get_now`], not a fallback to the pool) gives
    /// the item the pool's read gives, its texts exactly as written; a missing key is none.
    #[tokio::test]
    async fn an_item_read_now_is_the_item_the_pool_reads() {
        let dir = tempfile::tempdir().unwrap();
        let db = kit::db::connect(&format!("sqlite://{}", dir.path().join("d.sqlite").display())).await.unwrap();
        kit::db::migrate(&db, &crate::MIGRATIONS).await.unwrap();
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        let (value, metadata) = (r#"{"n": 1.50, "s": "\u00e9", "big": 12345678901234567890123}"#, r#"{ "tag" : "x" }"#);
        create_alone(&db, "ключ".into(), raw(value), raw(metadata)).await.unwrap();
        let now = get_now(&db, "ключ").expect("read on the caller's thread").expect("found");
        let pooled = get(&mut db.read().await.unwrap(), "ключ").await.unwrap().unwrap();
        assert_eq!(to_json(&now).unwrap(), to_json(&pooled).unwrap());
        assert_eq!((now.value.get(), now.metadata.get(), now.version), (value, metadata, 1));
        assert!(matches!(get_now(&db, "absent"), Some(None)));
    }

    #[test]
    fn versions_of_answers() {
        assert_eq!(version_of(r#"{"key":"k","value":{"version":7},"version":3}"#), Some(3));
        assert_eq!(version_of(r#"{"error":"x","currentVersion":3}"#), None);
        assert_eq!(version_of("not json"), None);
    }
}

//! The data routes: request parsing, the caller check, and the write path (one transaction
//! with its idempotency record).

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use kit::http::ApiError;
use kit::idempotency::{self, IdempotencyKey};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::AppState;
use crate::key;
use crate::store::{self, Answer, Change, Expected};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/data", get(list).post(create))
        .route("/api/data/{*key}", get(read).put(update).delete(remove))
        // An empty key: answered by the item handlers, which refuse it.
        .route(
            "/api/data/",
            fixed_key("").get(|State(state): State<AppState>, caller: Caller| read_item(state, caller, String::new())),
        )
        // These paths are also the health and simulated-work routes: a GET (and the work's
        // POST) goes there, the other methods to the item.
        .route(
            "/api/data/health",
            fixed_key("health").get(|State(state): State<AppState>| async move { state.health.health() }),
        )
        .route("/api/data/data-work", fixed_key("data-work").get(crate::work::work).post(crate::work::work))
        .with_state(state)
}

/// The caller of an item route: anyone when `AUTH_REQUIRED=false`, else the holder of a
/// valid bearer JWT (401 otherwise).
pub struct Caller(pub Option<kit::jwt::Claims>);

impl Caller {
    /// The user id, for logs.
    fn user(&self) -> Option<&str> {
        self.0.as_ref().map(|c| c.sub.as_str())
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match &state.keys {
            None => Ok(Self(None)),
            Some(keys) => keys.verify_request(&parts.headers).map(|claims| Self(Some(claims))),
        }
    }
}

/// PUT and DELETE for one key whose path a fixed route already takes.
fn fixed_key(key: &'static str) -> MethodRouter<AppState> {
    axum::routing::put(
        move |State(state): State<AppState>, caller: Caller, headers: HeaderMap, idem: IdempotencyKey, body: Bytes| {
            update_item(state, caller, key.to_owned(), headers, idem, body)
        },
    )
    .delete(move |State(state): State<AppState>, caller: Caller, headers: HeaderMap, idem: IdempotencyKey| {
        delete_item(state, caller, key.to_owned(), headers, idem)
    })
}

/// The key of an item path, percent-decoded (the handlers validate it).
fn path_key(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::bad_request(format!("invalid key in the path: {}", e.body_text())))?;
    Ok(key)
}

/// `ETag: "<version>"` for a successful answer that names a version.
fn with_etag(mut res: Response, version: Option<i64>) -> Response {
    if let (true, Some(version)) = (res.status().is_success(), version) {
        res.headers_mut().insert(header::ETAG, kit::http::header_value(&format!("\"{version}\"")));
    }
    res
}

/// A JSON body already written.
fn json_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.into()).into_response()
}

/// `value` written as JSON into a buffer of `capacity` bytes (the size, when known).
fn to_json<T: Serialize>(value: &T, capacity: usize) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, value).map_err(ApiError::internal)?;
    Ok(buf)
}

// ---- reads ----

async fn read(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    read_item(state, caller, key).await
}

async fn read_item(state: AppState, _: Caller, key: String) -> Result<Response, ApiError> {
    key::validate(&key)?;
    crate::metrics::get().item_reads.inc();
    let db = &state.pool;
    let key = &key;
    let found = match store::get_now(db, key) {
        Some(found) => found,
        None => kit::db::retry(db, move || async move { store::get(&mut *db.read().await?, key).await })
            .await
            .map_err(kit::db::api_error)?,
    };
    match found {
        Some(item) => {
            let capacity = item.value.get().len() + item.metadata.get().len() + 256;
            Ok(with_etag(json_response(StatusCode::OK, to_json(&item, capacity)?), Some(item.version)))
        }
        None => Err(ApiError::not_found(format!("no item with key {key:?}"))),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A list page as the client sees it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageBody<'a> {
    items: &'a [store::Item],
    next_cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    crate::metrics::get().list_reads.inc();
    let (default, max) = (state.config.list_default_limit, state.config.list_max_limit);
    let limit = match query.limit.as_deref().map(str::trim) {
        None | Some("") => default,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be a whole number from 1 to {max}")))?,
    };
    let prefix = query.prefix.unwrap_or_default();
    if prefix.len() > key::MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!("prefix must be at most {} bytes", key::MAX_KEY_BYTES)));
    }
    let after = query.cursor.filter(|c| !c.is_empty()).map(|c| key::decode_cursor(&c)).transpose()?;
    let (db, max_bytes, prefix, after) = (&state.pool, state.config.page_max_bytes, &prefix, after.as_deref());
    let page = kit::db::retry(db, move || store::page(db, prefix, after, limit, max_bytes))
        .await
        .map_err(kit::db::api_error)?;
    let body = PageBody { items: &page.items, next_cursor: page.more_after.as_deref().map(key::encode_cursor) };
    // The items' size is known: room for them and the envelope (a cursor is at most 512 bytes).
    Ok(json_response(StatusCode::OK, to_json(&body, page.bytes + 2 * key::MAX_KEY_BYTES + 64)?))
}

// ---- writes ----

/// A field that may be present with the value `null`: `Some("null")`, unlike absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

// Value and metadata are taken as the JSON text sent (`RawValue`), never parsed into a tree:
// they are stored and answered exactly as written (see `crate::json`). `null` metadata is
// `None`, as if absent.

#[derive(Deserialize)]
struct CreateBody {
    key: String,
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    expected_version: Option<Box<RawValue>>,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    idem: IdempotencyKey,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed: CreateBody = kit::http::parse_json(&body)?;
    key::validate(&parsed.key)?;
    let value = parsed.value.ok_or_else(|| ApiError::bad_request("missing field `value` (null is a value)"))?;
    state.check_value(&value)?;
    let metadata = state.metadata(parsed.metadata)?.unwrap_or_else(crate::json::empty_object);
    let scope = "POST /api/data";
    if idem.0.is_none() && state.pool.dialect() == kit::db::Dialect::Sqlite {
        // Nothing to record beside it: one statement in the group commit.
        let answer = store::create_alone(&state.pool, parsed.key, value, metadata).await.map_err(kit::db::api_error)?;
        return Ok(written(scope, &caller, answer));
    }
    let change = Change::Create { key: parsed.key, value, metadata };
    let fingerprint = idempotency::fingerprint(&[&body]);
    commit(&state, &caller, idem, scope.to_owned(), fingerprint, change).await
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    idem: IdempotencyKey,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    update_item(state, caller, key, headers, idem, body).await
}

async fn update_item(
    state: AppState,
    caller: Caller,
    key: String,
    headers: HeaderMap,
    idem: IdempotencyKey,
    body: Bytes,
) -> Result<Response, ApiError> {
    key::validate(&key)?;
    let parsed: UpdateBody = kit::http::parse_json(&body)?;
    if parsed.value.is_none() && parsed.metadata.is_none() {
        return Err(ApiError::bad_request("body must set value, metadata or both"));
    }
    if let Some(value) = &parsed.value {
        state.check_value(value)?;
    }
    let metadata = state.metadata(parsed.metadata)?;
    let expected = expected_version(&headers, parsed.expected_version)?;
    // The test-only broken version check (see `Config::break_version_check`).
    let expected = expected.filter(|_| !state.config.break_version_check);
    let fingerprint = idempotency::fingerprint(&[&body, if_match_bytes(&headers)]);
    let scope = format!("PUT /api/data/{key}");
    let change = Change::Update { key, value: parsed.value, metadata, expected };
    commit(&state, &caller, idem, scope, fingerprint, change).await
}

async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    idem: IdempotencyKey,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    delete_item(state, caller, key, headers, idem).await
}

async fn delete_item(
    state: AppState,
    caller: Caller,
    key: String,
    headers: HeaderMap,
    idem: IdempotencyKey,
) -> Result<Response, ApiError> {
    key::validate(&key)?;
    let expected = expected_version(&headers, None)?;
    let fingerprint = idempotency::fingerprint(&[if_match_bytes(&headers)]);
    let scope = format!("DELETE /api/data/{key}");
    commit(&state, &caller, idem, scope, fingerprint, Change::Delete { key, expected }).await
}

fn if_match_bytes(headers: &HeaderMap) -> &[u8] {
    headers.get(header::IF_MATCH).map_or(b"", HeaderValue::as_bytes)
}

/// The version a write expects, from `If-Match` (`3`, `"3"` or `*`) or `expectedVersion`.
fn expected_version(headers: &HeaderMap, body: Option<Box<RawValue>>) -> Result<Option<Expected>, ApiError> {
    let from_header = match headers.get(header::IF_MATCH) {
        None => None,
        Some(raw) => {
            let raw = raw.to_str().unwrap_or("").trim();
            let version = raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(raw);
            match version {
                "*" => Some(Expected::Any),
                v => Some(Expected::Version(parse_version(v).ok_or_else(|| {
                    ApiError::bad_request("If-Match must be an item version, like 3 or \"3\" (or *)")
                })?)),
            }
        }
    };
    let from_body = match body {
        None => None,
        Some(raw) => {
            // A whole number, or a string holding one.
            let version = match serde_json::from_str::<i64>(raw.get()) {
                Ok(n) => Some(n).filter(|v| *v >= 0),
                Err(_) => serde_json::from_str::<String>(raw.get()).ok().as_deref().and_then(parse_version),
            };
            Some(Expected::Version(
                version.ok_or_else(|| ApiError::bad_request("expectedVersion must be a whole number"))?,
            ))
        }
    };
    match (from_header, from_body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::bad_request("If-Match and expectedVersion disagree")),
        (h, b) => Ok(h.or(b)),
    }
}

fn parse_version(raw: &str) -> Option<i64> {
    raw.trim().parse::<i64>().ok().filter(|v| *v >= 0)
}

/// Runs `change` in one write transaction with its idempotency record: a repeated key gets
/// the stored answer and changes nothing; a new one gets the change and its answer stored,
/// committed together.
async fn commit(
    state: &AppState,
    caller: &Caller,
    idem: IdempotencyKey,
    scope: String,
    fingerprint: String,
    change: Change,
) -> Result<Response, ApiError> {
    // The caller owns its keys: one user's key never replays another's, and each user's
    // stored answers are bounded by the configured limits.
    let idem =
        idem.0.map(|key| idempotency::Key::new(&*key, caller.user().unwrap_or_default(), state.config.idempotency));
    // One transaction, run again on PostgreSQL after a serialisation failure (two writers of
    // one key, or of one idempotency key: the second then finds the first's answer).
    let (db, idem, scope, fingerprint, change) = (&state.pool, &idem, &scope, &fingerprint, &change);
    let outcome = kit::db::retry(db, move || async move {
        let mut tx = kit::db::begin_write(db).await?;
        if let Some(key) = idem
            && let Some(stored) = idempotency::lookup(&mut tx, scope, key).await?
        {
            return Ok(Err(stored));
        }
        let answer = store::apply(&mut tx, change.clone()).await?;
        if let Some(key) = idem {
            idempotency::record(&mut tx, scope, key, fingerprint, answer.status, &answer.body).await?;
        }
        kit::db::commit(tx).await?;
        Ok(Ok(answer))
    })
    .await
    .map_err(kit::db::api_error)?;
    let answer = match outcome {
        Ok(answer) => answer,
        Err(stored) => {
            let version = store::version_of(&stored.body);
            tracing::debug!(%scope, "replaying a stored answer");
            crate::metrics::get().replays.inc();
            return Ok(with_etag(stored.replay(fingerprint), version));
        }
    };
    Ok(written(scope, caller, answer))
}

/// The response to a write that was applied (or refused), counted.
fn written(scope: &str, caller: &Caller, Answer { status, body, version }: Answer) -> Response {
    tracing::debug!(%scope, status = status.as_u16(), user = caller.user(), "write");
    crate::metrics::get().written(status);
    with_etag(json_response(status, body), version)
}

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
use kit::http::{ApiError, Json};
use kit::idempotency::{self, IdempotencyKey};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

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
fn with_etag(mut res: Response, body: &Value) -> Response {
    if let (true, Some(version)) = (res.status().is_success(), body.get("version").and_then(Value::as_i64)) {
        res.headers_mut().insert(header::ETAG, kit::http::header_value(&format!("\"{version}\"")));
    }
    res
}

fn json_response(status: StatusCode, body: Value) -> Response {
    with_etag((status, Json(&body)).into_response(), &body)
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
    match store::get(&state.pool, &key).await.map_err(ApiError::internal)? {
        Some(item) => Ok(json_response(StatusCode::OK, item.to_json())),
        None => Err(ApiError::not_found(format!("no item with key {key:?}"))),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    _: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
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
    // One more than asked tells whether another page follows.
    let mut items = store::list(&state.pool, &prefix, after.as_deref(), limit + 1).await.map_err(ApiError::internal)?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| key::encode_cursor(&last.key))
    } else {
        None
    };
    let items: Vec<Value> = items.iter().map(store::Item::to_json).collect();
    Ok(Json(json!({ "items": items, "nextCursor": next })))
}

// ---- writes ----

/// A field that may be present with the value `null`: `Some(Value::Null)`, unlike absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct CreateBody {
    key: String,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    expected_version: Option<Value>,
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
    let metadata = state.metadata(parsed.metadata)?.unwrap_or_default();
    let change = Change::Create { key: parsed.key, value, metadata };
    let fingerprint = idempotency::fingerprint(&[&body]);
    commit(&state, &caller, idem, "POST /api/data".to_owned(), fingerprint, change).await
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
    if parsed.value.is_none() && parsed.metadata.as_ref().is_none_or(Value::is_null) {
        return Err(ApiError::bad_request("body must set value, metadata or both"));
    }
    if let Some(value) = &parsed.value {
        state.check_value(value)?;
    }
    let metadata = state.metadata(parsed.metadata)?;
    let expected = expected_version(&headers, parsed.expected_version)?;
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
fn expected_version(headers: &HeaderMap, body: Option<Value>) -> Result<Option<Expected>, ApiError> {
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
        None | Some(Value::Null) => None,
        Some(v) => {
            let version = match &v {
                Value::Number(n) => n.as_i64().filter(|v| *v >= 0),
                Value::String(s) => parse_version(s),
                _ => None,
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
    let mut tx = kit::db::begin_write(&state.pool).await.map_err(ApiError::internal)?;
    if let Some(key) = &idem.0 {
        if let Some(stored) = idempotency::lookup(&mut tx, &scope, key).await.map_err(ApiError::internal)? {
            drop(tx);
            let body: Value = serde_json::from_str(&stored.body).unwrap_or(Value::Null);
            tracing::debug!(%scope, idempotency_key = %key, "replaying a stored answer");
            return Ok(with_etag(stored.replay(&fingerprint), &body));
        }
    }
    let Answer { status, body } = store::apply(&mut tx, change).await.map_err(ApiError::internal)?;
    let text = body.to_string();
    if let Some(key) = &idem.0 {
        idempotency::record(&mut tx, &scope, key, &fingerprint, status, &text).await.map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    tracing::debug!(%scope, status = status.as_u16(), user = caller.user(), "write");
    let res = (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], text).into_response();
    Ok(with_etag(res, &body))
}

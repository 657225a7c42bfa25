//! The auth routes.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kit::http::{ApiError, Json};
use kit::jwt::Claims;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::account::{self, EMAIL_MAX_LENGTH};
use crate::client::Client;

/// The one answer to a wrong username, email or password.
pub const BAD_CREDENTIALS: &str = "invalid username/email or password";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/signup", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/signin", post(login))
        .route("/api/auth/verify", get(verify).post(verify))
        .route("/api/auth/profile", get(profile))
        .with_state(state)
}

#[derive(Deserialize)]
struct RegisterBody {
    username: String,
    email: String,
    password: String,
}

async fn register(State(state): State<AppState>, Json(body): Json<RegisterBody>) -> Result<Response, ApiError> {
    let RegisterBody { username, email, password } = body;
    account::validate_username(&username).map_err(ApiError::bad_request)?;
    account::validate_email(&email).map_err(ApiError::bad_request)?;
    account::validate_password(&password, state.config.password_min_length).map_err(ApiError::bad_request)?;
    // Refuse a taken name before spending a hash on it; `insert` catches the race.
    account::check_free(&state.pool, &username, &email).await?;
    let hash = state.hasher.hash(password).await?;
    let user = account::insert(&state.pool, &username, &email, &hash).await?;
    tracing::info!(user_id = user.id, username = %user.username, "registered");
    let body = json!({ "message": "User registered successfully", "user": user });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    email: Option<String>,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    Json(body): Json<LoginBody>,
) -> Result<Response, ApiError> {
    let present = |s: Option<String>| s.filter(|s| !s.is_empty());
    let identifier = present(body.username)
        .or(present(body.email))
        .ok_or_else(|| ApiError::bad_request("username or email is required"))?;
    let found = account::find(&state.pool, &identifier).await?;
    let account = match &found {
        Some(c) => format!("user:{}", c.user.id),
        None => format!("name:{}", account::lookup_key(&identifier).chars().take(EMAIL_MAX_LENGTH).collect::<String>()),
    };
    // The throttle is checked while holding a hashing slot, and a failure is recorded
    // before the slot is given back: parallel guesses queue for the slots, so no more than
    // the limit plus the slots in flight (on all instances) are ever checked. A burst of
    // right passwords is never refused.
    let slot = state.hasher.slot().await?;
    let standing = state.throttle.check(&state.pool, &account, &client).await?;
    if let Some(wait) = standing.wait {
        tracing::info!(%account, %client, "login refused: too many failures");
        crate::metrics::get().login("locked");
        return Ok(too_many_failures(wait));
    }
    let hash = found.as_ref().map(|c| c.password_hash.clone());
    let (verified, slot) = state.hasher.verify(slot, body.password, hash).await?;
    let user = match found {
        Some(credentials) if verified => credentials.user,
        _ => {
            state.throttle.failed(&state.pool, &account, &client).await?;
            drop(slot);
            tracing::info!(%account, %client, "login failed");
            crate::metrics::get().login("failed");
            return Err(ApiError::unauthorized(BAD_CREDENTIALS));
        }
    };
    drop(slot);
    state.throttle.succeeded(&state.pool, &standing, &account, &client).await?;
    let iat = kit::time::unix_millis() / 1000;
    let exp = iat + state.config.jwt_ttl.as_secs() as i64;
    let claims =
        Claims { sub: user.id.to_string(), username: user.username.clone(), email: user.email.clone(), iat, exp };
    let token = state.keys.sign(&claims);
    tracing::debug!(user_id = user.id, "logged in");
    crate::metrics::get().login("ok");
    Ok(Json(json!({ "token": token, "expiresIn": state.config.jwt_ttl.as_secs(), "user": user })).into_response())
}

/// 429 with `Retry-After` in whole seconds, rounded up.
fn too_many_failures(wait: std::time::Duration) -> Response {
    let secs = wait.as_millis().div_ceil(1000).max(1) as u64;
    let message = format!("too many failed logins, try again in {secs} seconds");
    let mut res = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

/// The claims as the original system showed them, plus `id` (the user id as a number).
fn claims_json(claims: &Claims) -> Value {
    let mut user = serde_json::to_value(claims).unwrap_or_default();
    if let (Some(map), Ok(id)) = (user.as_object_mut(), claims.sub.parse::<i64>()) {
        map.insert("id".into(), id.into());
    }
    user
}

async fn verify(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.keys.verify_request(&headers) {
        Ok(claims) => Json(json!({ "valid": true, "user": claims_json(&claims) })).into_response(),
        Err(e) => (e.status, Json(json!({ "valid": false, "error": e.message }))).into_response(),
    }
}

async fn profile(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let claims = state.keys.verify_request(&headers)?;
    let id: i64 = claims.sub.parse().map_err(|_| ApiError::unauthorized("token subject is not a user id"))?;
    let user = account::by_id(&state.pool, id).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(Json(json!({ "user": user })))
}

//! HTTP plumbing shared by every component: JSON errors, a JSON extractor whose rejections
//! are JSON, and request body limits. `serve` is [`crate::serve::serve`].
//!
//! Every error a client sees is `{"error": "..."}` with a fitting status code, including
//! the ones axum would otherwise answer in plain text (unknown route, wrong method,
//! malformed or oversized body).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::serve::BodyTimeout;
pub use crate::serve::serve;

/// An error as the client sees it: a status and a message, written as `{"error": message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than the limit of {limit} bytes"))
    }
    /// A failure whose cause is logged here and never shown to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
    }
    (status, axum::Json(Body { error: message })).into_response()
}

/// A JSON request body (any or no content type), or a JSON 400/413 saying what is wrong.
///
/// As a response it is `application/json`, like `axum::Json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            // Oversized bodies are answered by `finish`'s middleware before they get here; this
            // is the fallback for routers mounted without it.
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
            } else {
                ApiError::bad_request(format!("cannot read request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a JSON body, with serde's description of what is wrong and where.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body must be a JSON object, and it is empty"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// How many bytes of an oversized body are read and thrown away so the client, still
/// sending, can read the 413 instead of seeing its connection reset.
const DRAIN_CAP: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// `req` with its body read, up to `limit` bytes; beyond it, the 413 to answer (after
/// draining the rest of the body, so the client reads the answer).
async fn buffer_body(req: Request, limit: usize) -> Result<Request, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = body;
    let mut buffered = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(body_error(&e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buffered.len() + data.len() > limit {
                        drain(body).await;
                        return Err(ApiError::payload_too_large(limit));
                    }
                    buffered.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Request::from_parts(parts, Body::from(buffered)))
}

/// 408 for a body that arrived too slowly, else 400.
fn body_error(e: &axum::Error) -> ApiError {
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<BodyTimeout>()) {
        Some(timeout) => ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string()),
        None => ApiError::bad_request(format!("cannot read request body: {e}")),
    }
}

async fn drain(mut body: Body) {
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DRAIN_CAP {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// The finishing touches every component's router gets: JSON 404 for unknown routes, JSON
/// 405 for wrong methods, the body limit, JSON for every other error axum answers itself,
/// and the process's metrics (`GET /metrics`, every request counted: [`crate::metrics`]).
///
/// The three things done around each request are one middleware, [`around`]: each layer of
/// a router is a boxed service cloned and a boxed future per request and per route.
pub fn finish(router: Router, body_limit: usize) -> Router {
    finish_with(router, Around { limit: body_limit, traced: false })
}

/// [`finish`] inside [`crate::trace::layer`], in the same middleware: what a component without
/// a [`crate::guard`] mounts (the guarded ones keep the trace outside the guard).
pub fn finish_traced(router: Router, body_limit: usize) -> Router {
    finish_with(router, Around { limit: body_limit, traced: true })
}

fn finish_with(router: Router, settings: Around) -> Router {
    crate::metrics::track(router.fallback(not_found).method_not_allowed_fallback(method_not_allowed))
        .layer(DefaultBodyLimit::max(settings.limit))
        .layer(middleware::from_fn_with_state(settings, around))
}

/// What [`around`] does: the body limit, and whether the request is traced there.
#[derive(Clone, Copy)]
struct Around {
    limit: usize,
    traced: bool,
}

/// Middleware of [`finish`]: the request counted and timed ([`crate::metrics::Timing`]), its
/// body read within the limit ([`buffer_body`]), and a plain-text error answered as JSON
/// ([`json_errors`]); all of it inside [`crate::trace::within`] for [`finish_traced`].
async fn around(State(around): State<Around>, req: Request, next: Next) -> Response {
    // The request's future is moved from layer to layer as it is made: what only a request
    // with a body (reading it) or a plain-text error (rewriting it) awaits is boxed, so a
    // plain read's future is a third of the size.
    let serve = |req: Request| async move {
        let timing = crate::metrics::Timing::start(&req);
        let read = if http_body::Body::is_end_stream(req.body()) {
            Ok(req)
        } else {
            Box::pin(buffer_body(req, around.limit)).await
        };
        let mut response = match read {
            Ok(req) => next.run(req).await,
            Err(error) => error.into_response(),
        };
        if is_plain_error(&response) {
            response = Box::pin(json_errors(response)).await;
        }
        timing.finish(&response);
        response
    };
    if around.traced { crate::trace::within(req, serve).await } else { serve(req).await }
}

/// An error answered in something other than JSON: [`json_errors`] rewrites it.
fn is_plain_error(response: &Response) -> bool {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    !json && (status.is_client_error() || status.is_server_error())
}

/// The rejections axum writes in plain text (a query string or a path parameter that does
/// not parse, a WebSocket request without the upgrade) reach the client as
/// `{"error": "..."}` too, with their status and other headers.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let (parts, body) = response.into_parts();
    // Such rejections are a line of text; anything larger is not one of them.
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let mut answer = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!("no route for {} {}", req.method(), req.uri().path()))
}

pub(crate) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// A client builder for talking to the cluster: no proxies (everything is on this machine),
/// and `localhost` resolved to 127.0.0.1 without the system resolver (components bind
/// 127.0.0.1; `::1` would only be refused, and a static binary need not load NSS modules).
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().no_proxy().resolve("localhost", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The cluster-token guard of mutating calls: `Ok` when no token is configured, or when the
/// request carries `Authorization: Bearer <token>` (compared in constant time); else 401.
pub fn require_token(expected: Option<&crate::secret::Secret>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = expected else { return Ok(()) };
    match bearer(headers) {
        Some(token) if crate::secret::constant_time_eq(token.as_bytes(), expected.expose().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid token")),
        None => Err(ApiError::unauthorized(
            "missing token (Authorization: Bearer <token>: DATA_DIR/registry-token for the registry and the balancer, DATA_DIR/control-token for orch)",
        )),
    }
}

/// A header value from a string that is known to be valid (ids, numbers).
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    #[derive(serde::Deserialize, Serialize)]
    struct Thing {
        name: String,
    }

    fn app() -> Router {
        let query = |axum::extract::Query(q): axum::extract::Query<Limit>| async move { q.limit.to_string() };
        let path = |axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() };
        let routes = Router::new()
            .route("/thing", post(|Json(t): Json<Thing>| async move { Json(t) }))
            .route("/query", axum::routing::get(query))
            .route("/path/{n}", axum::routing::get(path))
            .route("/teapot", axum::routing::get(|| async { (StatusCode::IM_A_TEAPOT, [("retry-after", "5")], "") }));
        finish(routes, 16)
    }

    #[derive(serde::Deserialize)]
    struct Limit {
        limit: u32,
    }

    async fn call(req: Request) -> (StatusCode, serde_json::Value) {
        let res = app().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn post_body(body: &'static str) -> Request {
        Request::post("/thing").body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn errors_are_json() {
        let (status, body) = call(post_body(r#"{"name":"a"}"#)).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"name": "a"})));

        let (status, body) = call(post_body("{nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().starts_with("invalid JSON body"), "{body}");

        let (status, body) = call(post_body(r#"{"other":1}"#)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("missing field `name`"), "{body}");

        let (status, body) = call(post_body("")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("empty"), "{body}");

        let (status, body) = call(post_body(r#"{"name":"far too long a name"}"#)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body["error"].as_str().unwrap().contains("16 bytes"), "{body}");

        let (status, body) = call(Request::get("/nowhere").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no route for GET /nowhere");

        let (status, body) = call(Request::get("/thing").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body["error"].as_str().unwrap().contains("GET"), "{body}");
    }

    #[tokio::test]
    async fn axums_own_rejections_are_json() {
        let get = |uri: &'static str| Request::get(uri).body(Body::empty()).unwrap();
        let (status, body) = call(get("/query?limit=abc")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
        let (status, body) = call(get("/path/%ff")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().contains("UTF-8"), "{body}");
        let (status, body) = call(get("/path/x")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].is_string(), "{body}");

        let res = app().oneshot(get("/teapot")).await.unwrap();
        assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(res.headers()["retry-after"], "5", "other headers are kept");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["error"], "I'm a teapot");

        let res = app().oneshot(get("/query?limit=7")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"), "left alone");
    }

    #[test]
    fn bearer_tokens() {
        let headers = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            h
        };
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}

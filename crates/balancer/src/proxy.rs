//! The request path: route, pick an instance, forward, retry when it is safe, stream the
//! answer back.
//!
//! # Theory of operation
//!
//! A request's path picks its service (longest prefix). Its body is read before the first
//! attempt only when it is small and of known length (up to `RETRY_BUFFER_BYTES`), so it
//! can be sent again; anything larger streams through once, with the size limit counted
//! as it passes. Each attempt goes to an instance not tried yet, through a pooled
//! keep-alive connection (hyper-util's client; a request written on a pooled connection the
//! backend had just closed is re-sent on a fresh one by the client itself, since hyper can
//! tell it was never written).
//!
//! Whether a failed attempt is tried again follows [`Failure::retry`]: a request that never
//! reached a backend (connect refused, connect timeout) may always go to another instance;
//! one that did (the connection broke after it was written, or the backend answered
//! 502/503/504) only when it is idempotent — GET, HEAD, OPTIONS, PUT, DELETE, or any
//! method with an `Idempotency-Key`. A POST that reached a backend is never sent twice
//! otherwise. A request whose connection breaks on a second instance is not sent to a third:
//! it is a suspected poison request (one that makes instances crash), answered 502 and
//! counted, so one bad request cannot take every instance down in turn (refused connects
//! never reached a backend and do not count). `REQUEST_TIMEOUT_MS` bounds the whole
//! request up to the response head, over all attempts (reading a kept body included); when
//! it passes the client gets 504 (408 while its body was still being read) and nothing is
//! retried.
//!
//! Backends learn who the client is from two headers the balancer sets on every request
//! (retries included): `X-Real-IP`, the client connection's peer address (one the client
//! sent is replaced), and `X-Forwarded-For`, the client's own (all its fields, in order)
//! with that address appended, as nginx's `$proxy_add_x_forwarded_for` does. Appending
//! keeps a chain of proxies in front of the balancer visible, and only the last entry is
//! the balancer's word: everything before it is the client's and may be forged, so a
//! backend that trusts the balancer reads the last entry (auth's login throttle does).
//! Both are set after the hop-by-hop headers are removed, so a client cannot have them
//! removed by naming them in `Connection`.
//!
//! Connect errors and timeouts count against the instance (passive ejection, see
//! [`Instance::passive_failure`]). Counters are atomics; the response body carries an
//! [`InFlight`] guard so in-flight counts fall when the body has been streamed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Uri;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::AppState;
use crate::backend::{Instance, Service, Tried, pick};
use crate::body::{InFlight, RequestBody, ResponseBody};
use crate::error::{Failure, Retry};
use crate::pool::{self, Conn, SendError, UpstreamBody};
use crate::server::Worker;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_UPSTREAM_INSTANCE: HeaderName = HeaderName::from_static("x-upstream-instance");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Connections a request may break (lost after it was written) before it is no longer
/// sent anywhere: the second loss makes it a suspected poison request.
const MAX_LOSSES: u32 = 2;

/// Forwards a request to its service; every answer carries `X-Request-Id`. `peer` is the
/// client connection's address as a header value ([`peer_header`]).
///
/// The request comes as its parts and body, and everything a request needs is in this one
/// future: hyper moves the future into place once per request, so its size is paid on
/// every request. (These are plain functions returning `async move` blocks because an
/// `async fn` keeps two copies of each argument in its future.)
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub fn handle(
    worker: Arc<Worker>,
    peer: HeaderValue,
    mut parts: Parts,
    body: Incoming,
) -> impl Future<Output = Response<ResponseBody>> {
    async move {
        let started = Instant::now();
        let request_id = match parts.headers.get(&X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => new_request_id(),
        };
        let state = &*worker.state;
        let Some(route) = state.config.routes.find(parts.uri.path()) else {
            let message = format!("no route for {} {}", parts.method, parts.uri.path());
            return json_error(StatusCode::NOT_FOUND, &message, request_id);
        };
        let index = state.route_service[route];
        let service = &state.services[index];
        let figures = service.stats.at(worker.id);
        figures.begin();
        let refusal = match forward(&worker, index, service, &mut parts, body, &request_id, &peer, started).await {
            Ok(response) => return response,
            Err(refusal) => refusal,
        };
        let Refusal { status, message, close, tried } = refusal;
        figures.answered(status.as_u16(), started.elapsed(), Instant::now());
        figures.end();
        let mut response = json_error(status, message, request_id);
        if let Some(instance) = tried {
            // The instance whose failure this answer reports (a 502 or a 504).
            response.headers_mut().insert(X_UPSTREAM_INSTANCE.clone(), instance);
        }
        if close {
            // Part of the request body is still unread: this connection cannot carry
            // another request, and the client should know before it tries.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// An answer of the balancer's own instead of a backend's.
struct Refusal {
    status: StatusCode,
    message: &'static str,
    /// The client's body was not read to its end.
    close: bool,
    /// The last instance tried, when attempts failed.
    tried: Option<HeaderValue>,
}

impl From<(StatusCode, &'static str)> for Refusal {
    fn from((status, message): (StatusCode, &'static str)) -> Self {
        Self { status, message, close: false, tried: None }
    }
}

#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
fn forward(
    worker_ref: &Arc<Worker>,
    index: usize,
    service: &Arc<Service>,
    parts: &mut Parts,
    body: Incoming,
    request_id: &HeaderValue,
    peer: &HeaderValue,
    started: Instant,
) -> impl Future<Output = Result<Response<ResponseBody>, Refusal>> {
    async move {
        let (state, worker) = (&*worker_ref.state, worker_ref.id);
        // When the request is ready to go (after an injected delay or reading its body).
        let mut ready = started;
        if let Some(effect) = state.faults.check(&service.name) {
            if !effect.delay.is_zero() {
                Box::pin(tokio::time::sleep(effect.delay)).await;
                ready = Instant::now();
            }
            if let Some(status) = effect.error {
                let close = !body.is_end_stream();
                return Err(Refusal { status, message: "injected fault", close, tried: None });
            }
        }

        let config = &state.config;
        let deadline = tokio::time::Instant::from_std(started + config.request_timeout);
        let limit = config.kit.body_limit;
        let declared = content_length(&parts.headers);
        if declared.is_some_and(|n| n > limit as u64) {
            Box::pin(drain(body)).await;
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body is larger than the limit").into());
        }
        // A small body of known length is kept for retries; anything else streams through once.
        // Set when a streamed body passes the limit (only a streamed body needs it).
        let mut over = None;
        let (replay, mut stream) = if body.is_end_stream() {
            (Some(Bytes::new()), None)
        } else if declared.is_some_and(|n| n <= config.retry_buffer as u64) {
            match tokio::time::timeout_at(deadline, body.collect()).await {
                Ok(Ok(collected)) => {
                    ready = Instant::now();
                    (Some(collected.to_bytes()), None)
                }
                Err(_) => {
                    return Err(Refusal {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: "request body not received in time",
                        close: true,
                        tried: None,
                    });
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot read request body");
                    return Err(Refusal {
                        status: StatusCode::BAD_REQUEST,
                        message: "cannot read request body",
                        close: true,
                        tried: None,
                    });
                }
            }
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            over = Some(flag.clone());
            (None, Some(RequestBody::Stream { inner: body, seen: 0, limit, over: flag }))
        };
        let idempotent = is_idempotent(&parts.method) || parts.headers.contains_key(&IDEMPOTENCY_KEY);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        forwarded_for(&mut parts.headers, peer);
        // Backends get the origin form (`/path?query`), whatever form the client used.
        let target = origin_form(&parts.uri);

        let snapshot = worker_ref.snapshot();
        let pool = &snapshot.set.pools[index];
        if pool.is_empty() {
            let (status, message) = (StatusCode::SERVICE_UNAVAILABLE, "no healthy instance of this service");
            return Err(Refusal { status, message, close: replay.is_none(), tried: None });
        }
        let attempts = config.max_attempts as usize;
        let mut tried = Tried::default();
        let mut failure = Failure::Connect;
        let mut tried_last = None;
        let mut losses = 0;
        for attempt in 0..attempts {
            let Some(i) = pick(config.strategy, service, pool, &tried) else { break };
            tried.insert(i);
            let instance = &pool[i];
            if attempt > 0 {
                service.stats.at(worker).retries.fetch_add(1, Relaxed);
            }
            let last = attempt + 1 == attempts || attempt + 1 >= pool.len();
            let body = match (&replay, stream.take()) {
                (Some(bytes), _) => RequestBody::full(bytes.clone()),
                (None, Some(stream)) => stream,
                (None, None) => break,
            };
            let attempt_figures = instance.stats.at(worker);
            attempt_figures.begin();
            let sent = if attempt == 0 { ready } else { Instant::now() };
            // Built within the awaited expression: a named local would keep its storage (and
            // this future's size) across the await even after being moved.
            let outcome = tokio::time::timeout_at(
                deadline,
                pool::send(
                    instance,
                    worker,
                    upstream(
                        &parts.method,
                        &target,
                        if last { std::mem::take(&mut parts.headers) } else { copy_headers(&parts.headers) },
                        body,
                        instance,
                    ),
                    config.connect_timeout,
                ),
            )
            .await;
            let now = Instant::now();
            failure = match outcome {
                Ok(Ok((response, conn))) => {
                    let status = response.status();
                    instance.passive_success();
                    attempt_figures.answered(status.as_u16(), now - sent, now);
                    let unavailable = matches!(status.as_u16(), 502..=504);
                    if unavailable && !last && idempotent && replay.is_some() {
                        tracing::debug!(instance = %instance.id, %status, "retrying an idempotent request elsewhere");
                        attempt_figures.end();
                        Failure::Unavailable
                    } else {
                        service.stats.at(worker).answered(status.as_u16(), now - started, now);
                        let in_flight = InFlight {
                            worker: worker_ref.clone(),
                            snapshot: snapshot.clone(),
                            service: index,
                            instance: i,
                        };
                        // The copy kept for a retry that did not happen serves a later request.
                        recycle_headers(std::mem::take(&mut parts.headers));
                        return Ok(respond(response, conn, in_flight, request_id));
                    }
                }
                Ok(Err(e)) => {
                    let failure = match e {
                        _ if over.as_ref().is_some_and(|over| over.load(Relaxed)) => Failure::TooLarge,
                        SendError::Connect(_) => Failure::Connect,
                        SendError::Lost(_) => Failure::Lost,
                    };
                    attempt_failed(state, worker, service, instance, failure, &e);
                    failure
                }
                Err(_) => {
                    attempt_failed(state, worker, service, instance, Failure::Timeout, &"request timeout");
                    Failure::Timeout
                }
            };
            tried_last = Some(instance.header.clone());
            if failure == Failure::Lost {
                losses += 1;
                if losses == MAX_LOSSES {
                    failure = Failure::Poison;
                    service.stats.at(worker).poison.fetch_add(1, Relaxed);
                    tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), method = %parts.method,
                        path = parts.uri.path(), service = %service.name,
                        "suspected poison request: two instances lost the connection while handling it");
                    break;
                }
            }
            let again = match failure.retry() {
                Retry::Safe => replay.is_some() || stream.is_some(),
                Retry::IfIdempotent => idempotent && replay.is_some(),
                Retry::Never => false,
            };
            if !again {
                break;
            }
        }
        let (status, message) = failure.answer();
        Err(Refusal { status, message, close: replay.is_none(), tried: tried_last })
    }
}

fn attempt_failed(
    state: &AppState,
    worker: usize,
    service: &Service,
    instance: &Instance,
    failure: Failure,
    cause: &dyn std::fmt::Display,
) {
    let figures = instance.stats.at(worker);
    figures.errors.fetch_add(1, Relaxed);
    figures.end();
    service.stats.at(worker).errors.fetch_add(1, Relaxed);
    tracing::debug!(instance = %instance.id, ?failure, %cause, "attempt failed");
    if failure.ejects() && instance.passive_failure(state.config.eject_threshold) {
        tracing::warn!(instance = %instance.id, url = %instance.url, ?failure, "instance ejected");
    }
}

thread_local! {
    /// Emptied header maps, kept with their capacity: each request that may be retried
    /// sends a copy of its headers, and gives back the map it kept once answered.
    static SPARE_HEADERS: std::cell::RefCell<Vec<http::HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare maps kept per thread at most.
const MAX_SPARE_HEADERS: usize = 256;

/// A copy of `headers` (the same names and values in the same order), in a spare map when
/// there is one.
fn copy_headers(headers: &http::HeaderMap) -> http::HeaderMap {
    let spare = SPARE_HEADERS.with(|spare| spare.borrow_mut().pop());
    let Some(mut copy) = spare else { return headers.clone() };
    copy.reserve(headers.len());
    for (name, value) in headers {
        copy.append(name.clone(), value.clone());
    }
    copy
}

/// Keeps `headers`' map for [`copy_headers`].
fn recycle_headers(mut headers: http::HeaderMap) {
    if headers.capacity() == 0 {
        return;
    }
    headers.clear();
    SPARE_HEADERS.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_SPARE_HEADERS {
            spare.push(headers);
        }
    });
}

/// The request to send to `instance`.
fn upstream(
    method: &Method,
    target: &Uri,
    headers: http::HeaderMap,
    body: RequestBody,
    instance: &Instance,
) -> Request<RequestBody> {
    let mut upstream = Request::new(body);
    *upstream.method_mut() = method.clone();
    *upstream.uri_mut() = target.clone();
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = headers;
    if !upstream.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(instance.authority.as_str()).expect("an authority is a valid header value");
        upstream.headers_mut().insert(header::HOST, host);
    }
    upstream
}

fn respond(
    response: Response<Incoming>,
    conn: Option<Box<Conn>>,
    in_flight: InFlight,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    parts.headers.insert(X_UPSTREAM_INSTANCE.clone(), in_flight.instance().header.clone());
    let body = UpstreamBody::new(body, conn, in_flight);
    Response::from_parts(parts, ResponseBody::Upstream(body))
}

/// A client connection's peer address as a header value (the IP alone, an IPv4 address
/// mapped into IPv6 as IPv4), made once per connection.
pub fn peer_header(peer: SocketAddr) -> HeaderValue {
    let ip = peer.ip().to_canonical().to_string();
    HeaderValue::from_maybe_shared(Bytes::from(ip)).expect("an IP address is a valid header value")
}

/// Says who the client is (see the module docs): `X-Real-IP` is `peer`, and `peer` is
/// appended to the client's `X-Forwarded-For` (its fields joined, empty ones left out).
fn forwarded_for(headers: &mut http::HeaderMap, peer: &HeaderValue) {
    headers.insert(X_REAL_IP.clone(), peer.clone());
    let mut sent = match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(peer.clone());
            return;
        }
        header::Entry::Occupied(entry) => entry,
    };
    let entries = || sent.iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty());
    let mut joined = Vec::with_capacity(entries().map(|v| v.len() + 2).sum::<usize>() + peer.len());
    for entry in entries() {
        joined.extend_from_slice(entry);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // Bytes the client's header values already held, commas, spaces and an IP address.
    let value = HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or_else(|_| peer.clone());
    sent.insert(value);
}

/// `/path?query` of `uri` (`/` when it has none).
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Removes the headers that belong to one connection, not to the message.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages have none: a glance at a few names is cheaper than seven lookups.
    if headers.keys_len() <= 16 && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.remove(header::CONNECTION) {
        // Headers the Connection header names are hop-by-hop too.
        if let Ok(names) = connection.to_str() {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                    headers.remove(name);
                }
            }
        }
    }
    // `Expect: 100-continue` is answered on the client's side (hyper sends the 100 when
    // the body is first read), so the backend gets the body without being asked.
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &header::TE, &header::TRAILER, &header::UPGRADE, &header::EXPECT] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// One of the names `strip_hop_by_hop` always removes.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::UPGRADE,
        &header::EXPECT,
    ]
    .contains(&name)
}

/// Reads and drops an oversized body (up to a cap), so the client can read the 413.
async fn drain(mut body: Incoming) {
    const CAP: usize = 64 << 20;
    let discard = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > CAP {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), discard).await;
}

/// A new request id shaped like a UUID (version 4): a random number drawn once per thread,
/// plus a per-thread count, mixed so that consecutive ids look unrelated.
///
/// The ids of a thread are cut from one shared buffer, so making one (and cloning it into
/// the response) allocates nothing most of the time.
pub fn new_request_id() -> HeaderValue {
    /// Ids per buffer.
    const BATCH: usize = 256;
    thread_local! {
        static NEXT: std::cell::RefCell<(u128, u64, bytes::BytesMut)> =
            std::cell::RefCell::new((rand::random(), 0, bytes::BytesMut::new()));
    }
    NEXT.with(|next| {
        let (seed, n, buf) = &mut *next.borrow_mut();
        let count = *n;
        *n = count.wrapping_add(1);
        let out = format_request_id(*seed, count);
        if buf.capacity() < out.len() {
            buf.reserve(out.len() * BATCH);
        }
        buf.extend_from_slice(&out);
        HeaderValue::from_maybe_shared(buf.split().freeze()).expect("hex digits and dashes are a valid header value")
    })
}

/// The id number `n` of a thread whose random number is `seed`, as text.
fn format_request_id(seed: u128, n: u64) -> [u8; 36] {
    let bits = request_id_bits(seed, n);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = bits.to_be_bytes();
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    out
}

/// The 128 bits of id number `n`: `seed` mixed with a bijective mix of the count
/// (splitmix64), so ids differ in many digits, with the version (4) and variant bits set.
fn request_id_bits(seed: u128, n: u64) -> u128 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let random = seed ^ u128::from(z);
    (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62)
}

/// `{"error": message}` with `status`, made by the balancer itself.
pub fn json_error(status: StatusCode, message: &str, request_id: HeaderValue) -> Response<ResponseBody> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default();
    let mut response = Response::new(ResponseBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_REQUEST_ID.clone(), request_id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn request_ids_are_the_uuid_layout_of_their_bits() {
        // Digit by digit, as ids were first formatted.
        let reference = |seed: u128, n: u64| {
            let bits = request_id_bits(seed, n);
            let mut out = [0u8; 36];
            let mut nibble = 32;
            for (i, byte) in out.iter_mut().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    *byte = b'-';
                } else {
                    nibble -= 1;
                    *byte = b"0123456789abcdef"[((bits >> (nibble * 4)) & 0xf) as usize];
                }
            }
            out
        };
        for (seed, n) in [(0, 0), (u128::MAX, u64::MAX), (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 12345)] {
            assert_eq!(format_request_id(seed, n), reference(seed, n));
        }
        let ids: std::collections::HashSet<HeaderValue> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = http::HeaderMap::new();
        for (k, v) in [("connection", "close, x-secret"), ("x-secret", "1"), ("keep-alive", "5"), ("x-kept", "1")] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);

        for name in ["te", "trailer", "upgrade", "expect", "proxy-connection", "keep-alive", "connection"] {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("a"));
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.keys().collect::<Vec<_>>(), vec![header::HOST], "{name}");
        }
        // Past the quick scan too.
        let mut headers = http::HeaderMap::new();
        for n in 0..20 {
            headers.insert(HeaderName::try_from(format!("x-{n}")).unwrap(), HeaderValue::from_static("1"));
        }
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 20);
    }

    #[test]
    fn copied_headers_are_the_same() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::ACCEPT, HeaderValue::from_static("a"));
        headers.append(HeaderName::from_static("x-one"), HeaderValue::from_static("1"));
        headers.append(header::ACCEPT, HeaderValue::from_static("b"));
        let mut spare = http::HeaderMap::new();
        spare.insert(header::HOST, HeaderValue::from_static("old"));
        recycle_headers(spare);
        for _ in 0..2 {
            let copy = copy_headers(&headers);
            assert_eq!(copy, headers);
            let pairs = |m: &http::HeaderMap| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
            assert_eq!(pairs(&copy), pairs(&headers));
            recycle_headers(copy);
        }
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let peer = peer_header("127.0.0.1:4000".parse().unwrap());
        let check = |sent: &[(&'static str, &'static str)], forwarded: &str| {
            let mut headers = http::HeaderMap::new();
            for (name, value) in sent {
                headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            strip_hop_by_hop(&mut headers);
            forwarded_for(&mut headers, &peer);
            let all = |name: &HeaderName| headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
            assert_eq!(all(&X_FORWARDED_FOR), vec![forwarded], "{sent:?}");
            assert_eq!(all(&X_REAL_IP), vec!["127.0.0.1"], "{sent:?}");
        };
        check(&[], "127.0.0.1");
        check(&[("x-real-ip", "5.6.7.8"), ("x-real-ip", "9.9.9.9")], "127.0.0.1");
        check(&[("x-forwarded-for", "1.2.3.4")], "1.2.3.4, 127.0.0.1");
        check(
            &[("x-forwarded-for", "1.2.3.4, 10.0.0.1"), ("x-forwarded-for", " 2.2.2.2 ")],
            "1.2.3.4, 10.0.0.1, 2.2.2.2, 127.0.0.1",
        );
        check(&[("x-forwarded-for", ""), ("x-forwarded-for", "1.2.3.4")], "1.2.3.4, 127.0.0.1");
        // Naming them in `Connection` does not make the balancer drop its own.
        check(&[("connection", "x-forwarded-for, x-real-ip"), ("x-forwarded-for", "1.2.3.4")], "127.0.0.1");

        assert_eq!(peer_header("[::ffff:10.1.2.3]:80".parse().unwrap()), "10.1.2.3");
        assert_eq!(peer_header("[::1]:80".parse().unwrap()), "::1");
    }

    #[test]
    fn upstream_uris_keep_path_and_query() {
        let check = |original: &str, expected: &str| {
            assert_eq!(origin_form(&original.parse().unwrap()).to_string(), expected);
        };
        check("/api/data/k?x=1", "/api/data/k?x=1");
        check("http://elsewhere:1/api/data?y", "/api/data?y");
    }
}

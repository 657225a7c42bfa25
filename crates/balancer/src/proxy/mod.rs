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
//! # The phases, file by file
//!
//! [`handle`] routes the request (longest prefix) and counts it in its service's figures;
//! a `Forward` (`request`) then carries it through the phases, one method each: `faults` (an
//! injected delay or error, `intake`), `read_body` (keep a small body for retries or
//! stream it, `intake`), `prepare` (the headers backends get, `headers`), and per
//! attempt: `pick` an instance not tried yet ([`crate::backend::pick`]), `send` on a
//! pooled connection ([`crate::pool::send`]), and the retry decision (`retry_unavailable`,
//! `again`, `attempt`); the figures (`crate::stats`) are counted as each phase ends.
//!
//! Connect errors and timeouts count against the instance (passive ejection, see
//! [`crate::backend::Instance::passive_failure`]). Counters are atomics; the response body carries an
//! [`InFlight`] guard so in-flight counts fall when the body has been streamed.

pub(crate) mod attempt;
mod headers;
mod intake;
mod request;
pub mod trace;
mod upgrade;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::backend::pick;
use crate::error::Failure;
use crate::pool;
use crate::response::ResponseBody;
use crate::worker::{InFlight, Worker};

pub use headers::{
    X_FORWARDED_FOR, X_REAL_IP, X_REQUEST_ID, X_UPSTREAM_INSTANCE, forwarded_value, is_idempotent, new_request_id,
    peer_header,
};

use attempt::Attempts;
pub(crate) use attempt::Attempts as PastAttempts;
use headers::recycle_headers;
use request::{Forward, Refusal};
pub use upgrade::{is_upgrade, upgrade};

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
        // The route phase.
        let state = &*worker.state;
        let Some(route) = state.config.routes.find(parts.uri.path()) else {
            let message = format!("no route for {} {}", parts.method, parts.uri.path());
            return json_error(StatusCode::NOT_FOUND, &message, request_id);
        };
        let index = state.route_service[route];
        let service = &state.services[index];
        let figures = service.stats.at(worker.id);
        figures.begin();
        let request = Forward {
            worker: &worker,
            index,
            service,
            parts: &mut parts,
            request_id: &request_id,
            peer: &peer,
            started,
            ready: started,
            idempotent: false,
        };
        let refusal = match request.forward(body).await {
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

impl Forward<'_> {
    /// The request through its phases: faults, body, headers, then attempts (pick, send,
    /// retry decision) until one is answered or none may follow.
    #[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
    fn forward(mut self, body: Incoming) -> impl Future<Output = Result<Response<ResponseBody>, Refusal>> {
        async move {
            self.faults(body.is_end_stream()).await?;
            let mut outgoing = self.read_body(body).await?;
            let config = &self.worker.state.config;
            let deadline = self.deadline();
            // Backends get the origin form (`/path?query`), whatever form the client used.
            let target = self.prepare();

            let snapshot = self.worker.snapshot();
            let pool = &snapshot.set.pools[self.index];
            if pool.is_empty() {
                let (status, message) = (StatusCode::SERVICE_UNAVAILABLE, "no healthy instance of this service");
                return Err(Refusal { status, message, close: outgoing.replay.is_none(), tried: None });
            }
            let attempts = config.max_attempts as usize;
            let mut past = Attempts::default();
            for attempt in 0..attempts {
                let Some(i) = pick(config.strategy, self.service, pool, &past.tried) else { break };
                past.tried.insert(i);
                let instance = &pool[i];
                if attempt > 0 {
                    self.figures().retries.fetch_add(1, Relaxed);
                }
                let last = attempt + 1 == attempts || attempt + 1 >= pool.len();
                let Some(body) = outgoing.next() else { break };
                let attempt_figures = instance.stats.at(self.worker.id);
                attempt_figures.begin();
                let sent = if attempt == 0 { self.ready } else { Instant::now() };
                let worker = self.worker.id;
                // Built within the awaited expression: a named local would keep its storage (and
                // this future's size) across the await even after being moved.
                let outcome = tokio::time::timeout_at(
                    deadline,
                    pool::send(
                        &instance.idle,
                        instance.addr,
                        worker,
                        self.upstream(&target, body, last, instance),
                        config.connect_timeout,
                    ),
                )
                .await;
                let now = Instant::now();
                let failure = match outcome {
                    Ok(Ok((response, conn))) => {
                        let status = response.status();
                        instance.passive_success();
                        attempt_figures.answered(status.as_u16(), now - sent, now);
                        if self.retry_unavailable(status, last, &outgoing) {
                            tracing::debug!(instance = %instance.id, %status, "retrying an idempotent request elsewhere");
                            attempt_figures.end();
                            Failure::Unavailable
                        } else {
                            self.figures().answered(status.as_u16(), now - self.started, now);
                            let in_flight = InFlight {
                                worker: self.worker.clone(),
                                snapshot: snapshot.clone(),
                                service: self.index,
                                instance: i,
                            };
                            // The copy kept for a retry that did not happen serves a later request.
                            recycle_headers(std::mem::take(&mut self.parts.headers));
                            return Ok(attempt::respond(response, conn, in_flight, self.request_id));
                        }
                    }
                    Ok(Err(e)) => {
                        let failure = outgoing.failure(&e);
                        self.failed(instance, failure, &e);
                        failure
                    }
                    Err(_) => {
                        self.failed(instance, Failure::Timeout, &"request timeout");
                        Failure::Timeout
                    }
                };
                if !self.again(&mut past, failure, instance, &outgoing) {
                    break;
                }
            }
            let (status, message) = past.failure.answer();
            Err(Refusal { status, message, close: outgoing.replay.is_none(), tried: past.tried_last })
        }
    }
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

//! The fast path: the common request (HTTP/1.1, a body of known length small enough to keep,
//! no `Upgrade`, no `Expect`) read and forwarded without hyper, on a client connection the
//! fast path serves until something else comes; that and everything after it goes to hyper.
//!
//! # Theory of operation
//!
//! A client connection starts here ([`serve`]). Its bytes are read into one buffer, kept for
//! the connection's life; a request head is parsed there with httparse (no header map), and
//! the head the backend gets is written straight from it into another buffer, with the same
//! rewriting as hyper's path (`proxy::headers`: hop-by-hop fields out, `X-Request-Id`,
//! `X-Real-IP`, `X-Forwarded-For`, the trace's `traceparent`, `proxy::trace`). The body, of
//! declared length up to `RETRY_BUFFER_BYTES`, is read after the head (by
//! `REQUEST_TIMEOUT_MS`, else 408), so every attempt can send it: head and body go to the
//! backend in one write, on a plain keep-alive connection of that instance for this worker
//! ([`crate::pool::Plain`]). The phases (route, faults, pick, the retry decision, the
//! figures) are the ones `proxy` has, through the same functions (`proxy::attempt`). The
//! response head is parsed with httparse, rewritten for the client (`X-Request-Id`,
//! `X-Upstream-Instance`, `traceparent`), and sent with the body bytes that came with it;
//! the rest of the body follows as it comes, by `Content-Length`, by chunks (passed on as
//! they are, their sizes read to find the end) or to the end of the connection (the
//! client's connection then closes too).
//!
//! Whatever is not that common request — an admin path, `Upgrade`, `Expect`, a chunked or
//! large request body, HTTP/1.0, an absolute target, a malformed or oversized head — goes
//! to hyper with the bytes read so far ([`Rewind`]): the connection is hyper's from then on
//! (`server`), which answers it as before (431, 400, upgrades, streaming bodies). Requests
//! pipelined behind one are answered in turn from the buffer.
//!
//! The client's deadlines are [`ClientIo`]'s, as on hyper's path: a head counts in
//! [`Heads`] when it is complete, so the head deadline ends there and no deadline runs
//! while the backend works. A stop (`worker::Stop`) closes a connection between requests.

mod relay;
mod rewind;
mod wire;

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::task::Poll;
use std::time::Instant;

use http::StatusCode;
use http::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use rewind::Rewind;

use crate::admin;
use crate::backend::pick;
use crate::client::{ClientIo, Heads};
use crate::error::Failure;
use crate::proxy::attempt::{again, failed, retry_unavailable};
use crate::proxy::trace::Hop;
use crate::proxy::{PastAttempts, new_request_id};
use crate::worker::{InFlight, Stop, Worker};
use wire::{Added, MAX_FIELDS, Parsed, parse_request, write_client_head, write_refusal, write_upstream_head};

/// Targets longer go to hyper (which refuses those over its limit of 65534 bytes with 414).
const MAX_TARGET: usize = 16 << 10;

/// A connection's buffer larger than this is dropped after a request rather than kept.
const KEPT_BUFFER: usize = 32 << 10;

/// How a connection left the fast path.
pub enum Served {
    /// Closed (by either side, or by an error).
    Closed,
    /// hyper serves the rest, starting with the bytes read and not used.
    Hyper(Rewind<ClientIo>),
}

/// A connection the fast path leaves to hyper from its first byte (`BALANCER_FAST_PATH=false`).
pub fn skip(io: ClientIo) -> Served {
    Served::Hyper(Rewind::new(io, Vec::new()))
}

/// Serves `io`'s requests on the fast path until one is not for it (see the module docs).
pub async fn serve(worker: &Arc<Worker>, io: ClientIo, heads: &Heads, peer: &HeaderValue, stop: &Stop) -> Served {
    let mut conn = Conn {
        worker,
        io,
        heads,
        stop,
        peer,
        // Grown when first used: an idle or slow connection holds little.
        input: Vec::new(),
        out: Vec::new(),
        upstream: Vec::new(),
    };
    let mut stopped = pin!(stop.notify.notified());
    let mut registered = false;
    let max_head = worker.state.config.max_header_bytes;
    loop {
        let taken = loop {
            match conn.take() {
                Step::Head(taken) => break taken,
                Step::Hyper => return Served::Hyper(Rewind::new(conn.io, conn.input)),
                Step::More if conn.input.len() > max_head => return Served::Hyper(Rewind::new(conn.io, conn.input)),
                Step::More => {}
            }
            if conn.input.capacity() - conn.input.len() < 1024 {
                conn.input.reserve(4096);
            }
            let read = if conn.input.is_empty() {
                // Between requests a stop ends the connection. The first poll registers this
                // task with `stop`; later ones read its flag.
                let watch = poll_fn(|cx| {
                    if stop.asked(stopped.as_mut(), &mut registered, cx) { Poll::Ready(()) } else { Poll::Pending }
                });
                tokio::select! {
                    biased;
                    () = watch => return Served::Closed,
                    read = conn.io.read_buf(&mut conn.input) => read,
                }
            } else {
                conn.io.read_buf(&mut conn.input).await
            };
            match read {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        let keep = conn.request(taken).await;
        if !keep || stop.flag.load(Acquire) {
            let _ = conn.io.shutdown().await;
            return Served::Closed;
        }
        // A large body or head grew a buffer: it is not kept for the connection's life.
        if conn.input.is_empty() && conn.input.capacity() > KEPT_BUFFER {
            conn.input = Vec::new();
        }
        if conn.upstream.capacity() > KEPT_BUFFER {
            conn.upstream = Vec::new();
        }
        if conn.out.capacity() > KEPT_BUFFER {
            conn.out = Vec::new();
        }
    }
}

/// One client connection on the fast path, with its buffers.
struct Conn<'a> {
    worker: &'a Arc<Worker>,
    io: ClientIo,
    heads: &'a Heads,
    stop: &'a Stop,
    peer: &'a HeaderValue,
    /// The client's bytes not used yet.
    input: Vec<u8>,
    /// What is written next: the backend's request, or the client's answer.
    out: Vec<u8>,
    /// The backend's bytes.
    upstream: Vec<u8>,
}

/// What the start of the client's bytes is to the fast path.
enum Step {
    Head(Taken),
    More,
    Hyper,
}

/// A request head taken from the client's bytes (its upstream head written in `Conn::out`).
struct Taken {
    len: usize,
    body: usize,
    method: http::Method,
    /// The service's index, or the refusal's message when no route matches.
    service: Result<usize, String>,
    idempotent: bool,
    close: bool,
    request_id: HeaderValue,
    hop: Hop,
}

/// Why a request got an answer of the balancer's own.
struct Refusal {
    status: StatusCode,
    message: &'static str,
    tried: Option<HeaderValue>,
}

impl Conn<'_> {
    /// Parses the head at the start of `input`; on the fast path, writes the backend's head.
    fn take(&mut self) -> Step {
        let state = &*self.worker.state;
        let config = &state.config;
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let limit = config.max_headers.min(MAX_FIELDS);
        let head = match parse_request(&self.input, &mut fields[..limit], config.retry_buffer) {
            // hyper answers a head over the limit (431).
            Parsed::Head(head) if head.len > config.max_header_bytes => return Step::Hyper,
            Parsed::Head(head) => head,
            Parsed::Partial => return Step::More,
            Parsed::Other => return Step::Hyper,
        };
        let path = head.path.split('?').next().unwrap_or_default();
        // hyper's path answers a target too long (414) and the balancer's own endpoints.
        if head.path.len() > MAX_TARGET || admin::is_admin_path(path) {
            return Step::Hyper;
        }
        let service = match config.routes.find(path) {
            Some(route) => Ok(state.route_service[route]),
            None => Err(format!("no route for {} {}", head.method, path)),
        };
        let request_id = match head.request_id.map(HeaderValue::from_bytes) {
            Some(Ok(id)) => id,
            _ => new_request_id(),
        };
        let hop = Hop::begin(head.traceparent, config.trace_sample_percent, || {
            (head.method.clone(), head.path.parse().unwrap_or_default())
        });
        self.out.clear();
        write_upstream_head(&mut self.out, &head, &request_id, self.peer, hop.value());
        Step::Head(Taken {
            len: head.len,
            body: head.body,
            method: head.method,
            service,
            idempotent: head.idempotent,
            close: head.close,
            request_id,
            hop,
        })
    }

    /// Answers one request; returns whether the connection can carry another.
    async fn request(&mut self, taken: Taken) -> bool {
        self.heads.arrived();
        let started = Instant::now();
        let worker = self.worker;
        let config = &worker.state.config;
        let index = match &taken.service {
            Ok(index) => Some(*index),
            Err(_) => None,
        };
        let figures = index.map(|i| worker.state.services[i].stats.at(worker.id));
        if let Some(figures) = figures {
            figures.begin();
        }
        // The body phase: all of it, by the request's deadline.
        let end = taken.len + taken.body;
        let deadline = tokio::time::Instant::from_std(started + config.request_timeout);
        while self.input.len() < end {
            self.input.reserve(end - self.input.len());
            let (status, message) = match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.input)).await {
                Ok(Ok(n)) if n > 0 => continue,
                Ok(_) => (StatusCode::BAD_REQUEST, "cannot read request body"),
                Err(_) => (StatusCode::REQUEST_TIMEOUT, "request body not received in time"),
            };
            if let Some(figures) = figures {
                figures.answered(status.as_u16(), started.elapsed(), Instant::now());
                figures.end();
            }
            self.refuse(taken, Refusal { status, message, tried: None }, true).await;
            return false;
        }
        self.out.extend_from_slice(&self.input[taken.len..end]);
        let (Some(index), Some(figures)) = (index, figures) else {
            let message = taken.service.as_ref().err().cloned().unwrap_or_default();
            let close = taken.close;
            self.input.drain(..end);
            return self.refuse_with(taken, StatusCode::NOT_FOUND, &message, None, close).await;
        };
        self.input.drain(..end);
        let close = taken.close;
        let mut taken = taken;
        match self.forward(index, &mut taken, started).await {
            Ok(keep) => keep && !close,
            Err(refusal) => {
                figures.answered(refusal.status.as_u16(), started.elapsed(), Instant::now());
                figures.end();
                self.refuse(taken, refusal, close).await
            }
        }
    }

    /// The phases after the body: faults, then attempts until one is answered (and passed
    /// on: `Ok` says whether the connection can carry another request) or none may follow.
    async fn forward(&mut self, index: usize, taken: &mut Taken, started: Instant) -> Result<bool, Refusal> {
        let worker = self.worker;
        let state = &*worker.state;
        let config = &state.config;
        let service = &state.services[index];
        let figures = service.stats.at(worker.id);
        let mut ready = started;
        if let Some(effect) = state.faults.check(&service.name) {
            if !effect.delay.is_zero() {
                Box::pin(tokio::time::sleep(effect.delay)).await;
                ready = Instant::now();
            }
            if let Some(status) = effect.error {
                return Err(Refusal { status, message: "injected fault", tried: None });
            }
        }
        let deadline = tokio::time::Instant::from_std(started + config.request_timeout);
        let snapshot = worker.snapshot();
        let pool = &snapshot.set.pools[index];
        if pool.is_empty() {
            let (status, message) = (StatusCode::SERVICE_UNAVAILABLE, "no healthy instance of this service");
            return Err(Refusal { status, message, tried: None });
        }
        let attempts = config.max_attempts as usize;
        let mut past = PastAttempts::default();
        for attempt in 0..attempts {
            let Some(i) = pick(config.strategy, service, pool, &past.tried) else { break };
            past.tried.insert(i);
            let instance = &pool[i];
            if attempt > 0 {
                figures.retries.fetch_add(1, Relaxed);
            }
            let last = attempt + 1 == attempts || attempt + 1 >= pool.len();
            let attempt_figures = instance.stats.at(worker.id);
            attempt_figures.begin();
            let sent = if attempt == 0 { ready } else { Instant::now() };
            let outcome = tokio::time::timeout_at(
                deadline,
                relay::exchange(
                    &instance.plain,
                    instance.addr,
                    worker.id,
                    &self.out,
                    &taken.method,
                    &mut self.upstream,
                    config.connect_timeout,
                ),
            )
            .await;
            let now = Instant::now();
            let failure = match outcome {
                Ok(Ok((mut conn, head))) => {
                    instance.passive_success();
                    attempt_figures.answered(head.status, now - sent, now);
                    if retry_unavailable(head.status, last, taken.idempotent) {
                        tracing::debug!(instance = %instance.id, status = head.status, "retrying an idempotent request elsewhere");
                        attempt_figures.end();
                        Failure::Unavailable
                    } else {
                        figures.answered(head.status, now - started, now);
                        let in_flight = InFlight {
                            worker: worker.clone(),
                            snapshot: snapshot.clone(),
                            service: index,
                            instance: i,
                        };
                        let traceparent =
                            taken.hop.finish(head.status, Some(&taken.request_id), Some(&instance.header));
                        // A stopping worker closes the connection after this answer: the client is told.
                        let close = taken.close || head.framing == wire::Framing::Close || self.stop.flag.load(Acquire);
                        let added = Added {
                            request_id: &taken.request_id,
                            instance: Some(&instance.header),
                            traceparent: &traceparent,
                        };
                        self.out.clear();
                        write_client_head(&mut self.out, &self.upstream, &head, &added, close);
                        let passed = relay::pass_on(
                            config.idle_timeout,
                            &mut conn,
                            &head,
                            &mut self.upstream,
                            &mut self.out,
                            &mut self.io,
                        )
                        .await;
                        drop(in_flight);
                        return Ok(match passed {
                            Ok(reusable) => {
                                if reusable {
                                    instance.plain.checkin(worker.id, conn);
                                }
                                !close
                            }
                            Err(broken) => {
                                tracing::debug!(instance = %instance.id, error = %broken, "answer cut short");
                                false
                            }
                        });
                    }
                }
                Ok(Err((failure, e))) => {
                    failed(worker, figures, instance, failure, &e);
                    failure
                }
                Err(_) => {
                    failed(worker, figures, instance, Failure::Timeout, &"request timeout");
                    Failure::Timeout
                }
            };
            let poison = || {
                tracing::warn!(request_id = taken.request_id.to_str().unwrap_or("-"), method = %taken.method,
                    service = %service.name,
                    "suspected poison request: two instances lost the connection while handling it");
            };
            if !again(&mut past, failure, instance, figures, taken.idempotent, true, poison) {
                break;
            }
        }
        let (status, message) = past.failure.answer();
        Err(Refusal { status, message, tried: past.tried_last })
    }

    async fn refuse(&mut self, taken: Taken, refusal: Refusal, close: bool) -> bool {
        self.refuse_with(taken, refusal.status, refusal.message, refusal.tried, close).await
    }

    /// Writes an answer of the balancer's own; returns whether the connection can go on.
    async fn refuse_with(
        &mut self,
        taken: Taken,
        status: StatusCode,
        message: &str,
        tried: Option<HeaderValue>,
        close: bool,
    ) -> bool {
        let mut taken = taken;
        let traceparent = taken.hop.finish(status.as_u16(), Some(&taken.request_id), tried.as_ref());
        let added = Added { request_id: &taken.request_id, instance: tried.as_ref(), traceparent: &traceparent };
        self.out.clear();
        write_refusal(&mut self.out, status, message, &added, close);
        self.io.write_all(&self.out).await.is_ok() && !close
    }
}

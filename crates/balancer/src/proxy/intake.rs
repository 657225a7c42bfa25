//! The phases before a request's first attempt: injected faults, its body (kept for
//! retries when small and of known length, else streamed once with the limit counted),
//! and the headers backends get.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http::uri::Uri;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::headers::{
    IDEMPOTENCY_KEY, X_REQUEST_ID, content_length, forwarded_for, is_idempotent, origin_form, strip_hop_by_hop,
};
use super::request::{Forward, Refusal};
use crate::body::RequestBody;
use crate::error::Failure;
use crate::pool::SendError;

/// The body phase's outcome: what each attempt sends.
pub(super) struct Outgoing {
    /// A small body kept for retries (empty when there is none).
    pub replay: Option<Bytes>,
    /// The client's body, streamed through once (taken by the first attempt).
    stream: Option<RequestBody>,
    /// Set when a streamed body passes the limit (only a streamed body needs it).
    over: Option<Arc<AtomicBool>>,
}

impl Outgoing {
    /// The body for the next attempt; none once a streamed body has gone.
    pub fn next(&mut self) -> Option<RequestBody> {
        match (&self.replay, self.stream.take()) {
            (Some(bytes), _) => Some(RequestBody::full(bytes.clone())),
            (None, stream) => stream,
        }
    }

    /// Another attempt has a body to send.
    pub fn again(&self) -> bool {
        self.replay.is_some() || self.stream.is_some()
    }

    /// What a send error says about the request.
    pub fn failure(&self, e: &SendError) -> Failure {
        match e {
            _ if self.over.as_ref().is_some_and(|over| over.load(Relaxed)) => Failure::TooLarge,
            SendError::Connect(_) => Failure::Connect,
            SendError::Lost(_) => Failure::Lost,
        }
    }
}

impl Forward<'_> {
    /// The faults phase: an injected delay, then an injected error answer.
    #[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
    /// `body_ended`: the client's body has been read to its end (else an error closes the
    /// connection).
    pub(super) fn faults(&mut self, body_ended: bool) -> impl Future<Output = Result<(), Refusal>> + '_ {
        async move {
            if let Some(effect) = self.worker.state.faults.check(&self.service.name) {
                if !effect.delay.is_zero() {
                    Box::pin(tokio::time::sleep(effect.delay)).await;
                    self.ready = Instant::now();
                }
                if let Some(status) = effect.error {
                    return Err(Refusal { status, message: "injected fault", close: !body_ended, tried: None });
                }
            }
            Ok(())
        }
    }

    /// The body phase: refuses a declared size over the limit, reads a small body of known
    /// length (by the request's deadline) so it can be sent again, and streams anything else.
    #[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
    pub(super) fn read_body(&mut self, body: Incoming) -> impl Future<Output = Result<Outgoing, Refusal>> + '_ {
        async move {
            let config = &self.worker.state.config;
            let limit = config.kit.body_limit;
            let declared = content_length(&self.parts.headers);
            if declared.is_some_and(|n| n > limit as u64) {
                Box::pin(drain(body)).await;
                return Err((StatusCode::PAYLOAD_TOO_LARGE, "request body is larger than the limit").into());
            }
            if body.is_end_stream() {
                return Ok(Outgoing { replay: Some(Bytes::new()), stream: None, over: None });
            }
            if declared.is_some_and(|n| n <= config.retry_buffer as u64) {
                return match tokio::time::timeout_at(self.deadline(), body.collect()).await {
                    Ok(Ok(collected)) => {
                        self.ready = Instant::now();
                        Ok(Outgoing { replay: Some(collected.to_bytes()), stream: None, over: None })
                    }
                    Err(_) => Err(Refusal {
                        status: StatusCode::REQUEST_TIMEOUT,
                        message: "request body not received in time",
                        close: true,
                        tried: None,
                    }),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "cannot read request body");
                        Err(Refusal {
                            status: StatusCode::BAD_REQUEST,
                            message: "cannot read request body",
                            close: true,
                            tried: None,
                        })
                    }
                };
            }
            let flag = Arc::new(AtomicBool::new(false));
            let stream = RequestBody::Stream { inner: body, seen: 0, limit, over: flag.clone() };
            Ok(Outgoing { replay: None, stream: Some(stream), over: Some(flag) })
        }
    }

    /// The headers phase: notes whether the request is idempotent, removes the hop-by-hop
    /// headers, sets `X-Request-Id` and says who the client is; returns the target to send.
    pub(super) fn prepare(&mut self) -> Uri {
        let headers = &mut self.parts.headers;
        self.idempotent = is_idempotent(&self.parts.method) || headers.contains_key(&IDEMPOTENCY_KEY);
        strip_hop_by_hop(headers);
        headers.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        forwarded_for(headers, self.peer);
        origin_form(&self.parts.uri)
    }
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

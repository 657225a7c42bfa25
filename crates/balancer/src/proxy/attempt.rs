//! One attempt's edges: the request as an instance gets it, the answer as the client gets
//! it, and the retry decision after a failure (with the suspected-poison rule).

use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::headers::{X_REQUEST_ID, X_UPSTREAM_INSTANCE, copy_headers, strip_hop_by_hop};
use super::intake::Outgoing;
use super::request::Forward;
use crate::backend::{Instance, Tried};
use crate::body::RequestBody;
use crate::error::{Failure, Retry};
use crate::pool::Conn;
use crate::response::{ResponseBody, UpstreamBody};
use crate::stats::Shard;
use crate::worker::{InFlight, Worker};

/// Connections a request may break (lost after it was written) before it is no longer
/// sent anywhere: the second loss makes it a suspected poison request.
const MAX_LOSSES: u32 = 2;

/// What the attempts so far have left.
pub struct Attempts {
    /// The instances tried (by their index in the pool).
    pub tried: Tried,
    /// Why the last attempt failed.
    pub failure: Failure,
    /// The last instance tried, for `X-Upstream-Instance`.
    pub tried_last: Option<HeaderValue>,
    /// Connections lost after the request was written.
    losses: u32,
}

impl Default for Attempts {
    fn default() -> Self {
        Self { tried: Tried::default(), failure: Failure::Connect, tried_last: None, losses: 0 }
    }
}

impl Forward<'_> {
    /// The request to send to `instance`: the client's headers, taken by the `last`
    /// attempt and copied for the others (a retry needs them again).
    pub(super) fn upstream(
        &mut self,
        target: &Uri,
        body: RequestBody,
        last: bool,
        instance: &Instance,
    ) -> Request<RequestBody> {
        let headers = if last { std::mem::take(&mut self.parts.headers) } else { copy_headers(&self.parts.headers) };
        let mut upstream = Request::new(body);
        *upstream.method_mut() = self.parts.method.clone();
        *upstream.uri_mut() = target.clone();
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;
        if !upstream.headers().contains_key(header::HOST) {
            let host =
                HeaderValue::from_str(instance.authority.as_str()).expect("an authority is a valid header value");
            upstream.headers_mut().insert(header::HOST, host);
        }
        upstream
    }

    /// The retry decision on an answer (see [`retry_unavailable`]).
    pub(super) fn retry_unavailable(&self, status: StatusCode, last: bool, outgoing: &Outgoing) -> bool {
        retry_unavailable(status.as_u16(), last, self.idempotent && outgoing.replay.is_some())
    }

    /// Counts a failed attempt on `instance` (see [`failed`]).
    pub(super) fn failed(&self, instance: &Instance, failure: Failure, cause: &dyn std::fmt::Display) {
        failed(self.worker, self.figures(), instance, failure, cause);
    }

    /// The retry decision after `failure` on `instance` (see [`again`]).
    pub(super) fn again(
        &self,
        past: &mut Attempts,
        failure: Failure,
        instance: &Instance,
        outgoing: &Outgoing,
    ) -> bool {
        let replayable = self.idempotent && outgoing.replay.is_some();
        again(past, failure, instance, self.figures(), replayable, outgoing.again(), || {
            let parts = &*self.parts;
            tracing::warn!(request_id = self.request_id.to_str().unwrap_or("-"), method = %parts.method,
                path = parts.uri.path(), service = %self.service.name,
                "suspected poison request: two instances lost the connection while handling it");
        })
    }
}

/// The retry decision on an answer with `status`: a 502, 503 or 504 to a request that may be
/// sent again (`replayable`: idempotent, with a kept body) goes to another instance, unless
/// this was the `last` attempt.
pub fn retry_unavailable(status: u16, last: bool, replayable: bool) -> bool {
    matches!(status, 502..=504) && !last && replayable
}

/// Counts a failed attempt on `instance` in its figures and the service's (`figures`), and
/// ejects the instance when its failures say so.
pub fn failed(worker: &Worker, figures: &Shard, instance: &Instance, failure: Failure, cause: &dyn std::fmt::Display) {
    let attempt = instance.stats.at(worker.id);
    attempt.errors.fetch_add(1, Relaxed);
    attempt.end();
    figures.errors.fetch_add(1, Relaxed);
    tracing::debug!(instance = %instance.id, ?failure, %cause, "attempt failed");
    if failure.ejects() && instance.passive_failure(worker.state.config.eject_threshold) {
        tracing::warn!(instance = %instance.id, url = %instance.url, ?failure, "instance ejected");
    }
}

/// The retry decision after `failure` on `instance`: whether another attempt follows (see
/// [`Failure::retry`]); `replayable`: the request is idempotent with a kept body, `body_again`:
/// another attempt has a body to send. A second lost connection makes the request a
/// suspected poison request (counted in `figures`, said by `poison`), sent nowhere else.
pub fn again(
    past: &mut Attempts,
    mut failure: Failure,
    instance: &Instance,
    figures: &Shard,
    replayable: bool,
    body_again: bool,
    poison: impl FnOnce(),
) -> bool {
    past.tried_last = Some(instance.header.clone());
    if failure == Failure::Lost {
        past.losses += 1;
        if past.losses == MAX_LOSSES {
            failure = Failure::Poison;
            figures.poison.fetch_add(1, Relaxed);
            poison();
            past.failure = failure;
            return false;
        }
    }
    past.failure = failure;
    match failure.retry() {
        Retry::Safe => body_again,
        Retry::IfIdempotent => replayable,
        Retry::Never => false,
    }
}

/// A backend's answer as the client gets it: its body streamed through, holding the
/// request's in-flight place.
pub(super) fn respond(
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

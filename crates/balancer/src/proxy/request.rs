//! The request on its way through the proxy's phases: the [`Forward`] context they share
//! (the phases are its methods, in the files of their own), and the [`Refusal`] they
//! answer with instead of a backend.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use http::header::HeaderValue;
use http::request::Parts;

use crate::backend::Service;
use crate::stats::Shard;
use crate::worker::Worker;

/// An answer of the balancer's own instead of a backend's.
pub(super) struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
    /// The client's body was not read to its end.
    pub close: bool,
    /// The last instance tried, when attempts failed.
    pub tried: Option<HeaderValue>,
}

impl From<(StatusCode, &'static str)> for Refusal {
    fn from((status, message): (StatusCode, &'static str)) -> Self {
        Self { status, message, close: false, tried: None }
    }
}

/// One routed request on its way to a backend: what its phases share. It lives in
/// [`super::handle`]'s future and borrows what that owns, so making it costs nothing.
pub(super) struct Forward<'a> {
    pub worker: &'a Arc<Worker>,
    /// The routed service's index (in `AppState::services` and in a backend set's pools).
    pub index: usize,
    pub service: &'a Arc<Service>,
    pub parts: &'a mut Parts,
    pub request_id: &'a HeaderValue,
    /// The client connection's address ([`super::peer_header`]).
    pub peer: &'a HeaderValue,
    pub started: Instant,
    /// When the request is ready to go (after an injected delay or reading its body).
    pub ready: Instant,
    /// It may be sent twice (set by `prepare`, from the client's method and headers).
    pub idempotent: bool,
}

impl Forward<'_> {
    /// When the request must have its response head (`REQUEST_TIMEOUT_MS` after it came).
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + self.worker.state.config.request_timeout)
    }

    /// This worker's figures of the request's service.
    pub(super) fn figures(&self) -> &Shard {
        self.service.stats.at(self.worker.id)
    }
}

//! Bodies on both sides of the proxy, streamed frame by frame.
//!
//! [`RequestBody`] is what goes to a backend: nothing, a small body kept in memory (so it
//! can be sent again on a retry), or the client's body streamed through with the size
//! limit counted as it passes. [`ResponseBody`] is what goes to the client: a backend's
//! body streamed through (holding the in-flight count until it ends), or an answer of the
//! balancer's own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::{Instance, Service};
use crate::pool::UpstreamBody;
use crate::server::{Snapshot, Worker};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit of {0} bytes")]
pub struct TooLarge(pub usize);

pub enum RequestBody {
    Empty,
    Full(Option<Bytes>),
    Stream { inner: Incoming, seen: usize, limit: usize, over: Arc<AtomicBool> },
}

impl RequestBody {
    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() { Self::Empty } else { Self::Full(Some(bytes)) }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            Self::Empty => Poll::Ready(None),
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream { inner, seen, limit, over } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *seen += data.len();
                        if *seen > *limit {
                            over.store(true, Relaxed);
                            return Poll::Ready(Some(Err(Box::new(TooLarge(*limit)))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(bytes) => bytes.is_none(),
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Holds a request's place in the in-flight counts of its service and instance. It
/// reaches them through worker-local handles and indices, so that creating and dropping it
/// touches no reference count shared with other threads.
pub struct InFlight {
    pub worker: Arc<Worker>,
    pub snapshot: Arc<Snapshot>,
    pub service: usize,
    pub instance: usize,
}

impl InFlight {
    pub fn instance(&self) -> &Instance {
        &self.snapshot.set.pools[self.service][self.instance]
    }

    fn service(&self) -> &Service {
        &self.worker.state.services[self.service]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance().stats.at(self.worker.id).end();
        self.service().stats.at(self.worker.id).end();
    }
}

pub enum ResponseBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
    Axum(axum::body::Body),
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(inner) => Pin::new(inner).poll_frame(cx),
            Self::Axum(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(bytes) => bytes.is_none(),
            Self::Upstream(inner) => inner.is_end_stream(),
            Self::Axum(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream(inner) => inner.size_hint(),
            Self::Axum(inner) => inner.size_hint(),
        }
    }
}

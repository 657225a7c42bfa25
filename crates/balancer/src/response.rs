//! Bodies on their way to the client: [`ResponseBody`] is a backend's body streamed through
//! ([`UpstreamBody`], which drives the connection it comes on and holds the request's
//! in-flight place until it ends), an answer of the balancer's own, or an admin answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::BoxError;
use crate::pool::Conn;
use crate::worker::InFlight;

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

/// A backend's response body on its way to the client. It drives the connection it comes
/// on, gives the connection back to the pool once the body has ended, and holds the
/// request's in-flight place until then.
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    in_flight: InFlight,
}

impl UpstreamBody {
    /// `conn` is `None` when the body is empty and the connection already went back.
    pub fn new(body: Incoming, conn: Option<Box<Conn>>, in_flight: InFlight) -> Self {
        Self { body, conn, in_flight }
    }

    /// Returns the connection to the pool if it is still open.
    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut conn) = self.conn.take() {
            if conn.reusable(cx) {
                self.in_flight.instance().idle.checkin(self.in_flight.worker.id, conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            if conn.poll_io(cx).is_ready() {
                // Closed; whatever it read is already in the body channel.
                this.conn = None;
            }
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release(cx);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.release(cx);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

//! Keep-alive connections to backends, kept per instance and per worker thread, and driven
//! by the request that uses them.
//!
//! # Theory of operation
//!
//! A connection is hyper's HTTP/1 client pair: a `SendRequest` and the `Connection` future
//! that does the I/O. Instead of spawning the `Connection` as a task of its own (as
//! hyper-util's pooled client does, which costs two task wake-ups per request), the request
//! that has checked the connection out polls it itself: while waiting for the response
//! head ([`send`]), then while streaming the response body ([`UpstreamBody`]). When the
//! body has ended and the connection is still open, it goes back to the idle list of its
//! instance for this worker. Everything stays on the worker's thread.
//!
//! Idle connections are not polled. Before one is reused it is polled once: a backend that
//! closed it (it restarted, or its idle timeout passed) has left an end-of-file or a reset
//! there, the poll completes, and the connection is dropped rather than written to.
//! Should a request still meet a connection that closes before hyper has written anything,
//! hyper hands the request back and it is sent on a fresh connection — it provably never
//! left. Errors after that point are the proxy's to judge (see `proxy`).

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::Instance;
use crate::body::{BoxError, InFlight, RequestBody};

/// Idle connections kept per instance and worker; more are closed.
const MAX_IDLE: usize = 512;

/// One keep-alive connection to a backend (boxed where it is kept: it is large).
pub struct Conn {
    sender: SendRequest<RequestBody>,
    io: Connection<TokioIo<TcpStream>, RequestBody>,
}

impl Conn {
    /// Polls the connection's I/O; `Ready` means it is closed (or failed) for good.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.io).poll(cx).map(|_| ())
    }

    /// Still open and ready for a request (polled once, without waiting).
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.poll_io(&mut cx).is_ready() || self.sender.is_closed() {
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// The idle connections of one instance, one list per worker thread. Connections stay
/// boxed in and out of the lists, so checking one out or in moves a pointer.
pub struct Idle {
    lists: Box<[Padded<IdleList>]>,
}

#[allow(clippy::vec_box)]
type IdleList = Mutex<Vec<Box<Conn>>>;

/// On cache lines of its own, so two workers' lists never share one.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl Idle {
    pub fn new(workers: usize) -> Self {
        Self { lists: (0..workers.max(1)).map(|_| Padded(Mutex::new(Vec::new()))).collect() }
    }

    #[allow(clippy::vec_box)]
    fn list(&self, worker: usize) -> std::sync::MutexGuard<'_, Vec<Box<Conn>>> {
        // Only the worker's own thread takes its list: the lock is never contended.
        self.lists[worker % self.lists.len()].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection that is still usable, if there is one.
    fn checkout(&self, worker: usize) -> Option<Box<Conn>> {
        let mut list = self.list(worker);
        while let Some(mut conn) = list.pop() {
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, worker: usize, conn: Box<Conn>) {
        let mut list = self.list(worker);
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }
}

/// Why a request got no response head from a backend.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the backend never saw the request.
    Connect(std::io::Error),
    /// The connection failed after the request was handed to it.
    Lost(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Lost(e) => write!(f, "connection lost: {e}"),
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Box<Conn>, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => return Err(SendError::Connect(std::io::ErrorKind::TimedOut.into())),
    };
    let _ = stream.set_nodelay(true);
    let (sender, io) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(std::io::Error::other(e)))?;
    Ok(Box::new(Conn { sender, io }))
}

/// Sends `req` to `instance` on a pooled connection of `worker` (or a new one), and waits
/// for the response head while driving the connection.
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub fn send(
    instance: &Instance,
    worker: usize,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
) -> impl Future<Output = Result<(Response<Incoming>, Option<Box<Conn>>), SendError>> {
    async move {
        let mut reused = instance.idle.checkout(worker);
        loop {
            let fresh = reused.is_none();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                // Boxed: the connect future is large and rarely needed, and every request's
                // future would otherwise carry its size.
                None => Box::pin(connect(instance.addr, connect_timeout)).await?,
            };
            let mut response = std::pin::pin!(conn.sender.try_send_request(req));
            let mut io_done = false;
            let outcome = poll_fn(|cx| {
                if !io_done && conn.poll_io(cx).is_ready() {
                    // Closed: the pending response resolves with an error on this poll.
                    io_done = true;
                }
                response.as_mut().poll(cx)
            })
            .await;
            match outcome {
                Ok(res) if res.body().is_end_stream() => {
                    // Nothing will poll an empty body: the connection goes back to the pool now.
                    poll_fn(|cx| {
                        if conn.poll_io(cx).is_pending() && !conn.sender.is_closed() {
                            Poll::Ready(true)
                        } else {
                            Poll::Ready(false)
                        }
                    })
                    .await
                    .then(|| instance.idle.checkin(worker, conn));
                    return Ok((res, None));
                }
                Ok(res) => return Ok((res, Some(conn))),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on a fresh connection.
                    Some(unsent) if !fresh => {
                        tracing::debug!(instance = %instance.id, error = %e.error(), "pooled connection closed, reconnecting");
                        req = unsent;
                    }
                    _ => return Err(SendError::Lost(e.into_error())),
                },
            }
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
            if conn.poll_io(cx).is_pending() && !conn.sender.is_closed() {
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

//! Keep-alive connections to backends, kept per instance and per worker thread, and driven
//! by the request that uses them.
//!
//! # Theory of operation
//!
//! A connection is hyper's HTTP/1 client pair: a `SendRequest` and the `Connection` future
//! that does the I/O. Instead of spawning the `Connection` as a task of its own (as
//! hyper-util's pooled client does, which costs two task wake-ups per request), the request
//! that has checked the connection out polls it itself: while waiting for the response
//! head ([`send`]), then while streaming the response body ([`crate::response::UpstreamBody`]). When the
//! body has ended and the connection is still open, it goes back to the idle list of its
//! instance for this worker. Everything stays on the worker's thread.
//!
//! Idle connections are not polled. Before one is reused it is polled once: a backend that
//! closed it (it restarted, or its idle timeout passed) has left an end-of-file or a reset
//! there, the poll completes, and the connection is dropped rather than written to.
//! Should a request still meet a connection that closes before hyper has written anything,
//! hyper hands the request back and it is sent on a fresh connection — it provably never
//! left. Errors after that point are the proxy's to judge (see `proxy`).
//!
//! That poll cannot see a close that is about to happen: a backend closes a keep-alive
//! connection after its own idle timeout (`HTTP_IDLE_TIMEOUT_MS`, 60 s), and a request
//! written at that moment may be lost after it left (a POST without an `Idempotency-Key`
//! then gets 502). So, as nginx's `keepalive_timeout` and Envoy's `idle_timeout` for
//! upstreams do, a connection idle longer than `BALANCER_UPSTREAM_IDLE_MS` (5 s, safely
//! below the backends') is never reused: its idle time starts at checkin, and checkout
//! drops it. A list is ordered by that time (pushed and popped at its end), so checkout
//! stops at the first one too old, and checkin drops the too old ones at its start.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;

/// Idle connections kept per instance and worker; more are closed.
const MAX_IDLE: usize = 512;

/// One keep-alive connection to a backend (boxed where it is kept: it is large).
pub struct Conn {
    sender: SendRequest<RequestBody>,
    io: Connection<TokioIo<TcpStream>, RequestBody>,
    /// When it last went back to the idle list (or was made).
    idle_since: Instant,
}

/// A kept connection of either kind (hyper's [`Conn`], or the fast path's plain socket).
pub trait Pooled {
    /// Still open and ready for a request (looked at once, without waiting).
    fn usable(&mut self) -> bool;
    /// When it last went back to the idle list (or was made).
    fn idle_since(&mut self) -> &mut Instant;
}

impl Pooled for Conn {
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.poll_io(&mut cx).is_ready() || self.sender.is_closed() {
            return false;
        }
        matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    fn idle_since(&mut self) -> &mut Instant {
        &mut self.idle_since
    }
}

impl Conn {
    /// Polls the connection's I/O; `Ready` means it is closed (or failed) for good.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.io).poll(cx).map(|_| ())
    }

    /// Still open after a response: it may go back to the idle list.
    pub fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.poll_io(cx).is_pending() && !self.sender.is_closed()
    }
}

/// A keep-alive connection of the fast path (`crate::fast`): the plain socket, between
/// requests nothing is buffered in it.
pub struct Plain {
    pub stream: TcpStream,
    idle_since: Instant,
}

impl Plain {
    /// Connects to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Box<Self>> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(stream) => stream?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        };
        let _ = stream.set_nodelay(true);
        Ok(Box::new(Self { stream, idle_since: Instant::now() }))
    }
}

impl Pooled for Plain {
    /// An idle connection has nothing to read: an end of file, a reset or stray bytes mean
    /// the backend closed it (or broke the protocol).
    fn usable(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn idle_since(&mut self) -> &mut Instant {
        &mut self.idle_since
    }
}

/// The idle connections of one instance, one list per worker thread. Connections stay
/// boxed in and out of the lists, so checking one out or in moves a pointer.
pub struct Idle<C = Conn> {
    lists: Box<[Padded<IdleList<C>>]>,
    /// Connections idle longer than this are not reused (`BALANCER_UPSTREAM_IDLE_MS`).
    max_idle: Duration,
}

/// Oldest first: connections are pushed and popped at the end, each stamped when pushed.
#[allow(clippy::vec_box)]
type IdleList<C> = Mutex<Vec<Box<C>>>;

/// On cache lines of its own, so two workers' lists never share one.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<C: Pooled> Idle<C> {
    pub fn new(workers: usize, max_idle: Duration) -> Self {
        Self { lists: (0..workers.max(1)).map(|_| Padded(Mutex::new(Vec::new()))).collect(), max_idle }
    }

    #[allow(clippy::vec_box)]
    fn list(&self, worker: usize) -> std::sync::MutexGuard<'_, Vec<Box<C>>> {
        // Only the worker's own thread takes its list: the lock is never contended.
        self.lists[worker % self.lists.len()].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expired(&self, conn: &mut C, now: Instant) -> bool {
        now.saturating_duration_since(*conn.idle_since()) > self.max_idle
    }

    /// An idle connection that is still usable and has not been idle too long, if there is one.
    pub fn checkout(&self, worker: usize) -> Option<Box<C>> {
        let mut list = self.list(worker);
        if list.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(mut conn) = list.pop() {
            if self.expired(&mut conn, now) {
                // Every one below it went idle earlier still.
                list.clear();
                return None;
            }
            if conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    pub fn checkin(&self, worker: usize, mut conn: Box<C>) {
        let now = Instant::now();
        *conn.idle_since() = now;
        let mut list = self.list(worker);
        // Those idle too long (at the start) would only be dropped by a checkout.
        let expired = list.iter_mut().position(|c| !self.expired(c, now)).unwrap_or(list.len());
        list.drain(..expired);
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
    Ok(Box::new(Conn { sender, io, idle_since: Instant::now() }))
}

/// Sends `req` to the instance at `addr` on one of its pooled connections (`idle`) of
/// `worker` (or a new one), and waits for the response head while driving the connection.
#[allow(clippy::manual_async_fn)] // an `async fn` would store its arguments twice
pub fn send(
    idle: &Idle<Conn>,
    addr: SocketAddr,
    worker: usize,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
) -> impl Future<Output = Result<(Response<Incoming>, Option<Box<Conn>>), SendError>> {
    async move {
        let mut reused = idle.checkout(worker);
        loop {
            let fresh = reused.is_none();
            let mut conn = match reused.take() {
                Some(conn) => conn,
                // Boxed: the connect future is large and rarely needed, and every request's
                // future would otherwise carry its size.
                None => Box::pin(connect(addr, connect_timeout)).await?,
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
                    poll_fn(|cx| Poll::Ready(conn.reusable(cx))).await.then(|| idle.checkin(worker, conn));
                    return Ok((res, None));
                }
                Ok(res) => return Ok((res, Some(conn))),
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send on a fresh connection.
                    Some(unsent) if !fresh => {
                        tracing::debug!(%addr, error = %e.error(), "pooled connection closed, reconnecting");
                        req = unsent;
                    }
                    _ => return Err(SendError::Lost(e.into_error())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that accepts connections and keeps them open, saying nothing.
    async fn silent_backend() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    #[tokio::test]
    async fn connections_idle_past_the_limit_are_not_reused() {
        const LIMIT: Duration = Duration::from_secs(50);
        const MS: Duration = Duration::from_millis(1);
        let addr = silent_backend().await;
        let idle = Idle::new(1, LIMIT);
        let (a, b) = (connect(addr, LIMIT).await.unwrap(), connect(addr, LIMIT).await.unwrap());
        let id = |conn: &Conn| conn as *const Conn as usize;
        let (id_a, id_b) = (id(&a), id(&b));
        tokio::time::pause();

        // Idle just under the limit: reused, the latest first.
        idle.checkin(0, a);
        tokio::time::advance(LIMIT / 2).await;
        idle.checkin(0, b);
        tokio::time::advance(LIMIT / 2 - MS).await;
        let a = idle.checkout(0).expect("b, idle for half the limit");
        assert_eq!(id(&a), id_b);
        let a = idle.checkout(0).expect("a, idle for just under the limit");
        assert_eq!(id(&a), id_a);

        // Past it: not reused, and the older ones below go too.
        let b = connect(addr, LIMIT).await.unwrap();
        idle.checkin(0, a);
        idle.checkin(0, b);
        tokio::time::advance(LIMIT + MS).await;
        assert!(idle.checkout(0).is_none(), "idle longer than the limit");
        assert!(idle.list(0).is_empty());

        // A checkin drops the ones past the limit and keeps the others.
        let (a, b) = (connect(addr, LIMIT).await.unwrap(), connect(addr, LIMIT).await.unwrap());
        let c = connect(addr, LIMIT).await.unwrap();
        let id_b = id(&b);
        idle.checkin(0, a);
        tokio::time::advance(LIMIT / 2).await;
        idle.checkin(0, b);
        tokio::time::advance(LIMIT / 2 + MS).await;
        idle.checkin(0, c);
        assert_eq!(idle.list(0).len(), 2, "a expired, b and c kept");
        assert_eq!(id(&idle.list(0)[0]), id_b);
    }
}

//! The HTTP server every axum component runs on: hyper's HTTP/1 connections in one accept
//! loop, with the limits `axum::serve` does not have.
//!
//! # Theory of operation
//!
//! A connection is always in one of three phases, kept in its [`Activity`]:
//!
//! - **head**: waiting for a request's head. It starts when the connection is accepted, and
//!   again when the first byte of a next request arrives on a kept-alive connection. The head
//!   must be complete within `HTTP_HEADER_TIMEOUT_MS`, else the connection is closed (this is
//!   what ends a slowloris connection, which sends a partial head and then nothing).
//! - **busy**: a request is being answered, from the moment its head is parsed until its
//!   response has been written. No timer runs: a blocking query or an event long-poll may
//!   wait as long as its handler says. The request body must arrive within
//!   `HTTP_BODY_TIMEOUT_MS` of the head (reading it later fails with 408, and the connection
//!   is closed since the rest of the body was never read). A response write that makes no
//!   progress for `HTTP_IDLE_TIMEOUT_MS` (a client that does not read) closes the connection.
//! - **idle**: kept alive between requests, with no bytes arriving. After
//!   `HTTP_IDLE_TIMEOUT_MS` the connection is shut down gracefully.
//!
//! hyper's own `header_read_timeout` is not used: in hyper 1 its timer also runs while a
//! kept-alive connection waits for its next request, so it cannot be told apart from the idle
//! timeout. The phases are changed by the connection's own pieces (the socket wrapper on
//! reads and writes, the service when a head is parsed, the response body when it is
//! dropped), all polled by the connection's task, which then looks at the phase to set its
//! one timer.
//!
//! At most `HTTP_MAX_CONNECTIONS` connections are open at once (a WebSocket counts until it
//! closes), and never more than the file descriptors allow, less a reserve for everything
//! else the process opens. At the cap the loop stops accepting: new connections wait in the
//! kernel's listen queue (and beyond its length, the kernel drops SYNs and the clients retry)
//! until a connection closes, which the header and idle timeouts guarantee for idle and slow
//! clients. Reaching the cap is logged, at most every 10 s.
//!
//! On shutdown the loop stops accepting (the listener is dropped; an orch-held copy of an
//! inherited socket keeps queueing for the next process), every connection is shut down
//! gracefully (in-flight requests finish, idle connections close), and `serve` waits for them
//! and then for the tracked background tasks, each at most the grace period.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::shutdown::Shutdown;

pub use crate::config::{FD_RESERVE, Limits};

/// A request body that did not arrive within `HTTP_BODY_TIMEOUT_MS`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimeout(pub Duration);

/// Serves `router` on `listener` until `shutdown`, with `limits`; then stops accepting, lets
/// in-flight requests finish and background tasks clean up, each within `grace`.
///
/// Handlers can extract `ConnectInfo<SocketAddr>` (the peer). WebSocket upgrades work.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: Limits,
    grace: Duration,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let cap = limits.connection_cap(crate::listen::raise_fd_limit());
    tracing::info!(%addr, max_connections = cap, "listening");
    let permits = Arc::new(Semaphore::new(cap));
    let connections = TaskTracker::new();
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        max_connections = cap,
                        "connection limit reached: accepting waits for a connection to close"
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    _ = shutdown.requested() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // EMFILE and the like: wait a little instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = shutdown.requested() => break,
                        }
                    }
                    continue;
                }
            },
            _ = shutdown.requested() => break,
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(stream, peer, permit, router.clone(), limits.clone(), shutdown.clone()));
    }
    drop(listener);
    connections.close();
    // In-flight requests finish; long-lived ones are cut after the grace.
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests still running after the grace period");
    }
    if !shutdown.wait_for_tasks(grace).await {
        tracing::warn!("background tasks still running after the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Errors of one connection that did not make it to `accept`, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// What woke a connection's task.
enum Wake {
    Done(hyper::Result<()>),
    Shutdown,
    Expired(Phase),
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { stream, activity: activity.clone(), _permit: permit });
    let service = {
        let activity = activity.clone();
        let body_timeout = limits.body_timeout;
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::begin(activity.clone());
            // A request without a body (every GET) has nothing to time: an empty body, which
            // is not even allocated.
            let mut req = if http_body::Body::is_end_stream(req.body()) {
                req.map(|_| Body::empty())
            } else {
                let deadline = Instant::now() + body_timeout;
                req.map(|body| Body::new(TimedBody { body, deadline, timeout: body_timeout, sleep: None }))
            };
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move {
                let res = router.call(req).await?;
                Ok::<_, Infallible>(res.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades();
    let mut conn = pin!(conn);
    let mut stop = pin!(shutdown.requested_owned());
    let mut timer = pin!(tokio::time::sleep(limits.header_timeout));
    let mut stopping = false;
    loop {
        let wake = poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Wake::Done(result));
            }
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            // Once shut down gracefully, an idle connection is closing already.
            let deadline = activity.deadline(&limits).filter(|(phase, _)| !(stopping && *phase == Phase::Idle));
            if let Some((phase, at)) = deadline {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Expired(phase));
                }
            }
            Poll::Pending
        })
        .await;
        match wake {
            Wake::Done(Ok(())) => break,
            Wake::Done(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                break;
            }
            Wake::Shutdown | Wake::Expired(Phase::Idle) => {
                // Closes an idle connection now, a busy one after its response.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            Wake::Expired(phase) => {
                tracing::debug!(%peer, ?phase, "closing a connection that made no progress in time");
                break;
            }
        }
    }
}

/// Where a connection is, for its timer (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Head,
    Idle,
    /// A response write has been blocked since the mark.
    Stalled,
}

/// A connection's phase, shared by its socket, service and response bodies. Everything that
/// changes it runs on the connection's task; the atomics only make the parts `Send`.
struct Activity {
    start: Instant,
    /// Requests whose response has not been written yet.
    busy: AtomicUsize,
    /// When the head or idle phase began (ms since `start`), shifted left once; the low bit
    /// says idle.
    mark: AtomicU64,
    /// 1 + ms since `start` when a write began to wait, or 0.
    stalled: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), busy: AtomicUsize::new(0), mark: AtomicU64::new(0), stalled: AtomicU64::new(0) }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Bytes arrived: on an idle connection they begin a head.
    fn read(&self) {
        if self.busy.load(Relaxed) == 0 && self.mark.load(Relaxed) & 1 == 1 {
            self.mark.store(self.now() << 1, Relaxed);
        }
    }

    fn write_blocked(&self, blocked: bool) {
        match (blocked, self.stalled.load(Relaxed)) {
            (true, 0) => self.stalled.store(1 + self.now(), Relaxed),
            (false, s) if s != 0 => self.stalled.store(0, Relaxed),
            _ => {}
        }
    }

    /// The phase whose timer runs, and when it expires; `None` while a request is answered.
    fn deadline(&self, limits: &Limits) -> Option<(Phase, Instant)> {
        let stalled = self.stalled.load(Relaxed);
        if stalled != 0 {
            return Some((Phase::Stalled, self.at(stalled - 1) + limits.idle_timeout));
        }
        if self.busy.load(Relaxed) != 0 {
            return None;
        }
        let mark = self.mark.load(Relaxed);
        let since = self.at(mark >> 1);
        Some(if mark & 1 == 1 {
            (Phase::Idle, since + limits.idle_timeout)
        } else {
            (Phase::Head, since + limits.header_timeout)
        })
    }
}

/// A request being answered: from its parsed head until its response body is dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Relaxed) == 1 {
            self.0.mark.store((self.0.now() << 1) | 1, Relaxed);
        }
    }
}

/// The socket, telling its connection's [`Activity`] about reads and blocked writes. It
/// holds the connection's slot under the cap, so an upgraded WebSocket keeps it.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl Watched {
    fn watch<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.activity.write_blocked(poll.is_pending());
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A request body that fails with [`BodyTimeout`] once its deadline has passed.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    timeout: Duration,
    /// Made the first time the body has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimeout(self.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request busy until hyper has written and dropped it.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;

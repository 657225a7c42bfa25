//! A client connection as the balancer's hyper server sees it: the socket, with the
//! deadlines that end slow clients, and hyper's own error answers rewritten as JSON.
//!
//! # Theory of operation
//!
//! hyper has one timer per connection, the header read timeout, and it starts as soon as
//! the connection waits for a request: the time a keep-alive connection sits idle and the
//! time a client takes to send a head share it. [`ClientIo`] keeps two deadlines instead,
//! as Envoy does, and hyper's own timer is off:
//! - **idle** (`BALANCER_IDLE_TIMEOUT_MS`): no request is waiting for its answer and no
//!   byte has moved in either direction for this long;
//! - **head** (`BALANCER_HEADER_TIMEOUT_MS`): from the first bytes of a request head until
//!   hyper hands the complete head to the service; bytes that trickle in meanwhile do not
//!   extend it (a slowloris client is closed when it passes).
//!
//! The phase (`Phase`) follows the bytes that pass and the service: [`Heads`] counts the
//! heads hyper has handed to the service, and a change of that count means a request is
//! being answered (no deadline: `REQUEST_TIMEOUT_MS` bounds the wait for a backend) until
//! its answer is written (an interim `100 Continue` is not one: the body comes next). A
//! deadline is looked at only when a read or a write would wait; the one timer of the
//! connection is moved only when it would fire too late, and a timer that fires early is
//! set again, so a busy keep-alive connection costs no timer operation per request. A
//! passed deadline fails the read or write, and hyper closes the connection.
//!
//! When hyper refuses a head (malformed, too long a target, too large: 400, 414, 431), it
//! writes an answer of its own, with an empty body, and closes the connection. hyper writes
//! such an answer only while a head is being read and no response is in progress, so the
//! bytes written while a head is being read, when they are an empty answer's head, are
//! replaced by the same status with a JSON body `{"error": ...}`. (A bad head pipelined
//! behind a request whose answer was still being written is the exception: its bytes came
//! in during that answer, and hyper's empty answer goes out as it is.)
//!
//! Why not `kit::serve`'s connection phases: the policy is the same (a head deadline, an
//! idle deadline, none while the service works), the mechanism is not. kit's phases are
//! shared atomics that a guard in each response body updates (a clock read per request)
//! and the connection's task times (so an idle connection can be shut down gracefully and
//! an upgraded WebSocket leaves them behind); here the deadlines live in the socket
//! wrapper, stamped only when a read or write would wait, so a busy keep-alive connection
//! reads no clock and moves no timer per request, and a passed deadline fails the I/O.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Config;

/// The limits on clients, and the answers that replace hyper's own (made once per worker).
pub struct Limits {
    pub idle: Duration,
    pub header: Duration,
    answers: [(u16, Bytes); 3],
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let too_large = format!(
            "request head larger than {} bytes or with more than {} header fields",
            config.max_header_bytes, config.max_headers
        );
        Self {
            idle: config.idle_timeout,
            header: config.header_timeout,
            answers: [
                (431, json_answer(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &too_large)),
                (414, json_answer(StatusCode::URI_TOO_LONG, "request target is too long")),
                (400, json_answer(StatusCode::BAD_REQUEST, "malformed request")),
            ],
        }
    }

    /// The JSON answer replacing hyper's answer with `status` (400, 414 or 431).
    fn answer(&self, status: u16) -> Bytes {
        let found = self.answers.iter().find(|(s, _)| *s == status);
        found.unwrap_or(&self.answers[2]).1.clone()
    }
}

/// A whole HTTP/1.1 answer with a JSON error body, closing the connection.
fn json_answer(status: StatusCode, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
    }
    let body = serde_json::to_string(&Body { error: message }).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    Bytes::from(head + &body)
}

/// Request heads hyper has handed to the service on one connection (the service counts,
/// the connection's [`ClientIo`] watches).
#[derive(Default)]
pub struct Heads(AtomicU32);

impl Heads {
    /// A head reached the service.
    pub fn arrived(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    fn count(&self) -> u32 {
        self.0.load(Relaxed)
    }
}

/// What the connection is doing, as far as the bytes and the service tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request, or sending an answer: the idle deadline.
    Idle,
    /// Bytes of a head have come, the service has not had it yet: the head deadline.
    Head,
    /// The service has a request and nothing has been written since: no deadline.
    Busy,
}

/// The client's socket, watched (see the module docs).
pub struct ClientIo {
    stream: TcpStream,
    limits: Arc<Limits>,
    heads: Arc<Heads>,
    /// The count of `heads` last seen.
    seen: u32,
    phase: Phase,
    /// When the current phase's deadline started counting: stamped at the first read or
    /// write that waits after something happened, so the fast path reads no clock.
    since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    /// hyper's own answer being replaced: the JSON answer and how much of it is written.
    replacing: Option<(Bytes, usize)>,
}

impl ClientIo {
    pub fn new(stream: TcpStream, limits: Arc<Limits>, heads: Arc<Heads>) -> Self {
        let timer = Box::pin(tokio::time::sleep(limits.idle));
        Self { stream, limits, heads, seen: 0, phase: Phase::Idle, since: None, timer, replacing: None }
    }

    /// Catches up with the service: a new head there means a request is being answered.
    fn sync(&mut self) {
        let count = self.heads.count();
        if count != self.seen {
            self.seen = count;
            self.phase = Phase::Busy;
        }
    }

    fn moved(&mut self, phase: Phase) {
        self.phase = phase;
        self.since = None;
    }

    /// True when the phase's deadline has passed; otherwise makes sure the timer wakes the
    /// connection by then. Called only when a read or a write would wait.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = match self.phase {
            Phase::Busy => return false,
            Phase::Idle => self.limits.idle,
            Phase::Head => self.limits.header,
        };
        let now = Instant::now();
        let deadline = *self.since.get_or_insert(now) + limit;
        if now >= deadline {
            return true;
        }
        if self.timer.is_elapsed() || self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        // Registers this task's waker (an early timer wakes it, and it is set again then).
        let _ = self.timer.as_mut().poll(cx);
        false
    }

    fn timed_out(&self) -> io::Error {
        let what = if self.phase == Phase::Head { "request head not received in time" } else { "idle client" };
        io::Error::new(io::ErrorKind::TimedOut, what)
    }

    /// Before a write of `first` (the first bytes hyper writes): true when they are hyper's
    /// own answer to a head it refused, which is then replaced.
    fn replace(&mut self, first: &[u8]) -> bool {
        if self.replacing.is_none() && self.phase == Phase::Head {
            if let Some(status) = refusal_status(first) {
                self.replacing = Some((self.limits.answer(status), 0));
            }
        }
        self.replacing.is_some()
    }

    /// Writes the replacing answer; hyper's bytes (`len` of them) count as written.
    fn poll_replacing(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        let Some((answer, written)) = &mut self.replacing else { return Poll::Ready(Ok(len)) };
        while *written < answer.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if self.expired(cx) => return Poll::Ready(Err(self.timed_out())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(len))
    }

    /// After a write attempt: an answer is being sent, and bytes moved or it waits. An
    /// interim `100 Continue` (`interim`) is not an answer: the request's body comes next.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
        interim: bool,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if !(interim && self.phase == Phase::Busy) {
                    self.moved(Phase::Idle);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if self.phase != Phase::Idle {
                    self.moved(Phase::Idle);
                }
                if self.expired(cx) { Poll::Ready(Err(self.timed_out())) } else { Poll::Pending }
            }
            error => error,
        }
    }
}

/// What hyper writes when a request's body is first read after `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The status of `bytes` when they are the head of an empty 400, 414 or 431 answer, as
/// hyper writes when it refuses a head (`HTTP/1.1 431 Request Header Fields Too Large`, a zero
/// `content-length`, the end of the head).
fn refusal_status(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let status = std::str::from_utf8(rest.get(..3)?).ok()?.parse::<u16>().ok()?;
    let empty = bytes.len() < 512
        && bytes.ends_with(b"\r\n\r\n")
        && bytes.windows(19).any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0"));
    (matches!(status, 400 | 414 | 431) && empty).then_some(status)
}

impl AsyncRead for ClientIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.sync();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == Phase::Idle {
                    this.moved(Phase::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(this.timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.sync();
        if this.replace(buf) {
            return this.poll_replacing(cx, buf.len());
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, result, buf == CONTINUE)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.sync();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        if this.replace(first) {
            return this.poll_replacing(cx, bufs.iter().map(|b| b.len()).sum());
        }
        let interim = first == CONTINUE && bufs.iter().map(|b| b.len()).sum::<usize>() == CONTINUE.len();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, result, interim)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_refusals_are_replaced() {
        let check = |bytes: &[u8], expected: Option<u16>| {
            assert_eq!(refusal_status(bytes), expected, "{}", String::from_utf8_lossy(bytes));
        };
        check(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n", Some(431));
        check(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", Some(400));
        check(b"HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\n\r\n", None);
        check(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", None);
        check(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", None);
        check(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n", None);
        check(b"{\"some\": \"body\"}", None);
        check(b"HTTP/1.1 4", None);
    }

    #[test]
    fn answers_are_whole_json_answers() {
        let answer = json_answer(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too \"large\"");
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "too \"large\"");
        assert_eq!(refusal_status(answer.as_ref()), None, "a replacement is never replaced");
    }
}

//! A lean HTTP/1.1 client for the calls a cluster makes over and over: one request written
//! and read by hand on a connection kept from call to call, the answer's head parsed by
//! `httparse`. Orch's probes use [`get`] (a status, nothing else); every instance's heartbeat
//! uses [`post_json`] (a status and a small body).
//!
//! A general HTTP client (reqwest over hyper's pool: a task per connection, a channel and a
//! oneshot per request, header maps) costs about 150 to 190 µs of CPU per call; a hundred
//! instances probed and beating about once a second make that most of an idle cluster's
//! share. Here a call is a write and a read on the socket.
//!
//! A [`Conns`] holds the idle connections to ONE target (host and port): give each target
//! its own. A connection is kept only when the answer's end is known and nothing says
//! otherwise: HTTP/1.1, a `Content-Length` body (read to its end, at most [`MAX_BODY`]), no
//! `Connection: close`. Anything else (HTTP/1.0 servers such as Python's, chunked bodies) is
//! answered all the same and the connection dropped.
//!
//! A kept connection the server closed meanwhile (its idle timeout, or a restart) is noticed
//! when nothing at all comes back on it (the end of the stream, or a reset, before the first
//! byte of an answer), and the call tries once more on a new connection, within the same
//! timeout. **Invariant:** a request is sent twice only in that case. For a `POST` that is
//! safe when the server had not read the request before it closed (the usual case: an idle
//! connection closed between calls); a server that read it and died before answering sees
//! it twice, so [`post_json`] is for idempotent requests only (a heartbeat is).
//!
//! A calm probe may say when to look for its answer (`read_at`): the calm probes of many
//! processes are sent together (orch's probe grid), and reading their answers a few
//! milliseconds later, together, costs one wake-up instead of one per answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most idle connections a [`Conns`] keeps: one while the calls take turns, a second for
/// when they overlap.
const KEPT: usize = 2;
/// The largest answer head read.
const MAX_HEAD: usize = 16 * 1024;
/// The largest answer body read: a [`get`] drops the connection of a longer one, a
/// [`post_json`] fails with [`Error::TooLarge`].
pub const MAX_BODY: usize = 64 * 1024;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection refused")]
    Refused,
    #[error("no answer in time")]
    TimedOut,
    #[error("an answer body over {MAX_BODY} bytes")]
    TooLarge,
    #[error("{0}")]
    Other(String),
}

/// The idle connections kept to one target.
#[derive(Clone, Debug, Default)]
pub struct Conns(Arc<Mutex<Vec<TcpStream>>>);

impl Conns {
    fn take(&self) -> Option<TcpStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn keep(&self, stream: TcpStream) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT {
            kept.push(stream);
        }
    }

    /// How many are kept now.
    pub fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// What a [`post_json`] got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET path` from the process on `127.0.0.1:port`, within `timeout`: its status. The answer
/// is looked for no sooner than `read_at` (within the timeout all the same).
pub async fn get(
    conns: &Conns,
    port: u16,
    path: &str,
    timeout: Duration,
    read_at: Option<Instant>,
) -> Result<u16, Error> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: orch-probe\r\n\r\n");
    let call = Call { host: "127.0.0.1", port, request: request.as_bytes(), read_at, want_body: false };
    call.run(conns, timeout).await.map(|answer| answer.status)
}

/// `POST path` with the JSON `body` to `host:port` (a name is resolved when connecting),
/// within `timeout`: the status and the body. `host_header` is the `Host` header's value
/// (`host:port`, an IPv6 address in brackets); `headers` are sent as given, after
/// `content-type: application/json`. For idempotent requests only (see the module docs).
pub async fn post_json(
    conns: &Conns,
    (host, port): (&str, u16),
    host_header: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, Error> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {host_header}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    // A line break would end a header (or the head) early: another request smuggled in.
    let mut fields = headers.iter().flat_map(|(name, value)| [*name, *value]).chain([path, host_header]);
    if let Some(bad) = fields.find(|field| field.contains(['\r', '\n'])) {
        return Err(Error::Other(format!("a line break in a request header or path: {bad:?}")));
    }
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let call = Call { host, port, request: &request, read_at: None, want_body: true };
    call.run(conns, timeout).await
}

/// One request to one target.
struct Call<'a> {
    host: &'a str,
    port: u16,
    request: &'a [u8],
    read_at: Option<Instant>,
    /// Whether the body is wanted whatever the connection's fate (else it is read only to
    /// keep the connection).
    want_body: bool,
}

impl Call<'_> {
    /// The call on a kept connection, or a new one; once more on a new one if the kept one
    /// turned out closed. Whatever it takes, within `timeout`.
    async fn run(&self, conns: &Conns, timeout: Duration) -> Result<Answer, Error> {
        let attempt = async {
            if let Some(stream) = conns.take() {
                match self.exchange(stream).await {
                    Ok((answer, kept)) => return Ok(keep(conns, answer, kept)),
                    // Closed by the server while idle: once more on a new connection.
                    Err(Failure::Stale) => {}
                    Err(Failure::Failed(e)) => return Err(e),
                }
            }
            let stream = TcpStream::connect((self.host, self.port)).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::Refused,
                _ => Error::Other(e.to_string()),
            })?;
            let _ = stream.set_nodelay(true);
            match self.exchange(stream).await {
                Ok((answer, kept)) => Ok(keep(conns, answer, kept)),
                Err(Failure::Stale) => Err(Error::Other("connection closed before an answer".into())),
                Err(Failure::Failed(e)) => Err(e),
            }
        };
        tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(Error::TimedOut))
    }

    /// Writes the request and reads the answer's head and, when it is wanted or the
    /// connection can be kept, its body: the answer, and the stream if it may serve the next
    /// call.
    async fn exchange(&self, mut stream: TcpStream) -> Result<(Answer, Option<TcpStream>), Failure> {
        let stale = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Failure::Stale,
            _ => other(e.to_string()),
        };
        stream.write_all(self.request).await.map_err(stale)?;
        if let Some(at) = self.read_at {
            tokio::time::sleep_until(at).await;
        }
        let mut buf = Vec::with_capacity(1024);
        let (status, head, end) = loop {
            let read = match stream.read_buf(&mut buf).await {
                Ok(read) => read,
                Err(e) if buf.is_empty() => return Err(stale(e)),
                Err(e) => return Err(other(e.to_string())),
            };
            if read == 0 {
                return Err(if buf.is_empty() { Failure::Stale } else { other("the answer ended early") });
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    break (response.code.unwrap_or_default(), head, end(&response));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
                Ok(httparse::Status::Partial) => return Err(other("an answer head over 16 KiB")),
                // Too many headers to tell the body's end: the status line is enough for a
                // probe; a body cannot be told.
                Err(httparse::Error::TooManyHeaders) if !self.want_body => {
                    return status_line(&buf).map(|status| (Answer { status, body: Vec::new() }, None));
                }
                Err(e) => return Err(other(format!("a malformed answer ({e})"))),
            };
        };
        buf.drain(..head);
        let answer = |body| Answer { status, body };
        match end {
            End::Length(length) if length > MAX_BODY => {
                if self.want_body {
                    Err(Failure::Failed(Error::TooLarge))
                } else {
                    Ok((answer(Vec::new()), None))
                }
            }
            End::Length(length) => {
                while buf.len() < length {
                    if stream.read_buf(&mut buf).await.map_err(|e| other(e.to_string()))? == 0 {
                        return if self.want_body {
                            Err(other("the answer ended early"))
                        } else {
                            Ok((answer(Vec::new()), None))
                        };
                    }
                }
                // Bytes past the body: the connection's stream cannot be trusted.
                let reusable = buf.len() == length;
                buf.truncate(length);
                let body = if self.want_body { buf } else { Vec::new() };
                Ok((answer(body), reusable.then_some(stream)))
            }
            End::Close(Some(length)) if self.want_body && length > MAX_BODY => Err(Failure::Failed(Error::TooLarge)),
            End::Close(length) if self.want_body => {
                // To the end of the stream, or of the length given, within the limit.
                loop {
                    if let Some(length) = length.filter(|&n| buf.len() >= n) {
                        buf.truncate(length);
                        break;
                    }
                    if buf.len() > MAX_BODY {
                        return Err(Failure::Failed(Error::TooLarge));
                    }
                    if stream.read_buf(&mut buf).await.map_err(|e| other(e.to_string()))? == 0 {
                        if length.is_some() {
                            return Err(other("the answer ended early"));
                        }
                        break;
                    }
                }
                Ok((answer(buf), None))
            }
            End::Chunked if self.want_body => Err(other("a chunked answer body (not read here)")),
            End::Close(_) | End::Chunked => Ok((answer(Vec::new()), None)),
        }
    }
}

fn keep(conns: &Conns, answer: Answer, stream: Option<TcpStream>) -> Answer {
    if let Some(stream) = stream {
        conns.keep(stream);
    }
    answer
}

enum Failure {
    /// The connection ended before any byte of an answer.
    Stale,
    Failed(Error),
}

fn other(message: impl Into<String>) -> Failure {
    Failure::Failed(Error::Other(message.into()))
}

/// Where an answer's body ends.
enum End {
    /// After this many bytes, and the connection may serve again.
    Length(usize),
    /// At the end of the stream (or after this many bytes, if given), and the connection is
    /// done.
    Close(Option<usize>),
    /// Chunked: the connection is dropped.
    Chunked,
}

fn end(response: &httparse::Response<'_, '_>) -> End {
    let (mut length, mut close, mut chunked) = (None, response.version != Some(1), false);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") && header.value.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        }
    }
    let status = response.code.unwrap_or_default();
    if status == 204 || status == 304 {
        length = Some(0);
    }
    match (chunked, close, length) {
        (true, _, _) => End::Chunked,
        (false, false, Some(length)) => End::Length(length),
        (false, _, length) => End::Close(length),
    }
}

/// The status of `HTTP/1.x NNN ...` at the start of `buf`.
fn status_line(buf: &[u8]) -> Result<u16, Failure> {
    buf.get(9..12)
        .filter(|_| buf.starts_with(b"HTTP/1."))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .ok_or_else(|| other("a malformed status line"))
}

#[cfg(test)]
mod tests;

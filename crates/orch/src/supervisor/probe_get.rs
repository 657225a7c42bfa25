//! The HTTP request of a probe: one `GET` on a connection kept from probe to probe, written
//! and read by hand (the head parsed by `httparse`, as the balancer's fast path does).
//!
//! A probe asks for a status and nothing else, a hundred instances each about once a second;
//! through a general HTTP client (reqwest over hyper's pool: a task per connection, a channel
//! and a oneshot per request, header maps) one cost orch about 190 µs of CPU, most of an idle
//! cluster's share. Here it is a write and a read on the socket.
//!
//! A connection is kept only when the answer's end is known and nothing says otherwise:
//! HTTP/1.1, a `Content-Length` body (read to its end, at most [`MAX_KEPT_BODY`]), no
//! `Connection: close`. Anything else (HTTP/1.0 servers such as Python's, chunked bodies) is
//! answered all the same and the connection dropped. A kept connection the server closed
//! meanwhile (its idle timeout) is noticed when nothing comes back, and the probe tries once
//! more on a new one, within the same timeout.
//!
//! A calm probe may say when to look for its answer (`read_at`): the calm probes of many
//! processes are sent together ([`super::probe`]'s grid), and reading their answers a few
//! milliseconds later, together, costs orch one wake-up instead of one per answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most idle connections a session keeps: one while the probes take turns, a second for
/// when they overlap.
const KEPT: usize = 2;
/// The largest response head read.
const MAX_HEAD: usize = 16 * 1024;
/// A body longer than this is not read: the connection is dropped instead.
const MAX_KEPT_BODY: usize = 64 * 1024;

/// Why a `GET` got no status.
#[derive(Debug)]
pub enum GetError {
    Refused,
    TimedOut,
    Other(String),
}

/// The connections kept to one process.
#[derive(Clone, Default)]
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

    /// How many are kept now (tests).
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// `GET path` from the process on `port`, within `timeout`: its status. The answer is looked
/// for no sooner than `read_at` (within the timeout all the same).
pub async fn get(
    conns: &Conns,
    port: u16,
    path: &str,
    timeout: Duration,
    read_at: Option<Instant>,
) -> Result<u16, GetError> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nuser-agent: orch-probe\r\n\r\n");
    let exchange = async {
        if let Some(stream) = conns.take() {
            match exchange(stream, request.as_bytes(), read_at).await {
                Ok((status, kept)) => return Ok(keep(conns, status, kept)),
                // Closed by the server while idle: once more on a new connection.
                Err(Failure::Stale) => {}
                Err(Failure::Io(e)) => return Err(GetError::Other(e)),
            }
        }
        let stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => GetError::Refused,
            _ => GetError::Other(e.to_string()),
        })?;
        let _ = stream.set_nodelay(true);
        match exchange(stream, request.as_bytes(), read_at).await {
            Ok((status, kept)) => Ok(keep(conns, status, kept)),
            Err(Failure::Stale) => Err(GetError::Other("connection closed before an answer".into())),
            Err(Failure::Io(e)) => Err(GetError::Other(e)),
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(GetError::TimedOut))
}

fn keep(conns: &Conns, status: u16, stream: Option<TcpStream>) -> u16 {
    if let Some(stream) = stream {
        conns.keep(stream);
    }
    status
}

enum Failure {
    /// The connection ended before any byte of an answer.
    Stale,
    Io(String),
}

/// Writes `request` and reads the answer's head (and its body, when the connection can be
/// kept): the status, and the stream if it may serve the next probe.
async fn exchange(
    mut stream: TcpStream,
    request: &[u8],
    read_at: Option<Instant>,
) -> Result<(u16, Option<TcpStream>), Failure> {
    let stale = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Failure::Stale,
        _ => Failure::Io(e.to_string()),
    };
    stream.write_all(request).await.map_err(stale)?;
    if let Some(at) = read_at {
        tokio::time::sleep_until(at).await;
    }
    let mut buf = Vec::with_capacity(1024);
    loop {
        let read = stream.read_buf(&mut buf).await.map_err(stale)?;
        if read == 0 {
            return Err(if buf.is_empty() { Failure::Stale } else { Failure::Io("the answer ended early".into()) });
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => head,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err(Failure::Io("an answer head over 16 KiB".into())),
            // Too many headers for a probe to keep the connection: the status line is enough.
            Err(httparse::Error::TooManyHeaders) => return status_line(&buf).map(|s| (s, None)),
            Err(e) => return Err(Failure::Io(format!("a malformed answer ({e})"))),
        };
        let status = response.code.unwrap_or_default();
        let body = reusable_body(&response);
        let Some(length) = body else { return Ok((status, None)) };
        let mut have = buf.len() - head;
        if have > length {
            return Ok((status, None));
        }
        while have < length {
            buf.clear();
            let read = stream.read_buf(&mut buf).await.map_err(|e| Failure::Io(e.to_string()))?;
            if read == 0 {
                return Ok((status, None));
            }
            have += read;
        }
        return Ok((status, (have == length).then_some(stream)));
    }
}

/// The body length of an answer whose connection may be kept, if it may.
fn reusable_body(response: &httparse::Response<'_, '_>) -> Option<usize> {
    if response.version != Some(1) {
        return None;
    }
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") && header.value.eq_ignore_ascii_case(b"close") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value).ok()?.trim().parse::<usize>().ok();
        }
    }
    let status = response.code.unwrap_or_default();
    if status == 204 || status == 304 {
        return Some(0);
    }
    length.filter(|&n| n <= MAX_KEPT_BODY)
}

/// The status of `HTTP/1.x NNN ...` at the start of `buf`.
fn status_line(buf: &[u8]) -> Result<u16, Failure> {
    buf.get(9..12)
        .filter(|_| buf.starts_with(b"HTTP/1."))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
        .ok_or_else(|| Failure::Io("a malformed status line".into()))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each connection's requests with `answers` in turn (one per
    /// request read), then closes it; the connections it accepted.
    async fn scripted(answers: Vec<&'static str>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    for answer in answers {
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const SECOND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_kept_connection_serves_the_next_probe() {
        let (port, accepted) = scripted(vec![OK, OK, OK]).await;
        let conns = Conns::default();
        for _ in 0..3 {
            assert_eq!(get(&conns, port, "/health", SECOND, None).await.unwrap(), 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_within_the_probe() {
        // Each connection answers once and is closed: every probe after the first meets a
        // kept connection that is gone, and still gets its answer.
        let (port, accepted) = scripted(vec![OK]).await;
        let conns = Conns::default();
        for _ in 0..3 {
            assert_eq!(get(&conns, port, "/health", SECOND, None).await.unwrap(), 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn answers_whose_end_is_unknown_are_not_kept() {
        let cases = [
            ("HTTP/1.0 200 OK\r\n\r\nhello", 200),
            ("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", 503),
            ("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200),
            ("HTTP/1.1 200 OK\r\n\r\n", 200),
        ];
        for (answer, status) in cases {
            let (port, _) = scripted(vec![answer]).await;
            let conns = Conns::default();
            assert_eq!(get(&conns, port, "/", SECOND, None).await.unwrap(), status, "{answer:?}");
            assert_eq!(conns.kept(), 0, "{answer:?}");
        }
        let (port, _) = scripted(vec!["HTTP/1.1 204 No Content\r\n\r\n"]).await;
        let conns = Conns::default();
        assert_eq!(get(&conns, port, "/", SECOND, None).await.unwrap(), 204);
        assert_eq!(conns.kept(), 1, "a 204 has no body: kept");
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        let (port, _) = scripted(vec!["SSH-2.0-OpenSSH\r\n\r\n"]).await;
        assert!(matches!(get(&Conns::default(), port, "/", SECOND, None).await, Err(GetError::Other(_))));
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let outcome = get(&Conns::default(), port, "/", Duration::from_millis(100), None).await;
        assert!(matches!(outcome, Err(GetError::TimedOut)));
        drop(silent);
        assert!(matches!(get(&Conns::default(), port, "/", SECOND, None).await, Err(GetError::Refused)));
    }
}

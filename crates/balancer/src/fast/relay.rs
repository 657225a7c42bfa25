//! The fast path's side of a backend: one exchange on a pooled plain connection (the
//! request written at once, the response head read), and the response body passed on to
//! the client as it comes, by its framing.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::wire::{BadResponse, Chunks, Framing, ResponseHead, parse_response};
use crate::error::Failure;
use crate::pool::{Idle, Plain};

/// The largest response head read from a backend.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Room kept free in a buffer before each read.
const READ_ROOM: usize = 8 << 10;

/// Sends `request` (head and body) to the instance at `addr` on one of its pooled plain
/// connections of `worker` (or a new one) and reads the response head into `buf` (which
/// then holds it and whatever body bytes came with it). A pooled connection that fails the
/// write is replaced by a fresh one (the backend got no whole request).
pub async fn exchange(
    idle: &Idle<Plain>,
    addr: SocketAddr,
    worker: usize,
    request: &[u8],
    method: &Method,
    buf: &mut Vec<u8>,
    connect_timeout: Duration,
) -> Result<(Box<Plain>, ResponseHead), (Failure, io::Error)> {
    let mut reused = idle.checkout(worker);
    loop {
        let fresh = reused.is_none();
        let mut conn = match reused.take() {
            Some(conn) => conn,
            // Boxed: rarely needed, and every request's future would carry its size.
            None => Box::pin(Plain::connect(addr, connect_timeout)).await.map_err(|e| (Failure::Connect, e))?,
        };
        if let Err(e) = conn.stream.write_all(request).await {
            if fresh {
                return Err((Failure::Lost, e));
            }
            tracing::debug!(%addr, error = %e, "pooled connection closed, reconnecting");
            continue;
        }
        buf.clear();
        loop {
            match parse_response(buf, method) {
                // An interim answer (`100 Continue`, `103 Early Hints`): the real one follows.
                Ok(head) if head.status < 200 => {
                    buf.drain(..head.len);
                }
                Ok(head) => return Ok((conn, head)),
                Err(BadResponse::Invalid) => {
                    return Err((Failure::Lost, io::Error::new(io::ErrorKind::InvalidData, "malformed response head")));
                }
                Err(BadResponse::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err((Failure::Lost, io::Error::new(io::ErrorKind::InvalidData, "response head too large")));
                }
                Err(BadResponse::Partial) => {
                    if read_more(&mut conn.stream, buf).await.map_err(|e| (Failure::Lost, e))? == 0 {
                        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the response head");
                        return Err((Failure::Lost, eof));
                    }
                }
            }
        }
    }
}

async fn read_more(from: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(2 * READ_ROOM);
    }
    from.read_buf(buf).await
}

/// Where passing a body on failed.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The backend's side: closed early, a read error, a malformed chunk.
    #[error("backend: {0}")]
    Upstream(io::Error),
    /// The client's side.
    #[error("client: {0}")]
    Client(io::Error),
}

/// Writes `out` (the client's head) and the response body after it: the body bytes in
/// `buf` past the head, then what the backend sends until the body ends by `head`'s
/// framing; a backend that sends nothing for `idle` ends it. Returns whether the backend's
/// connection can carry another request.
pub async fn pass_on(
    idle: Duration,
    conn: &mut Plain,
    head: &ResponseHead,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client: &mut (impl AsyncWrite + Unpin),
) -> Result<bool, Broken> {
    let mut reusable = head.reusable;
    let mut chunks = Chunks::default();
    // How much of `bytes` is body, and whether the body has ended there.
    let mut body = |bytes: &[u8], left: &mut u64| -> Result<(usize, bool), Broken> {
        match head.framing {
            Framing::Empty => Ok((0, true)),
            Framing::Length(_) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Framing::Chunked => {
                let take = chunks.scan(bytes).map_err(|_| bad_chunk())?;
                Ok((take, chunks.done()))
            }
            Framing::Close => Ok((bytes.len(), false)),
        }
    };
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let (take, mut ended) = body(&buf[head.len..], &mut left)?;
    if head.len + take < buf.len() {
        // Bytes past the body: the backend broke the protocol.
        reusable = false;
    }
    out.extend_from_slice(&buf[head.len..head.len + take]);
    client.write_all(out).await.map_err(Broken::Client)?;
    while !ended {
        buf.clear();
        let n = match tokio::time::timeout(idle, read_more(&mut conn.stream, buf)).await {
            Ok(read) => read.map_err(Broken::Upstream)?,
            Err(_) => return Err(Broken::Upstream(io::Error::new(io::ErrorKind::TimedOut, "the body stalled"))),
        };
        if n == 0 {
            if head.framing == Framing::Close {
                break;
            }
            return Err(Broken::Upstream(io::Error::new(io::ErrorKind::UnexpectedEof, "closed within the body")));
        }
        let (take, end) = body(buf, &mut left)?;
        ended = end;
        if take < buf.len() {
            reusable = false;
        }
        client.write_all(&buf[..take]).await.map_err(Broken::Client)?;
    }
    Ok(reusable)
}

fn bad_chunk() -> Broken {
    Broken::Upstream(io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body"))
}

//! The server's connection phases and limits, against raw TCP clients: header, body and idle
//! timeouts, the connection cap and graceful shutdown.

use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::testing::still_pending;

const DEADLINE: Duration = Duration::from_secs(10);

fn limits(header_ms: u64, body_ms: u64, idle_ms: u64, max_connections: usize) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header_ms),
        body_timeout: Duration::from_millis(body_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_connections,
    }
}

/// A server of a few routes on 127.0.0.1:0, with `limits`.
async fn start(limits: Limits) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = crate::http::finish(
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/peer", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    // A long poll: the handler takes longer than the idle timeout.
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "done"
                }),
            ),
        1 << 20,
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve(listener, router, shutdown.clone(), limits, Duration::from_secs(30)));
    (addr, shutdown, task)
}

/// Everything the server sends until it closes the connection, within the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection within {DEADLINE:?}");
    String::from_utf8_lossy(&out).into_owned()
}

/// One response on a kept-alive connection (small bodies with a content-length).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|l| l.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("a response").unwrap();
        assert!(n > 0, "closed before a whole response: {text}");
        out.extend_from_slice(&buf[..n]);
    }
}

async fn get_health(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    read_until_closed(&mut stream).await
}

#[tokio::test]
async fn slow_and_silent_heads_are_closed() {
    let (addr, shutdown, task) = start(limits(300, 60_000, 60_000, 1000)).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: local").await.unwrap();
        slow.push(stream);
    }
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(get_health(addr).await.ends_with("ok"));
    for stream in &mut slow {
        assert_eq!(read_until_closed(stream).await, "", "closed without an answer");
    }
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(get_health(addr).await.ends_with("ok"));
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    // A long header timeout, so only the idle timeout can close it.
    let (addr, shutdown, task) = start(limits(60_000, 60_000, 300, 1000)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("ok"));
    // A request that takes longer than the idle timeout is not cut.
    stream.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("done"));
    assert_eq!(read_until_closed(&mut stream).await, "");
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_body_gets_408_and_a_close() {
    let (addr, shutdown, task) = start(limits(60_000, 300, 60_000, 1000)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head =
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"{\"a\":").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"the request body did not arrive within 300 ms"}"#), "{answer}");
    // A body in time is echoed.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    stream.write_all(request.as_bytes()).await.unwrap();
    assert!(read_until_closed(&mut stream).await.ends_with("\r\n\r\n{}"));
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn beyond_the_cap_accepting_waits_for_a_free_slot() {
    let (addr, shutdown, task) = start(limits(60_000, 60_000, 60_000, 2)).await;
    let mut held = vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
    // Both are served, and keep their slots.
    for stream in &mut held {
        stream.write_all(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let peer = stream.local_addr().unwrap().to_string();
        assert!(read_response(stream).await.ends_with(&peer), "ConnectInfo is the peer");
    }
    let third = tokio::spawn(get_health(addr));
    let third = still_pending(third, Duration::from_millis(300), "a request beyond the cap").await;
    drop(held.pop());
    assert!(tokio::time::timeout(DEADLINE, third).await.unwrap().unwrap().ends_with("ok"));
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let (addr, shutdown, task) = start(limits(60_000, 60_000, 60_000, 1000)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("ok"));
    shutdown.trigger();
    // The grace is 30 s: the kept-alive connection must not hold serve up.
    tokio::time::timeout(DEADLINE, task).await.expect("serve returned").unwrap().unwrap();
    assert_eq!(read_until_closed(&mut stream).await, "");
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[test]
fn the_cap_leaves_room_for_other_files() {
    let limits = Limits::default();
    assert_eq!(limits.connection_cap(None), 10_000);
    assert_eq!(limits.connection_cap(Some(1 << 20)), 10_000);
    assert_eq!(limits.connection_cap(Some(1024)), 1024 - FD_RESERVE as usize);
    assert_eq!(limits.connection_cap(Some(100)), 16);
}

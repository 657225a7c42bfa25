//! The registry under slow clients: slowloris connections neither stop it answering nor stay.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TOKEN, TestRegistry, http, registration, send};

const SLOW_CLIENTS: usize = 2_000;

#[tokio::test]
async fn two_thousand_slowloris_connections() {
    // Both ends of every connection are in this process.
    let fds = kit::listen::raise_fd_limit().unwrap();
    assert!(fds > 4 * SLOW_CLIENTS as u64 + 1000, "RLIMIT_NOFILE {fds} is too low for this test");
    let reg = TestRegistry::start(&[("HTTP_HEADER_TIMEOUT_MS", "3000")]).await;
    let addr = reg.url.trim_start_matches("http://").to_owned();

    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for i in 0..SLOW_CLIENTS {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // A partial request line or header, and then nothing.
        let part: &[u8] = if i % 2 == 0 { b"GET /api/registry/serv" } else { b"GET /health HTTP/1.1\r\nHost: loc" };
        stream.write_all(part).await.unwrap();
        slow.push(stream);
    }

    let c = http();
    let (status, _) = send(c.get(format!("{}/health", reg.url))).await;
    assert_eq!(status, 200);
    let req =
        c.post(format!("{}/api/registry/register", reg.url)).bearer_auth(TOKEN).json(&registration("auth-1", "auth"));
    assert_eq!(send(req).await.0, 201);
    let (status, list) = send(c.get(format!("{}/api/registry/services", reg.url))).await;
    assert_eq!((status, list["total"].as_u64()), (200, Some(1)), "{list}");

    // The server closes every slow connection without an answer.
    let closed = slow.into_iter().map(|mut stream| async move {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest)).await;
        matches!(read, Ok(Ok(0)))
    });
    let closed = futures_util::future::join_all(closed).await;
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        SLOW_CLIENTS,
        "every slow connection is closed, with nothing sent"
    );

    let (status, _) = send(c.get(format!("{}/health", reg.url))).await;
    assert_eq!(status, 200);
    reg.stop().await;
}

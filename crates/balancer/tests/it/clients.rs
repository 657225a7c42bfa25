//! Clients that misbehave: oversized heads, slowloris connections, idle keep-alive
//! connections, more connections than the cap.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TestBackend, TestBalancer, WAIT, http, read};

/// A balancer over one backend (static ports), with `extra` settings.
async fn over(backend: &TestBackend, extra: &[(&str, &str)]) -> TestBalancer {
    let port = backend.port().to_string();
    let mut vars = vec![("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", port.as_str())];
    vars.extend_from_slice(extra);
    TestBalancer::start("http://127.0.0.1:9", &vars).await
}

/// Sends `request` on a new connection and reads until the balancer closes it.
async fn send_raw(balancer: &TestBalancer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    read.expect("the balancer closes the connection").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status and the JSON body of a whole answer read off a socket.
fn parse(answer: &str) -> (u16, serde_json::Value) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")))
}

/// One request on an open keep-alive connection; the answer's status line and body
/// (read by its content-length).
async fn exchange(stream: &mut TcpStream, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a whole answer: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .expect("a content-length");
                if body.len() >= length {
                    return (head.lines().next().unwrap().to_owned(), body.to_owned());
                }
            }
        }
    };
    tokio::time::timeout(WAIT, answer).await.expect("an answer")
}

/// A keep-alive connection with one answered request, then idle.
async fn answered_once(balancer: &TestBalancer) -> TcpStream {
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    let (line, _) = exchange(&mut stream, "/api/data/x").await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    stream
}

/// Waits until the balancer has closed `stream` (end of file or reset).
async fn closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "{what}: still open after {WAIT:?}");
}

/// Connections that have sent part of a head and wait.
async fn slowloris(balancer: &TestBalancer, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
        stream.write_all(b"GET /api/data/x HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        streams.push(stream);
    }
    streams
}

/// Raises this process's soft limit of open files to the hard limit (the test holds both
/// ends of thousands of connections).
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    hard
}

#[tokio::test]
async fn oversized_heads_get_431_json_and_the_balancer_keeps_serving() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[]).await;

    // One 100 KB header line (nginx answers 400, Envoy's cap is 60 KiB).
    let big = format!("GET /api/data/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(100_000));
    let answer = send_raw(&balancer, big.as_bytes()).await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 431, "{answer}");
    assert!(body["error"].as_str().unwrap().contains("65536 bytes"), "{body}");

    // Larger than hyper's read buffer: still JSON.
    let huge = format!("GET /api/data/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(1_000_000));
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    // The balancer may close before it has read everything: a write error is fine.
    let _ = stream.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("closed");
    let (status, _) = parse(&String::from_utf8_lossy(&answer));
    assert_eq!(status, 431);

    // 200 header fields.
    let mut many = String::from("GET /api/data/x HTTP/1.1\r\nhost: x\r\n");
    for n in 0..200 {
        many.push_str(&format!("x-h{n}: {n}\r\n"));
    }
    many.push_str("\r\n");
    let answer = send_raw(&balancer, many.as_bytes()).await;
    let (status, body) = parse(&answer);
    assert_eq!(status, 431, "{answer}");
    assert!(body["error"].as_str().unwrap().contains("100 header fields"), "{body}");
    assert_eq!(backend.received(), 0, "no refused head reached the backend");

    // A normal request, with a large cookie and many headers, still goes through.
    let mut request = http().get(balancer.at("/api/data/x")).header("cookie", "c".repeat(20_000));
    for n in 0..60 {
        request = request.header(format!("x-h{n}"), n.to_string());
    }
    let (status, _, body) = read(request.send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(backend.received(), 1);
    assert_eq!(balancer.status().await["status"], "ok");
    balancer.stop().await;
}

#[tokio::test]
async fn header_caps_are_configurable() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_MAX_HEADER_BYTES", "2048"), ("BALANCER_MAX_HEADERS", "10")]).await;

    let long = format!("GET /api/data/x HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n", "a".repeat(3_000));
    let (status, body) = parse(&send_raw(&balancer, long.as_bytes()).await);
    assert_eq!(status, 431);
    assert_eq!(body["error"], "request head larger than 2048 bytes or with more than 10 header fields");
    let mut many = String::from("GET /api/data/x HTTP/1.1\r\nhost: x\r\n");
    for n in 0..10 {
        many.push_str(&format!("x-h{n}: {n}\r\n"));
    }
    let (status, _) = parse(&send_raw(&balancer, format!("{many}\r\n").as_bytes()).await);
    assert_eq!(status, 431, "11 header fields");

    let (status, _, _) = read(http().get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    balancer.stop().await;

    // With room for it in the head, a target too long for hyper gets its 414, as JSON.
    let balancer = over(&backend, &[("BALANCER_MAX_HEADER_BYTES", "131072")]).await;
    let long = format!("GET /api/data/{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let (status, body) = parse(&send_raw(&balancer, long.as_bytes()).await);
    assert_eq!((status, body["error"].as_str()), (414, Some("request target is too long")));
    balancer.stop().await;
}

#[tokio::test]
async fn slowloris_connections_do_not_stall_the_balancer() {
    const SLOW: usize = 2_000;
    let hard = raise_open_files_limit();
    assert!(hard >= 2 * SLOW as u64 + 200, "the hard limit of open files ({hard}) is too low for this test");
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_HEADER_TIMEOUT_MS", "2000")]).await;

    let mut slow = slowloris(&balancer, SLOW).await;
    let (status, _, body) = read(http().get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!(status, 200, "a request gets through 2000 slow heads: {body}");
    for (n, stream) in slow.iter_mut().enumerate() {
        closed(stream, &format!("slow head {n}")).await;
    }
    let (status, _, _) = read(http().get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(backend.received(), 2);
    balancer.stop().await;
}

#[tokio::test]
async fn slow_heads_are_closed_at_the_head_timeout_and_idle_ones_are_kept() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_HEADER_TIMEOUT_MS", "300")]).await;

    let mut keep = answered_once(&balancer).await;

    // Heads that never end, one of them trickling a byte every 50 ms: all closed.
    let mut slow = slowloris(&balancer, 20).await;
    let mut trickling = slow.pop().unwrap();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if trickling.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    for (n, stream) in slow.iter_mut().enumerate() {
        closed(stream, &format!("slow head {n}")).await;
    }
    tokio::time::timeout(WAIT, trickle).await.expect("the trickling head is closed too").unwrap();

    // The idle keep-alive connection has waited longer than the head timeout (the slow
    // heads opened after its answer are closed): it is idle, not slow, and still serves.
    let (line, body) = exchange(&mut keep, "/api/data/x").await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line} {body}");
    assert_eq!(backend.received(), 2);
    balancer.stop().await;
}

#[tokio::test]
async fn a_body_after_100_continue_is_not_held_to_the_head_timeout() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_HEADER_TIMEOUT_MS", "300")]).await;
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    let head = "POST /api/data/x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.unwrap().unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    // The body takes longer than the head timeout (a slow head opened after its first
    // bytes is closed before the rest is sent).
    stream.write_all(b"he").await.unwrap();
    let mut clock = slowloris(&balancer, 1).await.remove(0);
    closed(&mut clock, "a slow head").await;
    stream.write_all(b"llo").await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("bodyBytes") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"bodyBytes\":5"), "{answer}");
    balancer.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_at_the_idle_timeout() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_IDLE_TIMEOUT_MS", "300")]).await;

    let mut silent = TcpStream::connect(balancer.addr).await.unwrap();
    let mut kept = TcpStream::connect(balancer.addr).await.unwrap();
    let (line, _) = exchange(&mut kept, "/api/data/x").await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    closed(&mut silent, "a connection that never sent anything").await;
    closed(&mut kept, "a keep-alive connection after its answer").await;

    // New connections are served as before.
    let (status, _, _) = read(http().get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    balancer.stop().await;
}

#[tokio::test]
async fn a_body_that_never_comes_gets_408_at_the_request_timeout() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("REQUEST_TIMEOUT_MS", "300")]).await;
    // A small body (kept for retries) of which only part is sent.
    let request = b"POST /api/data/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n12";
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    read.expect("answered and closed").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (status, body) = parse(&answer);
    assert_eq!((status, body["error"].as_str()), (408, Some("request body not received in time")), "{answer}");
    assert_eq!(backend.received(), 0);
    balancer.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_place() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&backend, &[("BALANCER_MAX_CONNECTIONS", "2")]).await;
    // Both served: the connection `start` polled /ready on is gone by then (its client
    // was dropped), and `first` was accepted before `second`.
    let mut first = TcpStream::connect(balancer.addr).await.unwrap();
    let mut second = TcpStream::connect(balancer.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        let (line, _) = exchange(stream, "/api/data/x").await;
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    }

    let third = tokio::spawn({
        let addr = balancer.addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            exchange(&mut stream, "/api/data/x").await
        }
    });
    let third = kit::testing::still_pending(third, Duration::from_millis(300), "a third connection's request").await;
    drop(first);
    let (line, _) = third.await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "served once a place is free: {line}");
    assert_eq!(backend.received(), 3);
    balancer.stop().await;
}

#[tokio::test]
async fn stopping_closes_idle_connections_and_finishes_requests_in_flight() {
    let backend = TestBackend::start("data-1").await;
    let balancer = over(&backend, &[("SHUTDOWN_GRACE_MS", "10000")]).await;
    let mut idle = answered_once(&balancer).await;
    // A request held by the backend.
    backend.set_mode(crate::Mode::Hold);
    let held = tokio::spawn(http().get(balancer.at("/api/data/held")).send());
    crate::eventually(WAIT, "the held request reached the backend", || {
        let received = backend.received();
        async move { (received == 2).then_some(()) }
    })
    .await;

    let stopping = tokio::spawn(balancer.stop());
    closed(&mut idle, "an idle connection after stop").await;
    assert!(!stopping.is_finished(), "a request is still in flight");
    backend.release();
    let (status, instance, _) = read(held.await.unwrap().unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("data-1")));
    tokio::time::timeout(WAIT, stopping).await.expect("stopped once the request was answered").unwrap();
}

//! The fast path's edges (`fast`): heads split across reads, pipelined requests, large
//! bodies both ways, chunked answers, a backend closing within an answer — over a scripted
//! backend that writes exactly the bytes a test chooses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{TestBackend, TestBalancer, WAIT, http, read};

/// A backend answering each request by its path: `/health` and others 200 with the path as
/// the body, `/api/data/chunked` a chunked body with a trailer, `/api/data/big` 1 MiB by
/// length, `/api/data/cut` a head promising 100 bytes and 10 of them before it closes.
struct Scripted {
    port: u16,
    /// Requests other than `/health`.
    received: Arc<AtomicUsize>,
}

const BIG: usize = 1 << 20;

impl Scripted {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, counted.clone()));
            }
        });
        Self { port, received }
    }
}

async fn serve(mut stream: TcpStream, received: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 65536];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + length);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if path != "/health" {
            received.fetch_add(1, SeqCst);
        }
        let answer = match path.as_str() {
            "/api/data/chunked" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nx-t: 1\r\n\r\n"
                    .to_vec()
            }
            "/api/data/big" => {
                let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
                answer.extend((0..BIG).map(|i| b'a' + (i % 26) as u8));
                answer
            }
            "/api/data/cased" => b"HTTP/1.1 200 OK\r\nX-Cased: yes\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            "/api/data/cut" => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
                return;
            }
            _ => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-body-bytes: {length}\r\n\r\n{path}", path.len())
                .into_bytes(),
        };
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

async fn over(port: u16) -> TestBalancer {
    over_with(port, &[]).await
}

async fn over_with(port: u16, extra: &[(&str, &str)]) -> TestBalancer {
    let port = port.to_string();
    let vars = [&[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", port.as_str())], extra].concat();
    TestBalancer::start("http://127.0.0.1:9", &vars).await
}

/// The head of the answer to `GET path` over a connection of its own.
async fn head_of(balancer: &TestBalancer, path: &str) -> String {
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    answers(&mut stream, 1).await.remove(0).0
}

/// `BALANCER_FAST_PATH=false` leaves every request to hyper: seen in the answer's field
/// names, which the fast path passes on as the backend wrote them and hyper writes in
/// lower case.
#[tokio::test]
async fn the_fast_path_can_be_switched_off() {
    let backend = Scripted::start().await;
    let fast = over(backend.port).await;
    let head = head_of(&fast, "/api/data/cased").await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("\r\nX-Cased: yes"), "{head}");
    fast.stop().await;

    let hyper_only = over_with(backend.port, &[("BALANCER_FAST_PATH", "false")]).await;
    let head = head_of(&hyper_only, "/api/data/cased").await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("\r\nx-cased: yes"), "{head}");
    hyper_only.stop().await;

    let refused = balancer::Config::from_vars(&kit::Vars::from_pairs([("BALANCER_FAST_PATH", "sometimes")]));
    let refused = refused.expect_err("not a boolean").to_string();
    assert!(refused.contains("BALANCER_FAST_PATH"), "{refused}");
}

/// Reads whole answers (by `content-length`) off `stream` until `n` have come; their heads
/// and bodies.
async fn answers(stream: &mut TcpStream, n: usize) -> Vec<(String, String)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let reading = async {
        while out.len() < n {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..at]).into_owned();
                let length: usize = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: ").and_then(|n| n.trim().parse().ok()))
                    .expect("a content-length");
                if buf.len() >= at + 4 + length {
                    let body = String::from_utf8_lossy(&buf[at + 4..at + 4 + length]).into_owned();
                    buf.drain(..at + 4 + length);
                    out.push((head, body));
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "closed after {} answers", out.len());
            buf.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(WAIT, reading).await.expect("the answers");
    out
}

#[tokio::test]
async fn split_heads_and_pipelined_requests_are_answered_in_order() {
    let backend = Scripted::start().await;
    let balancer = over(backend.port).await;
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();

    // A head (and its body) in pieces, one write each.
    let pieces: [&[u8]; 5] =
        [b"PO", b"ST /api/data/one HTTP/1.1\r\nHo", b"st: x\r\ncontent-length: 5\r", b"\n\r\nab", b"cde"];
    for piece in pieces {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let got = answers(&mut stream, 1).await;
    assert!(got[0].0.starts_with("HTTP/1.1 200"), "{got:?}");
    assert_eq!(got[0].1, "/api/data/one");
    assert!(got[0].0.to_ascii_lowercase().contains("x-body-bytes: 5"), "{got:?}");

    // Three requests in one write: three answers, in order, on the same connection.
    let mut three = Vec::new();
    for path in ["/api/data/a", "/api/data/b?q=1", "/api/data/c"] {
        three.extend_from_slice(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
    }
    stream.write_all(&three).await.unwrap();
    let got = answers(&mut stream, 3).await;
    let bodies: Vec<&str> = got.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(bodies, ["/api/data/a", "/api/data/b?q=1", "/api/data/c"]);
    for (head, _) in &got {
        let head = head.to_ascii_lowercase();
        assert!(head.contains("x-request-id: ") && head.contains("x-upstream-instance: data-"), "{head}");
        assert!(head.contains("traceparent: 00-"), "{head}");
    }

    // A pipelined request the fast path leaves to hyper (an admin path), then a proxied one.
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: localhost\r\n\r\nGET /api/data/d HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = answers(&mut stream, 2).await;
    assert!(got[0].1.contains("\"status\""), "{got:?}");
    assert_eq!(got[1].1, "/api/data/d");
    assert_eq!(backend.received.load(SeqCst), 5);
    balancer.stop().await;
}

#[tokio::test]
async fn large_bodies_and_chunked_answers_pass_through() {
    let backend = Scripted::start().await;
    let balancer = over(backend.port).await;
    let http = http();

    let res = http.get(balancer.at("/api/data/chunked")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-upstream-instance"));
    assert_eq!(res.text().await.unwrap(), "hello, world");

    let res = http.get(balancer.at("/api/data/big")).send().await.unwrap();
    let body = res.bytes().await.unwrap();
    assert_eq!(body.len(), BIG);
    assert!(body.iter().enumerate().all(|(i, b)| *b == b'a' + (i % 26) as u8), "the bytes as sent");

    // A body the fast path keeps (under RETRY_BUFFER_BYTES), and one that hyper streams.
    for size in [60_000usize, 500_000] {
        let res = http.post(balancer.at("/api/data/upload")).body(vec![b'x'; size]).send().await.unwrap();
        assert_eq!(res.status(), 200, "{size}");
        let bytes = res.headers()["x-body-bytes"].to_str().unwrap().to_owned();
        assert_eq!(bytes, size.to_string());
    }
    balancer.stop().await;
}

#[tokio::test]
async fn a_backend_closing_within_an_answer_cuts_it_and_the_balancer_goes_on() {
    let backend = Scripted::start().await;
    let balancer = over(backend.port).await;
    let http = http();

    let res = http.get(balancer.at("/api/data/cut")).send().await.unwrap();
    assert_eq!(res.status(), 200, "the head had gone when the backend closed");
    assert!(res.bytes().await.is_err(), "a body cut short is an error, not a short body");

    let (status, _, _) = read(http.get(balancer.at("/api/data/after")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    balancer.stop().await;
}

#[tokio::test]
async fn a_head_over_the_limit_arriving_in_pieces_gets_431() {
    let backend = TestBackend::start("a").await;
    let port = backend.port().to_string();
    let vars =
        [("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", port.as_str()), ("BALANCER_MAX_HEADER_BYTES", "4096")];
    let balancer = TestBalancer::start("http://127.0.0.1:9", &vars).await;
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream.write_all(b"GET /api/data/x HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    for n in 0..10 {
        let _ = stream.write_all(format!("x-{n}: {}\r\n", "v".repeat(1000)).as_bytes()).await;
    }
    let _ = stream.write_all(b"\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(backend.received(), 0);
    balancer.stop().await;
}

#[tokio::test]
async fn a_client_leaving_within_its_body_leaves_nothing_in_flight() {
    let backend = Scripted::start().await;
    let balancer = over(backend.port).await;
    let mut stream = TcpStream::connect(balancer.addr).await.unwrap();
    stream.write_all(b"POST /api/data/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    let requests = || async { balancer.metrics().await["services"]["data"]["requests"].as_u64() };
    crate::eventually(WAIT, "the request counted", || async { (requests().await == Some(1)).then_some(()) }).await;
    drop(stream);
    crate::eventually(WAIT, "nothing in flight", || async {
        let metrics = balancer.metrics().await;
        (metrics["inFlight"] == 0 && metrics["services"]["data"]["statusClasses"]["4xx"] == 1).then_some(())
    })
    .await;
    assert_eq!(backend.received.load(SeqCst), 0, "a body that never came is not sent");
    balancer.stop().await;
}

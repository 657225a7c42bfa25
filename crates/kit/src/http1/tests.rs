use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;

use super::*;

/// A server that answers each connection's requests with `answers` in turn (one per request
/// read), then closes it; the connections it accepted.
async fn scripted(answers: Vec<&'static str>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                for answer in answers {
                    let mut seen = Vec::new();
                    while !request_read(&seen) {
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

/// Whether `seen` holds a whole request: its head, and the body its `content-length` says.
fn request_read(seen: &[u8]) -> bool {
    let Some(head) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let text = String::from_utf8_lossy(&seen[..head]).to_ascii_lowercase();
    let length = text
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    seen.len() >= head + 4 + length
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const SECOND: Duration = Duration::from_secs(5);

async fn post(conns: &Conns, port: u16) -> Result<Answer, Error> {
    let host = format!("127.0.0.1:{port}");
    post_json(conns, ("127.0.0.1", port), &host, "/beat", &[("x-test", "1")], b"{}", SECOND).await
}

#[tokio::test]
async fn a_kept_connection_serves_the_next_probe() {
    let (port, accepted) = scripted(vec![OK, OK, OK]).await;
    let conns = Conns::default();
    for _ in 0..3 {
        assert_eq!(get(&conns, port, "/health", SECOND, None).await.unwrap(), 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_within_the_probe() {
    // Each connection answers once and is closed: every probe after the first meets a kept
    // connection that is gone, and still gets its answer.
    let (port, accepted) = scripted(vec![OK]).await;
    let conns = Conns::default();
    for _ in 0..3 {
        assert_eq!(get(&conns, port, "/health", SECOND, None).await.unwrap(), 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
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
    assert!(matches!(get(&Conns::default(), port, "/", SECOND, None).await, Err(Error::Other(_))));
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let outcome = get(&Conns::default(), port, "/", Duration::from_millis(100), None).await;
    assert!(matches!(outcome, Err(Error::TimedOut)));
    drop(silent);
    assert!(matches!(get(&Conns::default(), port, "/", SECOND, None).await, Err(Error::Refused)));
}

#[tokio::test]
async fn a_post_gets_its_body_on_a_kept_connection() {
    let (port, accepted) = scripted(vec![OK, "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope"]).await;
    let conns = Conns::default();
    assert_eq!(post(&conns, port).await.unwrap(), Answer { status: 200, body: b"ok".to_vec() });
    assert_eq!(conns.kept(), 1);
    assert_eq!(post(&conns, port).await.unwrap(), Answer { status: 404, body: b"nope".to_vec() });
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_reads_bodies_whose_end_is_the_connections() {
    let cases = [
        ("HTTP/1.0 200 OK\r\n\r\nhello", "hello"),
        ("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi", "hi"),
        ("HTTP/1.1 200 OK\r\n\r\nto the end", "to the end"),
    ];
    for (answer, body) in cases {
        let (port, _) = scripted(vec![answer]).await;
        let conns = Conns::default();
        let got = post(&conns, port).await.unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, body.as_bytes()), "{answer:?}");
        assert_eq!(conns.kept(), 0, "{answer:?}");
    }
    let (port, _) = scripted(vec!["HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"]).await;
    assert!(matches!(post(&Conns::default(), port).await, Err(Error::Other(_))));
}

#[tokio::test]
async fn a_post_body_over_the_limit_is_an_error_and_drops_the_connection() {
    let head: &'static str = Box::leak(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", MAX_BODY + 1).into());
    let (port, _) = scripted(vec![head]).await;
    let conns = Conns::default();
    assert!(matches!(post(&conns, port).await, Err(Error::TooLarge)));
    assert_eq!(conns.kept(), 0);
    // A body with no length that runs past the limit.
    let long: &'static str = Box::leak(format!("HTTP/1.0 200 OK\r\n\r\n{}", "x".repeat(MAX_BODY + 10)).into());
    let (port, _) = scripted(vec![long]).await;
    assert!(matches!(post(&Conns::default(), port).await, Err(Error::TooLarge)));
}

#[tokio::test]
async fn a_line_break_in_a_header_is_refused_before_sending() {
    let (port, accepted) = scripted(vec![OK]).await;
    let host = format!("127.0.0.1:{port}");
    let headers = [("authorization", "Bearer x\r\nx-evil: 1")];
    let outcome = post_json(&Conns::default(), ("127.0.0.1", port), &host, "/", &headers, b"{}", SECOND).await;
    assert!(matches!(outcome, Err(Error::Other(m)) if m.contains("line break")));
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

//! Retries, ejection and readmission, poison requests, timeouts, and bad input.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Mode, TestBackend, TestBalancer, WAIT, eventually, http, read};

/// A balancer over static ports (no registry).
async fn over(ports: &[u16], extra: &[(&str, &str)]) -> TestBalancer {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    let mut vars = vec![("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", ports.as_str())];
    vars.extend_from_slice(extra);
    TestBalancer::start("http://127.0.0.1:9", &vars).await
}

async fn instance(balancer: &TestBalancer, service: &str, id: &str) -> serde_json::Value {
    let status = balancer.status().await;
    status["services"][service]["instances"].as_array().unwrap().iter().find(|i| i["id"] == id).cloned().unwrap()
}

#[tokio::test]
async fn connect_refused_is_retried_for_get_and_post() {
    let dead = crate::closed_port().await;
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    // Slow health checks, so only the request path finds the dead instance.
    let balancer = over(&[dead, a.port(), b.port()], &[("HEALTH_CHECK_INTERVAL_MS", "60000")]).await;
    let http = http();

    balancer.reset_round_robin().await;
    let (status, upstream, body) =
        read(http.post(balancer.at("/api/data/items")).body(r#"{"key":"k"}"#).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.as_deref(), Some("data-2"), "the refused attempt went to the next instance");
    assert_eq!(body["bodyBytes"], 11, "the body was sent again in full");
    assert_eq!(instance(&balancer, "data", "data-1").await["ejected"], true);

    for _ in 0..6 {
        let (status, _, body) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.received() + b.received(), 7);
    let metrics = balancer.metrics().await;
    assert_eq!(metrics["services"]["data"]["retries"], 1);
    assert_eq!(metrics["services"]["data"]["instances"]["data-1"]["errors"], 1);
    balancer.stop().await;
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_not_sent_again() {
    let dropping = TestBackend::start("dropping").await;
    dropping.set_mode(Mode::Drop);
    let good = TestBackend::start("good").await;
    let balancer = over(&[dropping.port(), good.port()], &[]).await;
    let http = http();

    // A plain POST reaches data-1, which drops the connection: 502, not sent elsewhere.
    balancer.reset_round_robin().await;
    let (status, _, body) = read(http.post(balancer.at("/api/data/items")).body("{}").send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].is_string());
    assert_eq!((dropping.received(), good.received()), (1, 0), "the POST was sent exactly once");

    // With an Idempotency-Key it is retried like an idempotent request.
    balancer.reset_round_robin().await;
    let res = http.post(balancer.at("/api/data/items")).header("idempotency-key", "k-1").body("{}").send().await;
    let (status, instance, body) = read(res.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("data-2")), "{body}");
    assert_eq!((dropping.received(), good.received()), (2, 1));

    // And so is a GET.
    balancer.reset_round_robin().await;
    let (status, instance, _) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("data-2")));
    assert_eq!((dropping.received(), good.received()), (3, 2));
    assert_eq!(balancer.metrics().await["poisonRequests"], 0, "one lost connection is not a poison request");
    balancer.stop().await;
}

#[tokio::test]
async fn a_request_that_breaks_two_instances_is_not_sent_to_a_third() {
    // Every instance dies on the request (reads it, drops the connection without answering).
    let backends = [TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await];
    for backend in &backends {
        backend.set_mode(Mode::Drop);
    }
    let ports: Vec<u16> = backends.iter().map(TestBackend::port).collect();
    let balancer = over(&ports, &[("HEALTH_CHECK_INTERVAL_MS", "60000")]).await;
    let http = http();
    let received = || backends.iter().map(TestBackend::received).sum::<usize>();

    let res = http.get(balancer.at("/api/data/poison")).header("x-request-id", "poison-1").send().await.unwrap();
    let (status, instance, body) = read(res).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("poison request"), "{body}");
    assert!(instance.is_some(), "the last instance it broke is named");
    assert_eq!(received(), 2, "the second lost connection ends it: a third instance never sees it");

    let metrics = balancer.metrics().await;
    assert_eq!(metrics["poisonRequests"], 1);
    assert_eq!(metrics["services"]["data"]["poisonRequests"], 1);
    assert_eq!(metrics["services"]["data"]["retries"], 1);
    assert_eq!(balancer.status().await["poisonRequests"], 1);
    let text = http.get(balancer.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("balancer_poison_requests_total{service=\"data\"} 1\n"), "{text}");

    // A POST that loses its connection once is not retried anyway: not a poison request.
    let (status, _, _) = read(http.post(balancer.at("/api/data/x")).body("{}").send().await.unwrap()).await;
    assert_eq!((status, received()), (502, 3));
    assert_eq!(balancer.metrics().await["poisonRequests"], 1);

    // Back to normal: requests are served.
    for backend in &backends {
        backend.set_mode(Mode::Ok);
    }
    let (status, _, body) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    balancer.stop().await;
}

#[tokio::test]
async fn unavailable_answers_are_retried_only_when_idempotent() {
    let failing = TestBackend::start("failing").await;
    failing.fail_with(503);
    let good = TestBackend::start("good").await;
    let balancer = over(&[failing.port(), good.port()], &[]).await;
    let http = http();

    balancer.reset_round_robin().await;
    let (status, instance, _) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (200, Some("data-2")));

    balancer.reset_round_robin().await;
    let (status, instance, body) = read(http.post(balancer.at("/api/data/x")).body("{}").send().await.unwrap()).await;
    assert_eq!((status, instance.as_deref()), (503, Some("data-1")), "the backend's own answer is passed on");
    assert_eq!(body["instance"], "failing");
    assert_eq!((failing.received(), good.received()), (2, 1));
    balancer.stop().await;
}

/// An instance's health checks go over one kept connection, even when the request path's
/// pool would have closed it as idle (`BALANCER_UPSTREAM_IDLE_MS`) between two checks: the
/// instance does not accept and close a connection per check.
#[tokio::test]
async fn health_checks_reuse_one_connection() {
    let a = TestBackend::start("a").await;
    let extra = [("HEALTH_CHECK_INTERVAL_MS", "100"), ("BALANCER_UPSTREAM_IDLE_MS", "20")];
    let balancer = over(&[a.port()], &extra).await;
    eventually(WAIT, "five health checks", || async { (a.checks() >= 5).then_some(()) }).await;
    assert_eq!(a.connections(), 1, "{} checks", a.checks());
    assert_eq!(instance(&balancer, "data", "data-1").await["healthy"], true);
    balancer.stop().await;
}

#[tokio::test]
async fn ejected_instances_are_readmitted_when_checks_pass() {
    readmitted_after_a_restart("100").await;
}

/// The checks sleep until the next one is due (a minute here), yet an instance the request
/// path ejects is looked at within a `RECHECK` and readmitted once it answers again: the
/// ejection wakes them.
#[tokio::test]
async fn an_ejection_wakes_the_sleeping_checks() {
    readmitted_after_a_restart("60000").await;
}

/// Kills one of two instances, sees it go out of rotation while requests still succeed,
/// restarts it and sees the checks (every `interval` ms) bring it back.
async fn readmitted_after_a_restart(interval: &str) {
    let mut a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let balancer = over(&[a.port(), b.port()], &[("HEALTH_CHECK_INTERVAL_MS", interval)]).await;
    let http = http();

    a.kill().await;
    eventually(WAIT, "data-1 out of rotation", || async {
        let (status, _, _) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
        assert_eq!(status, 200, "requests succeed while data-1 is down");
        let i = instance(&balancer, "data", "data-1").await;
        (i["ejected"] == true || i["healthy"] == false).then_some(())
    })
    .await;
    assert_eq!(balancer.status().await["services"]["data"]["healthy"], 1);

    a.restart().await;
    eventually(WAIT, "data-1 readmitted", || async {
        let i = instance(&balancer, "data", "data-1").await;
        (i["ejected"] == false && i["healthy"] == true).then_some(())
    })
    .await;
    let before = a.received();
    for _ in 0..4 {
        let (status, _, _) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
        assert_eq!(status, 200);
    }
    assert_eq!(a.received(), before + 2, "data-1 is back in rotation");
    balancer.stop().await;
}

#[tokio::test]
async fn a_hanging_backend_times_out_and_others_are_unaffected() {
    let hanging = TestBackend::start("hanging").await;
    hanging.set_mode(Mode::Hang);
    let good = TestBackend::start("good").await;
    let auth = TestBackend::start("auth").await;
    let auth_port = auth.port().to_string();
    let balancer = over(
        &[hanging.port(), good.port()],
        &[("REQUEST_TIMEOUT_MS", "700"), ("AUTH_PORTS", &auth_port), ("HEALTH_CHECK_INTERVAL_MS", "60000")],
    )
    .await;
    let http = http();

    balancer.reset_round_robin().await;
    let started = Instant::now();
    let stuck = tokio::spawn({
        let (http, url) = (http.clone(), balancer.at("/api/data/x"));
        async move { read(http.get(url).send().await.unwrap()).await }
    });
    // While that request waits, others are served at once.
    for _ in 0..5 {
        let (status, _, _) = read(http.get(balancer.at("/api/auth/x")).send().await.unwrap()).await;
        assert_eq!(status, 200);
    }
    assert!(!stuck.is_finished(), "the hanging request is still waiting");
    let (status, instance, body) = stuck.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(instance.as_deref(), Some("data-1"), "the instance that did not answer");
    assert_eq!(body["error"], "the instance did not answer in time");
    assert!(started.elapsed() >= Duration::from_millis(700));

    // The timeout ejected it: data requests now go to the good instance.
    for _ in 0..4 {
        let (status, instance, _) = read(http.get(balancer.at("/api/data/x")).send().await.unwrap()).await;
        assert_eq!((status, instance.as_deref()), (200, Some("data-2")));
    }
    balancer.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_large_bodies_stream() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&[backend.port()], &[("BODY_LIMIT_BYTES", "100000"), ("RETRY_BUFFER_BYTES", "1000")]).await;
    let http = http();

    // Declared too large.
    let res = http.post(balancer.at("/api/data/x")).body(vec![b'a'; 100_001]).send().await.unwrap();
    let (status, _, body) = read(res).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"));
    assert_eq!(backend.received(), 0);

    // Streamed (chunked, no length) past the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20).map(|_| Ok(vec![b'b'; 10_000])).collect();
    let stream = futures_util::stream::iter(chunks);
    let res = http.post(balancer.at("/api/data/x")).body(reqwest::Body::wrap_stream(stream)).send().await;
    let (status, _, body) = read(res.unwrap()).await;
    assert_eq!(status, 413, "{body}");

    // Under the limit, larger than the retry buffer: streamed through in full.
    let res = http.post(balancer.at("/api/data/x")).body(vec![b'c'; 99_000]).send().await.unwrap();
    let (status, _, body) = read(res).await;
    assert_eq!((status, body["bodyBytes"].as_u64()), (200, Some(99_000)));

    // A large answer streams back whole.
    let res = http.get(balancer.at("/api/data/big?bytes=8000000")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), 8_000_000);
    balancer.stop().await;
}

#[tokio::test]
async fn malformed_http_gets_400() {
    let balancer = TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false")]).await;
    for garbage in [&b"NOT HTTP AT ALL\r\n\r\n"[..], b"GET /api/data HTTP/1.1\r\nbad header line\r\n\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n{\"error\":\"malformed request\"}"), "a JSON body: {answer}");
    }
    // The balancer still serves.
    assert_eq!(balancer.status().await["status"], "ok");
    balancer.stop().await;
}

#[tokio::test]
async fn no_instance_is_503_json() {
    let balancer =
        TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("ROUTES", "/api/x=nothing")])
            .await;
    let (status, _, body) = read(http().get(balancer.at("/api/x/y")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "no healthy instance of this service");
    balancer.stop().await;
}

#[tokio::test]
async fn expect_continue_is_answered_and_the_body_forwarded() {
    let backend = TestBackend::start("a").await;
    let balancer = over(&[backend.port()], &[]).await;
    let mut stream = tokio::net::TcpStream::connect(balancer.addr).await.unwrap();
    let head = "POST /api/data/x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\
                connection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf)).await.unwrap().unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"bodyBytes\":5"), "{answer}");
    balancer.stop().await;
}

#[tokio::test]
async fn backend_connections_idle_too_long_are_not_reused() {
    let backend = TestBackend::start("data-1").await;
    let http = http();
    // The number of the backend connection a request came on.
    let connection = |balancer: &TestBalancer| {
        let req = http.get(balancer.at("/api/data/x"));
        async move {
            let (status, _, body) = read(req.send().await.unwrap()).await;
            assert_eq!(status, 200, "{body}");
            body["connection"].as_u64().unwrap()
        }
    };
    // One worker: every request uses the same idle list.
    let one_worker = ("BALANCER_WORKERS", "1");

    let balancer = over(&[backend.port()], &[one_worker]).await;
    let first = connection(&balancer).await;
    assert_eq!(connection(&balancer).await, first, "idle for less than the default 5 s: reused");
    balancer.stop().await;

    const IDLE: Duration = Duration::from_millis(100);
    let balancer = over(&[backend.port()], &[one_worker, ("BALANCER_UPSTREAM_IDLE_MS", "100")]).await;
    let first = connection(&balancer).await;
    // The passage of time is the behaviour under test.
    tokio::time::sleep(IDLE * 2).await;
    let second = connection(&balancer).await;
    assert_ne!(second, first, "idle for longer than BALANCER_UPSTREAM_IDLE_MS: a new connection");
    balancer.stop().await;
}

//! The dashboard's WebSocket: a snapshot on connect, updates after a change, and clients
//! that misbehave.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::Message;

use crate::{Backend, FakeBalancer, Mode, TestDetector, TestRegistry, WAIT, eventually};

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(detector: &TestDetector) -> Client {
    let url = format!("{}/ws", detector.url.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next JSON message, within the deadline.
async fn next(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, client.next()).await.expect("a message in time").unwrap().unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Reads messages until one satisfies `want`.
async fn until(client: &mut Client, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no message with {what}");
        let message = next(client).await;
        if want(&message) {
            return message;
        }
    }
}

fn web1(status: &Value) -> &Value {
    &status["services"]["web"][0]
}

#[tokio::test]
async fn snapshot_on_connect_then_live_updates() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let (backend, url) = Backend::start().await;
    registry.register("web-1", "web", &url).await;
    detector.instance_where("web-1", "web-1 up", |i| i["status"] == "up").await;

    let mut client = connect(&detector).await;
    let snapshot = next(&mut client).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(web1(&snapshot["status"])["status"], "up");
    assert_eq!(web1(&snapshot["status"])["history"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["config"]["historySize"], 120);
    let seq = snapshot["seq"].as_u64().unwrap();

    backend.set(Mode::Failing);
    detector.check().await;
    let alert = until(&mut client, "the alert", |m| m["type"] == "alert").await;
    assert_eq!(alert["alert"]["type"], "down");
    assert_eq!(alert["alertsTotal"], 1);
    assert!(alert["seq"].as_u64().unwrap() > seq);
    let status = until(&mut client, "web-1 down", |m| m["type"] == "status").await;
    assert_eq!(web1(&status["status"])["status"], "down");
    // Updates carry the newest sample only: the page keeps its own history.
    assert_eq!(web1(&status["status"])["history"].as_array().unwrap().len(), 1);
    assert_eq!(web1(&status["status"])["history"][0]["ok"], false);

    // A new instance shows up by itself.
    let (_other, other_url) = Backend::start().await;
    registry.register("web-2", "web", &other_url).await;
    until(&mut client, "web-2", |m| {
        m["type"] == "status" && m["status"]["services"]["web"].as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(detector.state.dashboard_clients(), 1);
    client.close(None).await.unwrap();
    eventually(WAIT, "the socket counted out", || async { (detector.state.dashboard_clients() == 0).then_some(()) })
        .await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_and_others_are_served() {
    let registry = TestRegistry::start().await;
    // Small socket buffers on the detector's side, so a client that never reads stalls it soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(128).unwrap();
    let addr = listener.local_addr().unwrap();
    let vars = [
        ("SERVICE_REGISTRY_URL", registry.url.as_str()),
        ("REGISTER", "false"),
        ("CHECK_INTERVAL_MS", "600000"),
        ("CHECK_TIMEOUT_MS", "300"),
        ("LOAD_BALANCER_URL", "http://127.0.0.1:9"),
        ("WS_SEND_TIMEOUT_MS", "300"),
    ];
    let config = detector::Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap();
    let state = detector::AppState::new(config, kit::Shutdown::new());
    tokio::spawn(detector::run(state.clone(), listener));
    let detector = TestDetector { url: format!("http://{addr}"), state: state.clone() };
    // Enough instances that every status message is a few kilobytes.
    let mut backends = Vec::new();
    for i in 1..=12 {
        let (backend, url) = Backend::start().await;
        registry.register(&format!("web-{i}"), "web", &url).await;
        backends.push(backend);
    }
    detector.instance_where("web-12", "web-12 up", |i| i["status"] == "up").await;

    // A client that completes the handshake, then never reads another byte.
    let client = TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(2048).unwrap();
    let mut stalled = client.connect(addr).await.unwrap();
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stalled.write_all(handshake.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    eventually(WAIT, "the socket counted", || async { (state.dashboard_clients() == 1).then_some(()) }).await;

    // Changes keep coming; the stalled socket's buffers fill, and the detector drops it
    // instead of queueing for it.
    eventually(Duration::from_secs(20), "the stalled client dropped", || async {
        detector.check().await;
        (state.dashboard_clients() == 0).then_some(())
    })
    .await;

    // Everyone else is served as before.
    let mut fresh = connect(&detector).await;
    let snapshot = next(&mut fresh).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["status"]["summary"]["total"], 12);
    drop(stalled);
}

#[tokio::test]
async fn sockets_from_other_origins_are_refused() {
    let registry = TestRegistry::start().await;
    let detector = TestDetector::start(&registry, &[]).await;
    let host = detector.url.trim_start_matches("http://").to_owned();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{host}/ws"))
            .unwrap();
    request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{host}/ws"))
        .unwrap();
    request.headers_mut().insert("origin", format!("http://{host}").parse().unwrap());
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next(&mut client).await["type"], "snapshot");
}

#[tokio::test]
async fn a_dashboard_connecting_reads_the_traffic_at_once() {
    let registry = TestRegistry::start().await;
    let (balancer, balancer_url) = FakeBalancer::start().await;
    balancer.set(FakeBalancer::metrics(30, &[("backend-1", 30)]));
    // An hour between reads: only a dashboard connecting can bring a second one in time.
    let extra = [("LOAD_BALANCER_URL", balancer_url.as_str()), ("METRICS_INTERVAL_MS", "3600000")];
    let detector = TestDetector::start(&registry, &extra).await;
    let requests = |detector: &TestDetector| {
        let snapshot: Value = serde_json::from_str(detector.state.snapshot().text.as_str()).unwrap();
        snapshot["traffic"]["requests"].as_u64()
    };
    eventually(WAIT, "the first read", || async { (requests(&detector) == Some(30)).then_some(()) }).await;
    balancer.set(FakeBalancer::metrics(40, &[("backend-1", 40)]));
    let mut client = connect(&detector).await;
    let traffic =
        until(&mut client, "the fresh traffic", |m| m["type"] == "traffic" && m["traffic"]["requests"] == 40).await;
    assert!(traffic["traffic"]["requestsPerSecond"].as_f64().is_some(), "{traffic}");
}

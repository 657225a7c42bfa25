//! WebSocket upgrades through the balancer: the handshake is routed like a request, the
//! tunnel carries frames both ways, and an instance that does not switch answers as usual.

use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::{TestBalancer, http, read};

/// An instance with a WebSocket at `/api/data/ws` that echoes each text message, prefixed
/// by its id and the `X-Forwarded-For` of the handshake, and a plain `/api/data/plain`.
async fn socket_backend(id: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/api/data/plain", get(|| async { "plain" }))
        .route(
            "/api/data/ws",
            get(move |ws: WebSocketUpgrade, headers: HeaderMap| async move {
                let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                ws.on_upgrade(move |mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        match message {
                            AxumMessage::Text(text) if text.as_str() == "bye" => break,
                            AxumMessage::Text(text) => {
                                let answer = format!("{id} {forwarded}: {}", text.as_str());
                                if socket.send(AxumMessage::Text(answer.into())).await.is_err() {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                })
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

/// A balancer routing `/api/data` to the instance on `port` (static discovery).
async fn over(port: u16) -> TestBalancer {
    let port = port.to_string();
    TestBalancer::start("http://127.0.0.1:9", &[("USE_DYNAMIC_DISCOVERY", "false"), ("DATA_PORTS", &port)]).await
}

fn ws_url(balancer: &TestBalancer, path: &str) -> String {
    format!("ws://{}{path}", balancer.addr)
}

#[tokio::test]
async fn websockets_are_tunnelled_both_ways() {
    let (port, backend) = socket_backend("data-1").await;
    let balancer = over(port).await;

    let (mut socket, handshake) = tokio_tungstenite::connect_async(ws_url(&balancer, "/api/data/ws")).await.unwrap();
    assert_eq!(handshake.status(), 101);
    assert!(handshake.headers().contains_key("x-upstream-instance"), "{:?}", handshake.headers());
    assert!(handshake.headers().contains_key("x-request-id"));
    for n in 0..3 {
        socket.send(Message::text(format!("hello {n}"))).await.unwrap();
        let answer = socket.next().await.unwrap().unwrap();
        assert_eq!(answer.into_text().unwrap().as_str(), format!("data-1 127.0.0.1: hello {n}"));
    }
    // Two tunnels at once, and plain requests beside them.
    let (mut second, _) = tokio_tungstenite::connect_async(ws_url(&balancer, "/api/data/ws")).await.unwrap();
    second.send(Message::text("again")).await.unwrap();
    assert_eq!(second.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "data-1 127.0.0.1: again");
    let (status, _, _) = read(http().get(balancer.at("/status")).send().await.unwrap()).await;
    assert_eq!(status, 200);

    // The instance ends the session: the client sees the end of the stream.
    socket.send(Message::text("bye")).await.unwrap();
    let end = tokio::time::timeout(crate::WAIT, socket.next()).await.expect("the tunnel closes");
    assert!(matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))), "{end:?}");
    // The other tunnel is still open.
    second.send(Message::text("still")).await.unwrap();
    assert_eq!(second.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "data-1 127.0.0.1: still");
    balancer.stop().await;
    backend.abort();
}

#[tokio::test]
async fn an_upgrade_the_instance_refuses_gets_its_answer() {
    let (port, backend) = socket_backend("data-1").await;
    let balancer = over(port).await;
    // A plain route answers 200 without switching.
    match tokio_tungstenite::connect_async(ws_url(&balancer, "/api/data/plain")).await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 200);
            assert_eq!(response.body().as_deref(), Some(&b"plain"[..]));
        }
        other => panic!("expected the instance's plain answer, got {other:?}"),
    }
    // No route: the balancer's own 404.
    match tokio_tungstenite::connect_async(ws_url(&balancer, "/nowhere")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    balancer.stop().await;
    backend.abort();

    // No instance listening: 502 or 503, as for any request, and nothing hangs.
    let balancer = over(crate::closed_port().await).await;
    match tokio_tungstenite::connect_async(ws_url(&balancer, "/api/data/ws")).await {
        Err(WsError::Http(response)) => assert!(matches!(response.status().as_u16(), 502 | 503), "{response:?}"),
        other => panic!("expected 502 or 503, got {other:?}"),
    }
    balancer.stop().await;
}

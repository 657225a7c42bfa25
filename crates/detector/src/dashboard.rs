//! The dashboard: its page (embedded assets), its WebSocket (`/ws`), and the timeline of
//! the last `orch verify` run (`/verify/timeline.html`, when the data dir holds one).
//!
//! Theory of operation. Every change to the cluster is serialised once, numbered, and sent
//! on a bounded broadcast channel ([`crate::UPDATES_CAPACITY`] messages). Each socket is
//! split: a writer task sends a snapshot first, then forwards the broadcast; a reader task
//! drains what the browser sends (pings, the close). When either ends, the other is
//! aborted. Memory per socket is bounded whatever the browser does:
//! - the broadcast buffer is shared and fixed; a socket that falls behind it gets a fresh
//!   snapshot (and the numbered messages it already has are skipped), never a backlog;
//! - the writer holds one message at a time, and a message the socket cannot take within
//!   `WS_SEND_TIMEOUT_MS` (a browser that stopped reading) closes the socket;
//! - incoming messages are capped in size and thrown away.
//!
//! The writer and reader are generic over `Sink`/`Stream`, so they are tested without a
//! network.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use kit::http::ApiError;
use tokio::sync::broadcast;

use crate::AppState;

/// A numbered, serialised message for the dashboard.
#[derive(Clone, Debug)]
pub struct Update {
    pub seq: u64,
    pub text: Utf8Bytes,
}

/// Why a writer stopped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Disconnect {
    #[error("the dashboard did not take a message in time")]
    TooSlow,
    #[error("the dashboard's socket is gone")]
    Gone,
}

/// The page's files, embedded in the binary.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../assets/index.html") },
    Asset { path: "/app.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../assets/app.css") },
    Asset { path: "/app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../assets/app.js") },
    Asset { path: "/favicon.svg", content_type: "image/svg+xml", body: include_bytes!("../assets/favicon.svg") },
];

/// Only the page's own files: no inline script, no other origin, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn router(state: AppState) -> Router {
    let mut router =
        Router::new().route("/ws", get(socket)).route("/verify/timeline.html", get(verify_timeline)).with_state(state);
    for asset in ASSETS {
        let etag = format!("\"{:016x}\"", fnv1a(asset.body));
        router =
            router.route(asset.path, get(move |headers: HeaderMap| async move { serve_asset(asset, &etag, &headers) }));
    }
    router
}

fn serve_asset(asset: &'static Asset, etag: &str, headers: &HeaderMap) -> Response {
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Revalidated on every load (cheap: 304), so a new build shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, kit::http::header_value(etag));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The timeline page `orch verify` wrote: plain HTML and inline SVG and styles, no script.
const TIMELINE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// `GET /verify/timeline.html`: the last verify run's timeline, or 404 when there is none.
async fn verify_timeline(State(state): State<AppState>) -> Response {
    let Some(path) = state.config().verify_timeline.clone() else {
        return ApiError::new(StatusCode::NOT_FOUND, "no data dir: no verify timeline here").into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(body) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(TIMELINE_CSP));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            response
        }
        Err(_) => ApiError::new(StatusCode::NOT_FOUND, "no verify run yet: `orch verify` leaves its timeline here")
            .into_response(),
    }
}

/// FNV-1a, for the assets' ETags.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A page of another origin may not read the dashboard's socket.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host))
}

async fn socket(State(state): State<AppState>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    if !same_origin(&headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-origin dashboard sockets are not allowed").into_response();
    }
    let Some(slot) = state.client_slot() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many dashboard connections").into_response();
    };
    upgrade.max_message_size(64 << 10).max_frame_size(64 << 10).on_upgrade(move |socket| async move {
        serve_socket(state, socket).await;
        drop(slot);
    })
}

async fn serve_socket(state: AppState, socket: WebSocket) {
    let (sink, stream) = socket.split();
    // Subscribe before the snapshot is taken, so nothing published after it is missed.
    let updates = state.subscribe();
    // The traffic and orch's instances may have been read at the calm pace: fresh reads
    // follow as updates.
    state.wake_traffic_poll();
    state.wake_orch_poll();
    let timeout = state.config().ws_send_timeout;
    let shutdown = state.0.shutdown.clone();
    let writer_state = state.clone();
    let mut writer = tokio::spawn(async move {
        write_loop(sink, updates, move || writer_state.snapshot(), timeout, shutdown.requested_owned()).await
    });
    let mut reader = tokio::spawn(read_loop(stream));
    tokio::select! {
        ended = &mut writer => {
            reader.abort();
            if let Ok(Err(why)) = ended {
                tracing::info!(%why, "dashboard socket closed");
            }
        }
        _ = &mut reader => writer.abort(),
    }
}

/// Sends a snapshot, then every update, to `sink` until the updates end, `stop`
/// completes (a close frame is sent), or the sink fails or stalls for `timeout`.
/// Falling behind the updates costs a fresh snapshot, not a backlog.
pub async fn write_loop<S>(
    mut sink: S,
    mut updates: broadcast::Receiver<Update>,
    snapshot: impl Fn() -> Update,
    timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Disconnect>
where
    S: Sink<Message> + Unpin,
{
    let first = snapshot();
    let mut sent = first.seq;
    send(&mut sink, Message::Text(first.text), timeout).await?;
    let mut stop = std::pin::pin!(stop);
    loop {
        let update = tokio::select! {
            _ = &mut stop => {
                let close = CloseFrame { code: 1001, reason: Utf8Bytes::from_static("detector shutting down") };
                let _ = send(&mut sink, Message::Close(Some(close)), Duration::from_secs(1)).await;
                return Ok(());
            }
            update = updates.recv() => update,
        };
        let update = match update {
            Ok(update) if update.seq <= sent => continue, // already in the snapshot
            Ok(update) => update,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "dashboard socket fell behind, sending a snapshot");
                updates = updates.resubscribe();
                snapshot()
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        sent = update.seq;
        send(&mut sink, Message::Text(update.text), timeout).await?;
    }
}

async fn send<S: Sink<Message> + Unpin>(sink: &mut S, message: Message, timeout: Duration) -> Result<(), Disconnect> {
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Disconnect::Gone),
        Err(_) => Err(Disconnect::TooSlow),
    }
}

/// Reads and drops what the dashboard sends, until it closes or fails. (Pings are
/// answered by the socket itself.)
pub async fn read_loop<S, E>(mut stream: S)
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Ok(message)) = stream.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::*;

    fn update(seq: u64) -> Update {
        Update { seq, text: Utf8Bytes::from(format!("{{\"seq\":{seq}}}")) }
    }

    /// A sink that records what it is sent, or never takes anything.
    #[derive(Clone, Default)]
    struct TestSink {
        sent: Arc<Mutex<Vec<String>>>,
        stuck: bool,
    }

    impl Sink<Message> for TestSink {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.stuck { Poll::Pending } else { Poll::Ready(Ok(())) }
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            if let Message::Text(text) = item {
                self.sent.lock().unwrap().push(text.to_string());
            }
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn snapshot_then_updates_without_repeats() {
        let (tx, rx) = broadcast::channel(8);
        // Published before the snapshot was taken (seq 2): already in it.
        tx.send(update(1)).unwrap();
        tx.send(update(2)).unwrap();
        tx.send(update(3)).unwrap();
        drop(tx);
        let sink = TestSink::default();
        let outcome = write_loop(sink.clone(), rx, || update(2), Duration::from_secs(1), std::future::pending()).await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(*sink.sent.lock().unwrap(), [r#"{"seq":2}"#, r#"{"seq":3}"#]);
    }

    #[tokio::test]
    async fn a_lagging_socket_gets_a_snapshot_not_a_backlog() {
        let (tx, rx) = broadcast::channel(4);
        let latest = Arc::new(Mutex::new(0u64));
        let now = latest.clone();
        let snapshot = move || update(*now.lock().unwrap());
        let sink = TestSink::default();
        let sent = sink.sent.clone();
        let writer = tokio::spawn(write_loop(sink, rx, snapshot, Duration::from_secs(1), std::future::pending()));
        let sent_count = |n: usize| {
            let sent = sent.clone();
            move || {
                let done = sent.lock().unwrap().len() == n;
                async move { done.then_some(()) }
            }
        };
        kit::testing::eventually(Duration::from_secs(2), "the first snapshot", sent_count(1)).await;
        // 20 updates while the writer is not looking: 16 more than the channel keeps.
        *latest.lock().unwrap() = 20;
        for seq in 1..=20 {
            tx.send(update(seq)).unwrap();
        }
        kit::testing::eventually(Duration::from_secs(2), "the catch-up snapshot", sent_count(2)).await;
        tx.send(update(21)).unwrap();
        drop(tx);
        writer.await.unwrap().unwrap();
        assert_eq!(*sent.lock().unwrap(), [r#"{"seq":0}"#, r#"{"seq":20}"#, r#"{"seq":21}"#]);
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_is_dropped() {
        let (tx, rx) = broadcast::channel(4);
        let sink = TestSink { stuck: true, ..Default::default() };
        let outcome = write_loop(sink, rx, || update(0), Duration::from_millis(50), std::future::pending()).await;
        assert_eq!(outcome, Err(Disconnect::TooSlow));
        drop(tx);
    }

    #[tokio::test]
    async fn stop_sends_a_close() {
        let (_tx, rx) = broadcast::channel::<Update>(4);
        let sink = TestSink::default();
        let outcome = write_loop(sink.clone(), rx, || update(0), Duration::from_secs(1), async {}).await;
        assert_eq!(outcome, Ok(()));
    }

    #[tokio::test]
    async fn reader_ends_on_close() {
        let messages: Vec<Result<Message, std::io::Error>> =
            vec![Ok(Message::Text("hi".into())), Ok(Message::Close(None)), Ok(Message::Text("never".into()))];
        let mut stream = futures_util::stream::iter(messages);
        read_loop(&mut stream).await;
        assert!(stream.next().await.is_some(), "stops at the close");
    }

    #[test]
    fn origins() {
        let headers = |origin: Option<&'static str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:3004"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            h
        };
        assert!(same_origin(&headers(None)));
        assert!(same_origin(&headers(Some("http://127.0.0.1:3004"))));
        assert!(!same_origin(&headers(Some("http://evil.example"))));
        assert!(!same_origin(&headers(Some("null"))));
    }
}

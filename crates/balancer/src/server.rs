//! The HTTP/1 server: one acceptor, and `BALANCER_WORKERS` worker threads (one per core by
//! default), each with its own single-threaded runtime and its own pool of backend
//! connections, as nginx runs one event loop per worker process.
//!
//! The acceptor hands each new client connection to the next worker in turn; from then on
//! the connection, its requests and the backend connections they use stay on that thread,
//! so the request path has no cross-thread wake-ups and no contended pool. Requests for
//! the balancer's own endpoints go to the admin router (axum); everything else takes the
//! proxy path directly on hyper, with no router or buffering middleware in between.
//!
//! Clients are bounded: at most `BALANCER_MAX_CONNECTIONS` connections are served at once
//! (the acceptor waits for a place before it accepts, so more wait in the listen backlog),
//! hyper refuses heads over `BALANCER_MAX_HEADER_BYTES` or `BALANCER_MAX_HEADERS` (431),
//! and each connection is a [`ClientIo`] that closes slow and idle clients.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Release;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::client::{ClientIo, Heads, Limits};
use crate::fast::{self, Served};
use crate::response::ResponseBody;
use crate::worker::{Stop, Worker};
use crate::{AppState, Config, admin, proxy};

/// The header fields hyper's parser keeps on the stack; a lower cap is set, a higher one
/// would cost an allocation per request.
const PARSER_HEADERS: usize = 100;

/// hyper's default largest read buffer: the body of a request that is refused before it
/// has been read goes partly there before the connection is closed (a smaller buffer makes
/// a client still sending it more likely to see a reset instead of the answer).
const HYPER_BUFFER: usize = 8192 + 4096 * 100;

/// An accepted client connection, its peer's address, and its place among
/// `BALANCER_MAX_CONNECTIONS`.
type Accepted = (std::net::TcpStream, SocketAddr, OwnedSemaphorePermit);

/// The answer to a request off the proxy's common path (admin endpoints, upgrades).
type Rare = std::pin::Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;

pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: kit::Shutdown,
    grace: Duration,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, workers = state.config.workers, "listening");
    let admin = admin::router(state.clone());
    let mut workers = Vec::new();
    let mut finished = Vec::new();
    for n in 0..state.config.workers {
        let (streams, inbox) = mpsc::unbounded_channel();
        let (done, finish) = oneshot::channel();
        let (state, admin) = (state.clone(), admin.clone());
        std::thread::Builder::new().name(format!("balancer-{n}")).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(worker(n, inbox, state, admin, grace)),
                Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
            }
            let _ = done.send(());
        })?;
        workers.push(streams);
        finished.push(finish);
    }

    let places = Arc::new(Semaphore::new(state.config.max_connections));
    let (mut next, mut full) = (0usize, false);
    loop {
        // Said once each time the limit is reached.
        let was_full = std::mem::replace(&mut full, places.available_permits() == 0);
        if full && !was_full {
            tracing::warn!(max = state.config.max_connections, "connection limit reached: new connections wait");
        }
        let place = tokio::select! {
            _ = shutdown.requested() => break,
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // The stream moves to the worker's runtime as a std socket.
        let Ok(stream) = stream.into_std() else { continue };
        next = next.wrapping_add(1);
        if workers[next % workers.len()].send((stream, peer, place)).is_err() {
            tracing::error!("a worker stopped early");
        }
    }
    drop(listener);
    drop(workers);
    for finish in finished {
        let _ = finish.await;
    }
    if !shutdown.wait_for_tasks(grace).await {
        tracing::warn!("background tasks still running after the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves the connections the acceptor hands over, until it stops; then lets in-flight
/// requests finish within `grace`.
async fn worker(
    id: usize,
    mut inbox: mpsc::UnboundedReceiver<Accepted>,
    state: Arc<AppState>,
    admin: axum::Router,
    grace: Duration,
) {
    // Told to finish when the acceptor stops; each connection then ends after the request
    // in progress (hyper-util's `GracefulShutdown` does not take upgradeable connections).
    let (stop, connections) = (Arc::new(Stop::default()), TaskTracker::new());
    let http = http_builder(&state.config);
    let limits = Arc::new(Limits::new(&state.config));
    // What every request of this worker uses, behind a reference count that only this
    // thread touches.
    let sample_percent = state.config.trace_sample_percent;
    let fast_path = state.config.fast_path;
    let worker = Arc::new(Worker::new(id, state, admin));
    while let Some((stream, peer, place)) = inbox.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
        let worker = worker.clone();
        // Made once per connection; each request clones it (a reference count).
        let peer = proxy::peer_header(peer);
        let heads = Arc::new(Heads::default());
        let io = ClientIo::new(stream, limits.clone(), heads.clone());
        let (stop, http) = (stop.clone(), http.clone());
        connections.spawn(async move {
            // The fast path first (unless switched off); what it leaves goes to hyper.
            let served = if fast_path { fast::serve(&worker, io, &heads, &peer, &stop).await } else { fast::skip(io) };
            let io = match served {
                Served::Closed => return drop(place),
                Served::Hyper(io) => io,
            };
            let service = service_fn(move |req: Request<Incoming>| {
                heads.arrived();
                let future = if admin::is_admin_path(req.uri().path()) {
                    // Boxed: the admin path and upgrades are rare, and their futures would
                    // otherwise enlarge every request's.
                    Either::Left(Box::pin(answer_admin(worker.clone(), req)) as Rare)
                } else if proxy::is_upgrade(&req) {
                    Either::Left(Box::pin(proxy::upgrade(worker.clone(), peer.clone(), req)) as Rare)
                } else {
                    let (mut parts, body) = req.into_parts();
                    let hop =
                        proxy::trace::trace_context(&mut parts.headers, &parts.method, &parts.uri, sample_percent);
                    Either::Right(proxy::handle(worker.clone(), peer.clone(), parts, body).map(|res| hop.answer(res)))
                };
                // `map`, not an `async` block awaiting `future`: that would hold it twice.
                future.map(Ok::<_, Infallible>)
            });
            let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let mut stopped = std::pin::pin!(stop.notify.notified());
            let (mut registered, mut watching) = (false, true);
            let ended = poll_fn(|cx| {
                if watching && stop.asked(stopped.as_mut(), &mut registered, cx) {
                    watching = false;
                    connection.as_mut().graceful_shutdown();
                }
                connection.as_mut().poll(cx)
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
            drop(place);
        });
    }
    stop.flag.store(true, Release);
    stop.notify.notify_waiters();
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests still running after the grace period");
    }
}

/// hyper's server settings. Its header read timeout is off: it would also bound the time a
/// keep-alive connection sits idle, and [`ClientIo`] keeps the two deadlines apart.
fn http_builder(config: &Config) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(config.max_header_bytes)
        // hyper's default, or room for a whole head of the largest size.
        .max_buf_size((config.max_header_bytes + 8192).max(HYPER_BUFFER));
    if config.max_headers < PARSER_HEADERS {
        http.max_headers(config.max_headers);
    }
    http
}

async fn answer_admin(worker: Arc<Worker>, req: Request<Incoming>) -> Response<ResponseBody> {
    let request_id = req.headers().get(&proxy::X_REQUEST_ID).cloned().unwrap_or_else(proxy::new_request_id);
    let response = match worker.admin.clone().oneshot(req.map(axum::body::Body::new)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let mut response = response.map(ResponseBody::Axum);
    response.headers_mut().insert(proxy::X_REQUEST_ID.clone(), request_id);
    response
}

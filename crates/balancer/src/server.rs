//! The HTTP/1 server: one acceptor, and `BALANCER_WORKERS` worker threads (one per core by
//! default), each with its own single-threaded runtime and its own pool of backend
//! connections, as nginx runs one event loop per worker process.
//!
//! The acceptor hands each new client connection to the next worker in turn; from then on
//! the connection, its requests and the backend connections they use stay on that thread,
//! so the request path has no cross-thread wake-ups and no contended pool. Requests for
//! the balancer's own endpoints go to the admin router (axum); everything else takes the
//! proxy path directly on hyper, with no router or buffering middleware in between.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Acquire;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::either::Either;
use tower::ServiceExt;

use crate::backend::BackendSet;
use crate::body::ResponseBody;
use crate::{AppState, admin, proxy};

/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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

    let mut next = 0usize;
    loop {
        let stream = tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
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
        if workers[next % workers.len()].send(stream).is_err() {
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
    mut inbox: mpsc::UnboundedReceiver<std::net::TcpStream>,
    state: Arc<AppState>,
    admin: axum::Router,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    // What every request of this worker uses, behind a reference count that only this
    // thread touches (cloning the shared `Arc<AppState>` per request would bounce its
    // cache line between cores).
    let snapshot = Mutex::new(Arc::new(Snapshot::of(&state)));
    let worker = Arc::new(Worker { id, state, admin, snapshot });
    while let Some(stream) = inbox.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
        let worker = worker.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let future = if admin::is_admin_path(req.uri().path()) {
                // Boxed: the admin path is rare, and its future would otherwise enlarge
                // every request's.
                Either::Left(Box::pin(answer_admin(worker.clone(), req)))
            } else {
                let (parts, body) = req.into_parts();
                Either::Right(proxy::handle(worker.clone(), parts, body))
            };
            // `map`, not an `async` block awaiting `future`: that would hold it twice.
            future.map(Ok::<_, Infallible>)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests still running after the grace period");
    }
}

/// What the requests of one worker thread share.
pub struct Worker {
    pub id: usize,
    pub state: Arc<AppState>,
    pub admin: axum::Router,
    /// This worker's own handle on the current backend set (only this thread takes it).
    snapshot: Mutex<Arc<Snapshot>>,
}

/// The backend set as one worker sees it: requests hold this worker-local handle, so their
/// reference counting stays on this thread's cache lines.
pub struct Snapshot {
    generation: u64,
    pub set: Arc<BackendSet>,
}

impl Snapshot {
    fn of(state: &AppState) -> Self {
        let generation = state.generation.load(Acquire);
        Self { generation, set: state.backends.load_full() }
    }
}

impl Worker {
    /// The current backend set.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        if snapshot.generation != self.state.generation.load(Acquire) {
            *snapshot = Arc::new(Snapshot::of(&self.state));
        }
        snapshot.clone()
    }
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

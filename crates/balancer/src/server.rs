//! The HTTP/1 accept loop. Requests for the balancer's own endpoints go to the admin
//! router (axum); everything else takes the proxy path directly on hyper, without a
//! router or a buffering middleware in between.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::AppState;
use crate::body::ResponseBody;
use crate::{admin, proxy};

/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: kit::Shutdown,
    grace: Duration,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let admin = admin::router(state.clone());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
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
        let (state, admin) = (state.clone(), admin.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (state, admin) = (state.clone(), admin.clone());
            async move { Ok::<_, Infallible>(dispatch(&state, admin, req).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "in-flight requests still running after the grace period");
    }
    if !shutdown.wait_for_tasks(grace).await {
        tracing::warn!("background tasks still running after the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn dispatch(state: &AppState, admin: axum::Router, req: Request<Incoming>) -> Response<ResponseBody> {
    if !admin::is_admin_path(req.uri().path()) {
        return proxy::handle(state, req).await;
    }
    let request_id = req.headers().get(&proxy::X_REQUEST_ID).cloned().unwrap_or_else(proxy::new_request_id);
    let response = match admin.oneshot(req.map(axum::body::Body::new)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let mut response = response.map(ResponseBody::Axum);
    response.headers_mut().insert(proxy::X_REQUEST_ID.clone(), request_id);
    response
}

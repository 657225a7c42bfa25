//! Upgrades (WebSocket): a request with `Connection: upgrade` and an `Upgrade` header goes
//! to an instance on a connection of its own, with both headers kept (they are hop-by-hop,
//! and any other request loses them). When the instance answers `101 Switching Protocols`
//! the client gets that answer, and from then on a task of the worker copies bytes both
//! ways between the two upgraded connections until either side closes; any other answer
//! goes back to the client as a plain response.
//!
//! The handshake is routed, picked and counted as a request (a refused connect goes to
//! another instance, as for any request); the tunnel after it is not a request in flight,
//! so it does not hold up orch's draining of an instance. The client's side of a tunnel
//! keeps the connection's idle deadline (`BALANCER_IDLE_TIMEOUT_MS`): a tunnel no byte
//! has crossed for that long is closed, as nginx's `proxy_read_timeout` closes one.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::headers::{X_REQUEST_ID, X_UPSTREAM_INSTANCE, forwarded_for, origin_form, strip_hop_by_hop};
use super::{json_error, new_request_id};
use crate::backend::{Instance, Tried, pick};
use crate::body::RequestBody;
use crate::response::ResponseBody;
use crate::worker::Worker;

/// Whether `req` asks to switch protocols (`Connection: upgrade` and an `Upgrade` header).
pub fn is_upgrade(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
        })
}

/// Forwards an upgrade request and, on `101`, joins the two connections (module docs).
pub async fn upgrade(worker: Arc<Worker>, peer: HeaderValue, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let request_id = req.headers().get(&X_REQUEST_ID).cloned().unwrap_or_else(new_request_id);
    let state = &*worker.state;
    let Some(route) = state.config.routes.find(req.uri().path()) else {
        let message = format!("no route for {} {}", req.method(), req.uri().path());
        return json_error(StatusCode::NOT_FOUND, &message, request_id);
    };
    let index = state.route_service[route];
    let service = &state.services[index];
    let figures = service.stats.at(worker.id);
    figures.begin();
    let snapshot = worker.snapshot();
    let pool = &snapshot.set.pools[index];
    let upstream = upstream_request(&req, &request_id, &peer);
    let mut tried = Tried::default();
    let mut outcome = Err((StatusCode::SERVICE_UNAVAILABLE, "no healthy instance of this service", None));
    for _ in 0..state.config.max_attempts.max(1) {
        let Some(i) = pick(state.config.strategy, service, pool, &tried) else { break };
        tried.insert(i);
        let instance = &pool[i];
        match handshake(instance, copy_request(&upstream), state.config.connect_timeout).await {
            Ok(response) => {
                instance.passive_success();
                outcome = Ok((response, instance));
                break;
            }
            Err(Attempt::NotSent(e)) => {
                // Never reached the instance: another may be tried.
                tracing::debug!(instance = %instance.id, error = %e, "upgrade connect failed");
                figures.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if instance.passive_failure(state.config.eject_threshold) {
                    tracing::warn!(instance = %instance.id, url = %instance.url, "instance ejected");
                }
                outcome = Err((StatusCode::BAD_GATEWAY, "the upstream instance is unavailable", Some(instance)));
            }
            Err(Attempt::Sent(e)) => {
                tracing::debug!(instance = %instance.id, error = %e, "upgrade request failed");
                figures.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                outcome = Err((StatusCode::BAD_GATEWAY, "the upstream instance failed", Some(instance)));
                break;
            }
        }
    }
    let mut response = match outcome {
        Ok((mut response, instance)) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let (client, backend) = (hyper::upgrade::on(&mut req), hyper::upgrade::on(&mut response));
                tokio::spawn(tunnel(client, backend));
            }
            let mut response = response.map(|body| ResponseBody::Axum(axum::body::Body::new(body)));
            response.headers_mut().insert(X_UPSTREAM_INSTANCE.clone(), instance.header.clone());
            response.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
            response
        }
        Err((status, message, instance)) => {
            let mut response = json_error(status, message, request_id);
            if let Some(instance) = instance {
                response.headers_mut().insert(X_UPSTREAM_INSTANCE.clone(), instance.header.clone());
            }
            response
        }
    };
    let now = Instant::now();
    figures.answered(response.status().as_u16(), now - started, now);
    figures.end();
    *response.version_mut() = http::Version::HTTP_11;
    response
}

/// What an instance gets: the client's request head, hop-by-hop headers removed but for the
/// upgrade's own, and the proxy's headers set (as for any request).
fn upstream_request(req: &Request<Incoming>, request_id: &HeaderValue, peer: &HeaderValue) -> Request<()> {
    let mut headers = req.headers().clone();
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    forwarded_for(&mut headers, peer);
    let mut upstream = Request::new(());
    *upstream.method_mut() = req.method().clone();
    *upstream.uri_mut() = origin_form(req.uri());
    *upstream.headers_mut() = headers;
    upstream
}

fn copy_request(head: &Request<()>) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = head.method().clone();
    *request.uri_mut() = head.uri().clone();
    *request.headers_mut() = head.headers().clone();
    request
}

enum Attempt {
    /// The request never left (the connect failed): safe to try elsewhere.
    NotSent(std::io::Error),
    Sent(hyper::Error),
}

/// Sends `request` to `instance` on a new connection that may be upgraded.
async fn handshake(
    instance: &Instance,
    mut request: Request<RequestBody>,
    connect_timeout: std::time::Duration,
) -> Result<Response<Incoming>, Attempt> {
    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(instance.addr)).await;
    let stream = match connect {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(Attempt::NotSent(e)),
        Err(_) => return Err(Attempt::NotSent(std::io::ErrorKind::TimedOut.into())),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Attempt::Sent)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection to an instance ended with an error");
        }
    });
    if !request.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(instance.authority.as_str()).expect("an authority is a valid header value");
        request.headers_mut().insert(header::HOST, host);
    }
    sender.send_request(request).await.map_err(Attempt::Sent)
}

/// Copies bytes both ways between the client and the instance once both have switched.
async fn tunnel(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "tunnel ended with an error");
    }
}

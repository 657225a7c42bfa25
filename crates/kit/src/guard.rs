//! The guard of the control-plane APIs (orch's control API, the registry, the balancer's
//! admin endpoints, the detector): what a web browser on this machine must not be able to do
//! to them.
//!
//! - **DNS rebinding.** A page from `evil.example` whose name the attacker then points at
//!   127.0.0.1 talks to a loopback API with `Host: evil.example`. Only these hosts are
//!   answered (in `Host`, or the authority of an absolute request target): loopback names
//!   (`localhost`, `127.x.x.x`, `[::1]`, any port), the bound address itself when it is a
//!   specific one, and the names of `ALLOWED_HOSTS`. Anything else gets 421 Misdirected
//!   Request; no host at all gets 400. Loopback names stay allowed when bound elsewhere: a
//!   rebinding page never carries one, and local clients (orch's probes, the CLI) use them.
//! - **Cross-site requests.** A browser sends `Origin` with every cross-origin request and
//!   every `POST`; one whose host is not an allowed host (or `Origin: null`, which a sandboxed
//!   or no-referrer page sends) gets 403. Programs (reqwest, curl) send no `Origin`.
//! - **Form posts.** A mutation (`POST`, `PUT`, `PATCH`, `DELETE`) that carries a body or a
//!   `Content-Type` must say `Content-Type: application/json`, else 415: the simple requests a
//!   browser sends without asking first (`application/x-www-form-urlencoded`,
//!   `multipart/form-data`, `text/plain`) never reach a handler. A mutation with neither a
//!   body nor a content type passes (`DELETE /api/chaos/ID`, `POST /api/check`): no browser
//!   sends one without `Origin`, and the dangerous ones need the cluster token too.
//!
//! Every refusal is `{"error": "..."}`. The guard is the outermost layer, so it answers before
//! the token check, the body limit or any handler runs. Components' data-plane APIs (auth,
//! data, compute, the balancer's proxy) do not have it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// Which hosts an API answers; see the module docs.
#[derive(Clone, Debug)]
pub struct Guard {
    /// The bound address when it is a specific, non-loopback one (`Host` may name it).
    bound: Option<IpAddr>,
    /// `ALLOWED_HOSTS`, lowercased.
    allowed: Arc<[String]>,
}

impl Guard {
    /// The guard of an API bound to `bind`, answering `allowed_hosts` besides loopback names.
    pub fn new(bind: IpAddr, allowed_hosts: &[String]) -> Self {
        let bound = Some(bind).filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
        let allowed = allowed_hosts.iter().map(|h| h.trim_end_matches('.').to_ascii_lowercase()).collect();
        Self { bound, allowed }
    }

    /// The guard of an API bound to loopback with no other names.
    pub fn loopback() -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::LOCALHOST), &[])
    }

    /// `router` with the guard in front of every route, its fallbacks included.
    pub fn wrap(self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(Arc::new(self), check))
    }

    /// Whether `host` (`name`, `name:port`, `[v6]:port`) is one this API answers.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host.trim()).trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || self.allowed.contains(&name) {
            return true;
        }
        let ip = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical()),
            None => name.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        };
        ip.is_some_and(|ip| ip.is_loopback() || Some(ip) == self.bound)
    }

    /// The refusal of `req`, if it is refused.
    fn refusal(&self, req: &Request) -> Option<ApiError> {
        let headers = req.headers();
        let hosts = [req.uri().authority().map(|a| a.as_str()), header_str(headers, header::HOST)];
        if hosts.iter().all(Option::is_none) {
            return Some(ApiError::bad_request("missing Host header"));
        }
        if let Some(host) = hosts.into_iter().flatten().find(|h| !self.allows(h)) {
            return Some(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!("host {host:?} is not served here: use localhost or 127.0.0.1, or add it to ALLOWED_HOSTS"),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let host = origin.split_once("://").map(|(_, rest)| rest);
            if !host.is_some_and(|h| !h.is_empty() && !h.contains('/') && self.allows(h)) {
                return Some(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("cross-origin request from {origin:?} refused"),
                ));
            }
        }
        if is_mutation(req.method()) {
            let content_type = header_str(headers, header::CONTENT_TYPE);
            let json = content_type.is_some_and(is_json);
            if !json && (content_type.is_some() || has_body(headers)) {
                return Some(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "{} with a body needs Content-Type: application/json, not {:?}",
                        req.method(),
                        content_type.unwrap_or("none")
                    ),
                ));
            }
        }
        None
    }
}

async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match guard.refusal(&req) {
        Some(refusal) => refusal.into_response(),
        None => next.run(req).await,
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    // A header that is not text is refused like a foreign one.
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

fn is_mutation(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).map(str::trim);
    headers.contains_key(header::TRANSFER_ENCODING) || length.is_some_and(|l| l != "0")
}

/// `host` without its `:port`; `[v6]:port` keeps its brackets.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{delete, get, post};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn hosts() {
        let loopback = Guard::loopback();
        let check = |guard: &Guard, host: &str, expected: bool| assert_eq!(guard.allows(host), expected, "{host}");
        for host in ["localhost", "LOCALHOST:3005", "localhost.", "127.0.0.1", "127.0.0.1:3005", "127.1.2.3:80"] {
            check(&loopback, host, true);
        }
        for host in ["[::1]", "[::1]:3005", "[::ffff:127.0.0.1]:1"] {
            check(&loopback, host, true);
        }
        for host in [
            "evil.example",
            "evil.example:3005",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.5",
            "0.0.0.0",
            "[::2]",
            "::1",
            "",
            "[::1",
        ] {
            check(&loopback, host, false);
        }
        let listed = Guard::new(IpAddr::from([10, 0, 0, 5]), &["registry".into(), "Orch.Example.com".into()]);
        for host in ["registry", "registry:3005", "orch.example.com", "10.0.0.5:3005", "localhost:3005"] {
            check(&listed, host, true);
        }
        for host in ["evil.example", "10.0.0.6", "registry.evil.example"] {
            check(&listed, host, false);
        }
        let any = Guard::new(IpAddr::from([0, 0, 0, 0]), &[]);
        check(&any, "0.0.0.0", false);
        check(&any, "10.0.0.5", false);
    }

    fn app() -> Router {
        let routes = Router::new()
            .route("/thing", get(|| async { "read" }).post(|| async { "changed" }).put(|| async { "put" }))
            .route("/thing/{id}", delete(|| async { "deleted" }))
            .route("/check", post(|| async { "checked" }));
        Guard::loopback().wrap(crate::http::finish(routes, 1024))
    }

    async fn call(req: Request) -> (StatusCode, String) {
        let res = app().oneshot(req).await.unwrap();
        let status = res.status();
        let json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        if !status.is_success() {
            assert!(json, "a refusal is JSON: {body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            return (status, error["error"].as_str().unwrap().to_owned());
        }
        (status, body)
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &'static str) -> Request {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Body::from(body)).unwrap()
    }

    const LOCAL: (&str, &str) = ("host", "127.0.0.1:3005");
    const JSON: (&str, &str) = ("content-type", "application/json");

    #[tokio::test]
    async fn a_foreign_host_is_misdirected() {
        assert_eq!(call(request("GET", "/thing", &[LOCAL], "")).await, (StatusCode::OK, "read".into()));
        assert_eq!(call(request("GET", "/thing", &[("host", "localhost")], "")).await.0, StatusCode::OK);
        let (status, error) = call(request("GET", "/thing", &[("host", "evil.example:3005")], "")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(error.contains("evil.example") && error.contains("ALLOWED_HOSTS"), "{error}");
        // Before the body limit, a token check or the router's own 404.
        let (status, _) = call(request("POST", "/nowhere", &[("host", "evil.example"), JSON], "{}")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        // The authority of an absolute target counts too.
        let (status, _) = call(request("GET", "http://evil.example/thing", &[LOCAL], "")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        let (status, error) = call(request("GET", "/thing", &[], "")).await;
        assert_eq!((status, error.as_str()), (StatusCode::BAD_REQUEST, "missing Host header"));
    }

    #[tokio::test]
    async fn a_foreign_origin_is_forbidden() {
        let same = ("origin", "http://localhost:3004");
        assert_eq!(call(request("POST", "/thing", &[LOCAL, same, JSON], "{}")).await.0, StatusCode::OK);
        for origin in ["https://evil.example", "null", "http://127.0.0.1.evil.example:3005", "garbage"] {
            for method in ["GET", "POST"] {
                let (status, error) = call(request(method, "/check", &[LOCAL, ("origin", origin)], "")).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} from {origin}");
                assert!(error.contains("cross-origin"), "{error}");
            }
        }
    }

    #[tokio::test]
    async fn mutations_need_json() {
        for content_type in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"] {
            for method in ["POST", "PUT"] {
                let headers = [LOCAL, ("content-type", content_type), ("content-length", "5")];
                let (status, error) = call(request(method, "/thing", &headers, "a=b&c")).await;
                assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{method} {content_type}");
                assert!(error.contains("application/json"), "{error}");
            }
            // Even with an empty body.
            let headers = [LOCAL, ("content-type", content_type)];
            assert_eq!(call(request("POST", "/check", &headers, "")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        // A body without a content type, plain or chunked.
        let sized = [LOCAL, ("content-length", "2")];
        assert_eq!(call(request("POST", "/thing", &sized, "{}")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let chunked = [LOCAL, ("transfer-encoding", "chunked")];
        assert_eq!(call(request("DELETE", "/thing/1", &chunked, "{}")).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let json = [LOCAL, ("content-type", "Application/JSON; charset=utf-8"), ("content-length", "2")];
        assert_eq!(call(request("POST", "/thing", &json, "{}")).await, (StatusCode::OK, "changed".into()));
        // No body and no content type: allowed.
        assert_eq!(call(request("POST", "/check", &[LOCAL], "")).await, (StatusCode::OK, "checked".into()));
        let empty = [LOCAL, ("content-length", "0")];
        assert_eq!(call(request("DELETE", "/thing/1", &empty, "")).await, (StatusCode::OK, "deleted".into()));
        // Reads are not mutations.
        let form = [LOCAL, ("content-type", "text/plain")];
        assert_eq!(call(request("GET", "/thing", &form, "")).await.0, StatusCode::OK);
    }
}

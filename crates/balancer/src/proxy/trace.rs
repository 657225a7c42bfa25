//! The balancer's hop of a trace (W3C `traceparent`, [`kit::trace`]): the client's
//! `traceparent` is continued (or a new trace begun when it has none or an invalid one,
//! sampled for `TRACE_SAMPLE_PERCENT` of them: none by default), the request goes upstream with the balancer's own span id as its parent,
//! and the answer carries that same value back to the client, whatever the backend said.
//!
//! It costs the request path one header value of 55 bytes (made once, sent upstream and
//! cloned into the answer by reference count) and no lock. The access line (trace and span
//! ids, the parent's span id, `X-Request-Id`, method, path, status, the instance, time) is
//! written at `info` for a sampled request and at `debug` otherwise; what it needs is kept
//! only when it will be written.

use std::time::Instant;

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Response, Uri};
use kit::trace::{TRACEPARENT, TraceContext};

use super::{X_REQUEST_ID, X_UPSTREAM_INSTANCE};

/// The balancer's place in one request's trace, from its head to its answer.
pub struct Hop {
    value: HeaderValue,
    access: Option<Box<Access>>,
}

/// What the access line says that the answer does not.
struct Access {
    context: TraceContext,
    parent: Option<u64>,
    method: Method,
    uri: Uri,
    started: Instant,
}

/// Continues (or begins) the trace of a request with `headers`, and puts the balancer's
/// `traceparent` in them for the upstream; a new trace is sampled for `sample_percent` of
/// the requests that begin one.
pub fn trace_context(headers: &mut HeaderMap, method: &Method, uri: &Uri, sample_percent: u8) -> Hop {
    let hop = Hop::begin(headers.get(&TRACEPARENT).map(HeaderValue::as_bytes), sample_percent, || {
        (method.clone(), uri.clone())
    });
    headers.insert(TRACEPARENT.clone(), hop.value.clone());
    hop
}

/// A header's text for a log line (`-` when absent or not text).
fn text(value: Option<&HeaderValue>) -> &str {
    value.and_then(|v| v.to_str().ok()).unwrap_or("-")
}

/// A new trace, sampled for `percent` of them (its random trace id decides).
fn root(percent: u8) -> TraceContext {
    let context = TraceContext::root(true);
    if (context.trace_id % 100) as u8 >= percent { TraceContext { flags: 0, ..context } } else { context }
}

impl Hop {
    /// Continues the trace whose `traceparent` is `parent` (or begins one, sampled for
    /// `sample_percent` of them); `request` gives the method and target for the access line,
    /// called only when it will be written.
    pub fn begin(parent: Option<&[u8]>, sample_percent: u8, request: impl FnOnce() -> (Method, Uri)) -> Self {
        let parent = parent.and_then(|v| TraceContext::parse(v).ok());
        let context = parent.map_or_else(|| root(sample_percent), |p| p.child());
        let value = context.header_value();
        let logged = context.sampled() || tracing::enabled!(tracing::Level::DEBUG);
        let access = logged.then(|| {
            let parent = parent.map(|p| p.span_id);
            let (method, uri) = request();
            Box::new(Access { context, parent, method, uri, started: Instant::now() })
        });
        Hop { value, access }
    }

    /// The `traceparent` the upstream and the client get.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// `response` with the balancer's `traceparent`; writes the access line.
    pub fn answer<B>(mut self, mut response: Response<B>) -> Response<B> {
        let headers = response.headers();
        let status = response.status().as_u16();
        let value = self.finish(status, headers.get(&X_REQUEST_ID), headers.get(&X_UPSTREAM_INSTANCE));
        response.headers_mut().insert(TRACEPARENT.clone(), value);
        response
    }

    /// Writes the access line of an answer with `status`; returns the `traceparent` it carries.
    pub fn finish(
        &mut self,
        status: u16,
        request_id: Option<&HeaderValue>,
        upstream: Option<&HeaderValue>,
    ) -> HeaderValue {
        if let Some(access) = self.access.take() {
            let (request_id, upstream) = (text(request_id), text(upstream));
            let Access { context, parent, method, uri, started } = *access;
            let parent = parent.map(|id| TraceContext { span_id: id, ..context }.span_hex());
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            macro_rules! line {
                ($level:ident) => {
                    tracing::$level!(trace_id = %context.trace_hex(), span_id = %context.span_hex(),
                        parent_id = parent.map(tracing::field::display), request_id, %method, path = uri.path(),
                        status, upstream, ms, "request")
                };
            }
            if context.sampled() {
                line!(info);
            } else {
                line!(debug);
            }
        }
        self.value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn hop(given: Option<&str>) -> (HeaderMap, Response<()>) {
        hop_sampling(given, 0)
    }

    fn hop_sampling(given: Option<&str>, percent: u8) -> (HeaderMap, Response<()>) {
        let mut headers = HeaderMap::new();
        if let Some(value) = given {
            headers.insert(&TRACEPARENT, HeaderValue::from_str(value).unwrap());
        }
        let hop = trace_context(&mut headers, &Method::GET, &Uri::from_static("/api/data/x"), percent);
        let mut upstream = Response::new(());
        // A backend's answer carries its own span id; the client gets the balancer's.
        upstream.headers_mut().insert(&TRACEPARENT, HeaderValue::from_static(GIVEN));
        (headers, hop.answer(upstream))
    }

    #[test]
    fn continues_the_clients_trace_upstream_and_back() {
        let given = TraceContext::parse(GIVEN.as_bytes()).unwrap();
        let (upstream, response) = hop(Some(GIVEN));
        let sent = TraceContext::parse(upstream[&TRACEPARENT].as_bytes()).unwrap();
        assert_eq!((sent.trace_id, sent.flags), (given.trace_id, given.flags));
        assert_ne!(sent.span_id, given.span_id, "the balancer's own span");
        assert_eq!(response.headers()[&TRACEPARENT], upstream[&TRACEPARENT]);
    }

    #[test]
    fn begins_a_trace_when_the_client_has_none_or_a_bad_one() {
        let given = TraceContext::parse(GIVEN.as_bytes()).unwrap();
        for bad in [None, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), Some("nonsense")] {
            let (upstream, response) = hop(bad);
            let sent = TraceContext::parse(upstream[&TRACEPARENT].as_bytes()).unwrap();
            assert_ne!(sent.trace_id, given.trace_id, "{bad:?}");
            assert!(!sent.sampled(), "{bad:?}: new traces are unsampled by default");
            assert_eq!(response.headers()[&TRACEPARENT], upstream[&TRACEPARENT]);
            assert_eq!(upstream.get_all(&TRACEPARENT).iter().count(), 1);
        }
    }

    #[test]
    fn a_new_trace_is_sampled_for_the_share_asked_and_a_clients_flag_is_kept() {
        let sampled = |given, percent| {
            let (upstream, _) = hop_sampling(given, percent);
            TraceContext::parse(upstream[&TRACEPARENT].as_bytes()).unwrap().sampled()
        };
        assert!((0..200).all(|_| !sampled(None, 0)), "none at 0 %");
        assert!((0..200).all(|_| sampled(None, 100)), "all at 100 %");
        let some = (0..2000).filter(|_| sampled(None, 50)).count();
        assert!((700..1300).contains(&some), "about half at 50 %: {some} of 2000");
        assert!(sampled(Some(GIVEN), 0), "the client's sampled flag is kept");
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!sampled(Some(unsampled), 100), "and so is its unsampled one");
    }
}

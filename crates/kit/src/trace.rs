//! Trace ids across hops: the W3C `traceparent` header (Trace Context, version `00`) and
//! the middleware every component's router wears.
//!
//! A `traceparent` is `00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags: 2 hex>`,
//! 55 bytes, lowercase. Each hop keeps the trace id, makes a span id of its own (a child),
//! and sends `00-<trace id>-<its span id>-<flags>` on: to the next hop, and back to its
//! client in the response's `traceparent` header. A missing or invalid header (a wrong
//! length or version, a non-hex or uppercase digit, an all-zero id) starts a new trace.
//!
//! While a request is served ([`propagate`]), its [`TraceContext`] is the task's
//! ([`current`]), so outgoing calls made for it carry it on ([`inject`]); and a tracing span
//! `request{trace_id, span_id}` is entered, so every line logged while serving it carries
//! both ids (in JSON logs under `spans`, in text logs in the line's span prefix). Whether a
//! hop writes an access line of its own is the caller's choice, by the `sampled` flag
//! (`01`): at `info` when sampled, else at `debug`, so following one request costs nothing
//! to the requests nobody follows.

use std::fmt;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::field::display;
use tracing::span::Record;
use tracing::{Event, Instrument, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{ExtensionsMut, LookupSpan, Registry};

/// The header's name.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Its length in version `00`.
pub const LEN: usize = 55;

/// The `sampled` flag: the caller asks every hop to record the request.
pub const SAMPLED: u8 = 0x01;

/// Why a `traceparent` was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("a traceparent is 55 characters, this one {0}")]
    Length(usize),
    #[error("version ff is invalid")]
    Version,
    #[error("a traceparent is 00-<32 hex>-<16 hex>-<2 hex>, in lowercase hex digits")]
    Shape,
    #[error("the trace id is all zeros")]
    ZeroTraceId,
    #[error("the parent span id is all zeros")]
    ZeroSpanId,
}

/// One hop's place in a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// Never zero.
    pub trace_id: u128,
    /// Never zero.
    pub span_id: u64,
    /// Only [`SAMPLED`] is kept: version `00` defines no other flag.
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` value. A later version than `00` is read as far as `00`
    /// defines it (its first 55 characters, followed by its end or by `-`).
    pub fn parse(value: &[u8]) -> Result<Self, ParseError> {
        if value.len() < LEN {
            return Err(ParseError::Length(value.len()));
        }
        let version = hex(&value[0..2]).ok_or(ParseError::Shape)? as u8;
        if version == 0xff {
            return Err(ParseError::Version);
        }
        if (version == 0 && value.len() != LEN) || (value.len() > LEN && value[LEN] != b'-') {
            return Err(ParseError::Length(value.len()));
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(ParseError::Shape);
        }
        let trace_id = hex(&value[3..35]).ok_or(ParseError::Shape)?;
        let span_id = hex(&value[36..52]).ok_or(ParseError::Shape)? as u64;
        let flags = hex(&value[53..55]).ok_or(ParseError::Shape)? as u8;
        if trace_id == 0 {
            return Err(ParseError::ZeroTraceId);
        }
        if span_id == 0 {
            return Err(ParseError::ZeroSpanId);
        }
        Ok(Self { trace_id, span_id, flags: flags & SAMPLED })
    }

    /// A new trace, its first span.
    pub fn root(sampled: bool) -> Self {
        Self { trace_id: nonzero(), span_id: nonzero() as u64, flags: if sampled { SAMPLED } else { 0 } }
    }

    /// The next hop's span: the same trace and flags, a new span id.
    pub fn child(&self) -> Self {
        Self { span_id: nonzero() as u64, ..*self }
    }

    /// This hop's context for a request with `headers`: a child of the caller's
    /// `traceparent`, or a new unsampled trace when there is none or it is invalid.
    pub fn continue_from(headers: &HeaderMap) -> Self {
        match headers.get(&TRACEPARENT).map(|v| Self::parse(v.as_bytes())) {
            Some(Ok(parent)) => parent.child(),
            _ => Self::root(false),
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The header's text, `00-<trace id>-<span id>-<flags>`.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [b'-'; LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], self.trace_id);
        write_hex(&mut out[36..52], u128::from(self.span_id));
        write_hex(&mut out[53..55], u128::from(self.flags));
        out
    }

    /// The header's value (one allocation of 55 bytes).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.encode()).expect("hex digits and dashes are a valid header value")
    }

    /// The trace id as 32 hex digits, for logs.
    pub fn trace_hex(&self) -> Hex {
        Hex { value: self.trace_id, digits: 32 }
    }

    /// The span id as 16 hex digits, for logs.
    pub fn span_hex(&self) -> Hex {
        Hex { value: u128::from(self.span_id), digits: 16 }
    }

    /// The tracing span of this hop: `request{trace_id, span_id}`. Lines logged inside it
    /// carry both ids.
    ///
    /// Under a subscriber with [`RequestIds`] (kit's own) the ids are written into the
    /// span's fields only when a line inside it is logged: most requests log nothing, and
    /// formatting two hex ids as every span opened was about 4 % of a data read's
    /// instructions. Under any other subscriber they are recorded at once.
    pub fn span(&self) -> tracing::Span {
        use tracing::field::Empty;
        let span = tracing::info_span!("request", trace_id = Empty, span_id = Empty);
        if !defer_ids(&span, *self) {
            span.record("trace_id", display(self.trace_hex()));
            span.record("span_id", display(self.span_hex()));
        }
        span
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.encode()).expect("ascii"))
    }
}

/// A number as a fixed count of lowercase hex digits, written without allocating.
#[derive(Clone, Copy, Debug)]
pub struct Hex {
    value: u128,
    digits: usize,
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        write_hex(&mut buf[..self.digits], self.value);
        f.write_str(std::str::from_utf8(&buf[..self.digits]).expect("ascii"))
    }
}

/// A trace id as given to `orch logs --trace`: 32 hex digits (either case), or a whole
/// `traceparent` whose trace id is meant. Answered in lowercase, as logs write it.
pub fn parse_trace_id(text: &str) -> Result<String, String> {
    let text = text.trim();
    let id = match TraceContext::parse(text.to_ascii_lowercase().as_bytes()) {
        Ok(context) => context.trace_id,
        Err(_) if text.len() == 32 => match hex(text.to_ascii_lowercase().as_bytes()) {
            Some(0) => return Err("the trace id is all zeros".to_owned()),
            Some(id) => id,
            None => return Err(format!("invalid trace id {text:?}: 32 hex digits expected")),
        },
        Err(e) => return Err(format!("invalid trace id {text:?}: 32 hex digits or a traceparent expected ({e})")),
    };
    Ok(Hex { value: id, digits: 32 }.to_string())
}

/// Keeps a request's ids with its `span` until a line inside it is logged, when
/// [`RequestIds`] writes them into the span's fields (`trace_id` and `span_id`, declared
/// empty). False when the span is disabled or the subscriber has no [`RequestIds`]: then the
/// caller records them itself.
fn defer_ids(span: &tracing::Span, context: TraceContext) -> bool {
    let deferred = span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<RequestIds>().and(dispatch.downcast_ref::<Registry>());
        let Some(span) = registry.and_then(|registry| registry.span(id)) else { return false };
        span.extensions_mut().insert(Deferred(context));
        true
    });
    deferred == Some(true)
}

/// The ids of a request span not yet written into its fields.
struct Deferred(TraceContext);

/// How a log format adds fields to a span's formatted ones (as its `fmt` layer would).
pub(crate) type AddFields = fn(&mut ExtensionsMut<'_>, &Record<'_>) -> fmt::Result;

/// The layer that writes a request span's deferred ids into the fields the `fmt` layer
/// keeps formatted for it, when the first line inside the span is logged: a request that
/// logs nothing (nearly all of them) never formats its ids. It must sit beneath the `fmt`
/// layer, which a layered subscriber hands an event after the inner layers.
pub(crate) struct RequestIds {
    add: AddFields,
}

impl RequestIds {
    pub(crate) fn new(add: AddFields) -> Self {
        Self { add }
    }
}

impl<S> Layer<S> for RequestIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        for span in scope {
            let mut extensions = span.extensions_mut();
            let Some(Deferred(context)) = extensions.remove::<Deferred>() else { continue };
            let fields = span.metadata().fields();
            let (Some(trace_id), Some(span_id)) = (fields.field("trace_id"), fields.field("span_id")) else {
                continue;
            };
            let (trace_hex, span_hex) = (display(context.trace_hex()), display(context.span_hex()));
            let values = [(&trace_id, Some(&trace_hex as &dyn tracing::Value)), (&span_id, Some(&span_hex as _))];
            let values = fields.value_set(&values);
            // A failure leaves them out of the line, as the `fmt` layer's own would.
            let _ = (self.add)(&mut extensions, &Record::new(&values));
        }
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The context of the request this task is serving, if it serves one.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// `req` with the current request's `traceparent`, when it is made while serving one
/// (background calls, such as heartbeats, go without).
pub fn inject(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(context) => req.header(&TRACEPARENT, context.header_value()),
        None => req,
    }
}

// `scope`, `propagate` and `within` are plain functions returning the future, not `async
// fn`s: each `async fn` level keeps its argument (here the whole inner future) beside what it
// awaits, so three levels made the request's future 5 KiB and moved it from level to level,
// about 6 % of a data read's user-space cycles in `memmove` (perf).

/// Runs `future` as the hop `context`: [`current`] answers it, and its lines carry its ids.
pub fn scope<F: Future>(context: TraceContext, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(context, future).instrument(context.span())
}

/// Middleware: continues the caller's trace (or starts one), serves the request inside it,
/// answers `traceparent` with this hop's span id, and writes the access line (at `info`
/// when sampled, else at `debug`).
pub fn propagate(req: Request, next: Next) -> impl Future<Output = Response> {
    within(req, |req| next.run(req))
}

/// [`propagate`] around `serve`, for a middleware that does more (`kit::http::finish_traced`).
pub fn within<F, Fut>(req: Request, serve: F) -> impl Future<Output = Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let context = TraceContext::continue_from(req.headers());
    scope(context, async move {
        let started = Instant::now();
        // What the access line needs, taken only when it is written.
        let access = (context.sampled() || tracing::enabled!(tracing::Level::DEBUG))
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let mut response = serve(req).await;
        response.headers_mut().insert(TRACEPARENT.clone(), context.header_value());
        if let Some((method, path)) = access {
            let (status, ms) = (response.status().as_u16(), started.elapsed().as_secs_f64() * 1000.0);
            if context.sampled() {
                tracing::info!(%method, path, status, ms, "request");
            } else {
                tracing::debug!(%method, path, status, ms, "request");
            }
        }
        response
    })
}

/// `router` with [`propagate`] around everything it serves: one line in each component.
pub fn layer(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(propagate))
}

/// A random number that is not zero.
fn nonzero() -> u128 {
    loop {
        let n: u128 = rand::random();
        if n as u64 != 0 && n >> 64 != 0 {
            return n;
        }
    }
}

/// Lowercase hex digits as a number; `None` for anything else (uppercase included).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn check(input: &str, expected: Result<(u128, u64, u8), ParseError>) {
        let got = TraceContext::parse(input.as_bytes()).map(|c| (c.trace_id, c.span_id, c.flags));
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn parses_the_spec_example_and_rejects_the_rest() {
        let (trace, span) = (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7);
        let ok = Ok((trace, span, 1));
        check(GIVEN, ok);
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", Ok((trace, span, 0)));
        // Flags other than sampled are not kept.
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03", ok);
        // A later version: its first 55 characters, then its end or a dash.
        check("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ok);
        check("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more", ok);
        check("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01more", Err(ParseError::Length(59)));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", Err(ParseError::Length(56)));
        check("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Err(ParseError::Version));
        check("", Err(ParseError::Length(0)));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", Err(ParseError::Length(52)));
        check("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", Err(ParseError::Shape));
        check("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", Err(ParseError::Shape));
        check("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Err(ParseError::Shape));
        check("0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Err(ParseError::Shape));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0+", Err(ParseError::Shape));
        check("00-00000000000000000000000000000000-00f067aa0ba902b7-01", Err(ParseError::ZeroTraceId));
        check("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", Err(ParseError::ZeroSpanId));
    }

    #[test]
    fn formats_what_it_parses() {
        let context = TraceContext::parse(GIVEN.as_bytes()).unwrap();
        assert_eq!(context.to_string(), GIVEN);
        assert_eq!(context.header_value(), GIVEN);
        assert_eq!(context.trace_hex().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_hex().to_string(), "00f067aa0ba902b7");
        let small = TraceContext { trace_id: 1, span_id: 2, flags: 0 };
        assert_eq!(small.to_string(), "00-00000000000000000000000000000001-0000000000000002-00");
        for _ in 0..100 {
            let root = TraceContext::root(true);
            assert_eq!(TraceContext::parse(&root.encode()), Ok(root));
            let child = root.child();
            assert_eq!((child.trace_id, child.flags), (root.trace_id, SAMPLED));
            assert_ne!(child.span_id, root.span_id);
        }
        assert_ne!(TraceContext::root(false).trace_id, TraceContext::root(false).trace_id);
    }

    #[test]
    fn trace_ids_for_the_logs_query() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(parse_trace_id(id).as_deref(), Ok(id));
        assert_eq!(parse_trace_id(&id.to_ascii_uppercase()).as_deref(), Ok(id));
        assert_eq!(parse_trace_id(GIVEN).as_deref(), Ok(id));
        assert!(parse_trace_id(&"0".repeat(32)).unwrap_err().contains("zeros"));
        assert!(parse_trace_id("4bf92f35").is_err());
        assert!(parse_trace_id("zz f92f3577b34da6a3ce929d0e0e4736").is_err());
    }

    fn app() -> axum::Router {
        let seen = || async { current().map(|c| c.to_string()).unwrap_or_default() };
        layer(axum::Router::new().route("/", get(seen)))
    }

    async fn call(traceparent: Option<&str>) -> (TraceContext, TraceContext) {
        let mut req = Request::get("/");
        if let Some(value) = traceparent {
            req = req.header("traceparent", value);
        }
        let res = app().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let answered = TraceContext::parse(res.headers()[&TRACEPARENT].as_bytes()).unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        (answered, TraceContext::parse(&body).unwrap())
    }

    #[tokio::test]
    async fn a_component_continues_the_callers_trace_or_starts_one() {
        let given = TraceContext::parse(GIVEN.as_bytes()).unwrap();
        let (answered, seen) = call(Some(GIVEN)).await;
        assert_eq!((answered.trace_id, answered.flags), (given.trace_id, SAMPLED), "same trace");
        assert_ne!(answered.span_id, given.span_id, "a span of its own");
        assert_eq!(seen, answered, "the handler runs in the hop's context");

        for absent_or_bad in [None, Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), Some("junk")] {
            let (answered, seen) = call(absent_or_bad).await;
            assert_ne!(answered.trace_id, given.trace_id);
            assert_eq!((seen, answered.flags), (answered, 0), "a new, unsampled trace");
        }
        let (first, _) = call(None).await;
        let (second, _) = call(None).await;
        assert_ne!(first.trace_id, second.trace_id);
    }

    #[tokio::test]
    async fn outgoing_calls_carry_the_context_only_inside_a_request() {
        let http = reqwest::Client::new();
        let built = |req: reqwest::RequestBuilder| req.build().unwrap().headers().get(&TRACEPARENT).cloned();
        assert_eq!(built(inject(http.get("http://127.0.0.1:1/"))), None);
        let context = TraceContext::parse(GIVEN.as_bytes()).unwrap();
        let inside = scope(context, async { built(inject(http.get("http://127.0.0.1:1/"))) }).await;
        assert_eq!(inside.unwrap(), GIVEN);
    }
}

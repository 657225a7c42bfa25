//! The process's Prometheus metrics: one `prometheus-client` registry per process, the HTTP
//! figures of every axum router, the process's own figures, and `GET /metrics`.
//!
//! A process is one instance of one component, and it is what Prometheus scrapes, so the
//! registry is the process's ([`register`], [`register_collector`]); a component keeps its
//! own figures in a static made on first use that registers them (see `auth::metrics`), so
//! the code that counts (a handler, the database layer) needs no state threaded to it: a
//! count is one call. Components run in-process in tests share the registry; their tests
//! assert that a figure moved, never its absolute value.
//!
//! [`crate::http::finish`] is applied once to every router: it serves `GET /metrics`
//! (OpenMetrics text, [`track`]) and records every request with a [`Timing`], which counts
//! `http_requests{route, method, status}`, times `http_request_duration_seconds{route,
//! method}` and keeps `http_requests_in_flight`. The route is the matched template
//! (`/api/data/{key}`), never the raw path, so the number of series stays bounded; requests
//! no route matched are `route="unmatched"`.
//!
//! [`Process`] reads `/proc/self` at each scrape: CPU seconds, resident and virtual memory,
//! open and maximum file descriptors, the start time (the names Prometheus's own client
//! libraries use, `process_*`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set of fixed names, for components' families (`[("operation", "add")]`).
pub type Labels<const N: usize> = [(&'static str, String); N];

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Process));
    Mutex::new(registry)
});

/// Registers `metric` in the process's registry under `name` and gives it back (metrics
/// are handles: a clone counts into the same figure). Call it once per name, from a static
/// initialiser: a name registered twice is encoded twice.
pub fn register<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    // The encoder ends every help text with a full stop of its own.
    let help = help.trim_end_matches('.');
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).register(name, help, metric.clone());
    metric
}

/// Registers a collector, asked for its figures at every scrape (its help texts without a
/// full stop: the encoder adds one).
pub fn register_collector(collector: impl Collector) {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).register_collector(Box::new(collector));
}

/// Calls `f` at every scrape of the process's registry, adding no figures: a component whose
/// figures cost a query can read them only while someone scrapes.
pub fn on_scrape(f: impl Fn() + Send + Sync + 'static) {
    register_collector(OnScrape(Box::new(f)));
}

struct OnScrape(Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnScrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnScrape")
    }
}

impl Collector for OnScrape {
    fn encode(&self, _encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        (self.0)();
        Ok(())
    }
}

/// A counter registered under `name`.
pub fn counter(name: &str, help: &str) -> Counter {
    register(name, help, Counter::default())
}

/// A gauge registered under `name`.
pub fn gauge(name: &str, help: &str) -> Gauge {
    register(name, help, Gauge::default())
}

/// A histogram of seconds registered under `name`, 0.5 ms to about 16 s.
pub fn seconds(name: &str, help: &str) -> Histogram {
    register(name, help, Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// A family of counters with `N` labels registered under `name`.
pub fn counters<const N: usize>(name: &str, help: &str) -> Family<Labels<N>, Counter> {
    register(name, help, Family::default())
}

/// A family of gauges with `N` labels registered under `name`.
pub fn gauges<const N: usize>(name: &str, help: &str) -> Family<Labels<N>, Gauge> {
    register(name, help, Family::default())
}

/// Figures one server adds to its own `/metrics`, read from its state at each scrape (a
/// process may run several servers of a kind, as tests do, and each answers for itself):
/// `router.layer(Extension(Scoped::new(collector)))` on the finished router.
#[derive(Clone, Debug)]
pub struct Scoped(Arc<dyn Collector>);

impl Scoped {
    pub fn new(collector: impl Collector) -> Self {
        Self(Arc::new(collector))
    }
}

impl Collector for Scoped {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// The whole registry as OpenMetrics text.
pub fn encode() -> String {
    encode_with(None)
}

/// The registry and a server's [`Scoped`] figures as OpenMetrics text.
pub fn encode_with(scoped: Option<&Scoped>) -> String {
    use prometheus_client::encoding::text;
    http(); // the HTTP families exist from the first scrape on
    let mut out = String::with_capacity(8192);
    let result = {
        let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        text::encode_registry(&mut out, &registry)
    }
    .and_then(|()| match scoped {
        Some(scoped) => {
            let mut local = Registry::default();
            local.register_collector(Box::new(scoped.clone()));
            text::encode_registry(&mut out, &local)
        }
        None => Ok(()),
    })
    .and_then(|()| text::encode_eof(&mut out));
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// `router` with `GET /metrics`; [`crate::http::finish`] adds it, and records every request
/// of the router with a [`Timing`]; see the module docs.
pub fn track(router: Router) -> Router {
    http();
    router.route("/metrics", get(scrape))
}

async fn scrape(scoped: Option<Extension<Scoped>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode_with(scoped.as_ref().map(|s| &s.0))).into_response()
}

type RouteLabels = [(&'static str, String); 2];
type StatusLabels = [(&'static str, String); 3];

struct Http {
    requests: Family<StatusLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    /// The two series of each route, method and status seen: a family's lookup takes an
    /// owned label set (five strings made per request), this one a `&str` (the route's
    /// pattern, from the router: foldhash, not SipHash, as no client chooses it).
    series: Mutex<HashMap<String, Vec<Series>, foldhash::fast::RandomState>>,
}

/// A route's series for one method and status.
struct Series {
    method: &'static str,
    status: u16,
    duration: Histogram,
    requests: Counter,
}

impl Http {
    /// Times `elapsed` and counts one request of `route`, `method` and `status`.
    fn record(&self, route: &str, method: &'static str, status: u16, elapsed: f64) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let of_route = match series.get_mut(route) {
            Some(of_route) => of_route,
            None => series.entry(route.to_owned()).or_default(),
        };
        let at = match of_route.iter().position(|s| s.method == method && s.status == status) {
            Some(at) => at,
            None => {
                let (route, method_text) = (route.to_owned(), method.to_owned());
                of_route.push(Series {
                    method,
                    status,
                    duration: self
                        .duration
                        .get_or_create(&[("route", route.clone()), ("method", method_text.clone())])
                        .clone(),
                    requests: self
                        .requests
                        .get_or_create(&[("route", route), ("method", method_text), ("status", status.to_string())])
                        .clone(),
                });
                of_route.len() - 1
            }
        };
        of_route[at].duration.observe(elapsed);
        of_route[at].requests.inc();
    }
}

fn http() -> &'static Http {
    static HTTP: LazyLock<Http> = LazyLock::new(|| Http {
        requests: register("http_requests", "HTTP requests answered, by route, method and status.", Family::default()),
        duration: register(
            "http_request_duration_seconds",
            "Time to the response head, by route and method.",
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
        ),
        in_flight: gauge("http_requests_in_flight", "HTTP requests being served."),
        series: Mutex::default(),
    });
    &HTTP
}

/// Takes one off the in-flight gauge when the request ends, however it ends.
struct InFlight(&'static Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The method as a label: the usual ones by name, anything else `other` (bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// A request being served, counted in flight until [`Timing::finish`] (or its drop, however
/// the request ends), then counted and timed by its route template; see the module docs.
pub struct Timing {
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
    _in_flight: InFlight,
}

impl Timing {
    pub fn start(req: &Request) -> Self {
        let http = http();
        let route = req.extensions().get::<MatchedPath>().cloned();
        http.in_flight.inc();
        Self {
            route,
            method: method_label(req.method()),
            started: Instant::now(),
            _in_flight: InFlight(&http.in_flight),
        }
    }

    pub fn finish(self, response: &Response) {
        let route = self.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        http().record(route, self.method, response.status().as_u16(), self.started.elapsed().as_secs_f64());
    }
}

/// The process's own figures, read from `/proc/self` at each scrape.
#[derive(Debug)]
pub struct Process;

/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on every Linux architecture we run on).
const TICKS: f64 = 100.0;

impl Process {
    /// `(cpu seconds, start time in ticks since boot)` from `/proc/self/stat`.
    fn stat() -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces; the fields after it are counted from `)`.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After `)`, field 3 (state) is index 0: utime is field 14, stime 15, starttime 22.
        let number = |field: usize| fields.get(field - 3)?.parse::<f64>().ok();
        Some(((number(14)? + number(15)?) / TICKS, number(22)?))
    }

    /// A `kB` figure of `/proc/self/status`, in bytes.
    fn status_bytes(status: &str, key: &str) -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: f64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024.0)
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
    }

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..].split_whitespace().next()?.parse().ok()
    }
}

fn gauge_of(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: f64) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some((cpu, start_ticks)) = Self::stat() {
            let counter = ConstCounter::new(cpu);
            let help = "User and system CPU time spent, in seconds";
            counter.encode(encoder.encode_descriptor("process_cpu_seconds", help, None, counter.metric_type())?)?;
            if let Some(boot) = Self::boot_time() {
                let help = "Start time of the process since the Unix epoch, in seconds";
                gauge_of(&mut encoder, "process_start_time_seconds", help, boot + start_ticks / TICKS)?;
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(rss) = Self::status_bytes(&status, "VmRSS:") {
                gauge_of(&mut encoder, "process_resident_memory_bytes", "Resident memory size in bytes", rss)?;
            }
            if let Some(vm) = Self::status_bytes(&status, "VmSize:") {
                gauge_of(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size in bytes", vm)?;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor, open while it is read, is not counted.
            let open = dir.count().saturating_sub(1) as f64;
            gauge_of(&mut encoder, "process_open_fds", "Number of open file descriptors", open)?;
        }
        if let Some(max) = Self::max_fds() {
            gauge_of(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", max)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::metric as sample;
    use axum::body::Body;
    use tower::ServiceExt;

    fn app() -> Router {
        crate::http::finish(Router::new().route("/things/{id}", get(|| async { "ok" })), 1024)
    }

    async fn call(app: &Router, method: &str, uri: &str) -> u16 {
        let req = axum::http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn a_request_moves_its_counter_and_histogram_by_route_template() {
        let app = app();
        let ok = r#"http_requests_total{route="/things/{id}",method="GET",status="200"}"#;
        let count = r#"http_request_duration_seconds_count{route="/things/{id}",method="GET"}"#;
        let before = (sample(&encode(), ok).unwrap_or(0.0), sample(&encode(), count).unwrap_or(0.0));
        assert_eq!(call(&app, "GET", "/things/1").await, 200);
        assert_eq!(call(&app, "GET", "/things/2").await, 200);
        let text = encode();
        assert!(sample(&text, ok).unwrap() >= before.0 + 2.0, "{text}");
        assert!(sample(&text, count).unwrap() >= before.1 + 2.0, "{text}");
        assert!(!text.contains("/things/1"), "raw paths never become labels: {text}");
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{le="0.001",route="/things/{id}",method="GET"}"#),
            "{text}"
        );

        let unmatched = r#"http_requests_total{route="unmatched",method="GET",status="404"}"#;
        let before = sample(&encode(), unmatched).unwrap_or(0.0);
        assert_eq!(call(&app, "GET", "/nowhere/at/all").await, 404);
        assert!(sample(&encode(), unmatched).unwrap() >= before + 1.0);
        let odd = r#"http_requests_total{route="/things/{id}",method="other",status="405"}"#;
        assert_eq!(call(&app, "BREW", "/things/1").await, 405);
        assert!(sample(&encode(), odd).is_some(), "{}", encode());
    }

    #[tokio::test]
    async fn metrics_are_served_with_process_figures() {
        let app = app();
        let req = axum::http::Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in ["process_cpu_seconds_total", "process_start_time_seconds", "http_requests_in_flight"] {
            assert!(sample(&text, name).is_some(), "{name} missing: {text}");
        }
        assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);
        assert!(sample(&text, "process_open_fds").unwrap() >= 1.0);
        assert!(sample(&text, "process_max_fds").unwrap() >= sample(&text, "process_open_fds").unwrap());
        let start = sample(&text, "process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(start > 1.6e9 && start <= now + 1.0, "{start}");
    }

    #[test]
    fn components_register_their_own_families() {
        let ops = counters::<1>("kit_test_ops", "Test operations.");
        ops.get_or_create(&[("operation", "add".into())]).inc_by(3);
        let text = encode();
        assert_eq!(sample(&text, r#"kit_test_ops_total{operation="add"}"#), Some(3.0), "{text}");
    }
}

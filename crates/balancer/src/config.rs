//! The balancer's settings, from environment variables (see the README's table).

use std::collections::BTreeMap;
use std::time::Duration;

use kit::{ConfigError, Vars};

/// The routes when `ROUTES` is unset: the original system's three prefixes.
pub const DEFAULT_ROUTES: &str = "/api/auth=auth,/api/data=data,/api/compute=compute";

/// Static fallback ports of the original system's services.
const DEFAULT_PORTS: [(&str, &str); 3] = [("auth", "3001-3003"), ("data", "4002-4004"), ("compute", "5002-5004")];

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `ROUTES`: `prefix=service` pairs, longest prefix first.
    pub routes: Routes,
    /// `USE_DYNAMIC_DISCOVERY` (default true): watch the registry; false uses the static ports.
    pub dynamic_discovery: bool,
    /// `<SERVICE>_PORTS` per routed service: the static fallback.
    pub static_ports: BTreeMap<String, Vec<u16>>,
    /// `BALANCE_STRATEGY`: `round-robin` (default) or `least-request`.
    pub strategy: Strategy,
    /// `CONNECT_TIMEOUT_MS` (default 1000).
    pub connect_timeout: Duration,
    /// `REQUEST_TIMEOUT_MS` (default 30000): until the response head, over all attempts.
    pub request_timeout: Duration,
    /// `HEALTH_CHECK_INTERVAL_MS` (default 5000): how often a usable instance is checked (a
    /// failed request ejects one at once, and the registry's watch brings news of the set).
    pub health_interval: Duration,
    /// `HEALTH_CHECK_TIMEOUT_MS` (default 1000).
    pub health_timeout: Duration,
    /// `HEALTH_FAIL_THRESHOLD` (default 2): failed checks in a row that take an instance out.
    pub fail_threshold: u32,
    /// `HEALTH_PASS_THRESHOLD` (default 1): passed checks in a row that bring it back.
    pub pass_threshold: u32,
    /// `EJECT_THRESHOLD` (default 1): connect errors or timeouts in a row that eject it.
    pub eject_threshold: u32,
    /// `MAX_ATTEMPTS` (default 3): attempts per request, each on another instance.
    pub max_attempts: u32,
    /// `RETRY_BUFFER_BYTES` (default 65536): request bodies up to this size are kept so
    /// they can be sent again; larger ones stream and are sent once.
    pub retry_buffer: usize,
    /// `DISCOVERY_SETTLE_MS` (default 3000): after the registry comes back, instances it
    /// does not list yet stay routable this long (it refills from heartbeats).
    pub settle: Duration,
    /// `BALANCER_WORKERS` (default: the number of cores): threads serving the request path,
    /// each with its own runtime and backend connections.
    pub workers: usize,
    /// `BALANCER_MAX_HEADER_BYTES` (default 65536): the largest request head (request line
    /// and header fields) a client may send; larger gets 431.
    pub max_header_bytes: usize,
    /// `BALANCER_MAX_HEADERS` (default 100, at most 100: the parser keeps that many on the
    /// stack): header fields per request; more gets 431.
    pub max_headers: usize,
    /// `BALANCER_HEADER_TIMEOUT_MS` (default 10000): from the first byte of a request head
    /// to its end; a client slower than that is disconnected.
    pub header_timeout: Duration,
    /// `BALANCER_IDLE_TIMEOUT_MS` (default 60000): a client connection with no request
    /// waiting for its answer and no byte moving for this long is closed.
    pub idle_timeout: Duration,
    /// `BALANCER_MAX_CONNECTIONS` (default 10000): client connections served at once; more
    /// wait in the listen backlog until one ends.
    pub max_connections: usize,
    /// `BALANCER_UPSTREAM_IDLE_MS` (default 5000): a pooled backend connection idle longer
    /// than this is closed rather than reused; kept below the backends' own idle timeout
    /// (`HTTP_IDLE_TIMEOUT_MS`, 60 s), so a request never meets one the backend is closing.
    /// Short, as HAProxy's `pool-purge-delay` (5 s): the idle lists are last in, first out,
    /// so what a burst opened beyond the load that follows ages and is closed (each idle
    /// connection holds some 35 KB here and as much in its backend), while a steady load
    /// keeps reusing its own.
    pub upstream_idle: Duration,
    /// `TRACE_SAMPLE_PERCENT` (default 0): of the requests that come without a
    /// `traceparent`, the share whose new trace the balancer begins sampled, so that every
    /// hop writes its access line at `info` and `orch logs --trace` finds the request. A
    /// client's own `traceparent` keeps its flag whatever this says. Not 100 by default:
    /// an access line on every hop of every request costs the balancer about a third of its
    /// requests per second (`make bench`).
    pub trace_sample_percent: u8,
    /// `BALANCER_FAST_PATH` (default true): common requests are parsed and relayed by the
    /// balancer's own HTTP/1 path (`fast`); false sends every request through hyper (the
    /// way to rule the fast path out when something looks wrong).
    pub fast_path: bool,
}

impl Config {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let kit = kit::Config::from_vars(vars, "balancer")?;
        let routes = Routes::parse(&vars.string("ROUTES", DEFAULT_ROUTES))
            .map_err(|why| ConfigError::new("ROUTES", &vars.string("ROUTES", ""), why))?;
        let mut static_ports = BTreeMap::new();
        for service in routes.services() {
            // Under orch the original system's ports may be another cluster's (a `make run`
            // beside a test's cluster on automatic ports, say): a fallback to them sent this
            // cluster's requests, bearer tokens and all, to strangers while its registry
            // restarted. There, only the ports orch sets (its own instances of the service)
            // or the manifest's `env` are a fallback.
            let original = DEFAULT_PORTS.iter().find(|(s, _)| *s == service).map_or("", |(_, p)| *p);
            let default = if kit.managed { "" } else { original };
            static_ports.insert(service.to_owned(), vars.ports(&ports_var(service), default)?);
        }
        Ok(Self {
            kit,
            routes,
            dynamic_discovery: vars.flag("USE_DYNAMIC_DISCOVERY", true)?,
            static_ports,
            strategy: vars.parse_or("BALANCE_STRATEGY", Strategy::RoundRobin, "round-robin or least-request")?,
            connect_timeout: vars.millis("CONNECT_TIMEOUT_MS", 1_000, 600_000)?,
            request_timeout: vars.millis("REQUEST_TIMEOUT_MS", 30_000, 3_600_000)?,
            health_interval: vars.millis("HEALTH_CHECK_INTERVAL_MS", 5_000, 3_600_000)?,
            health_timeout: vars.millis("HEALTH_CHECK_TIMEOUT_MS", 1_000, 600_000)?,
            fail_threshold: vars.number("HEALTH_FAIL_THRESHOLD", 2, 1, 100)? as u32,
            pass_threshold: vars.number("HEALTH_PASS_THRESHOLD", 1, 1, 100)? as u32,
            eject_threshold: vars.number("EJECT_THRESHOLD", 1, 1, 100)? as u32,
            max_attempts: vars.number("MAX_ATTEMPTS", 3, 1, 10)? as u32,
            retry_buffer: vars.number("RETRY_BUFFER_BYTES", 64 << 10, 0, 16 << 20)? as usize,
            settle: vars.millis("DISCOVERY_SETTLE_MS", 3_000, 600_000)?,
            workers: vars.number("BALANCER_WORKERS", default_workers(), 1, 64)? as usize,
            max_header_bytes: vars.number("BALANCER_MAX_HEADER_BYTES", 64 << 10, 1 << 10, 1 << 20)? as usize,
            max_headers: vars.number("BALANCER_MAX_HEADERS", 100, 1, 100)? as usize,
            header_timeout: vars.millis("BALANCER_HEADER_TIMEOUT_MS", 10_000, 600_000)?,
            idle_timeout: vars.millis("BALANCER_IDLE_TIMEOUT_MS", 60_000, 3_600_000)?,
            max_connections: vars.number("BALANCER_MAX_CONNECTIONS", 10_000, 1, 1_000_000)? as usize,
            upstream_idle: vars.millis("BALANCER_UPSTREAM_IDLE_MS", 5_000, 3_600_000)?,
            trace_sample_percent: vars.number("TRACE_SAMPLE_PERCENT", 0, 0, 100)? as u8,
            fast_path: vars.flag("BALANCER_FAST_PATH", true)?,
        })
    }
}

fn default_workers() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64).min(64)
}

/// `data` → `DATA_PORTS`, `my-svc` → `MY_SVC_PORTS`.
pub fn ports_var(service: &str) -> String {
    let name: String =
        service.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{name}_PORTS")
}

/// How an instance is chosen among a pool's healthy ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    /// Power of two choices: the less busy of two instances picked at random.
    LeastRequest,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastRequest => "least-request",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "round-robin" => Ok(Self::RoundRobin),
            "least-request" => Ok(Self::LeastRequest),
            _ => Err(()),
        }
    }
}

/// Path prefixes and the services they lead to; the longest matching prefix wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// `(prefix, service)`, longest prefix first.
    entries: Vec<(String, String)>,
}

impl Routes {
    /// `/api/auth=auth,/api/data=data`; an error says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut entries: Vec<(String, String)> = Vec::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (prefix, service) =
                pair.split_once('=').ok_or_else(|| format!("prefix=service pairs, and {pair:?} has no '='"))?;
            let (prefix, service) = (prefix.trim(), service.trim());
            if !prefix.starts_with('/') || prefix.contains(['?', '#', ' ']) {
                return Err(format!("prefixes that start with '/', and {prefix:?} does not"));
            }
            let valid_name = |s: &str| {
                !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            };
            if !valid_name(service) {
                return Err(format!("service names of letters, digits, '-', '_' or '.', and {service:?} is not one"));
            }
            let prefix = match prefix.trim_end_matches('/') {
                "" => "/",
                p => p,
            };
            if entries.iter().any(|(p, _)| p == prefix) {
                return Err(format!("each prefix once, and {prefix:?} is repeated"));
            }
            entries.push((prefix.to_owned(), service.to_owned()));
        }
        if entries.is_empty() {
            return Err("at least one prefix=service pair".into());
        }
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(Self { entries })
    }

    /// `(prefix, service)` pairs, longest prefix first.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// The routed services, each once, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = self.entries.iter().map(|(_, s)| s.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        services
    }

    /// The index (into [`Routes::entries`]) of the route for `path`: the longest prefix that
    /// matches whole path segments (`/api/data` matches `/api/data/x`, not `/api/database`).
    pub fn find(&self, path: &str) -> Option<usize> {
        self.entries.iter().position(|(prefix, _)| matches_prefix(path, prefix))
    }
}

fn matches_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/" || path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_the_longest_whole_prefix() {
        let routes = Routes::parse("/api/auth=auth, /api/data=data,/api/data/slow/=slow ,/=web").unwrap();
        let check = |path: &str, expected: &str| {
            let found = routes.find(path).map(|i| routes.entries()[i].1.as_str());
            assert_eq!(found, Some(expected), "{path}");
        };
        check("/api/auth/login", "auth");
        check("/api/auth", "auth");
        check("/api/data/slow/x", "slow");
        check("/api/data/slow", "slow");
        check("/api/data/slower", "data");
        check("/api/database", "web");
        check("/", "web");
        assert_eq!(routes.services(), vec!["auth", "data", "slow", "web"]);

        let routes = Routes::parse(DEFAULT_ROUTES).unwrap();
        assert_eq!(routes.find("/api/authx"), None);
        assert_eq!(routes.find("/other"), None);
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        let check = |raw: &str, needle: &str| {
            let err = Routes::parse(raw).unwrap_err();
            assert!(err.contains(needle), "{raw}: {err}");
        };
        check("/api/auth", "no '='");
        check("api=auth", "start with '/'");
        check("/api=", "service names");
        check("/api=a b", "service names");
        check("/a=x,/a/=y", "repeated");
        check(" , ", "at least one");
    }

    /// An instance orch runs has no static fallback but the one its manifest sets: the
    /// original system's ports would be another cluster's.
    #[test]
    fn under_orch_only_ports_set_on_purpose_are_a_fallback() {
        let config = Config::from_vars(&Vars::from_pairs([("ORCH_MANAGED", "1"), ("DATA_PORTS", "4100")])).unwrap();
        assert_eq!(config.static_ports["auth"], Vec::<u16>::new());
        assert_eq!(config.static_ports["data"], vec![4100]);
        assert_eq!(config.static_ports["compute"], Vec::<u16>::new());
    }

    #[test]
    fn defaults_and_overrides() {
        let config = Config::from_vars(&Vars::from_pairs([("DATA_PORTS", "4100,4101")])).unwrap();
        assert_eq!(config.routes, Routes::parse(DEFAULT_ROUTES).unwrap());
        assert_eq!(config.static_ports["auth"], vec![3001, 3002, 3003]);
        assert_eq!(config.static_ports["data"], vec![4100, 4101]);
        assert_eq!(config.static_ports["compute"], vec![5002, 5003, 5004]);
        assert_eq!(config.strategy, Strategy::RoundRobin);
        assert!(config.dynamic_discovery);
        assert_eq!(config.max_attempts, 3);
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!((config.max_header_bytes, config.max_headers, config.max_connections), (65_536, 100, 10_000));
        assert_eq!((config.header_timeout, config.idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
        assert_eq!(config.upstream_idle, Duration::from_secs(5));
        // A usable instance is checked calmly; an idle cluster of many costs little.
        assert_eq!((config.health_interval, config.health_timeout), (Duration::from_secs(5), Duration::from_secs(1)));

        let vars = Vars::from_pairs([
            ("ROUTES", "/x=my-svc"),
            ("MY_SVC_PORTS", "7000-7001"),
            ("BALANCE_STRATEGY", "least-request"),
            ("USE_DYNAMIC_DISCOVERY", "false"),
        ]);
        let config = Config::from_vars(&vars).unwrap();
        assert_eq!(config.static_ports.len(), 1);
        assert_eq!(config.static_ports["my-svc"], vec![7000, 7001]);
        assert_eq!(config.strategy, Strategy::LeastRequest);
        assert!(!config.dynamic_discovery);

        let err = Config::from_vars(&Vars::from_pairs([("BALANCE_STRATEGY", "random")])).unwrap_err();
        assert!(err.to_string().contains("BALANCE_STRATEGY"), "{err}");
        let err = Config::from_vars(&Vars::from_pairs([("ROUTES", "nope")])).unwrap_err();
        assert!(err.to_string().contains("ROUTES"), "{err}");
        let err = Config::from_vars(&Vars::from_pairs([("BALANCER_MAX_HEADERS", "101")])).unwrap_err();
        assert!(err.to_string().contains("BALANCER_MAX_HEADERS"), "{err}");
        let err = Config::from_vars(&Vars::from_pairs([("BALANCER_MAX_CONNECTIONS", "0")])).unwrap_err();
        assert!(err.to_string().contains("BALANCER_MAX_CONNECTIONS"), "{err}");
        for bad in ["0", "-5", "soon", "3600001"] {
            let err = Config::from_vars(&Vars::from_pairs([("BALANCER_UPSTREAM_IDLE_MS", bad)])).unwrap_err();
            assert!(err.to_string().contains("BALANCER_UPSTREAM_IDLE_MS"), "{bad}: {err}");
        }
        let config = Config::from_vars(&Vars::from_pairs([("BALANCER_UPSTREAM_IDLE_MS", "250")])).unwrap();
        assert_eq!(config.upstream_idle, Duration::from_millis(250));
    }
}

//! Configuration from environment variables: the components' common [`Config`], and the
//! server's [`Limits`] (kept here, below `serve`, which takes them).
//!
//! Components read their settings through [`Vars`], never through `std::env` directly, so a
//! test builds its configuration from a map ([`Vars::from_pairs`]) and never touches the
//! process environment.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;
use crate::telemetry::LogFormat;

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    pub fn new(name: &str, value: &str, expected: impl Into<String>) -> Self {
        Self { name: name.to_owned(), value: value.to_owned(), expected: expected.into() }
    }
}

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// A source of configuration values: the process environment, or a map in tests.
///
/// An empty value counts as unset, so `PORT= orch run auth` behaves like no `PORT` at all.
#[derive(Clone)]
pub struct Vars {
    lookup: Arc<Lookup>,
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vars")
    }
}

impl Vars {
    pub fn from_env() -> Self {
        Self { lookup: Arc::new(|name| std::env::var(name).ok()) }
    }

    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self { lookup: Arc::new(move |name| map.get(name).cloned()) }
    }

    /// The raw value, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// The value parsed as `T`, or `None` when unset.
    pub fn parse<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => raw.trim().parse().map(Some).map_err(|_| ConfigError::new(name, &raw, expected)),
        }
    }

    pub fn parse_or<T: FromStr>(&self, name: &str, default: T, expected: &str) -> Result<T, ConfigError> {
        Ok(self.parse(name, expected)?.unwrap_or(default))
    }

    /// A whole number within `min..=max`.
    pub fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let expected = format!("a whole number from {min} to {max}");
        let n = self.parse_or(name, default, &expected)?;
        if (min..=max).contains(&n) { Ok(n) } else { Err(ConfigError::new(name, &n.to_string(), expected)) }
    }

    /// A duration given in milliseconds (`..._MS` variables), within `1..=max_ms`.
    pub fn millis(&self, name: &str, default_ms: u64, max_ms: u64) -> Result<Duration, ConfigError> {
        self.number(name, default_ms, 1, max_ms).map(Duration::from_millis)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::new(name, &raw, "true or false")),
            },
        }
    }

    /// A comma-separated list of host names (lowercased, a trailing dot dropped).
    pub fn hosts(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = self.get(name) else { return Ok(Vec::new()) };
        let hosts: Vec<String> = raw
            .split(',')
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.iter().all(|h| is_host(h)) {
            Ok(hosts)
        } else {
            Err(ConfigError::new(
                name,
                &raw,
                "host names like orch.example.com,registry separated by commas (no scheme or port)",
            ))
        }
    }

    /// A list of ports: `3001,3002,3003`, or a range `3001-3003`, or a mix.
    pub fn ports(&self, name: &str, default: &str) -> Result<Vec<u16>, ConfigError> {
        let raw = self.string(name, default);
        parse_ports(&raw)
            .ok_or_else(|| ConfigError::new(name, &raw, "ports like 3001,3002,3003 or a range like 3001-3003"))
    }
}

/// Whether `host` is a bare host name or IP address (no scheme, port, path or spaces).
fn is_host(host: &str) -> bool {
    let name = host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let ipv6 =
        host.starts_with('[') && host.ends_with(']') && host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    !host.is_empty() && (name || ipv6)
}

fn parse_ports(raw: &str) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                if lo == 0 || lo > hi || hi - lo > 1000 {
                    return None;
                }
                ports.extend(lo..=hi);
            }
            None => ports.push(part.parse().ok().filter(|p| *p != 0)?),
        }
    }
    Some(ports)
}

/// What every component reads from its environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// `SERVICE_NAME`: this instance's id in the registry (`auth-1`, `auth-service-1`).
    pub service_name: String,
    /// `SERVICE_TYPE`: the service it belongs to (`auth`); orch sets the manifest's name.
    pub service_type: String,
    /// `SERVICE_HOST` (default `localhost`): the host other programs use to reach it.
    pub service_host: String,
    /// `PORT`: the port to bind when no socket is inherited (`0` or unset: any free port).
    pub port: Option<u16>,
    /// `BIND_ADDR` (default `127.0.0.1`): the address to bind when no socket is inherited.
    pub bind_addr: IpAddr,
    /// `ALLOWED_HOSTS` (comma-separated, default none): host names the control-plane APIs
    /// answer besides loopback names (see [`crate::guard`]).
    pub allowed_hosts: Vec<String>,
    /// `SERVICE_REGISTRY_URL` (default `http://localhost:3005`).
    pub registry_url: String,
    /// `REGISTER` (default true): whether to register with the registry at all.
    pub register: bool,
    /// `ORCH_CLUSTER_TOKEN`: bearer token for the registry's and orch's mutating calls.
    pub cluster_token: Option<Secret>,
    /// `JWT_SECRET`: the HS256 secret; unset means `DATA_DIR/jwt-secret` (see [`crate::jwt`]).
    pub jwt_secret: Option<Secret>,
    /// `AUTH_REQUIRED` (default true): data and compute demand a valid bearer JWT.
    pub auth_required: bool,
    /// `ORCH_MANAGED`: set by orch for its children; orch then owns deregistration.
    pub managed: bool,
    /// `DATA_DIR` (default `data`): where databases and secrets live.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: overrides the component's default database file.
    pub database_url: Option<String>,
    /// `SQLITE_SYNCHRONOUS` (`FULL`, the default, or `NORMAL`): whether a commit waits for
    /// the disk (see [`crate::db`]).
    pub sqlite_synchronous: crate::db::Synchronous,
    /// `HEARTBEAT_INTERVAL_MS` (default 10000).
    pub heartbeat_interval: Duration,
    /// `BODY_LIMIT_BYTES` (default 1 MiB): larger request bodies get 413.
    pub body_limit: usize,
    /// `SHUTDOWN_GRACE_MS` (default 5000): how long in-flight work may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// `HTTP_HEADER_TIMEOUT_MS`, `HTTP_BODY_TIMEOUT_MS`, `HTTP_IDLE_TIMEOUT_MS`,
    /// `HTTP_MAX_CONNECTIONS`: how the server bounds its connections.
    pub limits: Limits,
    /// `LOG_FORMAT` (`text` or `json`).
    pub log_format: LogFormat,
    /// `RUNTIME_THREADS` (default 1): the worker threads of the component's async runtime.
    /// One is the fastest on a small machine shared by a cluster's processes: every request
    /// handed between two workers of a process costs thread wake-ups (measured on 2 cores:
    /// README, Benchmarks); blocking work (hashes, computations, SQLite) has threads of its
    /// own either way.
    pub runtime_threads: usize,
}

impl Config {
    /// Reads the common settings; `component` names the defaults (`auth` → `auth-service`).
    pub fn from_vars(vars: &Vars, component: &str) -> Result<Self, ConfigError> {
        let port = vars.parse::<u16>("PORT", "a port number from 0 to 65535")?;
        Ok(Self {
            service_name: vars.string("SERVICE_NAME", &format!("{component}-service")),
            service_type: vars.string("SERVICE_TYPE", component),
            service_host: vars.string("SERVICE_HOST", "localhost"),
            port,
            bind_addr: vars.parse_or("BIND_ADDR", IpAddr::from([127, 0, 0, 1]), "an IP address")?,
            allowed_hosts: vars.hosts("ALLOWED_HOSTS")?,
            registry_url: vars.string("SERVICE_REGISTRY_URL", "http://localhost:3005").trim_end_matches('/').to_owned(),
            register: vars.flag("REGISTER", true)?,
            cluster_token: vars.get("ORCH_CLUSTER_TOKEN").map(Secret::new),
            jwt_secret: vars.get("JWT_SECRET").map(Secret::new),
            auth_required: vars.flag("AUTH_REQUIRED", true)?,
            managed: vars.flag("ORCH_MANAGED", false)?,
            data_dir: PathBuf::from(vars.string("DATA_DIR", "data")),
            database_url: vars.get("DATABASE_URL"),
            sqlite_synchronous: vars.parse_or("SQLITE_SYNCHRONOUS", crate::db::Synchronous::Full, "FULL or NORMAL")?,
            heartbeat_interval: vars.millis("HEARTBEAT_INTERVAL_MS", 10_000, 3_600_000)?,
            body_limit: vars.number("BODY_LIMIT_BYTES", 1 << 20, 1, 1 << 30)? as usize,
            shutdown_grace: vars.millis("SHUTDOWN_GRACE_MS", 5_000, 600_000)?,
            limits: Limits::from_vars(vars)?,
            log_format: vars.parse_or("LOG_FORMAT", LogFormat::Text, "text or json")?,
            runtime_threads: vars.number("RUNTIME_THREADS", 1, 1, 256)? as usize,
        })
    }

    /// The URL other programs use to reach this instance on `port`.
    pub fn public_url(&self, port: u16) -> String {
        format!("http://{}:{port}", self.service_host)
    }

    /// `sqlite://DATA_DIR/<file>` unless `DATABASE_URL` says otherwise.
    pub fn database_url_or(&self, file: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join(file).display()))
    }
}

/// File descriptors kept out of the connection cap, for databases, outgoing connections,
/// log files and the listener itself.
pub const FD_RESERVE: u64 = 256;

/// How `serve` bounds its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `HTTP_HEADER_TIMEOUT_MS` (default 10000): a request's head must arrive within this.
    pub header_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_MS` (default 30000): a request's body must arrive within this of
    /// its head.
    pub body_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_MS` (default 60000): a kept-alive connection with no request, or a
    /// response the client does not read, is closed after this.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS` (default 10000): open connections at most; beyond, accepting
    /// waits. Lowered to what `RLIMIT_NOFILE` allows, less [`FD_RESERVE`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl Limits {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let default = Self::default();
        let millis = |name, default: Duration| vars.millis(name, default.as_millis() as u64, 3_600_000);
        Ok(Self {
            header_timeout: millis("HTTP_HEADER_TIMEOUT_MS", default.header_timeout)?,
            body_timeout: millis("HTTP_BODY_TIMEOUT_MS", default.body_timeout)?,
            idle_timeout: millis("HTTP_IDLE_TIMEOUT_MS", default.idle_timeout)?,
            max_connections: vars.number("HTTP_MAX_CONNECTIONS", default.max_connections as u64, 1, 1_000_000)?
                as usize,
        })
    }

    /// The cap in force with `fd_limit` file descriptors (`None`: unknown).
    pub fn connection_cap(&self, fd_limit: Option<u64>) -> usize {
        match fd_limit {
            Some(fds) => self.max_connections.min(fds.saturating_sub(FD_RESERVE).max(16) as usize),
            None => self.max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let check = |raw: &str, expected: Option<Vec<u16>>| assert_eq!(parse_ports(raw), expected, "{raw}");
        check("3001,3002,3003", Some(vec![3001, 3002, 3003]));
        check("3001-3003", Some(vec![3001, 3002, 3003]));
        check(" 4002 - 4003 , 5000", Some(vec![4002, 4003, 5000]));
        check("", Some(vec![]));
        check("3003-3001", None);
        check("0", None);
        check("70000", None);
        check("abc", None);
    }

    #[test]
    fn defaults_and_overrides() {
        let config = Config::from_vars(&Vars::from_pairs([("PORT", "3001")]), "auth").unwrap();
        assert_eq!(config.port, Some(3001));
        assert_eq!(config.service_name, "auth-service");
        assert_eq!(config.service_type, "auth");
        assert_eq!(config.registry_url, "http://localhost:3005");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.body_limit, 1 << 20);
        assert_eq!(config.runtime_threads, 1);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.limits.header_timeout, Duration::from_secs(10));
        assert!(config.allowed_hosts.is_empty());
        assert_eq!(config.public_url(3001), "http://localhost:3001");
        assert!(config.auth_required);

        let vars = Vars::from_pairs([("JWT_SECRET", "s3cret"), ("ORCH_CLUSTER_TOKEN", "t0ken")]);
        let shown = format!("{:?}", Config::from_vars(&vars, "auth").unwrap());
        assert!(!shown.contains("s3cret") && !shown.contains("t0ken"), "secrets leak into Debug: {shown}");

        let vars = Vars::from_pairs([("SERVICE_NAME", "auth-2"), ("SERVICE_REGISTRY_URL", "http://127.0.0.1:9/")]);
        let config = Config::from_vars(&vars, "auth").unwrap();
        assert_eq!(config.service_name, "auth-2");
        assert_eq!(config.registry_url, "http://127.0.0.1:9");
    }

    #[test]
    fn server_limits_and_allowed_hosts() {
        let vars = Vars::from_pairs([
            ("HTTP_HEADER_TIMEOUT_MS", "250"),
            ("HTTP_BODY_TIMEOUT_MS", "500"),
            ("HTTP_IDLE_TIMEOUT_MS", "750"),
            ("HTTP_MAX_CONNECTIONS", "20"),
            ("ALLOWED_HOSTS", " Orch.Example.com., registry ,,[::2]"),
        ]);
        let config = Config::from_vars(&vars, "registry").unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(250),
            body_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(750),
            max_connections: 20,
        };
        assert_eq!(config.limits, limits);
        assert_eq!(config.allowed_hosts, ["orch.example.com", "registry", "[::2]"]);
        for (name, value) in [
            ("HTTP_MAX_CONNECTIONS", "0"),
            ("HTTP_IDLE_TIMEOUT_MS", "soon"),
            ("ALLOWED_HOSTS", "http://evil.example"),
            ("ALLOWED_HOSTS", "a.example:8080"),
        ] {
            let err = Config::from_vars(&Vars::from_pairs([(name, value)]), "registry").unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Config::from_vars(&Vars::from_pairs([("PORT", "http")]), "auth").unwrap_err();
        assert_eq!(err.to_string(), r#"invalid PORT="http": expected a port number from 0 to 65535"#);
        let err = Config::from_vars(&Vars::from_pairs([("HEARTBEAT_INTERVAL_MS", "0")]), "auth").unwrap_err();
        assert!(err.to_string().contains("HEARTBEAT_INTERVAL_MS"), "{err}");
        let err = Config::from_vars(&Vars::from_pairs([("REGISTER", "maybe")]), "auth").unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
        for threads in ["0", "257", "two"] {
            let err = Config::from_vars(&Vars::from_pairs([("RUNTIME_THREADS", threads)]), "data").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(r#"invalid RUNTIME_THREADS="{threads}": expected a whole number from 1 to 256"#)
            );
        }
        let config = Config::from_vars(&Vars::from_pairs([("RUNTIME_THREADS", "4")]), "data").unwrap();
        assert_eq!(config.runtime_threads, 4);
    }
}

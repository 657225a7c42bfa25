//! The registry's contract as types, and its client.
//!
//! [`maintain`] keeps one instance registered for as long as it runs: it registers (retrying
//! while the registry is unreachable), heartbeats every `HEARTBEAT_INTERVAL_MS`, registers
//! again when the registry answers 404 (it restarted and forgot us) and, run by hand,
//! deregisters on shutdown. A 410 means someone deregistered this instance on purpose (orch
//! draining it before a stop): the loop then stays quiet instead of registering again.
//!
//! The beats keep to a wall-clock grid shared by the whole cluster (the multiples of the
//! interval in Unix-epoch milliseconds, see [`next_beat`]), so a cluster's beats reach the
//! registry together and it reads many per wake-up instead of one each.
//!
//! A heartbeat is the call every instance makes over and over, so it skips reqwest: it is one
//! `POST` on a connection kept from beat to beat ([`crate::http1::post_json`]), the registry's
//! host resolved when connecting. Only for an `http://` registry URL; any other goes through
//! reqwest, as register, deregister and watch (rare) always do.
//!
//! [`RegistryClient::watch`] is the blocking query: it returns as soon as the registry's
//! index moves past the one given, or after `wait` with the same index.

use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::http1;
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// The header carrying the registry's change index on list responses.
pub const INDEX_HEADER: &str = "x-registry-index";

/// What an instance tells the registry about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub service_id: String,
    pub service_type: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl Registration {
    /// This instance, as `config` describes it, reachable on `port`.
    pub fn for_instance(config: &Config, port: u16) -> Self {
        let mut metadata = Map::new();
        metadata.insert("pid".into(), std::process::id().into());
        metadata.insert("port".into(), port.into());
        Self {
            service_id: config.service_name.clone(),
            service_type: config.service_type.clone(),
            url: config.public_url(port),
            name: Some(config.service_name.clone()),
            metadata,
        }
    }
}

/// A registry record, exactly as the registry serves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub service_id: String,
    pub service_type: String,
    pub url: String,
    pub name: String,
    pub metadata: Map<String, Value>,
    pub registered_at: String,
    pub last_heartbeat: String,
    pub healthy: bool,
}

/// `GET /api/registry/services` and friends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<ServiceRecord>,
    pub total: usize,
    pub timestamp: String,
    /// The registry's change index; pass it to [`RegistryClient::watch`].
    #[serde(default)]
    pub index: u64,
}

/// What a heartbeat found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// Known and refreshed.
    Alive,
    /// Unknown id (the registry restarted): register again.
    Unknown,
    /// Deregistered on purpose: do not come back by heartbeat.
    Deregistered,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("registry unreachable: {0}")]
    Lean(#[from] http1::Error),
    #[error("registry answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("registry answered {status} with a body that is not JSON: {error}")]
    Body { status: u16, error: serde_json::Error },
}

/// How long a call to the registry may take (a watch: its wait and this).
const TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the registry's HTTP API.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    /// The heartbeat's lean path, when the URL is `http://`.
    lean: Option<Lean>,
    timeout: Duration,
}

/// Where heartbeats go without reqwest, and the connection kept to it (shared by clones).
#[derive(Clone, Debug)]
struct Lean {
    host: String,
    port: u16,
    /// The `Host` header: `host:port`, an IPv6 address in brackets.
    host_header: String,
    /// The heartbeat's path, below the URL's own.
    path: String,
    conns: http1::Conns,
}

impl Lean {
    /// The lean target of `base` (without its trailing `/`), if it is a plain `http://` URL.
    fn of(base: &str) -> Option<Self> {
        let url = Url::parse(base).ok()?;
        if url.scheme() != "http" || url.query().is_some() || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let named = url.host_str().filter(|host| !host.is_empty())?;
        // An IPv6 address is named in brackets, and connected to without.
        let host = named.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default()?;
        let host_header = format!("{named}:{port}");
        let path = format!("{}/api/registry/heartbeat", url.path().trim_end_matches('/'));
        Some(Self { host, port, host_header, path, conns: http1::Conns::default() })
    }
}

impl RegistryClient {
    /// A client of the registry at `base_url`, authenticating mutations with `token`.
    pub fn new(base_url: &str, token: Option<Secret>) -> Self {
        Self::with_timeout(base_url, token, TIMEOUT)
    }

    /// [`RegistryClient::new`] whose calls give up after `timeout` (tests).
    pub fn with_timeout(base_url: &str, token: Option<Secret>, timeout: Duration) -> Self {
        let http = crate::http::client_builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        let base = base_url.trim_end_matches('/').to_owned();
        Self { http, lean: Lean::of(&base), base, token, timeout }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.registry_url, config.cluster_token.clone())
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = crate::trace::inject(self.http.post(format!("{}{path}", self.base)).timeout(self.timeout));
        match &self.token {
            Some(token) => req.bearer_auth(token.expose()),
            None => req,
        }
    }

    pub async fn register(&self, registration: &Registration) -> Result<ServiceRecord, ClientError> {
        let res = self.post("/api/registry/register").json(registration).send().await?;
        ok_json(res).await
    }

    pub async fn heartbeat(&self, service_id: &str) -> Result<Beat, ClientError> {
        if let Some(lean) = &self.lean {
            return self.lean_heartbeat(lean, service_id).await;
        }
        let res =
            self.post("/api/registry/heartbeat").json(&serde_json::json!({ "serviceId": service_id })).send().await?;
        match res.status().as_u16() {
            404 => Ok(Beat::Unknown),
            410 => Ok(Beat::Deregistered),
            _ => ok_json::<Value>(res).await.map(|_| Beat::Alive),
        }
    }

    /// The heartbeat on the kept connection: the same request as reqwest's (the token, the
    /// current request's `traceparent` as [`crate::trace::inject`] adds it), the same outcomes.
    async fn lean_heartbeat(&self, lean: &Lean, service_id: &str) -> Result<Beat, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({ "serviceId": service_id }))
            .expect("a JSON object of a string serializes");
        let bearer = self.token.as_ref().map(|token| format!("Bearer {}", token.expose()));
        let trace = crate::trace::current().map(|context| context.to_string());
        let mut headers = Vec::with_capacity(2);
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer.as_str()));
        }
        if let Some(trace) = &trace {
            headers.push((crate::trace::TRACEPARENT.as_str(), trace.as_str()));
        }
        let target = (lean.host.as_str(), lean.port);
        let answer =
            http1::post_json(&lean.conns, target, &lean.host_header, &lean.path, &headers, &body, self.timeout).await?;
        match answer.status {
            404 => Ok(Beat::Unknown),
            410 => Ok(Beat::Deregistered),
            status => {
                let json = serde_json::from_slice::<Value>(&answer.body);
                if (200..300).contains(&status) {
                    return json.map(|_| Beat::Alive).map_err(|error| ClientError::Body { status, error });
                }
                Err(status_error(status, json.ok()))
            }
        }
    }

    /// Removes a record; `Ok(false)` if the registry did not know it.
    pub async fn deregister(&self, service_id: &str) -> Result<bool, ClientError> {
        let res =
            self.post("/api/registry/deregister").json(&serde_json::json!({ "serviceId": service_id })).send().await?;
        if res.status().as_u16() == 404 {
            return Ok(false);
        }
        ok_json::<Value>(res).await.map(|_| true)
    }

    /// Every record (of `service_type`, if given).
    pub async fn services(&self, service_type: Option<&str>) -> Result<ServiceList, ClientError> {
        self.watch(service_type, None, Duration::ZERO).await
    }

    /// The blocking query: answers once the index passes `index` (at once if it already has,
    /// or if `index` is `None`), or after `wait` with the list unchanged.
    pub async fn watch(
        &self,
        service_type: Option<&str>,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<ServiceList, ClientError> {
        let mut req = crate::trace::inject(
            self.http.get(format!("{}/api/registry/services", self.base)).timeout(wait + self.timeout),
        );
        if let Some(t) = service_type {
            req = req.query(&[("type", t)]);
        }
        if let Some(index) = index {
            req = req.query(&[("index", index.to_string()), ("wait", format!("{}ms", wait.as_millis()))]);
        }
        ok_json(req.send().await?).await
    }
}

async fn ok_json<T: serde::de::DeserializeOwned>(res: reqwest::Response) -> Result<T, ClientError> {
    let status = res.status();
    if status.is_success() {
        return Ok(res.json().await?);
    }
    Err(status_error(status.as_u16(), res.json::<Value>().await.ok()))
}

/// The error of a status that is not a success: the `error` field of its JSON body as the
/// message, else the status's reason.
fn status_error(status: u16, body: Option<Value>) -> ClientError {
    let message =
        body.as_ref().and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned)).unwrap_or_else(|| {
            let reason = reqwest::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason());
            reason.unwrap_or("error").to_owned()
        });
    ClientError::Status { status, message }
}

/// Keeps `registration` registered until `shutdown`; see the module docs.
///
/// `deregister_on_exit` is false under orch, which deregisters instances itself before it
/// stops them (a replacement may already be serving under the same id).
pub async fn maintain(
    client: RegistryClient,
    registration: Registration,
    interval: Duration,
    shutdown: Shutdown,
    deregister_on_exit: bool,
) {
    let id = registration.service_id.clone();
    // While the registry is unreachable, try again soon: a restarted registry is refilled
    // within about a second, whatever the heartbeat interval.
    let retry = interval.min(Duration::from_secs(1));
    let mut registered = false;
    let mut quiet = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = crate::time::unix_millis();
        let next = if quiet {
            None
        } else if !registered {
            match client.register(&registration).await {
                Ok(_) => {
                    tracing::info!(service_id = %id, registry = client.base_url(), "registered");
                    registered = true;
                    backoff = Duration::from_millis(100);
                    Some(until_next_beat(started, interval))
                }
                Err(e) => {
                    tracing::warn!(service_id = %id, error = %e, "registration failed, retrying");
                    backoff = (backoff * 2).min(retry);
                    Some(backoff)
                }
            }
        } else {
            match client.heartbeat(&id).await {
                Ok(Beat::Alive) => Some(until_next_beat(started, interval)),
                Ok(Beat::Unknown) => {
                    tracing::info!(service_id = %id, "registry forgot this instance, registering again");
                    registered = false;
                    Some(Duration::ZERO)
                }
                Ok(Beat::Deregistered) => {
                    tracing::info!(service_id = %id, "deregistered on purpose, heartbeats stop");
                    registered = false;
                    quiet = true;
                    None
                }
                Err(e) => {
                    tracing::warn!(service_id = %id, error = %e, "heartbeat failed");
                    Some(retry)
                }
            }
        };
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = sleep_or_forever(next) => {}
        }
    }
    if deregister_on_exit && registered {
        match tokio::time::timeout(Duration::from_secs(2), client.deregister(&id)).await {
            Ok(Ok(_)) => tracing::info!(service_id = %id, "deregistered"),
            Ok(Err(e)) => tracing::warn!(service_id = %id, error = %e, "deregistration failed"),
            Err(_) => tracing::warn!(service_id = %id, "deregistration timed out"),
        }
    }
}

/// The next beat after one started at `started_ms` (Unix-epoch milliseconds): the first
/// multiple of `interval` after it, so in `(started_ms, started_ms + interval]`, never later
/// than one interval after the last beat, and the same instant for every instance alike.
pub fn next_beat(started_ms: i64, interval: Duration) -> i64 {
    let step = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1);
    started_ms.div_euclid(step).saturating_add(1).saturating_mul(step)
}

/// How long to sleep, from now, until the beat after one started at `started_ms`.
fn until_next_beat(started_ms: i64, interval: Duration) -> Duration {
    let wait = next_beat(started_ms, interval).saturating_sub(crate::time::unix_millis());
    Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(interval)
}

async fn sleep_or_forever(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Starts [`maintain`] for this instance as a shutdown-tracked task, if `REGISTER` allows.
pub fn spawn_maintain(config: &Config, port: u16, shutdown: &Shutdown) {
    if !config.register {
        return;
    }
    let task = maintain(
        RegistryClient::from_config(config),
        Registration::for_instance(config, port),
        config.heartbeat_interval,
        shutdown.clone(),
        !config.managed,
    );
    shutdown.spawn(task);
}

#[cfg(test)]
mod lean_tests;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_beat;

    #[test]
    fn beats_keep_to_the_shared_grid() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (started at, interval) -> next beat
        let table = [
            (0, s(2), 2_000),
            (1, s(2), 2_000),
            (1_999, s(2), 2_000),
            (2_000, s(2), 4_000),
            (2_001, s(2), 4_000),
            (1_764_154_007_120, s(2), 1_764_154_008_000),
            (1_764_154_008_000, s(2), 1_764_154_010_000),
            (1_764_154_007_120, s(10), 1_764_154_010_000),
            (1_764_154_007_120, ms(300), 1_764_154_007_400),
            (1_764_154_007_120, ms(1), 1_764_154_007_121),
            (5, Duration::ZERO, 6),
            (-1, s(2), 0),
        ];
        for (started, interval, want) in table {
            let next = next_beat(started, interval);
            assert_eq!(next, want, "started {started}, interval {interval:?}");
            let step = interval.as_millis().max(1) as i64;
            assert!(next > started && next - started <= step, "{started} {interval:?} -> {next}");
        }
        // Two instances that started apart beat at the same instants from their second beat.
        let (a, b) = (1_764_154_007_120, 1_764_154_008_931);
        assert_eq!(next_beat(next_beat(a, s(2)), s(2)), next_beat(b, s(2)));
    }
}

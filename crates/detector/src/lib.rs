//! The fault detector and its live dashboard.
//!
//! The detector checks every instance the registry knows, plus the balancer and the
//! registry themselves, every `CHECK_INTERVAL_MS` and on `POST /api/check`; keeps a bounded
//! response-time history per target; raises an alert when a target goes from up to down
//! and a recovery notice on the way back (log, `GET /api/alerts`, the dashboard, and an
//! optional webhook). `GET /` is a dashboard fed live over a WebSocket (`/ws`).
//!
//! Where its knowledge comes from, each in its own background loop:
//! - `discovery`: one blocking watch over the registry (new and removed instances at once);
//! - `check`: the rounds of health checks, coalescing requests for a check;
//! - `orch`: orch's control API, when `ORCH_CONTROL_URL` is set (restart counts, and
//!   events such as a crash, pushed to the dashboard at once);
//! - `traffic`: the balancer's `/api/metrics` (requests per second, the distribution of
//!   requests across instances).
//!
//! All of it lands in one [`cluster::Cluster`], a plain value with no I/O, whose health
//! decisions come from the pure state machine in [`machine`]. Every change is published
//! on a bounded broadcast channel as a ready-made JSON message that the dashboard's
//! sockets (`dashboard`) forward; `api` serves the JSON endpoints, `webhook` delivers
//! alerts in the background. [`urls`] holds the URL helpers every loop uses (connect to
//! 127.0.0.1 for `localhost`, show without credentials), so no loop reaches into `cluster`
//! for them.

mod api;
pub mod autoscale;
pub mod check;
pub mod cluster;
mod dashboard;
mod discovery;
pub mod machine;
pub mod orch;
pub mod traffic;
pub mod urls;
pub mod webhook;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use kit::registry::ServiceRecord;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};

use crate::cluster::{Alert, AlertKind, Cluster, History, Key, Round};
use crate::orch::{OrchClient, OrchEvent, OrchInstance};
use crate::webhook::Webhook;

pub use dashboard::{Disconnect, Update, read_loop, write_loop};

/// Messages waiting for the dashboard's sockets, at most; a socket further behind is sent
/// a fresh snapshot instead.
pub const UPDATES_CAPACITY: usize = 64;
/// Dashboard sockets served at once, at most.
pub const MAX_CLIENTS: usize = 256;
/// Alerts and events sent in a dashboard snapshot.
const SNAPSHOT_FEED: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `CHECK_INTERVAL_MS` (default 5000): time between rounds of checks.
    pub check_interval: Duration,
    /// `CHECK_TIMEOUT_MS` (default 2000): a check without an answer by then fails.
    pub check_timeout: Duration,
    /// `HISTORY_SIZE` (default 120): response times kept per target.
    pub history_size: usize,
    /// `LOAD_BALANCER_URL` (default `http://localhost:3000`).
    pub balancer_url: String,
    /// `METRICS_INTERVAL_MS` (default 1000): how often the balancer's metrics are read.
    pub metrics_interval: Duration,
    /// Whether `METRICS_INTERVAL_MS` was set: then it is the exact period, never calmed.
    pub metrics_interval_fixed: bool,
    /// `ORCH_CONTROL_URL`: orch's control API, for restart counts and events.
    pub orch_control_url: Option<String>,
    /// `ALERT_WEBHOOK_URL` and its retry settings.
    pub webhook: Option<webhook::Settings>,
    /// `WS_SEND_TIMEOUT_MS` (default 10000): a dashboard socket that cannot take a message
    /// for this long is closed.
    pub ws_send_timeout: Duration,
    /// `DATA_DIR/verify/timeline.html`: the timeline `orch verify` leaves of its last run in
    /// the cluster's data dir, served at `/verify/timeline.html` and linked from the page.
    pub verify_timeline: Option<std::path::PathBuf>,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        let kit = kit::Config::from_vars(vars, "detector")?;
        let webhook = match vars.get("ALERT_WEBHOOK_URL") {
            None => None,
            Some(url) => Some(webhook::Settings {
                url: http_url("ALERT_WEBHOOK_URL", &url)?,
                attempts: vars.number("ALERT_WEBHOOK_ATTEMPTS", 5, 1, 100)? as u32,
                backoff: vars.millis("ALERT_WEBHOOK_BACKOFF_MS", 500, 600_000)?,
            }),
        };
        Ok(Self {
            check_interval: vars.millis("CHECK_INTERVAL_MS", 5_000, 3_600_000)?,
            check_timeout: vars.millis("CHECK_TIMEOUT_MS", 2_000, 600_000)?,
            history_size: vars.number("HISTORY_SIZE", 120, 1, 10_000)? as usize,
            balancer_url: http_url("LOAD_BALANCER_URL", &vars.string("LOAD_BALANCER_URL", "http://localhost:3000"))?,
            metrics_interval: vars.millis("METRICS_INTERVAL_MS", 1_000, 3_600_000)?,
            metrics_interval_fixed: vars.get("METRICS_INTERVAL_MS").is_some(),
            orch_control_url: vars.get("ORCH_CONTROL_URL").map(|u| http_url("ORCH_CONTROL_URL", &u)).transpose()?,
            webhook,
            ws_send_timeout: vars.millis("WS_SEND_TIMEOUT_MS", 10_000, 600_000)?,
            verify_timeline: vars.get("DATA_DIR").map(|d| std::path::Path::new(&d).join("verify/timeline.html")),
            kit,
        })
    }
}

/// An `http://` URL without a trailing slash (this build has no TLS).
fn http_url(name: &str, raw: &str) -> Result<String, kit::ConfigError> {
    let raw = raw.trim();
    match reqwest::Url::parse(raw) {
        Ok(url) if url.scheme() == "http" && url.host_str().is_some() => Ok(raw.trim_end_matches('/').to_owned()),
        _ => Err(kit::ConfigError::new(name, raw, "an http:// URL (https is not supported: this build has no TLS)")),
    }
}

/// Everything the handlers and the background loops share.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    config: Config,
    cluster: Mutex<Published>,
    updates: broadcast::Sender<Update>,
    rounds: check::Rounds,
    http: reqwest::Client,
    webhook: Option<Webhook>,
    orch_poll: Notify,
    traffic_poll: Notify,
    clients: AtomicUsize,
    shutdown: kit::Shutdown,
}

/// The cluster and the number of the last message published about it, changed together.
struct Published {
    cluster: Cluster,
    seq: u64,
}

/// A message to the dashboard (see `assets/app.js` for the reader).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum Message<'a> {
    #[serde(rename_all = "camelCase")]
    Snapshot {
        seq: u64,
        config: serde_json::Value,
        status: cluster::StatusView<'a>,
        alerts: Vec<&'a Alert>,
        alerts_total: u64,
        events: Vec<&'a OrchEvent>,
        traffic: &'a traffic::Traffic,
        autoscale: &'a autoscale::Autoscaling,
    },
    Status {
        seq: u64,
        status: cluster::StatusView<'a>,
    },
    #[serde(rename_all = "camelCase")]
    Alert {
        seq: u64,
        alert: &'a Alert,
        alerts_total: u64,
    },
    Event {
        seq: u64,
        event: &'a OrchEvent,
    },
    Traffic {
        seq: u64,
        traffic: &'a traffic::Traffic,
    },
    Autoscale {
        seq: u64,
        autoscale: &'a autoscale::Autoscaling,
    },
}

impl AppState {
    pub fn new(config: Config, shutdown: kit::Shutdown) -> Self {
        let http = kit::http::client_builder()
            .connect_timeout(config.check_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        let webhook = config.webhook.clone().map(|settings| Webhook::spawn(settings, http.clone(), &shutdown));
        let cluster = Cluster::new(config.history_size, &config.balancer_url, &config.kit.registry_url);
        let (updates, _) = broadcast::channel(UPDATES_CAPACITY);
        Self(Arc::new(Shared {
            config,
            cluster: Mutex::new(Published { cluster, seq: 0 }),
            updates,
            rounds: check::Rounds::default(),
            http,
            webhook,
            orch_poll: Notify::new(),
            traffic_poll: Notify::new(),
            clients: AtomicUsize::new(0),
            shutdown,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.0.http
    }

    pub fn rounds(&self) -> &check::Rounds {
        &self.0.rounds
    }

    /// Dashboard sockets open now.
    pub fn dashboard_clients(&self) -> usize {
        self.0.clients.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.0.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the cluster.
    pub fn read<T>(&self, f: impl FnOnce(&Cluster) -> T) -> T {
        f(&self.lock().cluster)
    }

    /// Serialises `message` (numbered `seq`) and broadcasts it. Called with the lock held,
    /// so messages go out in the order of their numbers.
    fn broadcast(&self, seq: u64, message: &Message<'_>) {
        match serde_json::to_string(message) {
            // No receivers is fine: nobody is looking at the dashboard.
            Ok(text) => drop(self.0.updates.send(Update { seq, text: Utf8Bytes::from(text) })),
            Err(e) => tracing::error!(error = %e, "cannot serialise a dashboard message"),
        }
    }

    /// Publishes `alerts`: the log, the dashboard, the webhook.
    fn raise(&self, published: &mut Published, alerts: Vec<Alert>) {
        for alert in alerts {
            match alert.kind {
                AlertKind::Down | AlertKind::Rollout => {
                    tracing::warn!(service_id = %alert.service_id, alert = alert.id, "{}", alert.message)
                }
                AlertKind::Recovered => {
                    tracing::info!(service_id = %alert.service_id, alert = alert.id, "{}", alert.message)
                }
            }
            published.seq += 1;
            let total = published.cluster.alerts_total();
            self.broadcast(published.seq, &Message::Alert { seq: published.seq, alert: &alert, alerts_total: total });
            if let Some(webhook) = &self.0.webhook {
                webhook.send(alert);
            }
        }
    }

    fn publish_status(&self, published: &mut Published) {
        published.seq += 1;
        let seq = published.seq;
        self.broadcast(seq, &Message::Status { seq, status: published.cluster.status(History::Last) });
    }

    /// The full picture for a dashboard that just connected (or fell behind).
    pub fn snapshot(&self) -> Update {
        let published = self.lock();
        let cluster = &published.cluster;
        let config = &self.0.config;
        let message = Message::Snapshot {
            seq: published.seq,
            config: json!({
                "checkIntervalMs": config.check_interval.as_millis() as u64,
                "checkTimeoutMs": config.check_timeout.as_millis() as u64,
                "historySize": config.history_size,
                "orch": config.orch_control_url.is_some(),
                "webhook": config.webhook.is_some(),
            }),
            status: cluster.status(History::All),
            alerts: cluster.alerts().take(SNAPSHOT_FEED).collect(),
            alerts_total: cluster.alerts_total(),
            events: cluster.events().take(SNAPSHOT_FEED).collect(),
            traffic: &cluster.traffic,
            autoscale: &cluster.autoscaling,
        };
        let text = serde_json::to_string(&message).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a dashboard snapshot");
            String::from(r#"{"type":"error"}"#)
        });
        Update { seq: published.seq, text: Utf8Bytes::from(text) }
    }

    /// The dashboard's live updates from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.0.updates.subscribe()
    }

    // What the loops learnt.

    fn begin_round(&self) -> Round {
        self.lock().cluster.round()
    }

    fn record_checks(&self, epoch: u64, results: Vec<(Key, machine::Millis, cluster::CheckOutcome)>) {
        let mut published = self.lock();
        let alerts: Vec<Alert> = results
            .into_iter()
            .filter_map(|(key, at, outcome)| published.cluster.record(&key, epoch, at, outcome))
            .collect();
        self.raise(&mut published, alerts);
        self.publish_status(&mut published);
    }

    fn sync_registry(&self, records: &[ServiceRecord]) {
        let mut published = self.lock();
        let (changed, alerts) = published.cluster.sync_registry(records, kit::time::unix_millis());
        let news = changed || !alerts.is_empty();
        self.raise(&mut published, alerts);
        if news {
            self.publish_status(&mut published);
        }
        drop(published);
        if changed {
            self.request_round();
        }
    }

    fn sync_orch(&self, instances: &[OrchInstance]) {
        let mut published = self.lock();
        let (changed, alerts) = published.cluster.sync_orch(instances, kit::time::unix_millis());
        self.raise(&mut published, alerts);
        if changed {
            self.publish_status(&mut published);
        }
    }

    fn orch_event(&self, event: OrchEvent, live: bool) {
        let mut published = self.lock();
        published.seq += 1;
        let seq = published.seq;
        self.broadcast(seq, &Message::Event { seq, event: &event });
        let alerts = published.cluster.orch_event(event, live, kit::time::unix_millis());
        if !alerts.is_empty() {
            self.raise(&mut published, alerts);
            self.publish_status(&mut published);
        }
    }

    fn sync_autoscale(&self, services: &[kit::orch_api::ServiceView]) {
        let mut published = self.lock();
        if published.cluster.autoscaling.update(kit::time::unix_millis(), services) {
            published.seq += 1;
            let seq = published.seq;
            self.broadcast(seq, &Message::Autoscale { seq, autoscale: &published.cluster.autoscaling });
        }
    }

    fn update_traffic(&self, metrics: Option<traffic::Metrics>) {
        let mut published = self.lock();
        let news = match metrics {
            Some(metrics) => {
                let point = self.0.config.metrics_interval.as_millis() as machine::Millis;
                published.cluster.traffic.update(kit::time::unix_millis(), metrics, point);
                true
            }
            None => published.cluster.traffic.unavailable(),
        };
        if news {
            published.seq += 1;
            let seq = published.seq;
            self.broadcast(seq, &Message::Traffic { seq, traffic: &published.cluster.traffic });
        }
    }

    /// Asks for a round of checks soon (coalesced with any other request).
    pub fn request_round(&self) -> u64 {
        self.0.rounds.request()
    }

    fn wake_orch_poll(&self) {
        self.0.orch_poll.notify_one();
    }

    async fn orch_poll_woken(&self) {
        self.0.orch_poll.notified().await
    }

    /// Asks the traffic poll to read the balancer's metrics now (a dashboard connected).
    fn wake_traffic_poll(&self) {
        self.0.traffic_poll.notify_one();
    }

    async fn traffic_poll_woken(&self) {
        self.0.traffic_poll.notified().await
    }

    /// Counts a dashboard socket for as long as the guard lives; `None` when full.
    fn client_slot(&self) -> Option<ClientSlot> {
        let taken = self.0.clients.fetch_add(1, Ordering::SeqCst);
        let slot = ClientSlot(self.clone());
        (taken < MAX_CLIENTS).then_some(slot)
    }
}

struct ClientSlot(AppState);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.0.clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The detector's routes, with JSON errors, the body limit and the loopback guard.
pub fn router(state: AppState) -> axum::Router {
    let kit = &state.config().kit;
    let (limit, guard) = (kit.body_limit, kit::guard::Guard::new(kit.bind_addr, &kit.allowed_hosts));
    // Ready once started: the detector must not wait for the balancer or anything else.
    let health = kit::health::Health::new(&kit.service_name);
    let routes = api::router(state.clone()).merge(dashboard::router(state));
    let app = kit::trace::layer(guard.clone().wrap(kit::http::finish(routes, limit)));
    health.beside_guarded(app, guard)
}

/// Starts the background loops on `state` and serves it on `listener` until shutdown.
pub async fn run(state: AppState, listener: TcpListener) -> Result<(), Error> {
    let shutdown = state.0.shutdown.clone();
    let config = state.config();
    kit::registry::spawn_maintain(&config.kit, listener.local_addr()?.port(), &shutdown);
    shutdown.spawn(discovery::run(state.clone(), shutdown.clone()));
    shutdown.spawn(check::run(state.clone(), shutdown.clone()));
    shutdown.spawn(traffic::poll(state.clone(), shutdown.clone()));
    if let Some(url) = &config.orch_control_url {
        let client = OrchClient::new(state.http().clone(), url);
        shutdown.spawn(orch::follow_events(state.clone(), client.clone(), shutdown.clone()));
        shutdown.spawn(orch::poll_instances(state.clone(), client, shutdown.clone()));
    }
    let (grace, limits) = (config.kit.shutdown_grace, config.kit.limits.clone());
    kit::http::serve(listener, router(state.clone()), shutdown, limits, grace).await?;
    Ok(())
}

/// Serves the detector on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    run(AppState::new(config, shutdown), listener).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let config = Config::from_vars(&kit::Vars::from_pairs([("PORT", "3004")])).unwrap();
        assert_eq!(config.check_interval, Duration::from_secs(5));
        assert_eq!(config.check_timeout, Duration::from_secs(2));
        assert_eq!(config.history_size, 120);
        assert_eq!(config.balancer_url, "http://localhost:3000");
        assert_eq!(config.kit.service_name, "detector-service");
        assert!(config.orch_control_url.is_none() && config.webhook.is_none());

        let vars = kit::Vars::from_pairs([
            ("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook/"),
            ("ALERT_WEBHOOK_ATTEMPTS", "3"),
            ("ORCH_CONTROL_URL", "http://127.0.0.1:3006"),
        ]);
        let config = Config::from_vars(&vars).unwrap();
        let webhook = config.webhook.unwrap();
        assert_eq!((webhook.url.as_str(), webhook.attempts), ("http://127.0.0.1:9/hook", 3));
        assert_eq!(config.orch_control_url.as_deref(), Some("http://127.0.0.1:3006"));

        let vars = kit::Vars::from_pairs([("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook?token=s3cret")]);
        let shown = format!("{:?}", Config::from_vars(&vars).unwrap());
        assert!(!shown.contains("s3cret"), "the webhook URL leaks into Debug: {shown}");

        let err =
            Config::from_vars(&kit::Vars::from_pairs([("ALERT_WEBHOOK_URL", "https://example.com/x")])).unwrap_err();
        assert!(err.to_string().contains("no TLS"), "{err}");
        let err = Config::from_vars(&kit::Vars::from_pairs([("HISTORY_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("HISTORY_SIZE"), "{err}");
        let err = Config::from_vars(&kit::Vars::from_pairs([("LOAD_BALANCER_URL", "localhost:3000")])).unwrap_err();
        assert!(err.to_string().contains("LOAD_BALANCER_URL"), "{err}");
    }
}

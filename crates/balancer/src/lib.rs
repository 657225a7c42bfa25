//! The load balancer: every client request of the cluster crosses it.
//!
//! It routes by path prefix (`ROUTES`, longest prefix wins, path kept) to a service's pool
//! of instances, chosen round-robin or by least requests (power of two choices) among the
//! healthy ones; it retries where that is safe, each attempt on another instance, and
//! streams bodies both ways. It adds `X-Request-Id` (kept when the client sent one) and
//! `X-Upstream-Instance` to every proxied answer, continues the client's W3C `traceparent`
//! (or begins a trace) upstream and back with a span of its own (`proxy::trace`), tells
//! backends the client's address (`X-Forwarded-For`, `X-Real-IP`); its own errors are JSON
//! `{"error": ...}`.
//!
//! Modules:
//! - [`config`]: settings from the environment, routes.
//! - [`backend`]: instances, the backend set swapped atomically, instance selection.
//! - [`discovery`]: the registry's blocking watch, static fallback from `*_PORTS`.
//! - [`checks`]: active health checks of `/health`; readmission after ejection.
//! - [`proxy`]: the request path in phases (theory of operation there), with [`error`]
//!   saying which failures may be retried, [`body`] streaming request bodies, [`pool`] the
//!   keep-alive connections to backends, and [`response`] streaming answers back.
//! - `worker`: what one worker thread's requests share (its handle on the backend set,
//!   the in-flight guard).
//! - [`stats`]: lock-free counters and latency histograms; [`admin`] serves them as
//!   `/status`, `/api/metrics`, `/metrics`, with fault injection ([`faults`]).
//! - `fast`: the lean HTTP/1 path (httparse heads, plain pooled connections) that serves a
//!   connection's common requests before hyper takes over what it does not.
//! - `server`: the HTTP/1 accept loop; the balancer's own endpoints are matched before the
//!   proxy routes. [`client`] watches each client connection: head and idle deadlines,
//!   JSON instead of hyper's own empty error answers.

pub mod admin;
pub mod backend;
pub mod body;
pub mod checks;
pub mod client;
pub mod config;
pub mod discovery;
pub mod error;
mod fast;
pub mod faults;
pub mod pool;
pub mod proxy;
pub mod response;
mod server;
pub mod stats;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

pub use crate::config::{Config, Routes, Strategy};
pub use crate::error::Error;

use crate::backend::{BackendSet, Instance, Service};
use crate::faults::Faults;

/// What the request path, discovery, checks and the admin endpoints share.
pub struct AppState {
    pub config: Config,
    /// The routed services, sorted by name; a backend set's pools are indexed the same way.
    pub services: Vec<Arc<Service>>,
    /// For each route (as in `config.routes.entries()`), its service's index.
    pub route_service: Vec<usize>,
    pub backends: ArcSwap<BackendSet>,
    /// Moves after every change of `backends`: workers keep their own copy until it moves.
    pub generation: AtomicU64,
    /// Instances taken out of the set that still had requests in flight: `/api/metrics`
    /// keeps showing them until those finish (orch waits for that before stopping one).
    pub retired: Mutex<Vec<Arc<Instance>>>,
    pub faults: Faults,
    /// The first discovery (dynamic or static) has finished.
    pub ready: AtomicBool,
    pub started: Instant,
}

impl AppState {
    /// The instances of service `index` worth showing in metrics: the current ones, and
    /// retired ones (by id not current) while requests to them are in flight.
    pub fn instances_of(&self, index: usize) -> Vec<Arc<Instance>> {
        let mut instances = self.backends.load().pools[index].clone();
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|i| i.stats.in_flight() > 0);
        let name = &self.services[index].name;
        for instance in retired.iter().filter(|r| &r.service == name) {
            if !instances.iter().any(|i| i.id == instance.id) {
                instances.push(instance.clone());
            }
        }
        instances
    }

    pub fn new(config: Config) -> Self {
        let names = config.routes.services();
        let services: Vec<Arc<Service>> = names.iter().map(|n| Arc::new(Service::new(n, config.workers))).collect();
        let route_service = config
            .routes
            .entries()
            .iter()
            .map(|(_, s)| names.iter().position(|n| n == s).expect("every route's service is listed"))
            .collect();
        Self {
            backends: ArcSwap::from_pointee(BackendSet::empty(services.len())),
            generation: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            services,
            route_service,
            faults: Faults::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            config,
        }
    }
}

/// Serves the balancer on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    let grace = config.kit.shutdown_grace;
    let port = listener.local_addr()?.port();
    kit::registry::spawn_maintain(&config.kit, port, &shutdown);
    tracing::info!(routes = ?config.routes.entries(), strategy = config.strategy.as_str(),
        dynamic = config.dynamic_discovery, "balancer starting");
    let state = Arc::new(AppState::new(config));
    shutdown.spawn(discovery::run(state.clone(), shutdown.clone()));
    shutdown.spawn(checks::run(state.clone(), shutdown.clone()));
    first_discovery(&state, FIRST_DISCOVERY_WAIT, &shutdown).await;
    server::run(listener, state, shutdown, grace).await?;
    Ok(())
}

/// How long connections wait for the first discovery before they are served anyway.
const FIRST_DISCOVERY_WAIT: Duration = Duration::from_secs(2);

/// Waits, at most `limit`, until the first discovery has filled the pools. Meanwhile
/// connections wait in the listen backlog: a balancer restarted on a socket that outlived
/// it (under orch) delays the requests that queued instead of answering them 503 from
/// empty pools. The first discovery takes milliseconds when the registry answers, and
/// falls back to static ports at once when it refuses.
async fn first_discovery(state: &AppState, limit: Duration, shutdown: &kit::Shutdown) {
    let started = Instant::now();
    while !state.ready.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < limit {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
}

//! The service registry: which instances exist, where they listen, and whether they are
//! alive.
//!
//! Instances register themselves (`POST /api/registry/register`) and heartbeat; a record
//! whose heartbeats stop is marked unhealthy after `STALE_TIMEOUT_MS` and removed after
//! `REMOVE_TIMEOUT_MS`. Every change to the set (not a mere heartbeat) moves the change
//! index, and a list request that passes `?index=N&wait=30s` blocks until the index is no
//! longer `N`: that is how the balancer and the detector learn of changes in milliseconds.
//!
//! State lives in memory. A restarted registry starts empty and refills within a heartbeat
//! (clients register again on a 404); its index starts at the current Unix time in
//! milliseconds, so it never goes back to a value a watcher has already seen.
//!
//! Modules: [`store`] is the pure state machine (tested without HTTP), `api` the routes,
//! `sweep` the background loop that expires silent records.

mod api;
pub mod metrics;
mod store;
mod sweep;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use store::{HeartbeatError, Store};

/// At most this many records; registrations beyond it are refused.
pub const MAX_RECORDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `STALE_TIMEOUT_MS` (default 30000): no heartbeat for this long marks a record unhealthy.
    pub stale_after: Duration,
    /// `REMOVE_TIMEOUT_MS` (default twice the stale timeout): no heartbeat for this long
    /// removes the record.
    pub remove_after: Duration,
    /// `WATCH_MAX_WAIT_MS` (default 300000): the longest a blocking query may wait.
    pub max_wait: Duration,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        let kit = kit::Config::from_vars(vars, "registry")?;
        let stale_after = vars.millis("STALE_TIMEOUT_MS", 30_000, 86_400_000)?;
        let default_remove = (stale_after * 2).as_millis() as u64;
        let remove_after = vars.millis("REMOVE_TIMEOUT_MS", default_remove, 172_800_000)?;
        if remove_after < stale_after {
            return Err(kit::ConfigError::new(
                "REMOVE_TIMEOUT_MS",
                &remove_after.as_millis().to_string(),
                format!("at least STALE_TIMEOUT_MS ({})", stale_after.as_millis()),
            ));
        }
        let max_wait = vars.millis("WATCH_MAX_WAIT_MS", 300_000, 3_600_000)?;
        Ok(Self { kit, stale_after, remove_after, max_wait })
    }
}

/// Everything the handlers and the sweep loop share.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    store: Arc<Mutex<Store>>,
    /// The change index, published after every change to the set.
    changes: watch::Sender<u64>,
    shutdown: kit::Shutdown,
}

impl AppState {
    pub fn new(config: Config, shutdown: kit::Shutdown) -> Self {
        let store = Store::new(kit::time::unix_millis() as u64);
        let (changes, _) = watch::channel(store.index());
        Self { config: Arc::new(config), store: Arc::new(Mutex::new(store)), changes, shutdown }
    }

    /// Runs `f` on the store and publishes the index if it moved.
    fn update<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let before = store.index();
        let out = f(&mut store);
        let after = store.index();
        drop(store);
        if after != before {
            self.changes.send_replace(after);
        }
        out
    }

    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.store.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The registry's routes, with JSON errors, the body limit and the loopback guard.
pub fn router(state: AppState) -> axum::Router {
    let kit = &state.config.kit;
    let (limit, guard) = (kit.body_limit, kit::guard::Guard::new(kit.bind_addr, &kit.allowed_hosts));
    let health = kit::health::Health::new(&kit.service_name);
    let records = axum::Extension(kit::metrics::Scoped::new(metrics::Records(state.store.clone())));
    let app = kit::trace::layer(guard.clone().wrap(kit::http::finish(api::router(state), limit).layer(records)));
    health.beside_guarded(app, guard)
}

/// Serves the registry on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    let (grace, limits) = (config.kit.shutdown_grace, config.kit.limits.clone());
    let state = AppState::new(config, shutdown.clone());
    shutdown.spawn(sweep::run(state.clone(), shutdown.clone()));
    kit::http::serve(listener, router(state), shutdown, limits, grace).await?;
    Ok(())
}

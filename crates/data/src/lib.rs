//! The data service: a versioned key-value store over HTTP.
//!
//! Items are `{key, value (any JSON), metadata (object), version, createdAt, updatedAt}`.
//! `POST /api/data` creates, `GET /api/data/:key` reads, `GET /api/data?prefix=&limit=&cursor=`
//! lists a page in key order, `PUT /api/data/:key` updates (version + 1) and `DELETE
//! /api/data/:key` deletes. Writes may say which version they expect (`If-Match` or
//! `expectedVersion`): a mismatch is 412, so read-modify-write clients never lose an update.
//!
//! Theory of operation: every instance opens the same SQLite file (`data.sqlite` in the
//! data dir, WAL). Each write is one `BEGIN IMMEDIATE` transaction ([`kit::db::begin_write`])
//! that takes the database's write lock first, then checks the `Idempotency-Key` record,
//! reads the item, checks the expected version, writes, and stores its answer under the
//! idempotency key, and commits all of it at once. Writers from all processes are thereby
//! serialised; readers never wait (WAL). A writer waiting for the lock waits up to the busy
//! timeout instead of failing with "database is locked".
//!
//! Values and metadata are kept as the JSON text the client sent (checked, never parsed into
//! a tree), so they come back exactly as written; list pages are bounded in bytes as well as
//! in items (`DATA_PAGE_MAX_BYTES`), so no request costs memory in proportion to what the
//! client asked for.
//!
//! Modules: `api` (routes, parsing, the write path), `store` (the `items` queries, pages and
//! the changes), `json` (the checks on value and metadata texts), `key` (key rules, cursors,
//! prefix ranges), `work` (simulated work).

mod api;
mod json;
mod key;
pub mod metrics;
mod store;
mod work;

use std::sync::Arc;
use std::time::Duration;

use kit::db::{Db, Migration, Migrations};
use kit::http::ApiError;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

pub use json::MAX_DEPTH;
pub use key::MAX_KEY_BYTES;

/// The schema, in order, per dialect; embedded in the binary. Names carry the service, so
/// auth, data and compute can share one SQLite file.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        Migration { version: 1, name: "data-items", sql: include_str!("../migrations/0001_items.sql") },
        Migration { version: 2, name: "data-idempotency", sql: kit::idempotency::MIGRATION_SQL },
        Migration { version: 3, name: "data-idempotency-records", sql: kit::idempotency::RECORDS_MIGRATION_SQL },
    ],
    postgres: &[
        Migration { version: 1, name: "data-items", sql: include_str!("../migrations/postgres/0001_items.sql") },
        Migration { version: 2, name: "data-idempotency", sql: kit::idempotency::PG_MIGRATION_SQL },
    ],
};

/// How often idempotency records older than their retention are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Why the service could not start or stopped serving.
pub use kit::ServiceError as Error;

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `DATA_MAX_VALUE_BYTES` (default 262144): the largest value, as compact JSON; 413 beyond.
    pub max_value_bytes: usize,
    /// `DATA_MAX_METADATA_BYTES` (default 16384): the largest metadata object, as compact
    /// JSON; 413 beyond.
    pub max_metadata_bytes: usize,
    /// `DATA_PAGE_MAX_BYTES` (default 1 MiB): the most item JSON a list page holds (a page
    /// holds at least one item, however large); a page cut short has a `nextCursor`.
    pub page_max_bytes: usize,
    /// `DATA_LIST_DEFAULT_LIMIT` (default 100): page size when `limit` is not given.
    pub list_default_limit: u32,
    /// `DATA_LIST_MAX_LIMIT` (default 1000): the largest `limit` accepted (400 beyond).
    pub list_max_limit: u32,
    /// `WORK_DELAY_MS` (default 500) and `WORK_DELAY_MAX_MS`: the simulated work.
    pub work: kit::work::SimulatedWork,
    /// `IDEMPOTENCY_MAX_KEYS_PER_USER` / `IDEMPOTENCY_MAX_BYTES_PER_USER`: the stored answers
    /// each caller keeps, the oldest evicted first.
    pub idempotency: kit::idempotency::Limits,
    /// TEST ONLY, debug builds only: `DATA_TEST_BREAK_VERSION_CHECK=true` makes writes ignore
    /// `If-Match`/`expectedVersion`, a deliberately broken version check that `orch verify`
    /// must catch. Release builds never read it.
    pub break_version_check: bool,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        let kit = kit::Config::from_vars(vars, "data")?;
        let list_max_limit = vars.number("DATA_LIST_MAX_LIMIT", 1000, 1, 100_000)? as u32;
        Ok(Self {
            kit,
            max_value_bytes: vars.number("DATA_MAX_VALUE_BYTES", 256 << 10, 1, 1 << 30)? as usize,
            max_metadata_bytes: vars.number("DATA_MAX_METADATA_BYTES", 16 << 10, 2, 1 << 30)? as usize,
            page_max_bytes: vars.number("DATA_PAGE_MAX_BYTES", 1 << 20, 1, 1 << 30)? as usize,
            list_default_limit: vars.number(
                "DATA_LIST_DEFAULT_LIMIT",
                100.min(u64::from(list_max_limit)),
                1,
                u64::from(list_max_limit),
            )? as u32,
            list_max_limit,
            work: kit::work::SimulatedWork::from_vars(vars, 500)?,
            idempotency: kit::idempotency::Limits::from_vars(vars)?,
            break_version_check: cfg!(debug_assertions) && vars.flag("DATA_TEST_BREAK_VERSION_CHECK", false)?,
        })
    }
}

/// Everything the handlers and background loops share: one allocation, so that the clones a
/// request's extractors and layers take are one reference count each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    config: Arc<Config>,
    pool: Db,
    /// The token keys, when callers must be authenticated (`AUTH_REQUIRED`).
    keys: Option<Arc<kit::jwt::Keys>>,
    health: kit::health::Health,
}

impl AppState {
    /// Opens the database (migrating it) and, when auth is required, loads the JWT keys.
    pub async fn open(config: Config) -> Result<Self, Error> {
        let pool = kit::db::open(&config.kit, "data.sqlite", &MIGRATIONS).await?;
        let keys = if config.kit.auth_required { Some(Arc::new(kit::jwt::Keys::load(&config.kit)?)) } else { None };
        let ping = pool.clone();
        let health = kit::health::Health::new(&config.kit.service_name).with_check(move || {
            let pool = ping.clone();
            async move { kit::db::ping(&pool).await }
        });
        Ok(Self(Arc::new(Shared { config: Arc::new(config), pool, keys, health })))
    }

    pub fn db(&self) -> &Db {
        &self.pool
    }

    /// 413 when `value` is larger than the limit, 400 when it nests too deeply or holds a lone
    /// surrogate.
    fn check_value(&self, value: &RawValue) -> Result<(), ApiError> {
        check_json("value", value, self.config.max_value_bytes)
    }

    /// The metadata object, if one is given (`null` counts as not given).
    fn metadata(&self, metadata: Option<Box<RawValue>>) -> Result<Option<Box<RawValue>>, ApiError> {
        let Some(metadata) = metadata else { return Ok(None) };
        if !json::is_object(&metadata) {
            return Err(ApiError::bad_request("metadata must be a JSON object"));
        }
        check_json("metadata", &metadata, self.config.max_metadata_bytes)?;
        Ok(Some(metadata))
    }
}

/// 413 when `text` is larger than `max` bytes as compact JSON; 400 when it nests deeper than
/// [`MAX_DEPTH`] or escapes a lone surrogate.
fn check_json(what: &str, text: &RawValue, max: usize) -> Result<(), ApiError> {
    let shape = json::Shape::of(text.get());
    if shape.compact_bytes > max {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is {} bytes as JSON, larger than the limit of {max} bytes", shape.compact_bytes),
        ));
    }
    if shape.depth > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "{what} nests {} levels deep, deeper than the limit of {MAX_DEPTH}",
            shape.depth
        )));
    }
    if shape.lone_surrogate {
        return Err(ApiError::bad_request(format!(
            "{what} has a \\u escape of half a surrogate pair, which is no Unicode character"
        )));
    }
    Ok(())
}

/// The service's routes, with health, JSON errors and the body limit.
pub fn router(state: AppState) -> axum::Router {
    let limit = state.config.kit.body_limit;
    let health = state.health.clone();
    metrics::get(); // its families are in /metrics from the first scrape
    health.beside(kit::http::finish_traced(api::router(state), limit))
}

/// Serves data on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    let port = listener.local_addr()?.port();
    let (grace, limits) = (config.kit.shutdown_grace, config.kit.limits.clone());
    let state = AppState::open(config).await?;
    kit::registry::spawn_maintain(&state.config.kit, port, &shutdown);
    shutdown.spawn(purge(state.pool.clone(), shutdown.clone()));
    let pool = state.pool.clone();
    kit::http::serve(listener, router(state), shutdown, limits, grace).await?;
    pool.close().await;
    Ok(())
}

/// Deletes expired idempotency records every hour, until shutdown.
async fn purge(pool: Db, shutdown: kit::Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        match kit::idempotency::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}

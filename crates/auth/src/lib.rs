//! The auth service: accounts, passwords and tokens.
//!
//! `POST /api/auth/register` creates an account (argon2id password hash), `POST
//! /api/auth/login` exchanges a username or email and a password for an HS256 JWT, `GET
//! /api/auth/verify` checks a token and `GET /api/auth/profile` returns its user. `signup` and
//! `signin` are the original system's names for register and login.
//!
//! Every instance shares one SQLite file (`auth.sqlite` in the data dir) and one JWT secret
//! (`JWT_SECRET` or `DATA_DIR/jwt-secret`), so a user registered on one instance logs in on
//! any other, and a token from any instance verifies everywhere, in data and compute too.
//!
//! Modules:
//! - `api`: the routes and their request/response shapes.
//! - `account`: input validation (username, email, password) and the `users` queries.
//! - `password`: argon2id hashing off the async runtime, behind a semaphore.
//! - `throttle`: failed logins per (account, client) and per account in the database, with
//!   doubling delays (429 and `Retry-After`), and its purge loop.
//! - `client`: the client address a login is throttled by (`X-Forwarded-For` from loopback
//!   proxies only).
//! - `work`: the simulated-work endpoints of the original load test.

mod account;
mod api;
mod client;
pub mod metrics;
mod password;
mod throttle;
mod work;

use std::sync::Arc;
use std::time::Duration;

use kit::db::{Db, Migration, Migrations};
use tokio::net::TcpListener;

pub use account::{validate_email, validate_password, validate_username};
pub use password::{Hasher, Slot};
pub use throttle::{Clock, Policy};

/// The schema, in order, per dialect; embedded in the binary. Names carry the service, so
/// auth, data and compute can share one SQLite file.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        Migration { version: 1, name: "auth-users", sql: include_str!("../migrations/0001_users.sql") },
        Migration {
            version: 2,
            name: "auth-login-throttle",
            sql: include_str!("../migrations/0002_login_throttle.sql"),
        },
    ],
    postgres: &[Migration {
        version: 1,
        name: "auth-users",
        sql: include_str!("../migrations/postgres/0001_users.sql"),
    }],
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("JWT keys: {0}")]
    Jwt(#[from] kit::jwt::JwtError),
    #[error("password hashing: {0}")]
    Hashing(String),
}

/// The argon2id cost parameters (`ARGON2_MEMORY_KIB`, `ARGON2_ITERATIONS`, `ARGON2_PARALLELISM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `PASSWORD_MIN_LENGTH` (default 6, so the original walkthrough's `pass123` works).
    pub password_min_length: usize,
    /// `JWT_TTL_SECONDS` (default 3600): how long a token is valid.
    pub jwt_ttl: Duration,
    /// `LOGIN_MAX_FAILURES` (5), `LOGIN_ACCOUNT_MAX_FAILURES` (100), `LOGIN_DELAY_MS` (1000),
    /// `LOGIN_DELAY_MAX_MS` (900000) and `LOGIN_WINDOW_MS` (900000): the login throttle
    /// (see `throttle`).
    pub login: Policy,
    pub argon2: Argon2Params,
    /// `HASH_CONCURRENCY` (default: the number of cores): argon2 runs at most this many at once.
    pub hash_concurrency: usize,
    /// `WORK_DELAY_MS` (default 800) and `WORK_DELAY_MAX_MS`: the simulated work.
    pub work: kit::work::SimulatedWork,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        let kit = kit::Config::from_vars(vars, "auth")?;
        let argon2 = Argon2Params {
            memory_kib: vars.number("ARGON2_MEMORY_KIB", 19_456, 64, 4 << 20)? as u32,
            iterations: vars.number("ARGON2_ITERATIONS", 2, 1, 100)? as u32,
            parallelism: vars.number("ARGON2_PARALLELISM", 1, 1, 64)? as u32,
        };
        if argon2.memory_kib < 8 * argon2.parallelism {
            return Err(kit::ConfigError::new(
                "ARGON2_MEMORY_KIB",
                &argon2.memory_kib.to_string(),
                format!("at least 8 × ARGON2_PARALLELISM ({})", 8 * argon2.parallelism),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        Ok(Self {
            kit,
            password_min_length: vars.number("PASSWORD_MIN_LENGTH", 6, 1, 128)? as usize,
            jwt_ttl: Duration::from_secs(vars.number("JWT_TTL_SECONDS", 3600, 1, 30 * 86_400)?),
            login: Policy {
                pair_failures: vars.number("LOGIN_MAX_FAILURES", 5, 1, 1_000_000)? as u32,
                account_failures: vars.number("LOGIN_ACCOUNT_MAX_FAILURES", 100, 1, 1_000_000)? as u32,
                first_delay: vars.millis("LOGIN_DELAY_MS", 1_000, 86_400_000)?,
                max_delay: vars.millis("LOGIN_DELAY_MAX_MS", 900_000, 30 * 86_400_000)?,
                forget_after: vars.millis("LOGIN_WINDOW_MS", 900_000, 30 * 86_400_000)?,
            },
            argon2,
            hash_concurrency: vars.number("HASH_CONCURRENCY", cores, 1, 1024)? as usize,
            work: kit::work::SimulatedWork::from_vars(vars, 800)?,
        })
    }
}

/// Everything the handlers and background loops share.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    pool: Db,
    keys: Arc<kit::jwt::Keys>,
    hasher: Arc<Hasher>,
    throttle: Arc<throttle::Throttle>,
    /// The listener is bound to a loopback address (see `client`).
    loopback_listener: bool,
}

impl AppState {
    /// Opens the database (migrating it), loads the JWT keys and prepares the hasher; the
    /// login throttle reads `clock`.
    pub async fn open(config: Config, clock: Clock) -> Result<Self, Error> {
        let pool = kit::db::open(&config.kit, "auth.sqlite", &MIGRATIONS).await?;
        let keys = kit::jwt::Keys::load(&config.kit)?;
        let hasher = Hasher::new(config.argon2, config.hash_concurrency).await?;
        let throttle = throttle::Throttle { policy: config.login, clock };
        Ok(Self {
            config: Arc::new(config),
            pool,
            keys: Arc::new(keys),
            hasher: Arc::new(hasher),
            throttle: Arc::new(throttle),
            loopback_listener: false,
        })
    }

    pub fn db(&self) -> &Db {
        &self.pool
    }
}

/// The service's routes, with health, JSON errors and the body limit.
pub fn router(state: AppState) -> axum::Router {
    let limit = state.config.kit.body_limit;
    let pool = state.pool.clone();
    let health = kit::health::Health::new(&state.config.kit.service_name).with_check(move || {
        let pool = pool.clone();
        async move { kit::db::ping(&pool).await }
    });
    let api_health = health.clone();
    let router = api::router(state.clone())
        .merge(work::router(state))
        .route("/api/auth/health", axum::routing::get(move || std::future::ready(api_health.health())));
    metrics::get(); // its families are in /metrics from the first scrape
    health.beside(kit::http::finish_traced(router, limit))
}

/// Serves auth on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    serve_with_clock(config, Clock::system(), listener, shutdown).await
}

/// [`serve`] with the login throttle on `clock` (a test's [`Clock::manual`]).
pub async fn serve_with_clock(
    config: Config,
    clock: Clock,
    listener: TcpListener,
    shutdown: kit::Shutdown,
) -> Result<(), Error> {
    let local = listener.local_addr()?;
    let (grace, limits) = (config.kit.shutdown_grace, config.kit.limits.clone());
    let mut state = AppState::open(config, clock).await?;
    state.loopback_listener = local.ip().is_loopback();
    kit::registry::spawn_maintain(&state.config.kit, local.port(), &shutdown);
    shutdown.spawn(throttle::run(state.clone(), shutdown.clone()));
    let pool = state.pool.clone();
    kit::http::serve(listener, router(state), shutdown, limits, grace).await?;
    pool.close().await;
    Ok(())
}

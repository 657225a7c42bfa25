//! The compute service: arithmetic on demand, and a durable job queue shared by every
//! compute instance.
//!
//! `POST /api/compute/direct` evaluates one of eleven operations and answers at once.
//! `POST /api/compute/job` queues the same operations (plus `sleep`) in the database all
//! compute instances share; any instance answers for any job, and the workers of every
//! instance take jobs from it with a lease, so a job survives the crash of the instance that
//! ran it. No broker: the original system's Bull-on-Redis queue lost jobs when Redis was
//! away.
//!
//! Modules:
//! - [`ops`]: the operations, their input shapes and bounds, and the arithmetic (pure);
//! - [`exec`]: runs an operation off the async runtime, within a time limit;
//! - [`queue`]: the job table: submit, claim with a lease, renew, complete, fail, cancel;
//! - `worker`: each instance's workers and the change detector that wakes them;
//! - `api`: the routes; `sweep`: purges old jobs and idempotency keys.
//!
//! With `AUTH_REQUIRED` (the default) every route under `/api/compute` needs a valid JWT,
//! except `/api/compute/health` and `/api/compute/compute-worker`.

mod api;
pub mod exec;
pub mod metrics;
pub mod ops;
pub mod queue;
mod sweep;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kit::db::{Migration, Migrations};
use kit::health::Health;
use kit::jwt::Keys;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::PRIORITY_RANGE;
pub use exec::{ExecError, Executor};
pub use queue::Queue;

/// The schema, in order, per dialect; embedded in the binary.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        Migration { version: 1, name: "jobs", sql: include_str!("../migrations/0001_jobs.sql") },
        Migration { version: 2, name: "idempotency keys", sql: kit::idempotency::MIGRATION_SQL },
        Migration { version: 3, name: "idempotency records", sql: kit::idempotency::RECORDS_MIGRATION_SQL },
        Migration { version: 4, name: "job tallies", sql: include_str!("../migrations/0004_tally.sql") },
        Migration {
            version: 5,
            name: "partial queue indexes",
            sql: include_str!("../migrations/0005_partial_indexes.sql"),
        },
    ],
    postgres: &[
        Migration { version: 1, name: "jobs", sql: include_str!("../migrations/postgres/0001_jobs.sql") },
        Migration { version: 2, name: "idempotency records", sql: kit::idempotency::PG_MIGRATION_SQL },
    ],
};

/// Why the service could not start or stopped serving.
pub use kit::ServiceError as Error;

#[derive(Clone, Debug)]
pub struct Config {
    pub kit: kit::Config,
    /// `COMPUTE_WORKERS` (default 16, 0 = this instance only answers the API): the jobs it runs
    /// at once (their computations share the `COMPUTE_THREADS`).
    pub workers: usize,
    /// `COMPUTE_THREADS` (default: the number of CPUs): operations computing at once.
    pub threads: usize,
    /// `COMPUTE_TIME_LIMIT_MS` (default 2000): a direct operation answers 503 after this.
    pub time_limit: Duration,
    /// `JOB_TIME_LIMIT_MS` (default 30000): one attempt of a job fails after this.
    pub job_time_limit: Duration,
    /// `JOB_LEASE_MS` (default 5000): a worker that stops renewing loses its job after this.
    pub lease: Duration,
    /// `JOB_MAX_ATTEMPTS` (default 3): a job that fails this often is failed for good.
    pub max_attempts: u16,
    /// `JOB_POLL_MS` (default 20): how often idle workers look for commits by others where
    /// the database's lock file cannot be watched (otherwise a commit wakes them).
    pub poll: Duration,
    /// `JOB_SAFETY_POLL_MS`: idle workers look at the queue at least this often (every commit
    /// wakes them; a lease expiry too). Unset: [`SAFETY_POLL_WATCHED`] while commits are
    /// watched (the lock file, or `LISTEN`), [`SAFETY_POLL`] otherwise; see
    /// [`AppState::safety_poll`].
    pub safety_poll: Option<Duration>,
    /// `JOB_RETENTION_MS` (default 7 days): finished jobs are deleted after this.
    pub retention: Duration,
    /// `JOB_SWEEP_MS` (default 60000): how often old jobs and idempotency keys are purged.
    pub sweep_interval: Duration,
    /// `WORK_DELAY_MS` (default 550) and `WORK_DELAY_MAX_MS`: `/api/compute/compute-worker`.
    pub work: kit::work::SimulatedWork,
    /// `IDEMPOTENCY_MAX_KEYS_PER_USER` (default 10000) and `IDEMPOTENCY_MAX_BYTES_PER_USER`
    /// (default 16 MiB): the answers kept for `Idempotency-Key`s, per user.
    pub idempotency: kit::idempotency::Limits,
}

impl Config {
    pub fn from_vars(vars: &kit::Vars) -> Result<Self, kit::ConfigError> {
        let kit = kit::Config::from_vars(vars, "compute")?;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        Ok(Self {
            workers: vars.number("COMPUTE_WORKERS", 16, 0, 64)? as usize,
            threads: vars.number("COMPUTE_THREADS", cpus, 1, 256)? as usize,
            time_limit: vars.millis("COMPUTE_TIME_LIMIT_MS", 2_000, 600_000)?,
            job_time_limit: vars.millis("JOB_TIME_LIMIT_MS", 30_000, 3_600_000)?,
            lease: Duration::from_millis(vars.number("JOB_LEASE_MS", 5_000, 30, 3_600_000)?),
            max_attempts: vars.number("JOB_MAX_ATTEMPTS", 3, 1, 100)? as u16,
            poll: vars.millis("JOB_POLL_MS", 20, 10_000)?,
            safety_poll: vars
                .get("JOB_SAFETY_POLL_MS")
                .map(|_| vars.millis("JOB_SAFETY_POLL_MS", 1, 600_000))
                .transpose()?,
            retention: vars.millis("JOB_RETENTION_MS", 7 * 24 * 3_600_000, 365 * 24 * 3_600_000)?,
            sweep_interval: vars.millis("JOB_SWEEP_MS", 60_000, 86_400_000)?,
            work: kit::work::SimulatedWork::from_vars(vars, 550)?,
            idempotency: kit::idempotency::Limits::from_vars(vars)?,
            kit,
        })
    }
}

/// The safety poll of idle workers while nothing else tells them of commits by others.
pub const SAFETY_POLL: Duration = Duration::from_secs(5);
/// The safety poll while every commit is seen as it happens (the lock file watched, or
/// `LISTEN` on PostgreSQL): then it only backs up the watch.
pub const SAFETY_POLL_WATCHED: Duration = Duration::from_secs(60);

/// This instance's own counters (the queue's figures are in the database).
#[derive(Debug, Default)]
pub struct LocalStats {
    /// Outcomes this instance's workers wrote.
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    /// Jobs whose lease this instance lost before it could write the outcome.
    pub lost_leases: AtomicU64,
    /// Whether commits by others are seen as they happen (set by the change detector).
    pub watching: AtomicBool,
    /// Whether the dispatcher knows the earliest lease expiry (its last look at the queue saw
    /// a running job): then a quiet commit elsewhere (jobs started by their submits, outcomes
    /// recorded) changes nothing it waits for, and the change detector lets it sleep.
    pub expiry_known: AtomicBool,
}

/// Everything the handlers and the background loops share: one allocation, so that the
/// clones a request's extractors and layers take are one reference count each.
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
    queue: Queue,
    executor: Executor,
    /// `None` when `AUTH_REQUIRED=false`.
    keys: Option<Arc<Keys>>,
    health: Health,
    /// Bumped to wake this instance's idle workers.
    wake: Arc<watch::Sender<u64>>,
    stats: Arc<LocalStats>,
    slots: Arc<worker::Slots>,
}

impl AppState {
    /// Opens and migrates the database and loads the JWT keys; starts nothing.
    pub async fn open(config: Config) -> Result<Self, Error> {
        let pool = kit::db::open(&config.kit, "compute.sqlite", &MIGRATIONS).await?;
        // Every instance announces its commits, workers or not: the others' watchers wake on them.
        pool.announce_commits();
        let keys = if config.kit.auth_required { Some(Arc::new(Keys::load(&config.kit)?)) } else { None };
        let check_pool = pool.clone();
        let health = Health::new(&config.kit.service_name).with_check(move || {
            let pool = check_pool.clone();
            async move { kit::db::ping(&pool).await }
        });
        Ok(Self(Arc::new(Shared {
            executor: Executor::new(config.threads),
            slots: Arc::new(worker::Slots::new(&config.kit.service_name, config.workers)),
            config: Arc::new(config),
            queue: Queue::new(pool),
            keys,
            health,
            wake: Arc::new(watch::channel(0).0),
            stats: Arc::default(),
        })))
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// How long idle workers sleep at most: `JOB_SAFETY_POLL_MS` when set, else
    /// [`SAFETY_POLL_WATCHED`] while commits are watched and [`SAFETY_POLL`] otherwise.
    pub fn safety_poll(&self) -> Duration {
        let watching = self.stats.watching.load(Ordering::SeqCst);
        self.config.safety_poll.unwrap_or(if watching { SAFETY_POLL_WATCHED } else { SAFETY_POLL })
    }

    /// Records whether commits by others are watched, and wakes the idle workers so that
    /// they sleep by the new [`safety_poll`](Self::safety_poll).
    fn watching(&self, watching: bool) {
        self.stats.watching.store(watching, Ordering::SeqCst);
        self.wake();
    }

    /// Wakes this instance's idle workers.
    fn wake(&self) {
        self.wake.send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// The compute routes, with the JWT guard (while auth is required), health, JSON errors and
/// the body limit.
pub fn router(state: AppState) -> axum::Router {
    let limit = state.config.kit.body_limit;
    let health = state.health.clone();
    let mut protected = api::protected_router();
    if let Some(keys) = &state.keys {
        protected = protected.route_layer(axum::middleware::from_fn_with_state(keys.clone(), kit::jwt::require));
    }
    let routes = api::open_router().merge(protected).with_state(state);
    metrics::get(); // its families are in /metrics from the first scrape
    health.beside(kit::http::finish_traced(routes, limit))
}

/// Serves the compute service on `listener` until `shutdown`, with this instance's workers.
pub async fn serve(config: Config, listener: TcpListener, shutdown: kit::Shutdown) -> Result<(), Error> {
    let port = listener.local_addr()?.port();
    let (grace, limits) = (config.kit.shutdown_grace, config.kit.limits.clone());
    let state = AppState::open(config).await?;
    worker::spawn(&state, &shutdown);
    shutdown.spawn(sweep::run(state.clone(), shutdown.clone()));
    shutdown.spawn(metrics::run(state.clone(), shutdown.clone()));
    kit::registry::spawn_maintain(&state.config.kit, port, &shutdown);
    let pool = state.queue.db().clone();
    kit::http::serve(listener, router(state), shutdown, limits, grace).await?;
    // The last connection to close checkpoints the WAL into the database file.
    let _ = tokio::time::timeout(grace, pool.close()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_limits() {
        let config = Config::from_vars(&kit::Vars::from_pairs([("SERVICE_NAME", "compute-2")])).unwrap();
        assert_eq!((config.workers, config.max_attempts), (16, 3));
        assert_eq!((config.lease, config.time_limit), (Duration::from_secs(5), Duration::from_secs(2)));
        assert_eq!((config.work.delay, config.work.max), (Duration::from_millis(550), Duration::from_secs(10)));
        assert_eq!((config.poll, config.safety_poll), (Duration::from_millis(20), None));
        assert_eq!(config.retention, Duration::from_secs(7 * 24 * 3600));
        let limits = kit::idempotency::Limits { max_keys: 10_000, max_bytes: 16 << 20 };
        assert_eq!(config.idempotency, limits);
        assert!(config.threads >= 1);

        let bad = |name: &str, value: &str| {
            let err = Config::from_vars(&kit::Vars::from_pairs([(name, value)])).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        };
        bad("JOB_MAX_ATTEMPTS", "0");
        bad("COMPUTE_WORKERS", "65");
        bad("JOB_LEASE_MS", "5");
        bad("COMPUTE_TIME_LIMIT_MS", "soon");
        bad("WORK_DELAY_MS", "20000");
        bad("IDEMPOTENCY_MAX_KEYS_PER_USER", "0");
        bad("IDEMPOTENCY_MAX_BYTES_PER_USER", "100");
        bad("JOB_SAFETY_POLL_MS", "0");
        bad("JOB_SAFETY_POLL_MS", "600001");
    }

    fn config_in(dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
        let url = format!("sqlite://{}", dir.join("compute.sqlite").display());
        let dir = dir.display().to_string();
        let mut vars = vec![("SERVICE_NAME", "compute-1"), ("DATABASE_URL", &url), ("DATA_DIR", &dir)];
        vars.extend_from_slice(extra);
        vars.push(("AUTH_REQUIRED", "false"));
        Config::from_vars(&kit::Vars::from_pairs(vars)).unwrap()
    }

    /// The safety poll is the 5 s safety net until the lock file is watched, then only a
    /// 60 s backstop; a `JOB_SAFETY_POLL_MS` that is set holds either way.
    #[tokio::test]
    async fn the_safety_poll_is_rare_only_while_the_wal_is_watched() {
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::open(config_in(dir.path(), &[])).await.unwrap();
        assert_eq!(state.safety_poll(), SAFETY_POLL);
        let shutdown = kit::Shutdown::new();
        let watch = tokio::spawn(worker::watch_changes(state.clone(), shutdown.clone()));
        kit::testing::eventually(Duration::from_secs(10), "the WAL watched", || {
            let poll = state.safety_poll();
            async move { (poll == SAFETY_POLL_WATCHED).then_some(()) }
        })
        .await;
        shutdown.trigger();
        watch.await.unwrap();

        let set = AppState::open(config_in(dir.path(), &[("JOB_SAFETY_POLL_MS", "700")])).await.unwrap();
        set.watching(true);
        assert_eq!(set.safety_poll(), Duration::from_millis(700));
        set.watching(false);
        assert_eq!(set.safety_poll(), Duration::from_millis(700));
    }
}

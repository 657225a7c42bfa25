//! What every orch component shares, written once.
//!
//! A component (registry, balancer, detector, auth, data, compute) is a library with one
//! entry point, `serve(config, listener, shutdown)`. Everything around that entry point that
//! is the same for all of them lives here:
//!
//! - [`alloc`]: glibc malloc's arenas capped, and what a burst freed handed back once it ends.
//! - [`config`]: typed configuration from environment variables ([`Vars`]), with the
//!   original system's names (`PORT`, `SERVICE_NAME`, `SERVICE_REGISTRY_URL`, ...).
//! - [`telemetry`]: `tracing` setup, human-readable or JSON lines (`LOG_FORMAT=json`).
//! - [`listen`]: the listening socket, inherited through systemd socket activation
//!   (`LISTEN_FDS`, fd 3) or bound from `PORT`.
//! - [`shutdown`]: one cancellation primitive plus a task tracker, triggered by SIGTERM/SIGINT.
//! - [`http`]: JSON errors, a JSON extractor whose rejections are JSON, request body limits.
//! - [`http1`]: the lean HTTP/1.1 client of the calls made over and over (orch's probes, the
//!   heartbeats): one request written and read by hand on a kept connection.
//! - [`serve`]: the HTTP server of every axum component, with header, body and idle timeouts,
//!   a connection cap and graceful shutdown (`kit::http::serve`).
//! - [`guard`]: the loopback guard of the control-plane APIs (allowed `Host` and `Origin`,
//!   JSON-only mutations).
//! - [`health`]: `GET /health` (liveness) and `GET /ready` (readiness).
//! - [`metrics`]: the process's Prometheus registry, every router's request figures and
//!   `GET /metrics`, the process's CPU, memory and descriptors.
//! - [`registry`]: the registry client (register, heartbeat, re-register, deregister, watch)
//!   and the record types of the registry's contract.
//! - [`jwt`]: HS256 tokens with a fixed algorithm and a required `exp`; a guard middleware.
//! - [`db`]: SQLite pools (WAL, busy timeout, foreign keys), write transactions and an
//!   embedded, multi-process-safe migrator.
//! - [`idempotency`]: the `Idempotency-Key` store shared by data and compute.
//! - [`secret`]: secrets in files created once, 0600, race-free between processes.
//! - [`orch_api`]: the wire types of orch's control API (instances, events, applies),
//!   shared by orch's server, its CLI and the detector.
//! - [`time`]: timestamps in the original system's ISO-8601 shape.
//! - [`trace`]: W3C `traceparent` across hops: parse, format, the router middleware that
//!   continues a trace and logs inside it, and the context outgoing calls pass on.
//! - [`work`]: the original load test's simulated-work endpoints.
//!
//! **Invariant:** kit depends on no other crate of the workspace.

pub mod alloc;
pub mod config;
pub mod db;
pub mod guard;
pub mod health;
pub mod http;
pub mod http1;
pub mod idempotency;
pub mod jwt;
pub mod listen;
pub mod metrics;
pub mod orch_api;
pub mod registry;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod trace;
pub mod work;

pub use config::{Config, ConfigError, Vars};
pub use shutdown::Shutdown;

/// Why a service that keeps a database and checks JWTs (data, compute) could not start or
/// stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("JWT keys: {0}")]
    Jwt(#[from] jwt::JwtError),
}

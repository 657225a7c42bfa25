//! Failed logins: after `LOGIN_MAX_FAILURES` failures for one account within
//! `LOGIN_WINDOW_MS`, its logins get 429 (with `Retry-After`) until the window ends.
//!
//! The counts live in the shared database, so all instances agree: spreading guesses over
//! the instances behind the balancer gains nothing. The window starts at the first failure
//! and is fixed; a successful login clears the count. The login handler checks the lock
//! while holding a hashing slot and records a failure before giving the slot back, so
//! parallel guesses cannot run far past the limit, while parallel right passwords are never
//! refused. An account is `user:<id>` when the
//! username or email names a user, else `name:<identifier>`, so unknown names are limited
//! the same way and a 429 tells nothing about whether an account exists.

use std::time::Duration;

use kit::http::ApiError;
use sqlx::SqlitePool;

use crate::AppState;

/// How often rows of ended windows are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// How long `account` stays locked, if it is locked now.
pub async fn locked_for(
    pool: &SqlitePool,
    account: &str,
    max: u32,
    window: Duration,
) -> Result<Option<Duration>, ApiError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT failures, window_start FROM login_failures WHERE account = $1")
            .bind(account)
            .fetch_optional(pool)
            .await
            .map_err(ApiError::internal)?;
    let Some((failures, window_start)) = row else { return Ok(None) };
    let window_end = window_start + window.as_millis() as i64;
    let now = kit::time::unix_millis();
    if failures < i64::from(max) || now >= window_end {
        return Ok(None);
    }
    let seconds = (window_end - now + 999) / 1000;
    Ok(Some(Duration::from_secs(seconds.max(1) as u64)))
}

/// Counts one failure: the first of a new window, or one more in the current one. One
/// statement, so concurrent failures on several instances all count.
pub async fn record_failure(pool: &SqlitePool, account: &str, window: Duration) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO login_failures (account, failures, window_start) VALUES ($1, 1, $2)
         ON CONFLICT (account) DO UPDATE SET
            failures = CASE WHEN login_failures.window_start + $3 <= $2 THEN 1
                            ELSE login_failures.failures + 1 END,
            window_start = CASE WHEN login_failures.window_start + $3 <= $2 THEN $2
                                ELSE login_failures.window_start END",
    )
    .bind(account)
    .bind(kit::time::unix_millis())
    .bind(window.as_millis() as i64)
    .execute(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(())
}

pub async fn clear(pool: &SqlitePool, account: &str) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM login_failures WHERE account = $1")
        .bind(account)
        .execute(pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// Deletes the rows of windows that have ended; returns how many.
pub async fn purge(pool: &SqlitePool, window: Duration) -> Result<u64, sqlx::Error> {
    let cutoff = kit::time::unix_millis() - window.as_millis() as i64;
    let done = sqlx::query("DELETE FROM login_failures WHERE window_start < $1").bind(cutoff).execute(pool).await?;
    Ok(done.rows_affected())
}

/// The purge loop, until shutdown.
pub async fn run(state: AppState, shutdown: kit::Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        match purge(&state.pool, state.config.login_window).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged ended login-failure windows"),
            Err(e) => tracing::warn!(error = %e, "purging login failures failed"),
        }
    }
}

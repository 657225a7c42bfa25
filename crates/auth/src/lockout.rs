//! Failed logins: after `LOGIN_MAX_FAILURES` failures for one account within
//! `LOGIN_WINDOW_MS`, its logins get 429 (with `Retry-After`) until the window ends.
//!
//! The counts live in the shared database, so all instances agree: spreading guesses over
//! the instances behind the balancer gains nothing. An attempt is counted before its
//! password is checked (so parallel guesses cannot slip past the limit) and a successful
//! login clears the count, so what the count holds is failures. The window starts at the
//! first failure and is fixed. An account is `user:<id>` when the
//! username or email names a user, else `name:<identifier>`, so unknown names are limited
//! the same way and a 429 tells nothing about whether an account exists.

use std::time::Duration;

use kit::http::ApiError;
use sqlx::SqlitePool;

use crate::AppState;

/// How often rows of ended windows are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Counts a login attempt for `account` (the first of a new window, or one more in the
/// current one) and says how long the account stays locked if this attempt is one too
/// many. One statement, so attempts on all instances at once all count. A success then
/// [`clear`]s the count: what remains are the failures.
pub async fn attempt(
    pool: &SqlitePool,
    account: &str,
    max: u32,
    window: Duration,
) -> Result<Option<Duration>, ApiError> {
    let now = kit::time::unix_millis();
    let (attempts, window_start): (i64, i64) = sqlx::query_as(
        "INSERT INTO login_failures (account, attempts, window_start) VALUES ($1, 1, $2)
         ON CONFLICT (account) DO UPDATE SET
            attempts = CASE WHEN login_failures.window_start + $3 <= $2 THEN 1
                            ELSE login_failures.attempts + 1 END,
            window_start = CASE WHEN login_failures.window_start + $3 <= $2 THEN $2
                                ELSE login_failures.window_start END
         RETURNING attempts, window_start",
    )
    .bind(account)
    .bind(now)
    .bind(window.as_millis() as i64)
    .fetch_one(pool)
    .await
    .map_err(ApiError::internal)?;
    if attempts <= i64::from(max) {
        return Ok(None);
    }
    let window_end = window_start + window.as_millis() as i64;
    let seconds = (window_end - now + 999) / 1000;
    Ok(Some(Duration::from_secs(seconds.max(1) as u64)))
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

//! Failed logins slow down whoever fails, not the account's owner.
//!
//! Theory of operation. A login is counted under two keys: the pair (account, client) and
//! the account over all clients (client `*`). An account is `user:<id>` when the username
//! or email names a user, else `name:<identifier>`, so unknown names are throttled the same
//! way and a 429 tells nothing about whether an account exists; a client is its address
//! (see [`crate::client`]).
//!
//! - After `LOGIN_MAX_FAILURES` (5) failures of one pair, each further failure of that pair
//!   makes it wait before its next attempt: `LOGIN_DELAY_MS` (1 s), then twice as long after
//!   each failure (2 s, 4 s, ...), up to `LOGIN_DELAY_MAX_MS` (15 minutes), as OWASP's
//!   authentication cheat sheet recommends. An attempt during the wait is answered 429 with
//!   `Retry-After` and is not checked, so it neither counts nor lengthens the wait.
//! - The same account from another client is not slowed by that pair: a guesser cannot lock
//!   the owner out.
//! - A guesser spread over many addresses is slowed by the account's own count: after
//!   `LOGIN_ACCOUNT_MAX_FAILURES` (100) failures from all clients together, the same doubling
//!   delays apply to every attempt on the account, from any client, the owner's included.
//!   That is the one way failures elsewhere can make an owner wait, and it takes a hundred
//!   guesses from many addresses; each further failure still waits out a delay.
//! - A success clears its pair (not the account's count: the owner logging in does not give
//!   a distributed guesser a fresh budget). A count is forgotten after `LOGIN_WINDOW_MS`
//!   (15 minutes) without a failure, counted from the end of its last delay.
//!
//! The counts live in the shared database (table `login_throttle`), so all instances agree:
//! spreading guesses over the instances behind the balancer gains nothing. A failure is
//! recorded in one write transaction (both keys); a success writes only when the check's
//! read found a row for its pair, so the common login, by someone who has not failed,
//! writes nothing and never waits for the database's write lock. The login handler checks
//! and records while holding a hashing slot, so parallel guesses cannot run far past a
//! limit while parallel right passwords are never refused. Rows are bounded: each costs its client an
//! argon2 verification, and [`run`] deletes forgotten rows every minute.
//!
//! Time comes from a [`Clock`], so tests move it instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use kit::db::{Conn, Db};
use kit::http::ApiError;

use crate::AppState;

/// How often forgotten rows are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The client of the per-account row: every client together.
const ALL_CLIENTS: &str = "*";

/// Milliseconds since the Unix epoch, from the system or set by a test.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands at `start_ms` until [`Clock::advance`] moves it.
    pub fn manual(start_ms: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => kit::time::unix_millis(),
            Some(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; the system's cannot be moved.
    pub fn advance(&self, by: Duration) {
        let ms = self.0.as_ref().expect("only a manual clock can be advanced");
        ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// The limits (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `LOGIN_MAX_FAILURES`: failures of one (account, client) pair before delays start.
    pub pair_failures: u32,
    /// `LOGIN_ACCOUNT_MAX_FAILURES`: failures of one account from all clients before delays
    /// start for every client.
    pub account_failures: u32,
    /// `LOGIN_DELAY_MS`: the first delay; each further failure doubles it.
    pub first_delay: Duration,
    /// `LOGIN_DELAY_MAX_MS`: the longest delay.
    pub max_delay: Duration,
    /// `LOGIN_WINDOW_MS`: a count is forgotten after this long without a failure, counted
    /// from the end of its last delay.
    pub forget_after: Duration,
}

/// The state of one key: its failures, until when it waits, when it is forgotten (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub failures: i64,
    pub blocked_until: i64,
    pub forget_at: i64,
}

impl Policy {
    /// The delay after the `failures`-th failure of a key allowed `free` failures.
    pub fn delay(&self, failures: i64, free: u32) -> Duration {
        let over = failures - i64::from(free);
        if over < 0 {
            return Duration::ZERO;
        }
        // 2^over, saturating well before overflow; the cap applies anyway.
        let factor = 1u32.checked_shl(over.min(31) as u32).unwrap_or(u32::MAX);
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A key's state after one more failure at `now`.
    pub fn after_failure(&self, before: Option<Record>, now: i64, free: u32) -> Record {
        let failures = match before {
            Some(r) if now < r.forget_at => r.failures + 1,
            _ => 1,
        };
        let blocked_until = now + self.delay(failures, free).as_millis() as i64;
        Record { failures, blocked_until, forget_at: blocked_until + self.forget_after.as_millis() as i64 }
    }
}

/// How long a key still waits at `now`, if it waits.
pub fn wait(record: &Record, now: i64) -> Option<Duration> {
    (record.blocked_until > now).then(|| Duration::from_millis((record.blocked_until - now) as u64))
}

/// The policy and the clock, shared by the handlers and the purge loop.
#[derive(Debug)]
pub struct Throttle {
    pub policy: Policy,
    pub clock: Clock,
}

/// Where a client stands on an account before an attempt ([`Throttle::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// How long the client must still wait, if it must (the longer of the pair's and the
    /// account's waits).
    pub wait: Option<Duration>,
    /// The pair (account, client) has a row: a success has failures to forget.
    pub pair_recorded: bool,
}

/// A row of `login_throttle` for one account: its client and its state.
struct Row {
    client: String,
    record: Record,
}

impl Throttle {
    async fn rows(executor: &mut Conn, account: &str, client: &str) -> Result<Vec<Row>, sqlx::Error> {
        let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT client, failures, blocked_until, forget_at FROM login_throttle
             WHERE account = $1 AND client IN ($2, $3)",
        )
        .bind(account)
        .bind(client)
        .bind(ALL_CLIENTS)
        .fetch_all(executor)
        .await?;
        let row = |(client, failures, blocked_until, forget_at)| Row {
            client,
            record: Record { failures, blocked_until, forget_at },
        };
        Ok(rows.into_iter().map(row).collect())
    }

    /// Where `client` stands on `account` before an attempt: how long it must wait, if it
    /// must, and whether the pair has failures on record. One read, no write.
    pub async fn check(&self, db: &Db, account: &str, client: &str) -> Result<Standing, ApiError> {
        let now = self.clock.now_ms();
        let rows =
            kit::db::retry(db, move || async move { Self::rows(&mut *db.acquire().await?, account, client).await })
                .await
                .map_err(kit::db::api_error)?;
        Ok(Standing {
            wait: rows.iter().filter_map(|r| wait(&r.record, now)).max(),
            pair_recorded: rows.iter().any(|r| r.client == client),
        })
    }

    /// Counts one failure of `client` on `account`, under both keys, in one transaction.
    pub async fn failed(&self, db: &Db, account: &str, client: &str) -> Result<(), ApiError> {
        let now = self.clock.now_ms();
        let write = move || async move {
            let mut tx = kit::db::begin_write(db).await?;
            let rows = Self::rows(&mut tx, account, client).await?;
            for (key, free) in [(client, self.policy.pair_failures), (ALL_CLIENTS, self.policy.account_failures)] {
                let before = rows.iter().find(|r| r.client == key).map(|r| r.record);
                let after = self.policy.after_failure(before, now, free);
                sqlx::query(
                    "INSERT INTO login_throttle (account, client, failures, blocked_until, forget_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (account, client) DO UPDATE SET failures = excluded.failures,
                        blocked_until = excluded.blocked_until, forget_at = excluded.forget_at",
                )
                .bind(account)
                .bind(key)
                .bind(after.failures)
                .bind(after.blocked_until)
                .bind(after.forget_at)
                .execute(&mut *tx)
                .await?;
            }
            kit::db::commit(tx).await
        };
        kit::db::retry(db, write).await.map_err(kit::db::api_error)
    }

    /// A success: `client`'s failures on `account` are forgotten. Only a pair whose
    /// [`Standing::pair_recorded`] has failures to forget: most successes have none, and
    /// this is the one write a successful login would make. (A failure of the same pair
    /// recorded after the check's read stays: it ran alongside this success, and counts
    /// as if it came after it.)
    pub async fn succeeded(&self, db: &Db, standing: &Standing, account: &str, client: &str) -> Result<(), ApiError> {
        if !standing.pair_recorded {
            return Ok(());
        }
        kit::db::retry(db, move || async move {
            sqlx::query("DELETE FROM login_throttle WHERE account = $1 AND client = $2")
                .bind(account)
                .bind(client)
                .execute(&mut *kit::db::acquire_write(db).await?)
                .await
        })
        .await
        .map_err(kit::db::api_error)?;
        Ok(())
    }

    /// Deletes the rows that are forgotten by now; returns how many.
    pub async fn purge(&self, db: &Db) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM login_throttle WHERE forget_at <= $1")
            .bind(self.clock.now_ms())
            .execute(&mut *kit::db::acquire_write(db).await?)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The purge loop, until shutdown.
pub async fn run(state: AppState, shutdown: kit::Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        match state.throttle.purge(&state.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged forgotten login failures"),
            Err(e) => tracing::warn!(error = %e, "purging login failures failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn policy() -> Policy {
        Policy {
            pair_failures: 3,
            account_failures: 100,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
            forget_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_from_the_limit_up_to_the_cap() {
        let p = policy();
        let check = |failures: i64, expected_secs: u64| {
            assert_eq!(p.delay(failures, 3), Duration::from_secs(expected_secs), "after {failures} failures")
        };
        check(1, 0);
        check(2, 0);
        check(3, 1);
        check(4, 2);
        check(5, 4);
        check(6, 8);
        check(7, 10);
        check(1_000_000, 10);
    }

    #[test]
    fn a_count_grows_until_it_is_forgotten() {
        let p = policy();
        let check = |before: Option<Record>, now: i64, expected: Record| {
            assert_eq!(p.after_failure(before, now, 3), expected, "{before:?} at {now}")
        };
        let rec = |failures, blocked_until, forget_at| Record { failures, blocked_until, forget_at };
        check(None, 0, rec(1, 0, 60 * S));
        check(Some(rec(1, 0, 60 * S)), 10 * S, rec(2, 10 * S, 70 * S));
        check(Some(rec(2, 10 * S, 70 * S)), 20 * S, rec(3, 21 * S, 81 * S));
        check(Some(rec(3, 21 * S, 81 * S)), 21 * S, rec(4, 23 * S, 83 * S));
        // Forgotten: a quiet window after the end of the last delay starts over.
        check(Some(rec(4, 23 * S, 83 * S)), 83 * S, rec(1, 83 * S, 143 * S));
    }

    #[test]
    fn a_key_waits_until_its_delay_ends() {
        let r = Record { failures: 4, blocked_until: 5 * S, forget_at: 65 * S };
        assert_eq!(wait(&r, 3 * S), Some(Duration::from_secs(2)));
        assert_eq!(wait(&r, 5 * S - 1), Some(Duration::from_millis(1)));
        assert_eq!(wait(&r, 5 * S), None);
    }

    #[tokio::test]
    async fn forgotten_rows_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let pool = kit::db::connect(&format!("sqlite://{}", dir.path().join("t.sqlite").display())).await.unwrap();
        kit::db::migrate(&pool, &crate::MIGRATIONS).await.unwrap();
        let throttle = Throttle { policy: policy(), clock: Clock::manual(0) };
        throttle.failed(&pool, "user:1", "198.51.100.1").await.unwrap();
        throttle.clock.advance(Duration::from_secs(30));
        throttle.failed(&pool, "user:1", "198.51.100.2").await.unwrap();
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM login_throttle").fetch_one(pool.pool()).await.unwrap()
        };
        assert_eq!(count().await, 3, "two pairs and the account");
        assert_eq!(throttle.purge(&pool).await.unwrap(), 0);
        throttle.clock.advance(Duration::from_secs(30));
        assert_eq!(throttle.purge(&pool).await.unwrap(), 1, "the first pair is forgotten");
        throttle.clock.advance(Duration::from_secs(30));
        assert_eq!(throttle.purge(&pool).await.unwrap(), 2);
        assert_eq!(count().await, 0);
    }
}

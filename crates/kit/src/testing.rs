//! Helpers for tests (feature `testing`): waiting for a condition with a deadline, never a
//! bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it returns `Some`; panics naming `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(Duration::from_millis(10), deadline, what, check).await
}

/// Like [`eventually`], pausing `every` between two checks (the benchmarks time what they
/// wait for, so they poll tighter).
pub async fn eventually_every<T, F, Fut>(every: Duration, deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// Asserts that `future` is still pending after `window` (a blocking call that must block),
/// and gives it back to be awaited later.
pub async fn still_pending<F: Future + Unpin>(mut future: F, window: Duration, what: &str) -> F {
    let finished = tokio::time::timeout(window, &mut future).await.is_ok();
    assert!(!finished, "{what} finished within {window:?}, it should still be waiting");
    future
}

/// Tokens that must not verify, each with what it is, built around a valid `token` signed
/// with `secret` for user `sub`: a forged payload, another secret, `alg: none`, expired,
/// another HMAC algorithm, no `exp`, garbage, a truncated signature.
pub fn bad_tokens(token: &str, secret: &str, sub: &str) -> Vec<(&'static str, String)> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};

    crate::jwt::install_crypto();
    let sign = |alg: Algorithm, secret: &str, claims: &Value| {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes()))
            .expect("HMAC signing cannot fail")
    };
    let now = crate::time::unix_millis() / 1000;
    let claims = json!({"sub": sub, "username": "ada", "email": "ada@example.com", "iat": now, "exp": now + 3600});
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a JWT: {token}");
    // The real token with its payload swapped for one naming another user.
    let mut other = claims.clone();
    other["sub"] = json!(format!("{sub}9"));
    other["username"] = json!("mallory");
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().expect("an object").remove("exp");
    vec![
        ("forged payload", format!("{}.{}.{}", parts[0], base64_url(other.to_string().as_bytes()), parts[2])),
        ("another secret", sign(Algorithm::HS256, &format!("not-{secret}"), &claims)),
        (
            "alg none",
            format!("{}.{}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#), base64_url(claims.to_string().as_bytes())),
        ),
        ("expired", sign(Algorithm::HS256, secret, &expired)),
        ("HS384", sign(Algorithm::HS384, secret, &claims)),
        ("HS512", sign(Algorithm::HS512, secret, &claims)),
        ("no exp", sign(Algorithm::HS256, secret, &no_exp)),
        ("garbage", "not.a.token".to_owned()),
        ("truncated signature", token[..token.len() - 4].to_owned()),
    ]
}

/// Base64url without padding, as JWTs encode their parts.
pub fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The environment variable that runs the storage tests on PostgreSQL: the URL of a server
/// where tests may create databases (`scripts/pg.sh url`).
pub const PG_ENV: &str = "ORCH_TEST_DATABASE_URL";

/// A new, empty PostgreSQL database for one test when [`PG_ENV`] is set, else `None` (a
/// test that only makes sense on PostgreSQL then says it was skipped).
pub async fn pg_database() -> Option<String> {
    let admin = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
    Some(crate::db::pg::create_database(&admin).await.unwrap_or_else(|e| panic!("creating a test database: {e}")))
}

/// The database a storage test runs on: a new PostgreSQL database when [`PG_ENV`] is set,
/// else the SQLite file `file` in `dir`.
pub async fn database_url(dir: &std::path::Path, file: &str) -> String {
    match pg_database().await {
        Some(url) => url,
        None => format!("sqlite://{}", dir.join(file).display()),
    }
}

/// The PostgreSQL database of the test dir `dir` when [`PG_ENV`] is set: made on first use
/// and remembered in the dir, so every instance a test starts on one dir shares it, as they
/// share a SQLite file there. `None` runs on SQLite.
pub async fn pg_database_of_dir(dir: &std::path::Path) -> Option<String> {
    static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
    let _one_at_a_time = MAKING.lock().await;
    let file = dir.join(".test-database-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = pg_database().await?;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

/// The value of the sample `series` (its name and labels exactly as encoded, e.g.
/// `http_requests_total{route="/x",method="GET",status="200"}`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

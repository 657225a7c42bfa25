//! auth's figures in `/metrics`: logins by outcome and argon2's time (the registry is the
//! process's, shared with the tests beside this one: movements are lower bounds).

use kit::testing::metric;
use serde_json::json;

use crate::{TestAuth, http, send};

#[tokio::test]
async fn logins_and_hashes_move_their_series() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    let scrape = || async { http().get(format!("{}/metrics", auth.url)).send().await.unwrap().text().await.unwrap() };
    let series = [
        r#"auth_logins_total{outcome="ok"}"#,
        r#"auth_logins_total{outcome="failed"}"#,
        "auth_hash_duration_seconds_count",
    ];
    let text = scrape().await;
    assert!(text.contains("# TYPE auth_hash_duration_seconds histogram"), "present from the first scrape: {text}");
    let before: Vec<f64> = series.iter().map(|s| metric(&text, s).unwrap_or(0.0)).collect();

    auth.register("meter").await;
    auth.login("meter").await;
    let wrong = json!({"username": "meter", "password": "wrong-password"});
    assert_eq!(send(auth.post("/api/auth/login", &wrong)).await.0, 401);

    let text = scrape().await;
    for (series, before) in series.iter().zip(before) {
        let now = metric(&text, series).unwrap_or_else(|| panic!("{series} missing: {text}"));
        assert!(now >= before + 1.0, "{series} did not move ({before} -> {now})");
    }
    let login = r#"http_requests_total{route="/api/auth/login",method="POST",status="401"}"#;
    assert!(metric(&text, login).unwrap() >= 1.0, "{text}");
    auth.stop().await;
}

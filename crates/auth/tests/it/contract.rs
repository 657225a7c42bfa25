//! Every endpoint, field name and status code of the auth contract.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{TestAuth, account, send};

#[tokio::test]
async fn register_login_verify_profile() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[("JWT_TTL_SECONDS", "600")]).await;

    let (status, body) = send(auth.post("/api/auth/register", &account("ada"))).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["message"].is_string(), "{body}");
    let user = &body["user"];
    assert!(user["id"].is_i64(), "{body}");
    assert_eq!(user["username"], "ada");
    assert_eq!(user["email"], "ada@example.com");
    assert!(user["createdAt"].as_str().unwrap().ends_with('Z'));
    assert!(user.get("password").is_none() && user.get("passwordHash").is_none(), "{body}");

    // By username, by email, and case-insensitively.
    for login in [
        json!({"username": "ada", "password": "pass123"}),
        json!({"email": "ada@example.com", "password": "pass123"}),
        json!({"username": "ADA", "password": "pass123"}),
        json!({"email": "Ada@Example.COM", "password": "pass123"}),
        json!({"username": "ada@example.com", "password": "pass123"}),
    ] {
        let (status, body) = send(auth.post("/api/auth/login", &login)).await;
        assert_eq!(status, 200, "{login}: {body}");
        assert_eq!(&body["user"], user, "{login}");
        assert!(body["token"].as_str().unwrap().split('.').count() == 3, "{body}");
    }

    let token = auth.login("ada").await;
    let (status, body) = send(auth.get("/api/auth/verify").bearer_auth(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["valid"], true);
    let claims = &body["user"];
    assert_eq!(claims["id"], user["id"]);
    assert_eq!(claims["sub"], user["id"].to_string());
    assert_eq!(claims["username"], "ada");
    assert_eq!(claims["email"], "ada@example.com");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 600);
    // POST works too (the original clients used both).
    let (status, body) = send(auth.post("/api/auth/verify", &json!({})).bearer_auth(&token)).await;
    assert_eq!((status, body["valid"].clone()), (200, json!(true)));

    let (status, body) = send(auth.get("/api/auth/profile").bearer_auth(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(&body["user"], user);

    auth.stop().await;
}

#[tokio::test]
async fn signup_and_signin_are_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    let (status, body) = send(auth.post("/api/auth/signup", &account("grace"))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["username"], "grace");
    let (status, body) =
        send(auth.post("/api/auth/signin", &json!({"username": "grace", "password": "pass123"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["username"], "grace");
    let (status, _) = send(auth.post("/api/auth/signup", &account("grace"))).await;
    assert_eq!(status, 409);
    auth.stop().await;
}

#[tokio::test]
async fn invalid_registrations_are_400_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    let with = |field: &str, value: serde_json::Value| {
        let mut body = account("valid_name");
        body[field] = value;
        body
    };
    let cases = [
        (with("username", json!("ab")), "username must be 3 to 32"),
        (with("username", json!("a".repeat(33))), "username must be 3 to 32"),
        (with("username", json!("has space")), "username may contain only"),
        (with("username", json!("robert'); DROP TABLE users;--")), "username"),
        (with("username", json!("ünïcode")), "username may contain only"),
        (with("username", json!(42)), "invalid type"),
        (with("email", json!("not-an-email")), "email must look like"),
        (with("email", json!("a@b")), "email must look like"),
        (with("password", json!("12345")), "password must be 6 to 128"),
        (with("password", json!("x".repeat(129))), "password must be 6 to 128"),
        (json!({"username": "valid_name", "password": "pass123"}), "missing field `email`"),
        (json!([1, 2]), "invalid type"),
    ];
    for (body, expected) in cases {
        let (status, answer) = send(auth.post("/api/auth/register", &body)).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(expected), "{body}: {error}");
    }
    for raw in ["{\"username\": ", "", "not json"] {
        let req = crate::http().post(format!("{}/api/auth/register", auth.url)).body(raw);
        let (status, answer) = send(req).await;
        assert_eq!(status, 400, "{raw:?}: {answer}");
        assert!(answer["error"].is_string());
    }
    // Nothing was stored: the valid name is still free.
    auth.register("valid_name").await;
    auth.stop().await;
}

#[tokio::test]
async fn password_minimum_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[("PASSWORD_MIN_LENGTH", "8")]).await;
    let (status, body) = send(auth.post("/api/auth/register", &account("ada"))).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "password must be 8 to 128 characters long");
    let mut long = account("ada");
    long["password"] = json!("pass1234");
    assert_eq!(send(auth.post("/api/auth/register", &long)).await.0, 201);
    auth.stop().await;
}

#[tokio::test]
async fn taken_names_are_409_case_insensitively() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    auth.register("ada").await;

    let other_email = json!({"username": "ADA", "email": "other@example.com", "password": "pass123"});
    let (status, body) = send(auth.post("/api/auth/register", &other_email)).await;
    assert_eq!((status, body["error"].clone()), (409, json!("username is already taken")));

    let other_name = json!({"username": "ada2", "email": "ADA@EXAMPLE.com", "password": "pass123"});
    let (status, body) = send(auth.post("/api/auth/register", &other_name)).await;
    assert_eq!((status, body["error"].clone()), (409, json!("email is already registered")));

    // The first account is untouched: its password still works, the others' don't exist.
    auth.login("ada").await;
    let (status, _) = send(auth.post("/api/auth/login", &json!({"username": "ada2", "password": "pass123"}))).await;
    assert_eq!(status, 401);
    auth.stop().await;
}

#[tokio::test]
async fn bad_credentials_get_one_uniform_401() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    auth.register("ada").await;
    let mut answers = Vec::new();
    for login in [
        json!({"username": "ada", "password": "wrong-password"}),
        json!({"username": "nobody", "password": "pass123"}),
        json!({"email": "nobody@example.com", "password": "pass123"}),
        json!({"email": "ada@example.com", "password": "PASS123"}),
        json!({"username": "ada", "password": ""}),
    ] {
        let (status, body) = send(auth.post("/api/auth/login", &login)).await;
        assert_eq!(status, 401, "{login}: {body}");
        answers.push(body);
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0], json!({"error": "invalid username/email or password"}));

    let (status, body) = send(auth.post("/api/auth/login", &json!({"password": "pass123"}))).await;
    assert_eq!((status, body["error"].clone()), (400, json!("username or email is required")));
    let (status, body) = send(auth.post("/api/auth/login", &json!({"username": "ada"}))).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("password"), "{body}");
    auth.stop().await;
}

#[tokio::test]
async fn profile_of_a_user_that_does_not_exist_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-test-secret-of-at-least-32-bytes!!";
    let auth = TestAuth::start(dir.path(), &[("JWT_SECRET", secret)]).await;
    let keys = kit::jwt::Keys::from_secret(secret.as_bytes());
    let now = kit::time::unix_millis() / 1000;
    let claims = |sub: &str| kit::jwt::Claims {
        sub: sub.into(),
        username: "ghost".into(),
        email: "ghost@example.com".into(),
        iat: now,
        exp: now + 60,
    };
    let (status, body) = send(auth.get("/api/auth/profile").bearer_auth(keys.sign(&claims("999")))).await;
    assert_eq!((status, body["error"].clone()), (404, json!("user not found")));
    let (status, _) = send(auth.get("/api/auth/profile").bearer_auth(keys.sign(&claims("not-a-number")))).await;
    assert_eq!(status, 401);
    auth.stop().await;
}

#[tokio::test]
async fn health_ready_and_health_through_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[]).await;
    for path in ["/health", "/api/auth/health"] {
        let (status, body) = send(auth.get(path)).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["service"], "auth-test");
        assert!(body["uptime"].is_number() && body["timestamp"].is_string(), "{body}");
    }
    let (status, body) = send(auth.get("/ready")).await;
    assert_eq!((status, body["status"].clone()), (200, json!("ready")));
    let (status, body) = send(auth.get("/api/auth/nothing")).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, _) = send(auth.get("/api/auth/login")).await;
    assert_eq!(status, 405);
    auth.stop().await;
}

#[tokio::test]
async fn simulated_work_waits_then_answers() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[("WORK_DELAY_MS", "50"), ("WORK_DELAY_MAX_MS", "1000")]).await;
    for path in ["/api/auth/auth-worker", "/api/auth/auth-work"] {
        let started = Instant::now();
        let (status, body) = send(auth.get(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(started.elapsed() >= Duration::from_millis(50), "the default delay is waited");
        assert!(body["message"].is_string());
        assert_eq!(body["service"], "auth-test");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(body["delayMs"], 50);

        let (status, body) = send(auth.post(&format!("{path}?ms=0"), &json!({}))).await;
        assert_eq!((status, body["delayMs"].clone()), (200, json!(0)));
        for bad in ["1001", "-1", "soon"] {
            let (status, body) = send(auth.get(&format!("{path}?ms={bad}"))).await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["error"], "ms must be a whole number of milliseconds from 0 to 1000");
        }
    }
    // Many waits at once hold no threads: 200 concurrent 50 ms waits finish together.
    let started = Instant::now();
    let waits = (0..200).map(|_| send(auth.get("/api/auth/auth-worker")));
    let answers = futures_util::future::join_all(waits).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));
    assert!(started.elapsed() < Duration::from_secs(5), "waits ran concurrently: {:?}", started.elapsed());
    auth.stop().await;
}

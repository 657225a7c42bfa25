//! 429 after repeated failed logins for one account, counted in the shared database.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{TestAuth, send};

fn login(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

#[tokio::test]
async fn repeated_failures_lock_one_account_on_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_MS", "600000")];
    let a = TestAuth::start(dir.path(), &settings).await;
    let b = TestAuth::start(dir.path(), &settings).await;
    a.register("ada").await;
    a.register("grace").await;

    // Failures spread over both instances and both identifiers count for one account.
    for (instance, body) in [
        (&a, login("ada", "wrong")),
        (&b, json!({"email": "ada@example.com", "password": "wrong"})),
        (&a, login("ADA", "wrong")),
    ] {
        let (status, answer) = send(instance.post("/api/auth/login", &body)).await;
        assert_eq!(status, 401, "{answer}");
    }
    for instance in [&a, &b] {
        let res = instance.post("/api/auth/login", &login("ada", "pass123")).send().await.unwrap();
        assert_eq!(res.status(), 429, "even the right password waits");
        let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((590..=600).contains(&retry), "{retry}");
        let body: Value = res.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("too many failed logins"), "{body}");
    }
    // Another account is not affected.
    b.login("grace").await;

    // Unknown names are limited the same way, so a 429 says nothing about existence.
    for _ in 0..3 {
        assert_eq!(send(a.post("/api/auth/login", &login("nobody", "x"))).await.0, 401);
    }
    assert_eq!(send(b.post("/api/auth/login", &login("nobody", "x"))).await.0, 429);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_lock_ends_with_the_window_and_success_resets_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[("LOGIN_MAX_FAILURES", "2"), ("LOGIN_WINDOW_MS", "400")]).await;
    auth.register("ada").await;

    // A success clears earlier failures: one failure, success, one failure is no lock.
    assert_eq!(send(auth.post("/api/auth/login", &login("ada", "wrong"))).await.0, 401);
    auth.login("ada").await;
    assert_eq!(send(auth.post("/api/auth/login", &login("ada", "wrong"))).await.0, 401);
    auth.login("ada").await;

    assert_eq!(send(auth.post("/api/auth/login", &login("ada", "wrong"))).await.0, 401);
    assert_eq!(send(auth.post("/api/auth/login", &login("ada", "wrong"))).await.0, 401);
    assert_eq!(send(auth.post("/api/auth/login", &login("ada", "pass123"))).await.0, 429);
    kit::testing::eventually(Duration::from_secs(5), "the window to end", || {
        let req = auth.post("/api/auth/login", &login("ada", "pass123"));
        async move { (send(req).await.0 == 200).then_some(()) }
    })
    .await;
    auth.stop().await;
}

#[tokio::test]
async fn parallel_guesses_run_no_further_than_the_hashing_slots() {
    let dir = tempfile::tempdir().unwrap();
    let one_slot = [("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_MS", "600000"), ("HASH_CONCURRENCY", "1")];
    let a = TestAuth::start(dir.path(), &one_slot).await;
    a.register("ada").await;
    a.register("grace").await;
    let guesses = |instances: Vec<&TestAuth>, name: &'static str| {
        let n = instances.len();
        futures_util::future::join_all((0..12).map(move |i| {
            let body = login(name, &format!("guess-{i}"));
            send(instances[i % n].post("/api/auth/login", &body))
        }))
    };
    let count = |answers: &[(u16, Value)], status: u16| answers.iter().filter(|(s, _)| *s == status).count();

    // One instance, one slot: exactly the limit's worth of guesses are checked.
    let answers = guesses(vec![&a], "ada").await;
    assert_eq!((count(&answers, 401), count(&answers, 429)), (3, 9), "{answers:?}");

    // Two instances, one slot each: at most one guess more than the limit slips through.
    let b = TestAuth::start(dir.path(), &one_slot).await;
    let answers = guesses(vec![&a, &b], "grace").await;
    let checked = count(&answers, 401);
    assert!((3..=4).contains(&checked), "{answers:?}");
    assert_eq!(checked + count(&answers, 429), 12);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn parallel_right_passwords_are_never_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("LOGIN_MAX_FAILURES", "2")];
    let (a, b) = tokio::join!(TestAuth::start(dir.path(), &settings), TestAuth::start(dir.path(), &settings));
    a.register("ada").await;
    // One earlier failure is on record; sixteen simultaneous right logins all succeed.
    assert_eq!(send(a.post("/api/auth/login", &login("ada", "wrong"))).await.0, 401);
    let logins = (0..16).map(|i| send([&a, &b][i % 2].post("/api/auth/login", &login("ada", "pass123"))));
    let answers = futures_util::future::join_all(logins).await;
    assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    a.stop().await;
    b.stop().await;
}

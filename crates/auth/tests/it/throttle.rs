//! Failed logins slow down the (account, client) pair that fails, counted in the shared
//! database; a guesser does not lock the owner out. The throttle runs on a manual clock, so
//! delays pass without sleeping.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{TestAuth, send};

/// The clients, as the balancer on this machine names them in `X-Forwarded-For`.
const GUESSER: &str = "203.0.113.66";
const OWNER: &str = "198.51.100.5";

/// A manual clock, somewhere in 2027.
fn clock() -> auth::Clock {
    auth::Clock::manual(1_800_000_000_000)
}

fn login(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

/// The status and `Retry-After` of a login from `client`.
async fn attempt(auth: &TestAuth, client: &str, body: &Value) -> (u16, Option<u64>) {
    let res = auth.post("/api/auth/login", body).header("x-forwarded-for", client).send().await.unwrap();
    let status = res.status().as_u16();
    let retry = res.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let body: Value = res.json().await.unwrap();
    match status {
        200 => assert!(body["token"].is_string(), "{body}"),
        401 => assert_eq!(body["error"], "invalid username/email or password"),
        429 => assert!(body["error"].as_str().unwrap().contains("too many failed logins"), "{body}"),
        _ => panic!("unexpected {status}: {body}"),
    }
    (status, retry)
}

#[tokio::test]
async fn a_guesser_does_not_lock_out_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let auth = TestAuth::start_with_clock(dir.path(), &[], clock.clone()).await;
    auth.register("ada").await;

    // Ten wrong passwords from one client, waiting out each delay it is given; the owner,
    // from another address, logs in at once after every one of them.
    let (mut failures, mut waits) = (0, Vec::new());
    while failures < 10 {
        match attempt(&auth, GUESSER, &login("ada", &format!("guess-{failures}"))).await {
            (401, None) => failures += 1,
            (429, Some(secs)) => {
                // While it waits, even the right password is not checked for this client.
                assert_eq!(attempt(&auth, GUESSER, &login("ada", "pass123")).await, (429, Some(secs)));
                waits.push(secs);
                clock.advance(Duration::from_secs(secs));
            }
            other => panic!("unexpected {other:?} after {failures} failures"),
        }
        assert_eq!(attempt(&auth, OWNER, &login("ada", "pass123")).await, (200, None), "after {failures} failures");
    }
    // Free for five failures, then a delay that doubles with each further failure.
    assert_eq!(attempt(&auth, GUESSER, &login("ada", "guess")).await, (429, Some(32)));
    assert_eq!(waits, [1, 2, 4, 8, 16]);
    // Part of a wait is rounded up to a whole second.
    clock.advance(Duration::from_millis(31_500));
    assert_eq!(attempt(&auth, GUESSER, &login("ada", "guess")).await, (429, Some(1)));

    // A success from that client resets it: five wrong passwords are free again.
    clock.advance(Duration::from_millis(500));
    assert_eq!(attempt(&auth, GUESSER, &login("ada", "pass123")).await, (200, None));
    for n in 0..4 {
        assert_eq!(attempt(&auth, GUESSER, &login("ada", "wrong")).await, (401, None), "failure {n}");
    }
    assert_eq!(attempt(&auth, GUESSER, &login("ada", "pass123")).await, (200, None));
    auth.stop().await;
}

#[tokio::test]
async fn failures_count_on_every_instance_for_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, settings) = (clock(), [("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_MS", "600000")]);
    let a = TestAuth::start_with_clock(dir.path(), &settings, clock.clone()).await;
    let b = TestAuth::start_with_clock(dir.path(), &settings, clock.clone()).await;
    a.register("ada").await;
    a.register("grace").await;

    // Failures spread over both instances and both identifiers count for one account.
    for (instance, body) in [
        (&a, login("ada", "wrong")),
        (&b, json!({"email": "ada@example.com", "password": "wrong"})),
        (&a, login("ADA", "wrong")),
    ] {
        assert_eq!(attempt(instance, GUESSER, &body).await, (401, None));
    }
    for instance in [&a, &b] {
        assert_eq!(attempt(instance, GUESSER, &login("ada", "pass123")).await, (429, Some(1)));
    }
    // Another account from the same client is not affected.
    assert_eq!(attempt(&b, GUESSER, &login("grace", "pass123")).await, (200, None));

    // Unknown names are throttled the same way, so a 429 says nothing about existence.
    for _ in 0..3 {
        assert_eq!(attempt(&a, GUESSER, &login("nobody", "x")).await, (401, None));
    }
    assert_eq!(attempt(&b, GUESSER, &login("nobody", "x")).await, (429, Some(1)));

    // A quiet window after the last delay forgets the count: three failures are free again.
    clock.advance(Duration::from_millis(601_000));
    for _ in 0..2 {
        assert_eq!(attempt(&a, GUESSER, &login("nobody", "x")).await, (401, None));
    }
    assert_eq!(attempt(&b, GUESSER, &login("nobody", "x")).await, (401, None));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_guesser_on_many_addresses_meets_the_account_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let settings = [("LOGIN_ACCOUNT_MAX_FAILURES", "4")];
    let auth = TestAuth::start_with_clock(dir.path(), &settings, clock.clone()).await;
    auth.register("ada").await;
    auth.register("grace").await;
    let guessers = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5"];

    // Four failures from four addresses: the account waits, for every client.
    for guesser in &guessers[..4] {
        assert_eq!(attempt(&auth, guesser, &login("ada", "wrong")).await, (401, None));
    }
    assert_eq!(attempt(&auth, OWNER, &login("ada", "pass123")).await, (429, Some(1)));
    assert_eq!(attempt(&auth, guessers[4], &login("ada", "wrong")).await, (429, Some(1)));
    assert_eq!(attempt(&auth, guessers[0], &login("grace", "pass123")).await, (200, None), "another account");

    // The owner's success does not reset the account's count: the next failure doubles it.
    clock.advance(Duration::from_secs(1));
    assert_eq!(attempt(&auth, OWNER, &login("ada", "pass123")).await, (200, None));
    assert_eq!(attempt(&auth, guessers[4], &login("ada", "wrong")).await, (401, None));
    assert_eq!(attempt(&auth, OWNER, &login("ada", "pass123")).await, (429, Some(2)));
    auth.stop().await;
}

#[tokio::test]
async fn parallel_guesses_run_no_further_than_the_hashing_slots() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let one_slot = [("LOGIN_MAX_FAILURES", "3"), ("HASH_CONCURRENCY", "1")];
    let a = TestAuth::start_with_clock(dir.path(), &one_slot, clock.clone()).await;
    a.register("ada").await;
    a.register("grace").await;
    let guesses = |instances: Vec<&TestAuth>, name: &'static str| {
        let n = instances.len();
        futures_util::future::join_all((0..12).map(move |i| {
            let body = login(name, &format!("guess-{i}"));
            send(instances[i % n].post("/api/auth/login", &body).header("x-forwarded-for", GUESSER))
        }))
    };
    let count = |answers: &[(u16, Value)], status: u16| answers.iter().filter(|(s, _)| *s == status).count();

    // One instance, one slot: exactly the limit's worth of guesses are checked.
    let answers = guesses(vec![&a], "ada").await;
    assert_eq!((count(&answers, 401), count(&answers, 429)), (3, 9), "{answers:?}");

    // Two instances, one slot each: at most one guess more than the limit slips through.
    let b = TestAuth::start_with_clock(dir.path(), &one_slot, clock).await;
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

#[tokio::test]
async fn a_login_without_failures_on_record_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start_with_clock(dir.path(), &[], clock()).await;
    auth.register("ada").await;

    // Another process holds the database's write lock (on PostgreSQL: the throttle table,
    // against writers only). A right password with no failures on record needs only reads,
    // so it logs in meanwhile; a login that wrote would wait for the lock.
    let url = match kit::testing::pg_database_of_dir(dir.path()).await {
        Some(url) => url,
        None => format!("sqlite://{}", dir.path().join("auth.sqlite").display()),
    };
    let db = kit::db::connect_as(&url, "auth", kit::db::Synchronous::default()).await.unwrap();
    let mut lock = kit::db::begin_write(&db).await.unwrap();
    if db.dialect() == kit::db::Dialect::Postgres {
        sqlx::query("LOCK TABLE login_throttle IN SHARE MODE").execute(&mut *lock).await.unwrap();
    }
    let request = auth.post("/api/auth/login", &login("ada", "pass123")).header("x-forwarded-for", OWNER);
    let answered = tokio::time::timeout(Duration::from_secs(30), send(request)).await;
    let (status, body) = answered.expect("the login waited for the write lock");
    assert_eq!(status, 200, "{body}");
    lock.rollback().await.unwrap();
    db.close().await;

    // With failures on record a success does write: it clears the pair's count, so the
    // fifth failure in a row (which would start the delays) is free.
    for _ in 0..4 {
        assert_eq!(attempt(&auth, OWNER, &login("ada", "wrong")).await, (401, None));
    }
    assert_eq!(attempt(&auth, OWNER, &login("ada", "pass123")).await, (200, None));
    for n in 0..5 {
        assert_eq!(attempt(&auth, OWNER, &login("ada", "wrong")).await, (401, None), "failure {n} after the success");
    }
    assert_eq!(attempt(&auth, OWNER, &login("ada", "wrong")).await.0, 429);
    auth.stop().await;
}

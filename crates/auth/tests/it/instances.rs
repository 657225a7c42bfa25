//! Two instances on one database and one secret file behave as one service.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::{TestAuth, account, send};

#[tokio::test]
async fn a_user_registered_on_one_instance_logs_in_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    // No JWT_SECRET: both instances share DATA_DIR/jwt-secret, created by whichever is first.
    let (a, b) = tokio::join!(TestAuth::start(dir.path(), &[]), TestAuth::start(dir.path(), &[]));
    let mode = std::fs::metadata(dir.path().join("jwt-secret")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    if kit::testing::pg_database_of_dir(dir.path()).await.is_none() {
        assert!(dir.path().join("auth.sqlite").exists());
    }

    let user = a.register("ada").await;
    let token_b = b.login("ada").await;
    let (status, body) = send(a.get("/api/auth/verify").bearer_auth(&token_b)).await;
    assert_eq!((status, body["user"]["id"].clone()), (200, user["id"].clone()), "{body}");
    let (status, body) = send(a.get("/api/auth/profile").bearer_auth(&token_b)).await;
    assert_eq!((status, body["user"].clone()), (200, user.clone()));

    let token_a = a.login("ada").await;
    let (status, body) = send(b.get("/api/auth/verify").bearer_auth(&token_a)).await;
    assert_eq!((status, body["valid"].clone()), (200, json!(true)));

    // A restarted instance still verifies old tokens and finds old users.
    a.stop().await;
    let c = TestAuth::start(dir.path(), &[]).await;
    let (status, _) = send(c.get("/api/auth/profile").bearer_auth(&token_a)).await;
    assert_eq!(status, 200);
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(TestAuth::start(dir.path(), &[]), TestAuth::start(dir.path(), &[]));
    let attempts = (0..16).map(|i| {
        let instance = if i % 2 == 0 { &a } else { &b };
        let mut body = account("ada");
        body["email"] = json!(format!("ada{i}@example.com"));
        send(instance.post("/api/auth/register", &body))
    });
    let answers = futures_util::future::join_all(attempts).await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let conflicts = answers.iter().filter(|(s, _)| *s == 409).count();
    assert_eq!((created, conflicts), (1, 15), "{answers:?}");
    a.stop().await;
    b.stop().await;
}

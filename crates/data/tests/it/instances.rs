//! Two instances on one database file behave as one service.

use serde_json::json;

use crate::{TestData, send};

#[tokio::test]
async fn an_item_written_on_one_instance_is_read_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    // No JWT_SECRET: both instances load DATA_DIR/jwt-secret, as the auth instances do.
    let secret_file = dir.path().join("jwt-secret");
    let secret = kit::secret::load_or_create(&secret_file).unwrap();
    let keys = kit::jwt::Keys::from_secret(secret.as_bytes());
    let a = TestData::start_with(dir.path(), &[], &keys).await;
    let b = TestData::start_with(dir.path(), &[], &keys).await;
    if kit::testing::pg_database_of_dir(dir.path()).await.is_none() {
        assert!(dir.path().join("data.sqlite").exists());
    }

    let created = a.create("shared", json!({"n": 1})).await;
    let (status, read) = send(b.get("/api/data/shared")).await;
    assert_eq!((status, &read), (200, &created));
    let (status, updated) = send(b.put("/api/data/shared", &json!({"value": {"n": 2}})).header("if-match", "1")).await;
    assert_eq!((status, updated["version"].clone()), (200, json!(2)));
    let (_, page) = send(a.get("/api/data?prefix=sha")).await;
    assert_eq!(page["items"][0], updated);
    assert_eq!(send(a.delete("/api/data/shared")).await.0, 200);
    assert_eq!(send(b.get("/api/data/shared")).await.0, 404);

    // A token signed with another secret is refused by both.
    let other = kit::jwt::Keys::from_secret(b"some-other-cluster-secret-0123456789");
    let forged = crate::token(&other, "1");
    for instance in [&a, &b] {
        let req = reqwest::Client::new().get(format!("{}/api/data", instance.url)).bearer_auth(&forged);
        let (status, _) = send(req).await;
        assert_eq!(status, 401);
    }

    // Restarted, an instance finds everything where it was.
    a.create("durable", json!(true)).await;
    a.stop().await;
    let c = TestData::start_with(dir.path(), &[], &keys).await;
    let (status, item) = send(c.get("/api/data/durable")).await;
    assert_eq!((status, item["value"].clone()), (200, json!(true)));
    b.stop().await;
    c.stop().await;
}

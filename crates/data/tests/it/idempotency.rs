//! `Idempotency-Key`: a write repeated with the same key, on any instance, has one effect
//! and gets the first answer again.

use serde_json::json;

use crate::{TestData, send, send_raw};

#[tokio::test]
async fn a_repeated_post_and_put_have_one_effect_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestData::start(dir.path(), &[]).await;
    let b = TestData::start(dir.path(), &[]).await;

    let new = json!({"key": "order:1", "value": {"qty": 1}});
    let first = send_raw(a.post("/api/data", &new).header("idempotency-key", "create-1")).await;
    let again = send_raw(b.post("/api/data", &new).header("idempotency-key", "create-1")).await;
    assert_eq!(first.0, 201, "{}", first.2);
    assert_eq!((again.0, &again.2), (first.0, &first.2), "identical answers");
    assert_eq!(again.1["etag"], first.1["etag"]);
    assert_eq!(again.1["idempotent-replayed"], "true");
    assert!(first.1.get("idempotent-replayed").is_none());
    // Without the key the same POST is a new request, and the item exists.
    assert_eq!(send(b.post("/api/data", &new)).await.0, 409);

    let update = json!({"value": {"qty": 2}});
    let put = |instance: &TestData| {
        instance.put("/api/data/order:1", &update).header("if-match", "1").header("idempotency-key", "update-1")
    };
    let first = send_raw(put(&a)).await;
    let again = send_raw(put(&b)).await;
    assert_eq!(first.0, 200, "{}", first.2);
    assert_eq!((again.0, &again.2), (first.0, &first.2), "the repeat is not a 412: it gets the first answer");
    assert_eq!(again.1["etag"], "\"2\"");
    let (_, item) = send(a.get("/api/data/order:1")).await;
    assert_eq!((item["version"].clone(), item["value"].clone()), (json!(2), json!({"qty": 2})), "one update");

    // The same key on another route is another key.
    let (status, _) =
        send(b.put("/api/data/order:1", &json!({"value": 3})).header("idempotency-key", "create-1")).await;
    assert_eq!(status, 200);
    // Reusing a key with a different request is a client error, and changes nothing.
    let (status, body) =
        send(a.put("/api/data/order:1", &json!({"value": 4})).header("idempotency-key", "update-1")).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) =
        send(a.put("/api/data/order:1", &update).header("if-match", "2").header("idempotency-key", "update-1")).await;
    assert_eq!(status, 422, "If-Match is part of the request");

    // DELETE: the repeat gets the first 200, not a 404.
    let del = |instance: &TestData| instance.delete("/api/data/order:1").header("idempotency-key", "delete-1");
    let first = send_raw(del(&a)).await;
    let again = send_raw(del(&b)).await;
    assert_eq!((first.0, again.0, &first.2), (200, 200, &again.2));

    // A refusal is an outcome too: the repeat of a 404 stays a 404 after the item exists.
    let put_missing = |instance: &TestData| {
        instance.put("/api/data/later", &json!({"value": 1})).header("idempotency-key", "later-1")
    };
    assert_eq!(send(put_missing(&a)).await.0, 404);
    b.create("later", json!(0)).await;
    assert_eq!(send(put_missing(&b)).await.0, 404);
    let (_, item) = send(a.get("/api/data/later")).await;
    assert_eq!(item["version"], 1);

    let (status, body) =
        send(a.post("/api/data", &json!({"key": "k", "value": 1})).header("idempotency-key", "")).await;
    assert_eq!(status, 400, "{body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_on_two_instances_have_one_effect() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestData::start(dir.path(), &[]).await;
    let b = TestData::start(dir.path(), &[]).await;
    a.create("tally", json!(0)).await;

    // Twenty copies of one increment, sent at once to both instances.
    let update = json!({"value": 1});
    let copies = (0..20).map(|i| {
        let instance = if i % 2 == 0 { &a } else { &b };
        send_raw(instance.put("/api/data/tally", &update).header("if-match", "1").header("idempotency-key", "inc-1"))
    });
    let answers = futures_util::future::join_all(copies).await;
    assert!(answers.iter().all(|(status, _, body)| *status == 200 && body == &answers[0].2), "{answers:?}");
    let replayed = answers.iter().filter(|(_, headers, _)| headers.get("idempotent-replayed").is_some()).count();
    assert_eq!(replayed, 19);
    let (_, item) = send(b.get("/api/data/tally")).await;
    assert_eq!(item["version"], 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn keys_belong_to_their_user_and_each_user_keeps_at_most_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let data = TestData::start(dir.path(), &[("IDEMPOTENCY_MAX_KEYS_PER_USER", "2")]).await;
    let keys = kit::jwt::Keys::from_secret(crate::SECRET.as_bytes());
    let other = crate::token(&keys, "2");

    // The same key from another user is that user's own: no replay of the first user's answer.
    let mine = send_raw(data.post("/api/data", &json!({"key": "a", "value": 1})).header("idempotency-key", "k")).await;
    assert_eq!(mine.0, 201, "{}", mine.2);
    let theirs = data
        .client
        .post(format!("{}/api/data", data.url))
        .bearer_auth(&other)
        .json(&json!({"key": "b", "value": 2}))
        .header("idempotency-key", "k");
    let theirs = send_raw(theirs).await;
    assert_eq!(theirs.0, 201, "another user's key is not a replay: {}", theirs.2);
    assert!(theirs.2.contains(r#""key":"b""#), "{}", theirs.2);

    // The first user writes two more keys: with a limit of two, its oldest answer is gone,
    // so sending it again is a new request (the key exists now: 409), the newest replays.
    for (key, item) in [("k2", "c"), ("k3", "d")] {
        let (status, _, body) =
            send_raw(data.post("/api/data", &json!({"key": item, "value": 3})).header("idempotency-key", key)).await;
        assert_eq!(status, 201, "{body}");
    }
    let evicted =
        send_raw(data.post("/api/data", &json!({"key": "a", "value": 1})).header("idempotency-key", "k")).await;
    assert_eq!(evicted.0, 409, "the oldest answer was evicted: {}", evicted.2);
    let kept = send_raw(data.post("/api/data", &json!({"key": "d", "value": 3})).header("idempotency-key", "k3")).await;
    assert_eq!((kept.0, kept.1["idempotent-replayed"].to_str().unwrap()), (201, "true"));
    data.stop().await;
}

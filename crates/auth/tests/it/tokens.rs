//! Tokens that must not verify: forged, signed with another secret, `alg: none`, expired,
//! another algorithm, missing.

use kit::testing::bad_tokens;
use serde_json::json;

use crate::{TestAuth, send};

const SECRET: &str = "the-cluster-secret-0123456789abcdef";

#[tokio::test]
async fn bad_tokens_are_401_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let auth = TestAuth::start(dir.path(), &[("JWT_SECRET", SECRET)]).await;
    let user = auth.register("ada").await;
    let token = auth.login("ada").await;
    let sub = user["id"].to_string();

    for (what, bad) in bad_tokens(&token, SECRET, &sub) {
        let (status, body) = send(auth.get("/api/auth/verify").bearer_auth(&bad)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["valid"], false, "{what}");
        assert!(body["error"].as_str().unwrap().starts_with("token"), "{what}: {body}");
        let (status, body) = send(auth.get("/api/auth/profile").bearer_auth(&bad)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}");
    }
    let (status, body) = send(auth.get("/api/auth/verify")).await;
    assert_eq!((status, body["valid"].clone()), (401, json!(false)));
    assert!(body["error"].as_str().unwrap().contains("missing bearer token"), "{body}");
    let (status, _) = send(auth.get("/api/auth/verify").header("authorization", format!("Basic {token}"))).await;
    assert_eq!(status, 401);
    let (status, _) = send(auth.get("/api/auth/profile")).await;
    assert_eq!(status, 401);

    // The good token still works.
    let (status, _) = send(auth.get("/api/auth/verify").bearer_auth(&token)).await;
    assert_eq!(status, 200);
    auth.stop().await;
}

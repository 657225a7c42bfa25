//! The JWT guard: everything under /api/compute needs a token while auth is required, except
//! health and the simulated-work endpoint.

use serde_json::json;

use crate::{app, call, token};

#[tokio::test]
async fn a_token_is_required_while_auth_is_required() {
    let (app, _dir) = app(&[("WORK_DELAY_MS", "0")]).await;
    let direct = json!({"operation": "add", "operands": [1, 2]});
    let forged = kit::jwt::Keys::from_secret(b"another cluster's secret, not ours").sign(&kit::jwt::Claims {
        sub: "1".into(),
        username: "eve".into(),
        email: "eve@example.com".into(),
        iat: 0,
        exp: kit::time::unix_millis() / 1000 + 3600,
    });
    let guarded = [
        ("POST", "/api/compute/direct", Some(direct.clone())),
        ("POST", "/api/compute/job", Some(direct.clone())),
        ("GET", "/api/compute/job/some-id", None),
        ("DELETE", "/api/compute/job/some-id", None),
        ("GET", "/api/compute/stats", None),
    ];
    for (method, path, body) in guarded {
        let (status, answer) = call(&app, method, path, body.clone(), None).await;
        assert_eq!(status, 401, "{method} {path} without a token: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("missing bearer token"), "{answer}");
        let (status, answer) = call(&app, method, path, body, Some(&forged)).await;
        assert_eq!(status, 401, "{method} {path} with a forged token: {answer}");
    }
    let (status, answer) = call(&app, "POST", "/api/compute/direct", Some(direct), Some(&token())).await;
    assert_eq!((status, &answer["result"]), (200, &json!(3)));

    for path in ["/api/compute/health", "/health", "/ready", "/api/compute/compute-worker"] {
        let (status, answer) = call(&app, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path} needs no token: {answer}");
    }
    let (_, health) = call(&app, "GET", "/api/compute/health", None, None).await;
    assert_eq!((&health["status"], &health["service"]), (&json!("healthy"), &json!("compute-1")));
}

#[tokio::test]
async fn no_token_needed_when_auth_is_off() {
    let (app, _dir) = app(&[("AUTH_REQUIRED", "false")]).await;
    let direct = json!({"operation": "average", "operands": [1, 2]});
    let (status, answer) = call(&app, "POST", "/api/compute/direct", Some(direct), None).await;
    assert_eq!((status, &answer["result"]), (200, &json!(1.5)));
    let (status, _) = call(&app, "GET", "/api/compute/stats", None, None).await;
    assert_eq!(status, 200);
}

//! Tokens that must not verify: forged, signed with another secret, `alg: none`, expired,
//! another algorithm, missing.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{TestAuth, send};

const SECRET: &str = "the-cluster-secret-0123456789abcdef";

fn base64_url(bytes: &[u8]) -> String {
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

/// The bad tokens, each with what it is, built around a real `token` for user `sub`.
pub fn bad_tokens(token: &str, secret: &str, sub: &str) -> Vec<(&'static str, String)> {
    let now = kit::time::unix_millis() / 1000;
    let claims = json!({"sub": sub, "username": "ada", "email": "ada@example.com", "iat": now, "exp": now + 3600});
    let parts: Vec<&str> = token.split('.').collect();

    // The real token with its payload swapped for one naming another user.
    let mut other = claims.clone();
    other["sub"] = json!("999");
    other["username"] = json!("mallory");
    let forged = format!("{}.{}.{}", parts[0], base64_url(other.to_string().as_bytes()), parts[2]);

    kit::jwt::install_crypto();
    let sign = |alg: Algorithm, secret: &str, claims: &Value| {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut no_exp = claims.clone();
    no_exp.as_object_mut().unwrap().remove("exp");

    vec![
        ("forged payload", forged),
        ("another secret", sign(Algorithm::HS256, "another-cluster-secret-0123456789abc", &claims)),
        (
            "alg none",
            format!("{}.{}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#), base64_url(claims.to_string().as_bytes())),
        ),
        ("expired", sign(Algorithm::HS256, secret, &expired)),
        ("HS512", sign(Algorithm::HS512, secret, &claims)),
        ("no exp", sign(Algorithm::HS256, secret, &no_exp)),
        ("garbage", "not.a.token".to_owned()),
        ("truncated signature", token[..token.len() - 4].to_owned()),
    ]
}

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

//! JSON Web Tokens: HS256 only, `exp` required.
//!
//! auth signs; every component that demands a logged-in user verifies with the same
//! [`Keys`]. The secret is `JWT_SECRET`, or `DATA_DIR/jwt-secret` (random, created once,
//! 0600), so every instance of every service verifies every instance's tokens.
//!
//! [`require`] is the guard middleware: it answers 401 `{"error": ...}` unless the request
//! carries a valid `Authorization: Bearer <token>`, and hands the [`Claims`] to handlers.
//!
//! A client sends the same token with each request, so [`Keys`] keeps the tokens it verified
//! lately ([`Verified`]) and checks a kept one's expiry alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::http::{ApiError, bearer};

/// What a token says about its user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// The user's id, as a string (JWT's subject).
    pub sub: String,
    pub username: String,
    pub email: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid: {0}")]
    Invalid(String),
    #[error("cannot read or create the JWT secret: {0}")]
    Secret(#[from] std::io::Error),
}

/// The signing and verifying keys of the cluster.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Shared by the clones: one instance's every handler.
    verified: Arc<Verified>,
}

/// How many tokens [`Verified`] keeps; when full, it starts again from none.
const VERIFIED_MAX: usize = 256;

/// Tokens that verified lately, by their exact text, and their claims.
///
/// Checking a token is an HMAC over it, two base64 decodings and two JSON documents: a
/// twentieth of the CPU of a data read (`perf`, reads through the balancer). A kept token is
/// the very text that verified, with this key, so everything about it holds but what time
/// changes: its expiry, checked on every use as the library checks it. A token that fails is
/// never kept (a forged one pays the whole check every time), and no token outlives the
/// process (there is no revocation to miss: tokens are valid until they expire). Hashed by
/// foldhash (seeded per process): SipHash over a token's 200 bytes was 1.3 % of a data read,
/// and only verified tokens are ever kept, so nobody can choose the keys.
#[derive(Default)]
struct Verified(Mutex<HashMap<Box<str>, Claims, foldhash::fast::RandomState>>);

impl Verified {
    /// The claims of `token` if it verified lately; `Expired` once its `exp` (plus `leeway`
    /// seconds) has passed, and then it is forgotten.
    fn get(&self, token: &str, leeway: u64) -> Option<Result<Claims, JwtError>> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let claims = kept.get(token)?;
        let now = jsonwebtoken::get_current_timestamp().saturating_sub(leeway);
        if u64::try_from(claims.exp).unwrap_or(0) < now {
            kept.remove(token);
            return Some(Err(JwtError::Expired));
        }
        Some(Ok(claims.clone()))
    }

    fn keep(&self, token: &str, claims: &Claims) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= VERIFIED_MAX {
            kept.clear();
        }
        kept.insert(token.into(), claims.clone());
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn from_secret(secret: &[u8]) -> Self {
        install_crypto();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Arc::default(),
        }
    }

    /// `JWT_SECRET` if set, else the secret file in the data dir (created on first use).
    pub fn load(config: &Config) -> Result<Self, JwtError> {
        let secret = match &config.jwt_secret {
            Some(secret) => {
                if secret.expose().len() < 32 {
                    tracing::warn!("JWT_SECRET is shorter than 32 bytes; tokens are easier to forge");
                }
                secret.expose().to_owned()
            }
            None => crate::secret::load_or_create(&config.data_dir.join("jwt-secret"))?,
        };
        Ok(Self::from_secret(secret.as_bytes()))
    }

    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// The claims of `token` if it is valid now: signed with this key, HS256, `exp` and
    /// `sub` present, not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        if let Some(outcome) = self.verified.get(token, self.validation.leeway) {
            return outcome;
        }
        let claims = self.check(token)?;
        self.verified.keep(token, &claims);
        Ok(claims)
    }

    /// [`Keys::verify`] without [`Verified`]: the whole check.
    fn check(&self, token: &str) -> Result<Claims, JwtError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::InvalidSignature => JwtError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => JwtError::Invalid("algorithm must be HS256".into()),
                ErrorKind::MissingRequiredClaim(claim) => JwtError::Invalid(format!("missing claim `{claim}`")),
                ErrorKind::Json(_) => JwtError::Invalid("claims are missing or malformed".into()),
                _ => JwtError::Invalid("malformed token".into()),
            }
        })
    }

    /// The claims of the request's bearer token, or the 401 to answer.
    pub fn verify_request(&self, headers: &axum::http::HeaderMap) -> Result<Claims, ApiError> {
        let token = bearer(headers)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token (Authorization: Bearer <token>)"))?;
        self.verify(token).map_err(|e| ApiError::unauthorized(e.to_string()))
    }
}

/// Guard middleware: 401 unless the request has a valid bearer token. Use with
/// `axum::middleware::from_fn_with_state(keys, kit::jwt::require)`.
pub async fn require(State(keys): State<Arc<Keys>>, mut req: Request, next: Next) -> Response {
    match keys.verify_request(req.headers()) {
        Ok(claims) => {
            req.extensions_mut().insert(claims);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Handlers behind [`require`] take the caller's claims as an extractor.
impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Claims>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token (Authorization: Bearer <token>)"))
    }
}

/// Installs jsonwebtoken's cryptography for this process: HMAC only (HS256, and HS384/HS512
/// so tests can forge tokens of the wrong algorithm). The crate's own providers carry RSA,
/// ECDSA and EdDSA code that every process of the binary would map and never use. Called by
/// [`Keys::from_secret`]; call it before using `jsonwebtoken` directly. Idempotent.
pub fn install_crypto() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = hmac_only::PROVIDER.install_default();
    });
}

mod hmac_only {
    use hmac::{Hmac, Mac};
    use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
    use jsonwebtoken::errors::{ErrorKind, Result};
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
    use sha2::{Sha256, Sha384, Sha512};
    use signature::{Signer, Verifier};

    pub static PROVIDER: CryptoProvider =
        CryptoProvider { signer_factory: signer, verifier_factory: verifier, jwk_utils: JwkUtils::new_unimplemented() };

    /// An HMAC key for one algorithm; signs and verifies.
    struct Key {
        algorithm: Algorithm,
        secret: Vec<u8>,
    }

    fn key(algorithm: &Algorithm, secret: &[u8]) -> Result<Key> {
        match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                Ok(Key { algorithm: *algorithm, secret: secret.to_vec() })
            }
            _ => Err(ErrorKind::InvalidAlgorithm.into()),
        }
    }

    fn signer(algorithm: &Algorithm, key_: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        Ok(Box::new(key(algorithm, key_.try_get_hmac_secret()?)?))
    }

    fn verifier(algorithm: &Algorithm, key_: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
        Ok(Box::new(key(algorithm, key_.try_get_hmac_secret()?)?))
    }

    macro_rules! with_mac {
        ($key:expr, |$mac:ident| $body:expr) => {
            match $key.algorithm {
                Algorithm::HS384 => {
                    let mut $mac =
                        Hmac::<Sha384>::new_from_slice(&$key.secret).map_err(signature::Error::from_source)?;
                    $body
                }
                Algorithm::HS512 => {
                    let mut $mac =
                        Hmac::<Sha512>::new_from_slice(&$key.secret).map_err(signature::Error::from_source)?;
                    $body
                }
                _ => {
                    let mut $mac =
                        Hmac::<Sha256>::new_from_slice(&$key.secret).map_err(signature::Error::from_source)?;
                    $body
                }
            }
        };
    }

    impl Signer<Vec<u8>> for Key {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            with_mac!(self, |mac| {
                mac.update(msg);
                Ok(mac.finalize().into_bytes().to_vec())
            })
        }
    }

    impl Verifier<Vec<u8>> for Key {
        /// Constant-time comparison (`verify_slice`).
        fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
            with_mac!(self, |mac| {
                mac.update(msg);
                mac.verify_slice(signature).map_err(signature::Error::from_source)
            })
        }
    }

    impl JwtSigner for Key {
        fn algorithm(&self) -> Algorithm {
            self.algorithm
        }
    }

    impl JwtVerifier for Key {
        fn algorithm(&self) -> Algorithm {
            self.algorithm
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        let now = crate::time::unix_millis() / 1000;
        Claims {
            sub: "1".into(),
            username: "ada".into(),
            email: "ada@example.com".into(),
            iat: now,
            exp: now + exp_offset,
        }
    }

    #[test]
    fn round_trip() {
        let keys = Keys::from_secret(b"0123456789abcdef0123456789abcdef");
        let token = keys.sign(&claims(3600));
        assert_eq!(keys.verify(&token).unwrap(), claims(3600));
    }

    /// A token that verified is answered again from [`Verified`]: only the very same text,
    /// only until it expires, never one that failed, and never more than [`VERIFIED_MAX`].
    #[test]
    fn verified_tokens_are_kept_until_they_expire() {
        let keys = Keys::from_secret(b"0123456789abcdef0123456789abcdef");
        let kept = |keys: &Keys| keys.verified.0.lock().unwrap().len();
        let mine = claims(3600);
        let token = keys.sign(&mine);
        assert_eq!(keys.verify(&token).unwrap(), mine);
        assert_eq!(kept(&keys), 1);
        assert_eq!(keys.clone().verify(&token).unwrap(), mine, "kept, and shared by the clones");
        assert_eq!(kept(&keys), 1);

        // The same claims under another signature, or another payload under this signature.
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{rest}.{flipped}{}", &signature[1..]);
        assert_eq!(keys.verify(&forged).unwrap_err().to_string(), "token is not valid: bad signature");
        let theirs = Claims { sub: "2".into(), ..mine.clone() };
        let their_token = Keys::from_secret(b"any other secret").sign(&theirs);
        let their_payload = their_token.split('.').nth(1).unwrap();
        let (header, _) = token.split_once('.').unwrap();
        let swapped = format!("{header}.{their_payload}.{signature}");
        assert_eq!(keys.verify(&swapped).unwrap_err().to_string(), "token is not valid: bad signature");
        assert_eq!(kept(&keys), 1, "what failed is not kept");

        // A kept token whose time has passed (beyond the leeway) is expired, and forgotten.
        let old = keys.sign(&claims(-3600));
        keys.verified.keep(&old, &claims(-3600));
        assert_eq!(keys.verify(&old).unwrap_err().to_string(), "token has expired");
        assert_eq!(kept(&keys), 1);
        let within_leeway = Claims { exp: mine.iat - 2, ..mine.clone() };
        let late = keys.sign(&within_leeway);
        assert_eq!(keys.verify(&late).unwrap(), within_leeway, "the library's leeway");
        assert_eq!(keys.verify(&late).unwrap(), within_leeway, "and the same when kept");

        for n in 0..VERIFIED_MAX + 10 {
            let token = keys.sign(&Claims { sub: n.to_string(), ..mine.clone() });
            assert_eq!(keys.verify(&token).unwrap().sub, n.to_string());
            assert!(kept(&keys) <= VERIFIED_MAX);
        }
    }

    #[test]
    fn rejects_what_it_should() {
        let keys = Keys::from_secret(b"0123456789abcdef0123456789abcdef");
        let other = Keys::from_secret(b"another secret, another cluster!");
        let check = |token: &str, expected: &str| {
            assert_eq!(keys.verify(token).unwrap_err().to_string(), expected, "{token}");
        };
        check(&other.sign(&claims(3600)), "token is not valid: bad signature");
        check(&keys.sign(&claims(-3600)), "token has expired");
        check("not.a.token", "token is not valid: malformed token");
        check("", "token is not valid: malformed token");

        // `alg: none` with the same claims and no signature.
        let header = crate::testing::base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = crate::testing::base64_url(serde_json::to_string(&claims(3600)).unwrap().as_bytes());
        let none = format!("{header}.{body}.");
        assert!(keys.verify(&none).is_err());

        // HS512 is not accepted even with the right secret.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(3600),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        check(&hs512, "token is not valid: algorithm must be HS256");

        // No `exp`.
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoExp { sub: "1".into() },
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        check(&no_exp, "token is not valid: claims are missing or malformed");
    }
}

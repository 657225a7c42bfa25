//! JSON Web Tokens: HS256 only, `exp` required.
//!
//! auth signs; every component that demands a logged-in user verifies with the same
//! [`Keys`]. The secret is `JWT_SECRET`, or `DATA_DIR/jwt-secret` (random, created once,
//! 0600), so every instance of every service verifies every instance's tokens.
//!
//! [`require`] is the guard middleware: it answers 401 `{"error": ...}` unless the request
//! carries a valid `Authorization: Bearer <token>`, and hands the [`Claims`] to handlers.

use std::sync::Arc;

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
        Self { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
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

    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
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

//! argon2id password hashing, off the async runtime.
//!
//! A hash takes tens of milliseconds of CPU and `ARGON2_MEMORY_KIB` of memory, so it runs in
//! `spawn_blocking`, and at most `HASH_CONCURRENCY` at once (a semaphore): a burst of logins
//! queues for a permit instead of starving the runtime or multiplying the memory.
//!
//! Logins for unknown users verify a dummy hash made with the same parameters, so the time
//! a login takes does not tell whether the account exists.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kit::http::ApiError;
use tokio::sync::Semaphore;

use crate::{Argon2Params, Error};

pub struct Hasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of a random password nobody knows, for unknown users.
    dummy: String,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("params", self.argon2.params()).finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher with these costs, running at most `concurrency` hashes at once.
    pub async fn new(params: Argon2Params, concurrency: usize) -> Result<Self, Error> {
        let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| Error::Hashing(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let for_dummy = argon2.clone();
        let dummy = tokio::task::spawn_blocking(move || {
            let secret: [u8; 32] = rand::random();
            hash_with(&for_dummy, &secret)
        })
        .await
        .map_err(|e| Error::Hashing(e.to_string()))?
        .map_err(|e| Error::Hashing(e.to_string()))?;
        Ok(Self { argon2, permits: Arc::new(Semaphore::new(concurrency.max(1))), dummy })
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let argon2 = self.argon2.clone();
        self.blocking(move || hash_with(&argon2, password.as_bytes()).map_err(ApiError::internal)).await?
    }

    /// Whether `password` matches `hash`; `None` (an unknown user) checks the dummy hash and
    /// answers false, taking the same time.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let argon2 = self.argon2.clone();
        let matches = self
            .blocking(move || {
                let parsed = PasswordHash::new(&hash).map_err(|e| ApiError::internal(format!("stored hash: {e}")))?;
                // The parameters come from the stored hash, so hashes made under older
                // settings keep verifying.
                Ok::<_, ApiError>(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
            })
            .await??;
        Ok(known && matches)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let permit = self.permits.clone().acquire_owned().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            out
        })
        .await
        .map_err(ApiError::internal)
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())?;
    Ok(argon2.hash_password(password, &salt)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_the_dummy_never_matches() {
        let params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
        let hasher = Hasher::new(params, 2).await.unwrap();
        let hash = hasher.hash("pass123".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert_ne!(hash, hasher.hash("pass123".into()).await.unwrap(), "salts differ");
        assert!(hasher.verify("pass123".into(), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("pass124".into(), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("pass123".into(), None).await.unwrap());

        // A hash made with other costs still verifies.
        let stronger = Argon2Params { memory_kib: 128, iterations: 2, parallelism: 1 };
        let other = Hasher::new(stronger, 1).await.unwrap();
        assert!(other.verify("pass123".into(), Some(hash)).await.unwrap());
    }
}

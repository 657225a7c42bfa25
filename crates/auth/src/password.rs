//! argon2id password hashing, off the async runtime.
//!
//! A hash takes tens of milliseconds of CPU and `ARGON2_MEMORY_KIB` of memory, so it runs in
//! `spawn_blocking`, and at most `HASH_CONCURRENCY` at once: a burst of logins queues for a
//! [`Slot`] (a semaphore permit) instead of starving the runtime or multiplying the memory.
//!
//! Memory: argon2's working memory (19 MiB by default) is allocated here, with a capacity
//! above glibc's largest mmap threshold (32 MiB), so it is always a mapping of its own that
//! goes back to the OS when the hash is done; only the blocks used are ever touched, so the
//! process grows by `ARGON2_MEMORY_KIB` per hash in flight and shrinks back after. Left to
//! the allocator, each blocking thread's arena would keep a freed 19 MiB block for good:
//! a burst of logins left the process at about 450 MiB.
//!
//! Logins for unknown users verify a dummy hash made with the same parameters, so the time
//! a login takes does not tell whether the account exists.

use std::sync::Arc;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use kit::http::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Argon2Params, Error};

/// Working memory is reserved in blocks of this many (1 KiB each): 33 MiB of address space,
/// above glibc's `DEFAULT_MMAP_THRESHOLD_MAX`, so the allocation is always `mmap`ed.
const MAPPED_BLOCKS: usize = 33 * 1024;

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
        .map_err(Error::Hashing)?;
        Ok(Self { argon2, permits: Arc::new(Semaphore::new(concurrency.max(1))), dummy })
    }

    /// Waits for a free hashing slot (at most `HASH_CONCURRENCY` are out at once).
    pub async fn slot(&self) -> Result<Slot, ApiError> {
        self.permits.clone().acquire_owned().await.map(Slot).map_err(ApiError::internal)
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let argon2 = self.argon2.clone();
        let slot = self.slot().await?;
        let (hash, _) = run(slot, move || hash_with(&argon2, password.as_bytes()).map_err(ApiError::internal)).await?;
        hash
    }

    /// Whether `password` matches `hash`, in `slot`, which comes back with the answer (a
    /// caller may hold it a little longer). `None` (an unknown user) checks the dummy hash
    /// and answers false, taking the same time.
    pub async fn verify(&self, slot: Slot, password: String, hash: Option<String>) -> Result<(bool, Slot), ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let (matches, slot) =
            run(slot, move || verify_with(password.as_bytes(), &hash).map_err(ApiError::internal)).await?;
        Ok((known && matches?, slot))
    }
}

/// A permit to run one hash; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

/// Runs `f` on the blocking pool, holding `slot` until `f` is done even if the caller goes
/// away (so no more hashes run, and no more memory is in use, than there are slots).
async fn run<T: Send + 'static>(slot: Slot, f: impl FnOnce() -> T + Send + 'static) -> Result<(T, Slot), ApiError> {
    tokio::task::spawn_blocking(move || (f(), slot)).await.map_err(ApiError::internal)
}

/// Runs argon2 into `out`, in working memory that is unmapped when done (module docs).
fn compute(argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), String> {
    let blocks = argon2.params().block_count();
    let mut memory: Vec<Block> = Vec::with_capacity(blocks.max(MAPPED_BLOCKS));
    memory.resize(blocks, Block::default());
    argon2.hash_password_into_with_memory(password, salt, out, &mut memory).map_err(|e| e.to_string())
}

fn hash_with(argon2: &Argon2<'_>, password: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let mut raw_salt = [0u8; 64];
    compute(argon2, password, salt.as_salt().decode_b64(&mut raw_salt).map_err(|e| e.to_string())?, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| e.to_string())?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a stored PHC string, with the costs written in it (so hashes
/// made under older settings keep verifying); the comparison is constant-time.
fn verify_with(password: &[u8], stored: &str) -> Result<bool, String> {
    let phc = PasswordHash::new(stored).map_err(|e| format!("stored hash: {e}"))?;
    let algorithm = Algorithm::try_from(phc.algorithm).map_err(|e| format!("stored hash: {e}"))?;
    let version = phc.version.map(Version::try_from).transpose().map_err(|e| format!("stored hash: {e}"))?;
    let params = Params::try_from(&phc).map_err(|e| format!("stored hash: {e}"))?;
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Err("stored hash has no salt or no hash".into());
    };
    let mut raw_salt = [0u8; 64];
    let salt = salt.decode_b64(&mut raw_salt).map_err(|e| format!("stored hash: {e}"))?;
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params);
    let mut out = vec![0u8; expected.len()];
    compute(&argon2, password, salt, &mut out)?;
    Ok(Output::new(&out).map_err(|e| e.to_string())? == expected)
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_the_dummy_never_matches() {
        let params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
        let hasher = Hasher::new(params, 2).await.unwrap();
        let hash = hasher.hash("pass123".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert_ne!(hash, hasher.hash("pass123".into()).await.unwrap(), "salts differ");
        let verify = |password: &str, hash: Option<String>| {
            let password = password.to_owned();
            let hasher = &hasher;
            async move { hasher.verify(hasher.slot().await?, password, hash).await.map(|(ok, _)| ok) }
        };
        assert!(verify("pass123", Some(hash.clone())).await.unwrap());
        assert!(!verify("pass124", Some(hash.clone())).await.unwrap());
        assert!(!verify("pass123", None).await.unwrap());

        // A hash made with other costs still verifies.
        let stronger = Argon2Params { memory_kib: 128, iterations: 2, parallelism: 1 };
        let other = Hasher::new(stronger, 1).await.unwrap();
        assert!(other.verify(other.slot().await.unwrap(), "pass123".into(), Some(hash)).await.unwrap().0);
        assert!(verify("x", Some("$argon2id$garbage".into())).await.is_err());
    }

    #[test]
    fn agrees_with_the_argon2_crate() {
        let params = Params::new(256, 2, 2, None).unwrap();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // Ours verifies theirs, theirs verifies ours.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = argon2.hash_password(b"pass123", &salt).unwrap();
        assert!(verify_with(b"pass123", &theirs.to_string()).unwrap());
        assert!(!verify_with(b"pass12", &theirs.to_string()).unwrap());
        let ours = hash_with(&argon2, b"pass123").unwrap();
        assert!(argon2.verify_password(b"pass123", &PasswordHash::new(&ours).unwrap()).is_ok());
        assert!(argon2.verify_password(b"nope", &PasswordHash::new(&ours).unwrap()).is_err());
        // Argon2i hashes verify too: the algorithm comes from the stored string.
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let salt = SaltString::encode_b64(b"saltsaltsalt").unwrap();
        let old = argon2i.hash_password(b"pass123", &salt).unwrap();
        assert!(verify_with(b"pass123", &old.to_string()).unwrap());
    }
}

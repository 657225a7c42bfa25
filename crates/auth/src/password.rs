//! argon2id password hashing, off the async runtime.
//!
//! A hash takes tens of milliseconds of CPU and `ARGON2_MEMORY_KIB` of memory, so it runs in
//! `spawn_blocking`, and at most `HASH_CONCURRENCY` at once: a burst of logins queues for a
//! [`Slot`] (a semaphore permit) instead of starving the runtime or multiplying the memory.
//!
//! Memory: argon2's working memory (19 MiB by default) is a [`Buffers`] pool of mappings,
//! each taken by one hash at a time: a hash reuses the pages a previous one faulted in
//! instead of mapping and faulting 19 MiB afresh (about 4 900 page faults, zeroing and an
//! unmap per hash), and in transparent huge pages where the system allows (argon2 reads its
//! memory at random, a 1 KiB block at a time: 2 MiB pages spare the TLB). Hashes run only
//! in a [`Slot`], so there are never more buffers than slots. Each buffer's capacity is above glibc's largest mmap threshold (32 MiB), so it is
//! a mapping of its own, and after [`KEEP_IDLE`] without a hash the pool drops them all and
//! the memory goes back to the OS: a burst of logins costs its memory while it lasts, an
//! idle instance nothing. (Left to the allocator, each blocking thread's arena would keep a
//! freed 19 MiB block for good: a burst of logins once left the process at about 450 MiB.)
//!
//! Logins for unknown users verify a dummy hash made with the same parameters, so the time
//! a login takes does not tell whether the account exists.

use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use kit::http::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Argon2Params, Error};

/// Working memory is reserved in blocks of this many (1 KiB each): 33 MiB of address space,
/// above glibc's `DEFAULT_MMAP_THRESHOLD_MAX`, so the allocation is always `mmap`ed.
const MAPPED_BLOCKS: usize = 33 * 1024;

/// How long the buffers outlive the last hash.
const KEEP_IDLE: Duration = Duration::from_secs(1);

pub struct Hasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    buffers: Arc<Buffers>,
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
        Self::keeping(params, concurrency, KEEP_IDLE).await
    }

    /// [`Hasher::new`], its buffers kept `keep_idle` after the last hash.
    async fn keeping(params: Argon2Params, concurrency: usize, keep_idle: Duration) -> Result<Self, Error> {
        let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| Error::Hashing(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let buffers = Arc::new(Buffers::new(argon2.params().block_count(), keep_idle));
        let (for_dummy, in_buffers) = (argon2.clone(), buffers.clone());
        let dummy = tokio::task::spawn_blocking(move || {
            let secret: [u8; 32] = rand::random();
            hash_with(&in_buffers, &for_dummy, &secret)
        })
        .await
        .map_err(|e| Error::Hashing(e.to_string()))?
        .map_err(Error::Hashing)?;
        buffers.trim_later();
        Ok(Self { argon2, permits: Arc::new(Semaphore::new(concurrency.max(1))), buffers, dummy })
    }

    /// Waits for a free hashing slot (at most `HASH_CONCURRENCY` are out at once).
    pub async fn slot(&self) -> Result<Slot, ApiError> {
        self.permits.clone().acquire_owned().await.map(Slot).map_err(ApiError::internal)
    }

    /// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let (argon2, buffers) = (self.argon2.clone(), self.buffers.clone());
        let slot = self.slot().await?;
        let hashed = run(slot, move || hash_with(&buffers, &argon2, password.as_bytes()).map_err(ApiError::internal));
        let (hash, _) = hashed.await?;
        self.buffers.trim_later();
        hash
    }

    /// Whether `password` matches `hash`, in `slot`, which comes back with the answer (a
    /// caller may hold it a little longer). `None` (an unknown user) checks the dummy hash
    /// and answers false, taking the same time.
    pub async fn verify(&self, slot: Slot, password: String, hash: Option<String>) -> Result<(bool, Slot), ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.clone());
        let buffers = self.buffers.clone();
        let (matches, slot) =
            run(slot, move || verify_with(&buffers, password.as_bytes(), &hash).map_err(ApiError::internal)).await?;
        self.buffers.trim_later();
        Ok((known && matches?, slot))
    }
}

/// A permit to run one hash; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

/// Runs `f` on the blocking pool, holding `slot` until `f` is done even if the caller goes
/// away (so no more hashes run, and no more memory is in use, than there are slots).
async fn run<T: Send + 'static>(slot: Slot, f: impl FnOnce() -> T + Send + 'static) -> Result<(T, Slot), ApiError> {
    let timed = move || {
        let started = std::time::Instant::now();
        let out = f();
        crate::metrics::get().hash_seconds.observe(started.elapsed().as_secs_f64());
        (out, slot)
    };
    tokio::task::spawn_blocking(timed).await.map_err(ApiError::internal)
}

/// argon2's working memory, reused from hash to hash while hashes keep coming (module docs).
/// Only hashes in a [`Slot`] take buffers (and the dummy's, made before any slot is out),
/// so there are at most as many as slots.
#[derive(Debug)]
struct Buffers {
    /// The size of the buffers kept: the configured cost. A stored hash with a larger one
    /// (made under older settings) gets a mapping of its own, dropped after it.
    blocks: usize,
    keep_idle: Duration,
    idle: Mutex<Vec<Vec<Block>>>,
    /// Moves at every hash: the idle buffers are dropped once it has stood still for
    /// `keep_idle`.
    uses: AtomicU64,
    /// A trimmer task is running (one at a time).
    trimming: AtomicBool,
    /// Buffers mapped so far (what the tests count).
    mapped: AtomicUsize,
}

impl Buffers {
    fn new(blocks: usize, keep_idle: Duration) -> Self {
        Self {
            blocks,
            keep_idle,
            idle: Mutex::default(),
            uses: AtomicU64::new(0),
            trimming: AtomicBool::new(false),
            mapped: AtomicUsize::new(0),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Block>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh buffer of `blocks`, a mapping of its own (module docs). Its contents do not
    /// matter: argon2's first pass writes every block before any is read.
    fn map(&self, blocks: usize) -> Vec<Block> {
        self.mapped.fetch_add(1, Relaxed);
        let mut memory: Vec<Block> = Vec::with_capacity(blocks.max(MAPPED_BLOCKS));
        // Before any page is touched, so that they fault in as 2 MiB ones.
        kit::alloc::prefer_huge_pages(&memory);
        memory.resize(blocks, Block::default());
        memory
    }

    /// Runs argon2 into `out` in a buffer of the pool, or of its own when the costs are
    /// larger than the pool's.
    fn compute(&self, argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), String> {
        let blocks = argon2.params().block_count();
        let pooled = blocks <= self.blocks;
        let taken = if pooled { self.idle().pop() } else { None };
        let mut memory = taken.unwrap_or_else(|| self.map(blocks.max(self.blocks)));
        let hashed = argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..]);
        self.uses.fetch_add(1, Relaxed);
        if pooled {
            self.idle().push(memory);
        }
        hashed.map_err(|e| e.to_string())
    }

    /// Drops the idle buffers once `keep_idle` has passed without a hash, from a task that
    /// runs while hashes keep coming and ends with them (so an idle instance has no timer).
    fn trim_later(self: &Arc<Self>) {
        if self.trimming.swap(true, AcqRel) {
            return;
        }
        let buffers = self.clone();
        tokio::spawn(async move {
            loop {
                let seen = buffers.uses.load(Relaxed);
                tokio::time::sleep(buffers.keep_idle).await;
                if buffers.uses.load(Relaxed) != seen {
                    continue;
                }
                drop(std::mem::take(&mut *buffers.idle()));
                buffers.trimming.store(false, std::sync::atomic::Ordering::Release);
                // A hash that ended meanwhile saw a trimmer running and started none.
                if buffers.uses.load(Relaxed) == seen || buffers.trimming.swap(true, AcqRel) {
                    break;
                }
            }
        });
    }
}

fn hash_with(buffers: &Buffers, argon2: &Argon2<'_>, password: &[u8]) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let mut raw_salt = [0u8; 64];
    buffers.compute(
        argon2,
        password,
        salt.as_salt().decode_b64(&mut raw_salt).map_err(|e| e.to_string())?,
        &mut out,
    )?;
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
fn verify_with(buffers: &Buffers, password: &[u8], stored: &str) -> Result<bool, String> {
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
    buffers.compute(&argon2, password, salt, &mut out)?;
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
        let buffers = Buffers::new(params_blocks(256), Duration::from_secs(3600));
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = argon2.hash_password(b"pass123", &salt).unwrap();
        assert!(verify_with(&buffers, b"pass123", &theirs.to_string()).unwrap());
        assert!(!verify_with(&buffers, b"pass12", &theirs.to_string()).unwrap());
        let ours = hash_with(&buffers, &argon2, b"pass123").unwrap();
        assert!(argon2.verify_password(b"pass123", &PasswordHash::new(&ours).unwrap()).is_ok());
        assert!(argon2.verify_password(b"nope", &PasswordHash::new(&ours).unwrap()).is_err());
        // Argon2i hashes verify too: the algorithm comes from the stored string.
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let salt = SaltString::encode_b64(b"saltsaltsalt").unwrap();
        let old = argon2i.hash_password(b"pass123", &salt).unwrap();
        assert!(verify_with(&buffers, b"pass123", &old.to_string()).unwrap());
        // Five hashes, one at a time, at most the pool's size (256 KiB): one buffer.
        assert_eq!(buffers.mapped.load(Relaxed), 1);
        // A stored hash with larger costs gets a buffer of its own, not kept.
        let larger = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(512, 1, 1, None).unwrap());
        let big = larger.hash_password(b"pass123", &salt).unwrap();
        assert!(verify_with(&buffers, b"pass123", &big.to_string()).unwrap());
        assert_eq!((buffers.mapped.load(Relaxed), buffers.idle().len()), (2, 1));
    }

    fn params_blocks(memory_kib: u32) -> usize {
        Params::new(memory_kib, 1, 1, None).unwrap().block_count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffers_are_reused_bounded_by_the_slots_and_dropped_when_idle() {
        let params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };
        let hasher = Arc::new(Hasher::keeping(params, 2, Duration::from_secs(3600)).await.unwrap());
        let hash = hasher.hash("pass123".into()).await.unwrap();
        for _ in 0..3 {
            assert!(hasher.verify(hasher.slot().await.unwrap(), "pass123".into(), Some(hash.clone())).await.unwrap().0);
        }
        assert_eq!(hasher.buffers.mapped.load(Relaxed), 1, "the dummy's buffer served every hash");
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let (hasher, hash) = (hasher.clone(), hash.clone());
                tokio::spawn(async move {
                    let slot = hasher.slot().await.unwrap();
                    hasher.verify(slot, "pass123".into(), Some(hash)).await.unwrap().0
                })
            })
            .collect();
        for verified in burst {
            assert!(verified.await.unwrap());
        }
        let mapped = hasher.buffers.mapped.load(Relaxed);
        assert!((1..=2).contains(&mapped), "at most one buffer per slot, {mapped} mapped");

        let hasher = Hasher::keeping(params, 2, Duration::from_millis(20)).await.unwrap();
        hasher.hash("pass123".into()).await.unwrap();
        kit::testing::eventually(Duration::from_secs(10), "idle buffers dropped", || {
            let empty = hasher.buffers.idle().is_empty() && !hasher.buffers.trimming.load(Relaxed);
            async move { empty.then_some(()) }
        })
        .await;
        // The next hash maps again.
        hasher.hash("pass123".into()).await.unwrap();
        assert_eq!(hasher.buffers.mapped.load(Relaxed), 2);
    }
}

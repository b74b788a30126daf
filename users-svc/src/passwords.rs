//! Password hashing with Argon2id at OWASP's recommended parameters
//! (19 MiB of memory, 2 iterations, 1 lane). Hashing takes tens of
//! milliseconds of CPU by design, so it runs off the async workers.
//!
//! It is bounded: each hash holds 19 MiB while it runs, so unbounded hashing
//! lets a burst of logins (from many clients: the edge's quota is per client)
//! take as much memory as it has calls. [`Hashing`] lets at most
//! `users.passwords.max_concurrent_hashes` hashes run at once, lets up to
//! `max_queued_hashes` more calls wait for a slot, each for at most
//! `queue_timeout_ms`, and refuses every other call at once
//! ([`UsersError::HashingBusy`]) without hashing.
//!
//! The hashes run on threads of their own, at most one per slot (started
//! when first needed, then kept), each with one Argon2 memory of 19 MiB that
//! it reuses, so after a storm the process holds about
//! `max_concurrent_hashes` x 19 MiB for hashing, and no more. On tokio's
//! blocking pool (up to 512 threads, which come and go), with the `argon2`
//! crate allocating and freeing 19 MiB per hash, each thread that had hashed
//! kept its allocator arena: a debug build with 2 slots measured 190 MB after
//! a storm of 200 Logins, against 73 MB this way (55 MB with no hash at all).
//! Without a bound, the same storm took it to 3.9 GB.
//!
//! A hash's slot is taken before the hash is handed over and given back by
//! its thread when it ends, so the bound also holds when the caller goes away
//! mid-hash (a hash cannot be stopped; it keeps its slot until it ends).
//! Refusals show in the service's gRPC metrics
//! (`munity_grpc_server_requests_total{method="Login",code="8"}`) and are
//! logged at warn with their running total.

use std::{
    cell::RefCell,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{self, Output, ParamsString, Salt, SaltString},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{config::PasswordsConfig, error::UsersError};

fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("OWASP Argon2 parameters are valid")
}

thread_local! {
    /// The Argon2 memory of this (hashing) thread, made on its first hash
    /// and reused by the next ones, so each thread holds one, for good.
    /// (`PasswordHasher::hash_password` allocates and frees 19 MiB per hash,
    /// which left each thread's allocator arena holding about three times
    /// that.) Argon2's first pass writes every block before any is read, so
    /// what an earlier hash left there does not matter.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// What `argon2`'s `PasswordHasher::hash_password_customized` computes (the
/// PHC hash of `password` with `salt`), in this thread's [`MEMORY`].
fn argon2_phc<'a>(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: Salt<'a>,
) -> password_hash::Result<PasswordHash<'a>> {
    let mut salt_buffer = [0u8; Salt::MAX_LENGTH];
    let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let output =
        MEMORY.with_borrow_mut(|memory| {
            if memory.len() < blocks {
                memory.resize(blocks, Block::default());
            }
            Output::init_with(output_len, |out| {
                Ok(argon2.hash_password_into_with_memory(
                    password,
                    salt_bytes,
                    out,
                    &mut memory[..],
                )?)
            })
        })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Whether `password` hashes to `stored`'s output with `stored`'s
/// algorithm, version, parameters and salt (as `argon2`'s
/// `PasswordVerifier::verify_password`; outputs compared in constant time).
fn argon2_matches(password: &[u8], stored: &PasswordHash<'_>) -> password_hash::Result<bool> {
    let (Some(salt), Some(expected)) = (stored.salt, &stored.hash) else {
        return Ok(false);
    };
    let algorithm = Algorithm::try_from(stored.algorithm)?;
    let version = stored
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let computed = argon2_phc(
        algorithm,
        version,
        Params::try_from(stored)?,
        password,
        salt,
    )?;
    Ok(computed.hash.as_ref() == Some(expected))
}

/// Bounded password hashing; clones share the bound.
#[derive(Clone)]
pub struct Hashing {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    queue_timeout: Duration,
    /// Calls waiting for a slot now.
    queued: AtomicUsize,
    /// Hashes running now (counted on the hashing thread, around the hash).
    running: AtomicUsize,
    /// The most hashes ever running at once.
    max_running: AtomicUsize,
    hashes: AtomicU64,
    refused: AtomicU64,
    threads: Mutex<Threads>,
}

/// One hash, with its slot.
type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads: they take jobs from one queue, and end when it is
/// dropped (with the last clone of its [`Hashing`]).
struct Threads {
    to_threads: mpsc::Sender<Job>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    started: usize,
}

fn hashing_thread(jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            jobs.recv()
        };
        let Ok(job) = job else { return };
        // A panicking hash (none is expected) fails its call, not the thread.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// What [`Hashing`] has done so far, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingStats {
    /// Hashes running now.
    pub running: usize,
    /// The most hashes that ever ran at once: never above
    /// `max_concurrent_hashes`.
    pub max_running: usize,
    /// Calls waiting for a slot now.
    pub queued: usize,
    /// Hashes started (each Register and Login is one).
    pub hashes: u64,
    /// Calls refused without hashing.
    pub refused: u64,
    /// Hashing threads started: never more than `max_concurrent_hashes`.
    pub threads: usize,
}

/// Why a call was refused a slot.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    QueueFull,
    WaitedTooLong,
}

impl Hashing {
    /// The bound `config` describes (`[users.passwords]`).
    pub fn new(config: &PasswordsConfig) -> anyhow::Result<Self> {
        let max_concurrent = config.max_concurrent();
        anyhow::ensure!(
            max_concurrent <= Semaphore::MAX_PERMITS,
            "users.passwords.max_concurrent_hashes must be at most {}, not {max_concurrent}",
            Semaphore::MAX_PERMITS
        );
        let (to_threads, jobs) = mpsc::channel();
        Ok(Hashing {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max_concurrent)),
                max_concurrent,
                max_queued: config.max_queued(),
                queue_timeout: Duration::from_millis(config.queue_timeout_ms),
                queued: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                hashes: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                threads: Mutex::new(Threads {
                    to_threads,
                    jobs: Arc::new(Mutex::new(jobs)),
                    started: 0,
                }),
            }),
        })
    }

    /// A PHC string for `password`, with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, UsersError> {
        self.run(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| UsersError::Internal(format!("salt: {e}")))?;
            argon2_phc(
                Algorithm::Argon2id,
                Version::V0x13,
                params(),
                password.as_bytes(),
                salt.as_salt(),
            )
            .map(|hash| hash.to_string())
            .map_err(|e| UsersError::Internal(format!("hashing password: {e}")))
        })
        .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such
    /// account) a dummy hash is checked instead, through the same bound, so
    /// that a login for an unknown email takes as long as one with a wrong
    /// password and does not reveal which emails have accounts.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, UsersError> {
        self.run(move || {
            let (stored, real) = match stored {
                Some(stored) => (stored, true),
                None => (dummy_hash().to_owned(), false),
            };
            let parsed = PasswordHash::new(&stored)
                .map_err(|e| UsersError::Internal(format!("stored password hash: {e}")))?;
            // As before: a stored hash that cannot be checked matches nothing.
            let matches = argon2_matches(password.as_bytes(), &parsed).unwrap_or(false);
            Ok(real && matches)
        })
        .await
    }

    /// What it has done so far.
    pub fn stats(&self) -> HashingStats {
        let inner = &self.inner;
        HashingStats {
            running: inner.running.load(Ordering::SeqCst),
            max_running: inner.max_running.load(Ordering::SeqCst),
            queued: inner.queued.load(Ordering::SeqCst),
            hashes: inner.hashes.load(Ordering::SeqCst),
            refused: inner.refused.load(Ordering::SeqCst),
            threads: inner
                .threads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .started,
        }
    }

    /// Runs `work` (one hash) on a hashing thread once it has a slot.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, UsersError> + Send + 'static,
    ) -> Result<T, UsersError> {
        let slot = self.slot().await?;
        let (done, result) = oneshot::channel();
        let inner = self.inner.clone();
        self.hand_over(Box::new(move || {
            // The thread owns the slot: if the caller goes away, the hash
            // still runs to its end, and keeps its slot until then.
            let result = {
                let _running = Running::start(&inner);
                work()
            };
            // Given back before the caller hears, so it sees its hash done.
            drop(slot);
            let _ = done.send(result);
        }))?;
        result
            .await
            .map_err(|_| UsersError::Internal("a hashing thread failed".to_owned()))?
    }

    /// Gives `job` (which holds a slot) to the hashing threads, starting
    /// one more when there are fewer than slots taken (so never more than
    /// `max_concurrent_hashes`).
    fn hand_over(&self, job: Job) -> Result<(), UsersError> {
        let inner = &self.inner;
        let mut threads = inner.threads.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = inner.max_concurrent - inner.slots.available_permits();
        if threads.started < taken {
            let jobs = threads.jobs.clone();
            std::thread::Builder::new()
                .name("users-hashing".to_owned())
                .spawn(move || hashing_thread(&jobs))
                .map_err(|e| UsersError::Internal(format!("starting a hashing thread: {e}")))?;
            threads.started += 1;
        }
        threads
            .to_threads
            .send(job)
            .map_err(|_| UsersError::Internal("the hashing threads are gone".to_owned()))
    }

    /// A free slot now, else a place in the queue and a slot within the
    /// queue timeout, else a refusal.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, UsersError> {
        let inner = &self.inner;
        // The semaphore is fair: with calls waiting, no slot is free here,
        // so this does not jump the queue.
        if let Ok(slot) = inner.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let place = Queued::join(&inner.queued);
        if place.ahead >= inner.max_queued {
            return Err(self.refuse(Refusal::QueueFull));
        }
        match tokio::time::timeout(inner.queue_timeout, inner.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(closed)) => Err(UsersError::Internal(format!("hash slots: {closed}"))),
            Err(_elapsed) => Err(self.refuse(Refusal::WaitedTooLong)),
        }
    }

    fn refuse(&self, reason: Refusal) -> UsersError {
        let inner = &self.inner;
        let refused = inner.refused.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(
            ?reason,
            refused_since_start = refused,
            max_concurrent_hashes = inner.max_concurrent,
            max_queued_hashes = inner.max_queued,
            queue_timeout_ms = inner.queue_timeout.as_millis() as u64,
            "password check refused: too many in progress"
        );
        UsersError::HashingBusy
    }
}

/// A place in the queue, left when dropped (slot taken, refused, or the
/// caller gone).
struct Queued<'a> {
    queued: &'a AtomicUsize,
    /// Calls that were waiting when this one joined.
    ahead: usize,
}

impl<'a> Queued<'a> {
    fn join(queued: &'a AtomicUsize) -> Self {
        let ahead = queued.fetch_add(1, Ordering::SeqCst);
        Queued { queued, ahead }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One hash running, counted from start to end.
struct Running<'a> {
    inner: &'a Inner,
}

impl<'a> Running<'a> {
    fn start(inner: &'a Inner) -> Self {
        inner.hashes.fetch_add(1, Ordering::SeqCst);
        let now = inner.running.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_running.fetch_max(now, Ordering::SeqCst);
        Running { inner }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.inner.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes encode");
        argon2_phc(
            Algorithm::Argon2id,
            Version::V0x13,
            params(),
            &rand::random::<[u8; 32]>(),
            salt.as_salt(),
        )
        .expect("hashing random bytes succeeds")
        .to_string()
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn hashing(max_concurrent: usize, max_queued: usize, queue_timeout_ms: u64) -> Hashing {
        Hashing::new(&PasswordsConfig {
            max_concurrent_hashes: NonZeroUsize::new(max_concurrent),
            max_queued_hashes: Some(max_queued),
            queue_timeout_ms,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let hashing = Hashing::new(&PasswordsConfig::default()).unwrap();
        let stored = hashing.hash("correct horse".to_owned()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hashing
                .verify("correct horse".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hashing
                .verify("wrong horse".into(), Some(stored))
                .await
                .unwrap()
        );
        assert!(!hashing.verify("correct horse".into(), None).await.unwrap());
        let stats = hashing.stats();
        assert_eq!((stats.hashes, stats.refused, stats.running), (4, 0, 0));
    }

    /// Hashing in reused memory gives exactly what the `argon2` crate's own
    /// hasher gives, and each side verifies the other's hashes, also with
    /// other parameters than ours.
    #[test]
    fn reused_memory_hashes_as_the_argon2_crate_does() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let ours_with = |password: &str, salt: &SaltString| {
            argon2_phc(
                Algorithm::Argon2id,
                Version::V0x13,
                params(),
                password.as_bytes(),
                salt.as_salt(),
            )
            .unwrap()
            .to_string()
        };
        let crate_hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        for password in ["correct horse", "another one, longer, with ümlauts"] {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).unwrap();
            let theirs = crate_hasher
                .hash_password(password.as_bytes(), &salt)
                .unwrap()
                .to_string();
            // The second round runs in memory the first one left dirty.
            for _ in 0..2 {
                assert_eq!(ours_with(password, &salt), theirs);
            }
            let theirs = PasswordHash::new(&theirs).unwrap();
            assert!(argon2_matches(password.as_bytes(), &theirs).unwrap());
            assert!(!argon2_matches(b"wrong horse", &theirs).unwrap());
            let ours = ours_with(password, &salt);
            let ours = PasswordHash::new(&ours).unwrap();
            assert!(
                crate_hasher
                    .verify_password(password.as_bytes(), &ours)
                    .is_ok()
            );
        }

        // A hash made with other parameters (and Argon2i) still checks.
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(1024, 1, 2, Some(16)).unwrap(),
        );
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).unwrap();
        let theirs = other.hash_password(b"correct horse", &salt).unwrap();
        assert!(argon2_matches(b"correct horse", &theirs).unwrap());
        assert!(!argon2_matches(b"correct horsf", &theirs).unwrap());
    }

    #[test]
    fn defaults_follow_the_cores() {
        let config = PasswordsConfig::default();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(config.max_concurrent(), cores);
        assert_eq!(config.max_queued(), 4 * cores);
        let two = PasswordsConfig {
            max_concurrent_hashes: NonZeroUsize::new(2),
            ..PasswordsConfig::default()
        };
        assert_eq!(two.max_queued(), 8);
    }

    /// With the only slot taken: one call waits, the next is refused at
    /// once, and the waiter is refused when its wait is over.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_waiters_give_up() {
        let hashing = hashing(1, 1, 200);
        let taken = hashing.slot().await.unwrap();
        let waiter = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.slot().await.map(drop) }
        });
        while hashing.stats().queued == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(hashing.slot().await, Err(UsersError::HashingBusy)));
        assert!(matches!(
            waiter.await.unwrap(),
            Err(UsersError::HashingBusy)
        ));
        assert_eq!(hashing.stats().queued, 0);
        assert_eq!(hashing.stats().refused, 2);

        // A waiter gets the slot when it is given back in time.
        let waiter = tokio::spawn({
            let hashing = hashing.clone();
            async move { hashing.slot().await.map(drop) }
        });
        while hashing.stats().queued == 0 {
            tokio::task::yield_now().await;
        }
        drop(taken);
        waiter.await.unwrap().unwrap();
        assert_eq!(hashing.stats().hashes, 0, "no hash was run");
    }

    /// With no queue, a call that finds every slot taken is refused.
    #[tokio::test]
    async fn no_queue_refuses_when_busy() {
        let hashing = hashing(1, 0, 60_000);
        let _taken = hashing.slot().await.unwrap();
        assert!(matches!(
            hashing.verify("correct horse".into(), None).await,
            Err(UsersError::HashingBusy)
        ));
        assert_eq!(hashing.stats().hashes, 0);
    }
}

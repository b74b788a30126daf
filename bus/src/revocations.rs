//! Following users-svc's revocations on the event log, the same way in
//! every service and in the gateway: [`follow`] fills a
//! [`Revocations`] set that the process's token verifier consults.
//!
//! Every replica must see every revocation, so this is no consumer group
//! (a group shares its events among its members): each process reads the
//! log itself ([`EventLog::read_from`]), keeping its position in memory.
//!
//! Restarts: nothing is persisted. A starting process reads the log again
//! from `auth.revocation_replay_secs` ago (at least the longest token
//! lifetime), which holds every revocation whose tokens could still be
//! used, and [`follow`] returns only once it has read up to the end (or
//! after [`CATCH_UP_LIMIT`], with an error logged, when the log cannot be
//! read): a restarted gateway or service does not serve a revoked token
//! in the meantime. This needs the log to keep at least that much history
//! (`bus.max_len` events); the log is the one source, so persisting a
//! second copy per process would add a place to disagree, not safety.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use munity_platform::{
    auth::{AuthConfig, TokenVerifier},
    config::{BusBackend, BusConfig},
    revocation::Revocations,
    shutdown::ShutdownToken,
};
use munity_proto::users::v1 as pb;
use prost::Message;

use crate::{DomainEvent, EventLog, LogReader, metrics};

/// The event types read; every other event is skipped.
const SESSION_REVOKED: &str = "munity.users.v1.SessionRevoked";
const SUBJECT_REVOKED: &str = "munity.users.v1.SubjectRevoked";

/// How long start-up waits to have read the log's revocations. Past it the
/// process serves anyway (and catches up when the log answers): a log that
/// is down must not keep every service down.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// Events per read.
const BATCH: usize = 500;

/// Opens `[bus]`, follows its revocations into a new set until `shutdown`,
/// and returns the set once what was revoked before now is in it.
/// `process` names the follower in logs and metrics (`users-svc`,
/// `gateway`, ...).
pub async fn follow(
    bus: &BusConfig,
    auth: &AuthConfig,
    process: &str,
    shutdown: &ShutdownToken,
) -> Arc<Revocations> {
    // Every service of `munity dev` follows the same embedded log: one
    // follower (and one set) serves them all, rather than each waking to
    // read and decode every event of the log.
    let shared_key = (bus.backend == BusBackend::Embedded).then(|| SharedKey {
        path: bus.path.clone(),
        capacity: auth.revocation_capacity,
        leeway_secs: auth.leeway_secs,
        replay_secs: auth.revocation_replay_secs,
    });
    let existing = shared_key
        .as_ref()
        .and_then(|key| shared().get(key).and_then(Weak::upgrade));
    if let Some(revocations) = existing {
        return caught_up(revocations, process).await;
    }
    let revocations = Arc::new(Revocations::new(
        auth.revocation_capacity,
        Duration::from_secs(auth.leeway_secs),
    ));
    let log = match crate::open(bus).await {
        Ok(log) => log,
        Err(error) => {
            tracing::error!(
                process,
                %error,
                "the event log cannot be opened; revoked tokens are accepted until they expire"
            );
            return revocations;
        }
    };
    let replay = Duration::from_secs(auth.revocation_replay_secs);
    let follower = match shared_key {
        // A shared follower outlives any one service's shutdown: it runs
        // while someone holds the set.
        Some(key) => {
            // Another service may have started one meanwhile.
            let existing = {
                let mut followers = shared();
                let existing = followers.get(&key).and_then(Weak::upgrade);
                if existing.is_none() {
                    followers.insert(key, Arc::downgrade(&revocations));
                }
                existing
            };
            if let Some(existing) = existing {
                return caught_up(existing, process).await;
            }
            ShutdownToken::new()
        }
        None => shutdown.clone(),
    };
    tokio::spawn(run(
        log,
        Arc::downgrade(&revocations),
        replay,
        process.to_owned(),
        follower,
    ));
    caught_up(revocations, process).await
}

/// `revocations` once what was revoked before now is in it (or after
/// [`CATCH_UP_LIMIT`]).
async fn caught_up(revocations: Arc<Revocations>, process: &str) -> Arc<Revocations> {
    if !revocations.wait_caught_up(CATCH_UP_LIMIT).await {
        tracing::error!(
            process,
            "revocations not read from the event log within {CATCH_UP_LIMIT:?}; serving meanwhile"
        );
    }
    revocations
}

/// What makes two followers of an embedded log interchangeable.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    path: PathBuf,
    capacity: usize,
    leeway_secs: u64,
    replay_secs: u64,
}

/// The process's followers of embedded logs, by what they follow.
fn shared() -> std::sync::MutexGuard<'static, HashMap<SharedKey, Weak<Revocations>>> {
    static SHARED: OnceLock<Mutex<HashMap<SharedKey, Weak<Revocations>>>> = OnceLock::new();
    SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The token verifier of a service that does not issue tokens
/// ([`TokenVerifier::remote`]), refusing revoked tokens as [`follow`] learns
/// of them.
pub async fn remote_verifier(
    bus: &BusConfig,
    auth: &AuthConfig,
    process: &str,
    shutdown: &ShutdownToken,
) -> anyhow::Result<Arc<TokenVerifier>> {
    let verifier = TokenVerifier::from_config(auth)?;
    let revocations = follow(bus, auth, process, shutdown).await;
    Ok(Arc::new(verifier.with_revocations(revocations)))
}

/// Reads the log into `revocations` until `shutdown`, or until nobody
/// holds the set any more.
pub async fn run(
    log: Arc<dyn EventLog>,
    revocations: Weak<Revocations>,
    replay: Duration,
    process: String,
    shutdown: ShutdownToken,
) {
    let gauge = metrics::REVOCATIONS.with_label_values(&[&process]);
    let since_ms = now_ms().saturating_sub(i64::try_from(replay.as_millis()).unwrap_or(i64::MAX));
    let mut failures = 0u32;
    let mut reader: Option<Box<dyn LogReader>> = None;
    let mut last_purge = Instant::now();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let Some(revocations) = revocations.upgrade() else {
            return;
        };
        let current = match reader.as_mut() {
            Some(reader) => reader,
            None => {
                let opened = tokio::select! {
                    () = shutdown.cancelled() => return,
                    opened = log.read_from(since_ms) => opened,
                };
                match opened {
                    Ok(opened) => reader.insert(opened),
                    Err(error) => {
                        failures = warn_and_count(&process, failures, &error);
                        pause(&shutdown, failures).await;
                        continue;
                    }
                }
            }
        };
        // Until caught up, read without waiting: an empty read means the
        // end of the log, i.e. every earlier revocation is known.
        let wait = if revocations.is_caught_up() {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = current.next(BATCH, wait) => read,
        };
        match read {
            Ok(deliveries) => {
                if failures > 0 {
                    tracing::info!(%process, "event log readable again; following revocations");
                }
                failures = 0;
                if deliveries.is_empty() && !revocations.is_caught_up() {
                    tracing::info!(%process, revocations = revocations.len(), "revocations read from the event log");
                    revocations.mark_caught_up();
                }
                for delivery in &deliveries {
                    apply(&revocations, &delivery.event);
                }
            }
            Err(error) => {
                failures = warn_and_count(&process, failures, &error);
                pause(&shutdown, failures).await;
            }
        }
        if last_purge.elapsed() >= Duration::from_secs(60) {
            revocations.purge_expired();
            last_purge = Instant::now();
        }
        gauge.set(revocations.len() as i64);
    }
}

fn warn_and_count(process: &str, failures: u32, error: &crate::BusError) -> u32 {
    if failures == 0 {
        tracing::warn!(
            process,
            %error,
            "cannot read revocations from the event log; retrying"
        );
    }
    failures.saturating_add(1)
}

async fn pause(shutdown: &ShutdownToken, failures: u32) {
    let backoff =
        Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(Duration::from_secs(5));
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(backoff) => {}
    }
}

/// Adds the revocation `event` carries, if it is one (and can be read).
pub fn apply(revocations: &Revocations, event: &DomainEvent) {
    let payload = event.payload.as_slice();
    match event.r#type.as_str() {
        SESSION_REVOKED => match pb::SessionRevoked::decode(payload) {
            Ok(revoked) => {
                revocations.revoke_session(&revoked.session_id, revoked.not_after_ms);
            }
            Err(error) => tracing::warn!(event = %event.id, %error, "unreadable SessionRevoked"),
        },
        SUBJECT_REVOKED => {
            let decoded = pb::SubjectRevoked::decode(payload)
                .map_err(|e| e.to_string())
                .and_then(|revoked| {
                    uuid::Uuid::try_parse(&revoked.subject_id)
                        .map(|subject| (subject, revoked))
                        .map_err(|e| e.to_string())
                });
            match decoded {
                Ok((subject, revoked)) => {
                    revocations.revoke_subject(
                        subject,
                        revoked.revoked_at_ms,
                        revoked.not_after_ms,
                    );
                }
                Err(error) => {
                    tracing::warn!(event = %event.id, %error, "unreadable SubjectRevoked")
                }
            }
        }
        _ => {}
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

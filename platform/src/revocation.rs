//! Access tokens revoked before they expire, as every verifier (each
//! service's and the gateway's) knows them.
//!
//! users-svc publishes a revocation on the domain-event log when a session
//! ends early (Logout, a refresh token presented twice) or when every token
//! of a subject must go (a role change, a disabled service account); each
//! process follows the log (`munity_bus::revocations`) into one
//! [`Revocations`] set, which [`crate::auth::TokenVerifier`] consults on
//! every call, its verified-token cache included, and which ends open
//! server streams of a revoked token ([`Revocations::until_revoked`]).
//!
//! A revocation is kept until the last token it covers has expired (the
//! event's `not_after`, plus the verifiers' leeway): after that the token's
//! own `exp` refuses it. So the set holds at most the revocations of one
//! token lifetime; it is also capped ([`Revocations::new`]), and when full
//! the revocation closest to its end is dropped first.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use uuid::Uuid;

use crate::auth::Claims;

/// Every token of a subject issued before `revoked_at_ms` is void.
#[derive(Debug, Clone, Copy)]
struct SubjectCutoff {
    revoked_at_ms: i64,
    keep_until_ms: i64,
}

/// The revocations a process knows, and whether it has read them all yet.
pub struct Revocations {
    /// Session id (`sid`) → kept until (ms since the Unix epoch).
    sessions: DashMap<String, i64>,
    subjects: DashMap<Uuid, SubjectCutoff>,
    capacity: usize,
    leeway_ms: i64,
    /// Bumped on every new revocation, for streams waiting on theirs.
    changed: tokio::sync::watch::Sender<u64>,
    caught_up: AtomicBool,
    caught_up_signal: tokio::sync::Notify,
}

impl Revocations {
    /// An empty set keeping at most `capacity` revocations, each for
    /// `leeway` past its `not_after` (the verifiers' clock skew on `exp`).
    pub fn new(capacity: usize, leeway: Duration) -> Self {
        Revocations {
            sessions: DashMap::new(),
            subjects: DashMap::new(),
            capacity: capacity.max(1),
            leeway_ms: i64::try_from(leeway.as_millis()).unwrap_or(i64::MAX),
            changed: tokio::sync::watch::channel(0).0,
            caught_up: AtomicBool::new(false),
            caught_up_signal: tokio::sync::Notify::new(),
        }
    }

    /// Refuses the tokens of session `session_id`, until `not_after_ms`
    /// (plus leeway) has passed. Returns false when it had already ended.
    pub fn revoke_session(&self, session_id: &str, not_after_ms: i64) -> bool {
        let keep_until_ms = not_after_ms.saturating_add(self.leeway_ms);
        if keep_until_ms <= now_ms() || session_id.is_empty() {
            return false;
        }
        self.make_room();
        self.sessions
            .entry(session_id.to_owned())
            .and_modify(|until| *until = (*until).max(keep_until_ms))
            .or_insert(keep_until_ms);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// Refuses the tokens of `subject` issued before `revoked_at_ms`, until
    /// `not_after_ms` (plus leeway) has passed. Returns false when it had
    /// already ended.
    pub fn revoke_subject(&self, subject: Uuid, revoked_at_ms: i64, not_after_ms: i64) -> bool {
        let keep_until_ms = not_after_ms.saturating_add(self.leeway_ms);
        if keep_until_ms <= now_ms() {
            return false;
        }
        self.make_room();
        self.subjects
            .entry(subject)
            .and_modify(|cutoff| {
                cutoff.revoked_at_ms = cutoff.revoked_at_ms.max(revoked_at_ms);
                cutoff.keep_until_ms = cutoff.keep_until_ms.max(keep_until_ms);
            })
            .or_insert(SubjectCutoff {
                revoked_at_ms,
                keep_until_ms,
            });
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        true
    }

    /// Whether the token these claims came from is revoked.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        if self.sessions.contains_key(&claims.sid) {
            return true;
        }
        self.subjects
            .get(&claims.sub)
            .is_some_and(|cutoff| issued_at_ms(claims) < cutoff.revoked_at_ms)
    }

    /// Resolves once the token these claims came from is revoked (never, if
    /// it is not): what ends a server stream opened with it.
    pub async fn until_revoked(self: Arc<Self>, claims: Arc<Claims>) {
        let mut changes = self.changed.subscribe();
        loop {
            if self.is_revoked(&claims) {
                return;
            }
            // The sender lives in `self`, which this future holds.
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// How many revocations are kept.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets revocations whose tokens have all expired.
    pub fn purge_expired(&self) {
        let now = now_ms();
        self.sessions.retain(|_, until| *until > now);
        self.subjects.retain(|_, cutoff| cutoff.keep_until_ms > now);
    }

    /// Below capacity before an insert: expired entries go first; if it is
    /// still full, the revocation closest to its end (the one whose tokens
    /// expire soonest) is dropped.
    fn make_room(&self) {
        if self.len() < self.capacity {
            return;
        }
        self.purge_expired();
        while self.len() >= self.capacity {
            let soonest_session = self
                .sessions
                .iter()
                .min_by_key(|e| *e.value())
                .map(|e| (e.key().clone(), *e.value()));
            let soonest_subject = self
                .subjects
                .iter()
                .min_by_key(|e| e.value().keep_until_ms)
                .map(|e| (*e.key(), e.value().keep_until_ms));
            tracing::warn!(
                capacity = self.capacity,
                "revocation set full; dropping the revocation that ends soonest"
            );
            match (soonest_session, soonest_subject) {
                (Some((sid, a)), Some((_, b))) if a <= b => drop(self.sessions.remove(&sid)),
                (Some((sid, _)), None) => drop(self.sessions.remove(&sid)),
                (_, Some((sub, _))) => drop(self.subjects.remove(&sub)),
                (None, None) => return,
            }
        }
    }

    /// Says the log has been read up to its end once: revocations made
    /// before this process started are known.
    pub fn mark_caught_up(&self) {
        self.caught_up.store(true, Ordering::Release);
        self.caught_up_signal.notify_waiters();
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Waits until the log has been read up to its end, at most `limit`;
    /// returns whether it was.
    pub async fn wait_caught_up(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let signal = self.caught_up_signal.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            if self.is_caught_up() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, signal).await.is_err() {
                return self.is_caught_up();
            }
        }
    }
}

/// When a token was issued, in ms: the time in its `jti` when that is a
/// UUIDv7 (as users-svc makes them), else the start of its `iat` second,
/// which errs towards refusing a token issued in the second a subject's
/// tokens were revoked.
pub fn issued_at_ms(claims: &Claims) -> i64 {
    let from_jti = Uuid::try_parse(&claims.jti)
        .ok()
        .filter(|id| id.get_version_num() == 7)
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000)
                .saturating_add(i64::from(nanos / 1_000_000))
        });
    // A jti claiming a time outside its iat second is not trusted.
    let second = claims.iat.saturating_mul(1000);
    match from_jti {
        Some(ms) if ms >= second && ms < second.saturating_add(1000) => ms,
        _ => second,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: Uuid, sid: &str, jti: Uuid, iat: i64) -> Claims {
        Claims {
            sub,
            iss: "munity".into(),
            aud: "munity".into(),
            exp: iat + 900,
            iat,
            jti: jti.to_string(),
            sid: sid.into(),
            roles: vec!["user".into()],
            scope: String::new(),
            act: None,
        }
    }

    #[tokio::test]
    async fn a_revoked_session_is_refused_and_wakes_its_streams() {
        let set = Arc::new(Revocations::new(10, Duration::from_secs(30)));
        let now = now_ms();
        let token = Arc::new(claims(Uuid::now_v7(), "s1", Uuid::now_v7(), now / 1000));
        assert!(!set.is_revoked(&token));
        let waiter = tokio::spawn(set.clone().until_revoked(token.clone()));
        tokio::task::yield_now().await;
        assert!(set.revoke_session("s1", now + 60_000));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the stream's wait ends")
            .unwrap();
        assert!(set.is_revoked(&token));
        // Already over (not_after + leeway passed): not kept.
        assert!(!set.revoke_session("s2", now - 31_000));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_subject_cutoff_spares_tokens_issued_after_it() {
        let set = Revocations::new(10, Duration::ZERO);
        let sub = Uuid::now_v7();
        let before = claims(sub, "a", Uuid::now_v7(), now_ms() / 1000);
        std::thread::sleep(Duration::from_millis(3));
        let cutoff = now_ms();
        std::thread::sleep(Duration::from_millis(3));
        let after_jti = Uuid::now_v7();
        let after = claims(sub, "b", after_jti, issued_second(after_jti));
        set.revoke_subject(sub, cutoff, cutoff + 60_000);
        assert!(set.is_revoked(&before));
        assert!(!set.is_revoked(&after));
        // Without a usable jti, the iat second's start counts: refused.
        let mut vague = after.clone();
        vague.jti = "not-a-uuid".into();
        assert_eq!(set.is_revoked(&vague), vague.iat * 1000 < cutoff);
    }

    fn issued_second(jti: Uuid) -> i64 {
        let (secs, _) = jti.get_timestamp().unwrap().to_unix();
        secs as i64
    }

    #[test]
    fn a_full_set_drops_what_ends_soonest() {
        let set = Revocations::new(2, Duration::ZERO);
        let now = now_ms();
        set.revoke_session("soon", now + 1_000);
        set.revoke_session("late", now + 100_000);
        set.revoke_session("later", now + 200_000);
        assert_eq!(set.len(), 2);
        let probe = |sid: &str| set.is_revoked(&claims(Uuid::nil(), sid, Uuid::nil(), 0));
        assert!(!probe("soon"));
        assert!(probe("late") && probe("later"));
    }
}

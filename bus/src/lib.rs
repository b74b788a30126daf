//! Munity's domain-event log: every service publishes what changed as
//! [`DomainEvent`]s; other services (notify-svc, warehouse-svc, events-svc's
//! own projections) consume them in **consumer groups**.
//!
//! - Appending is ordered: events appended in one call, or by one caller in
//!   turn, are delivered in that order.
//! - Each group sees every event at least once: a delivery stays pending
//!   until its consumer acknowledges it, and deliveries pending longer than
//!   a timeout (their consumer died) can be claimed by another member of
//!   the group. Consumers de-duplicate by [`DomainEvent::id`], so a
//!   redelivery is harmless.
//! - A group created later starts at the oldest event still retained.
//! - Outside groups, a reader ([`EventLog::read_from`]) sees every event:
//!   for state every replica keeps whole (`revocations.rs`).
//!
//! Two backends behind [`EventLog`], one contract suite
//! (`tests/log_contract.rs`) run on both:
//!
//! - `redis.rs`: Redis Streams through fred (XADD with an approximate
//!   MAXLEN, XREADGROUP, XACK, XAUTOCLAIM), for scale-out;
//! - `embedded.rs`: a redb file, for `munity dev`: the file is one
//!   process's, so groups are tracked in memory and each acknowledgement
//!   saves position and pending deliveries without waiting for an fsync: a
//!   restart loses nothing and replays at most what was handed out or
//!   acknowledged in the last moments (consumers are idempotent).
//!
//! Views kept from the log that several services need live here once:
//! `membership.rs` (who is in which community, from users-svc's events).
//!
//! Services publish through the transactional outbox (`outbox.rs`): events
//! are staged in the same transaction as the change they describe, and a
//! relay moves them to the log, so none is lost while the log is down.
//!
//! A crate of its own rather than a module of `munity-platform`, which
//! compiles no storage (the gateway depends on it).

#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod embedded;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod redis;
pub mod revocations;

use std::time::Duration;

use async_trait::async_trait;
pub use munity_proto::domain::v1::DomainEvent;

pub use config::{BusConfig, open};
pub use consumer::ConsumerLoop;
pub use embedded::EmbeddedLog;
pub use redis::RedisLog;

/// Why the log could not do what was asked. Every error is worth retrying
/// later except [`BusError::Corrupt`].
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The backend could not be reached (Redis down, say).
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// Something stored could not be decoded.
    #[error("event log entry {id} cannot be decoded: {reason}")]
    Corrupt { id: String, reason: String },
}

pub type BusResult<T> = Result<T, BusError>;

/// One event delivered to one consumer of a group: acknowledge it by `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The log's own id of the entry (not the event's id).
    pub id: String,
    pub event: DomainEvent,
}

/// The append-only log.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends `events` in order; returns once they are stored.
    async fn append(&self, events: &[DomainEvent]) -> BusResult<()>;

    /// Member `consumer` of `group`, creating the group (at the oldest event
    /// retained) if it is new. Each consumer has what it needs to wait for
    /// events on its own (in Redis, its own connection for blocking reads).
    async fn join(&self, group: &str, consumer: &str) -> BusResult<Box<dyn GroupConsumer>>;

    /// Events the group has not acknowledged: retained and not yet
    /// delivered, plus delivered and pending.
    async fn lag(&self, group: &str) -> BusResult<u64>;

    /// A reader of the whole log outside any group, from about `since_ms`
    /// (ms since the Unix epoch) on: every reader sees every event, which
    /// is what state every replica keeps whole needs (revocations). A
    /// backend may start earlier (the embedded one starts at the oldest
    /// event retained); nothing is acknowledged, and nothing is remembered
    /// across restarts.
    async fn read_from(&self, since_ms: i64) -> BusResult<Box<dyn LogReader>>;
}

/// A reader of the whole log ([`EventLog::read_from`]).
#[async_trait]
pub trait LogReader: Send {
    /// Up to `max` events after the last one read, waiting up to `wait`
    /// for the first (not at all when `wait` is zero).
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>>;
}

/// One member of a consumer group.
#[async_trait]
pub trait GroupConsumer: Send {
    /// Up to `max` events not yet delivered to the group, waiting up to
    /// `wait` for the first one. They stay pending (for this consumer) until
    /// acknowledged.
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>>;

    /// Acknowledges deliveries: the group is done with them.
    async fn ack(&mut self, ids: &[String]) -> BusResult<()>;

    /// Takes over up to `max` deliveries pending for longer than `idle`
    /// (whatever consumer they were delivered to), as if delivered to this
    /// one now.
    async fn claim_stale(&mut self, idle: Duration, max: usize) -> BusResult<Vec<Delivery>>;
}

/// A new event of type `M`, stamped with a fresh time-ordered id and now.
pub fn event<M: prost::Name>(
    source: &str,
    aggregate_id: impl Into<String>,
    subject_ids: Vec<String>,
    payload: &M,
) -> DomainEvent {
    DomainEvent {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: M::full_name(),
        aggregate_id: aggregate_id.into(),
        subject_ids,
        occurred_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        // The call (or storage write) it comes from: the relay's and the
        // consumers' spans join that trace.
        traceparent: munity_platform::telemetry::current_traceparent(),
        payload: payload.encode_to_vec(),
        source: source.to_owned(),
    }
}

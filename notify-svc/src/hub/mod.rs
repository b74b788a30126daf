//! The hub: per-topic history with offsets and an epoch, and live delivery
//! to every replica's subscribers. One trait, two backends, one contract
//! (`tests/hub_contract.rs`):
//!
//! - embedded (`munity dev`): history in redb, live delivery in-process;
//! - Redis (scale-out): history in a stream per topic and offsets from the
//!   topic's hash, both changed by one Lua script (so every replica agrees
//!   on offsets), live delivery by PUBLISH to a channel every replica
//!   subscribes to.
//!
//! Either way a replica delivers live by topic ([`live`]): a notification
//! wakes only the streams that follow its topic.
//!
//! A publish is keyed by its source event id per topic: publishing the same
//! event again (a redelivery from the event log) returns the notification
//! already stored, so consumers need not be exactly-once.

pub mod embedded;
pub mod live;
pub mod redis;

use munity_store::Millis;

pub use live::{Heard, LiveFeed, LiveTopics};

/// One notification, as stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub topic: String,
    pub epoch: String,
    /// From 1, one more per notification of the topic.
    pub offset: u64,
    pub at: Millis,
    /// The payload's message name.
    pub kind: String,
    /// The source event's id (publishes are idempotent by it).
    pub id: String,
    pub payload: Vec<u8>,
}

/// A topic's position: its epoch and last offset (0: none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a resume finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// What came after the position asked for (up to the limit, oldest
    /// first; ask again after the last for more).
    Missed(Vec<Notification>),
    /// History does not reach back there, or the epoch is another: the
    /// client must reload; it goes on from `now`.
    Resync { now: Position, reason: &'static str },
}

impl Recovery {
    /// What every backend answers before reading history: a resync for
    /// another epoch or a position ahead of the topic, nothing missed at
    /// the topic's position; `None`: history must be read.
    pub fn without_history(now: &Position, after: &Position) -> Option<Recovery> {
        if now.epoch != after.epoch {
            return Some(Recovery::Resync {
                now: now.clone(),
                reason: "the topic's history was lost (another epoch)",
            });
        }
        if after.offset > now.offset {
            return Some(Recovery::Resync {
                now: now.clone(),
                reason: "the position is ahead of the topic",
            });
        }
        (after.offset == now.offset).then(|| Recovery::Missed(Vec::new()))
    }

    /// `items` read from history after `after`, or a resync if they do not
    /// start right after it (history was trimmed past it).
    pub fn from_history(now: Position, after: &Position, items: Vec<Notification>) -> Recovery {
        if items.first().is_none_or(|n| n.offset != after.offset + 1) {
            return Recovery::Resync {
                now,
                reason: "history no longer reaches back to the position",
            };
        }
        Recovery::Missed(items)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("notification history unavailable: {0}")]
    Unavailable(String),
    #[error("notification history failed: {0}")]
    Internal(String),
}

pub type HubResult<T> = Result<T, HubError>;

/// One notification to publish ([`Hub::publish_many`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub topic: String,
    /// The source event's id.
    pub id: String,
    pub kind: String,
    pub payload: Vec<u8>,
    pub at: Millis,
}

impl Publication {
    pub fn new(topic: &str, id: &str, kind: &str, payload: &[u8], at: Millis) -> Self {
        Publication {
            topic: topic.to_owned(),
            id: id.to_owned(),
            kind: kind.to_owned(),
            payload: payload.to_vec(),
            at,
        }
    }
}

/// A notification [`Hub::store_many`] stored, or found stored before.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub notification: Notification,
    /// Stored by this call: live subscribers are still to hear of it
    /// ([`Hub::announce`]).
    pub new: bool,
}

#[async_trait::async_trait]
pub trait Hub: Send + Sync + 'static {
    /// Stores the next notification of `topic` and delivers it live on
    /// every replica; the one already stored if `id` was published on
    /// `topic` before.
    async fn publish(
        &self,
        topic: &str,
        id: &str,
        kind: &str,
        payload: &[u8],
        at: Millis,
    ) -> HubResult<Notification> {
        let item = Publication::new(topic, id, kind, payload, at);
        self.publish_many(vec![item])
            .await?
            .pop()
            .ok_or_else(|| HubError::Internal("nothing published".to_owned()))
    }
    /// [`Hub::publish`] of each, in order. On an error some may be
    /// published: publishing again is idempotent.
    async fn publish_many(&self, items: Vec<Publication>) -> HubResult<Vec<Notification>>;
    /// Stores like [`Hub::publish_many`], but tells live subscribers
    /// nothing yet: for notifications something else must record first
    /// (a `user:` topic's go into the user's inbox), so that whoever hears
    /// one live finds it there. [`Hub::announce`] must follow, whatever
    /// happens in between (on the embedded hub, a topic's live delivery
    /// waits for its offsets in order).
    async fn store_many(&self, items: Vec<Publication>) -> HubResult<Vec<Stored>>;
    /// Tells live subscribers, on every replica, of the new notifications
    /// among `stored`. Not failing: a subscriber that missed one finds it in
    /// history when the next arrives.
    async fn announce(&self, stored: &[Stored]);
    /// The topic's position now (a new topic gets its epoch here).
    async fn position(&self, topic: &str) -> HubResult<Position>;
    /// What came after `after` in `topic`, at most `limit`.
    async fn since(&self, topic: &str, after: &Position, limit: usize) -> HubResult<Recovery>;
    /// Live notifications of `topics`, from now on. A stream that falls
    /// too far behind a topic hears [`Heard::Behind`] (and should catch up
    /// from history).
    fn follow(&self, topics: Vec<String>) -> LiveFeed;
}

/// How much history each topic keeps: the last `size` notifications, none
/// older than `ttl_secs` (a topic idle that long loses its history and
/// epoch).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub size: u64,
    pub ttl_secs: u64,
}

/// Topic names: `kind:id`, letters, digits, `-`, `_`, `.`, at most 100
/// characters (so keys and the live wire format need no escaping).
pub fn valid_topic(topic: &str) -> bool {
    topic.len() <= 100
        && topic.split_once(':').is_some_and(|(kind, id)| {
            !kind.is_empty()
                && !id.is_empty()
                && kind.bytes().all(|b| b.is_ascii_lowercase())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// A new epoch: random, short.
pub fn new_epoch() -> String {
    let bytes = uuid::Uuid::new_v4();
    bytes.simple().to_string()[..12].to_owned()
}

/// The notification as clients (and the embedded store) see it.
pub fn to_proto(n: &Notification) -> munity_proto::notify::v1::Notification {
    munity_proto::notify::v1::Notification {
        topic: n.topic.clone(),
        offset: n.offset,
        epoch: n.epoch.clone(),
        at: Some(munity_platform::wire::timestamp(n.at)),
        kind: n.kind.clone(),
        payload: Some(prost_types::Any {
            type_url: format!("type.googleapis.com/{}", n.kind),
            value: n.payload.clone(),
        }),
        event_id: n.id.clone(),
    }
}

pub fn from_proto(n: munity_proto::notify::v1::Notification) -> Notification {
    Notification {
        at: n.at.as_ref().map_or(0, munity_platform::wire::millis),
        payload: n.payload.map(|any| any.value).unwrap_or_default(),
        topic: n.topic,
        offset: n.offset,
        epoch: n.epoch,
        kind: n.kind,
        id: n.event_id,
    }
}

#[cfg(test)]
mod tests {
    use super::valid_topic;

    #[test]
    fn topics_are_kind_colon_id() {
        assert!(valid_topic("event:01a20a96-ba9a-7646-8bc3-46c106d045ca"));
        assert!(valid_topic("user:abc_1.2"));
        for bad in [
            "event",
            "event:",
            ":x",
            "Event:x",
            "event:a|b",
            "event:a b",
            "a:b:c",
        ] {
            assert!(!valid_topic(bad), "{bad}");
        }
        assert!(!valid_topic(&format!("event:{}", "a".repeat(100))));
    }
}

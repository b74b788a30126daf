//! notify-svc's own keys of the `[notify]` section (the shared ones,
//! `listen`, `shutdown_grace_secs`, `storage`, are the platform's).

use serde::{Deserialize, Serialize};

/// Where history and offsets live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HubBackend {
    /// redb under the embedded storage path; live delivery in-process
    /// (one replica: `munity dev`).
    Embedded,
    /// Redis, shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
// No deny_unknown_fields: the section also holds the shared keys; the
// platform refuses keys neither knows, by name.
#[serde(default)]
pub struct NotifyConfig {
    pub hub: HubBackend,
    /// The Redis hub's server and key prefix.
    pub redis_url: String,
    pub redis_prefix: String,
    pub redis_timeout_ms: u64,
    /// Each topic keeps its last `history_size` notifications ...
    pub history_size: u64,
    /// ... and (Redis) loses its history, and gets a new epoch, after this
    /// long without one.
    pub history_ttl_secs: u64,
    /// A heartbeat on every stream idle this long.
    pub heartbeat_secs: u64,
    /// Where events-svc answers (who may follow `event:` and `community:`
    /// topics is its decision).
    pub events_url: String,
    /// Where discuss-svc answers (who may follow a `post:` topic is its
    /// decision).
    pub discuss_url: String,
    /// The consumer group that turns domain events into notifications.
    pub sources_group: String,
    /// Topics one stream may follow.
    pub max_topics_per_stream: usize,
    /// Streams one user may hold open at once.
    pub max_streams_per_user: usize,
    /// How long inbox items are kept.
    pub inbox_ttl_secs: u64,
    /// UnreadCount reads at most this many of the newest items.
    pub inbox_unread_cap: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            hub: HubBackend::Embedded,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_prefix: "munity:notify".to_owned(),
            redis_timeout_ms: 1_000,
            history_size: 1_000,
            history_ttl_secs: 7 * 24 * 3600,
            heartbeat_secs: 15,
            events_url: "http://127.0.0.1:50052".to_owned(),
            discuss_url: "http://127.0.0.1:50055".to_owned(),
            sources_group: "notify-svc.sources".to_owned(),
            max_topics_per_stream: 32,
            max_streams_per_user: 16,
            inbox_ttl_secs: 30 * 24 * 3600,
            inbox_unread_cap: 1_000,
        }
    }
}

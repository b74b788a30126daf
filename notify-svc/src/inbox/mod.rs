//! The inbox: every notification published on `user:<id>` is also kept for
//! that user, with a read mark, for `notify.inbox_ttl_secs`, across
//! restarts. One trait, two backends (redb beside the embedded hub, or the
//! service's CQL keyspace), one contract (`tests/inbox_contract.rs`).
//!
//! Items are ordered newest first by (time, source id); adding the same
//! notification again (a redelivery) changes nothing, not even its read
//! mark.

pub mod cql;
pub mod embedded;

use munity_store::{Millis, StoreResult};
use uuid::Uuid;

use crate::hub::Notification;

/// Where an item sits: its notification's time and source id. Also its
/// public id (`<millis>:<source id>`), and the page cursor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ItemKey {
    pub at: Millis,
    pub id: String,
}

impl ItemKey {
    pub fn of(notification: &Notification) -> Self {
        ItemKey {
            at: notification.at,
            id: notification.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        format!("{}:{}", self.at, self.id)
    }

    /// `None` for anything [`ItemKey::encode`] cannot have made.
    pub fn decode(text: &str) -> Option<Self> {
        let (at, id) = text.split_once(':')?;
        let at: Millis = at.parse().ok()?;
        (at >= 0 && valid_id(id)).then(|| ItemKey {
            at,
            id: id.to_owned(),
        })
    }
}

/// Source ids: 1 to 64 letters, digits, `-`, `_`, `.` (domain event ids
/// are UUIDs; Publish checks its own the same way).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The user a `user:<id>` topic belongs to; `None` for other topics.
pub fn owner_of(topic: &str) -> Option<Uuid> {
    topic.strip_prefix("user:")?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub key: ItemKey,
    pub notification: Notification,
    pub read_at: Option<Millis>,
}

/// How long items are kept, and how far unread counts go.
#[derive(Debug, Clone, Copy)]
pub struct InboxLimits {
    pub ttl_secs: u64,
    /// UnreadCount stops counting here (it reads at most this many items).
    pub count_cap: usize,
}

impl InboxLimits {
    pub fn ttl_ms(&self) -> Millis {
        Millis::try_from(self.ttl_secs.saturating_mul(1000)).unwrap_or(Millis::MAX)
    }

    /// When an item of time `at` stops being kept.
    pub fn expires_at(&self, at: Millis) -> Millis {
        at.saturating_add(self.ttl_ms())
    }
}

#[async_trait::async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Keeps `notification` for `user`; again is a no-op.
    async fn add(&self, user: Uuid, notification: &Notification) -> StoreResult<()>;
    /// Newest first, older than `before` (exclusive) when given; at most
    /// `limit`; only unread ones if `unread_only`.
    async fn list(
        &self,
        user: Uuid,
        before: Option<&ItemKey>,
        limit: usize,
        unread_only: bool,
    ) -> StoreResult<Vec<InboxItem>>;
    /// Marks these items read at `at` (unknown ones and ones read already
    /// are left alone).
    async fn mark_read(&self, user: Uuid, keys: &[ItemKey], at: Millis) -> StoreResult<()>;
    /// Marks every item read at `at`.
    async fn mark_all_read(&self, user: Uuid, at: Millis) -> StoreResult<()>;
    /// Unread items, counted up to the count cap.
    async fn unread(&self, user: Uuid) -> StoreResult<u64>;
}

/// Opens the inbox on the service's storage.
pub async fn open(
    storage: &munity_platform::config::StorageConfig,
    limits: InboxLimits,
) -> anyhow::Result<std::sync::Arc<dyn Inbox>> {
    use munity_platform::config::StorageConfig;
    Ok(match storage {
        StorageConfig::Embedded { path } => {
            std::sync::Arc::new(embedded::EmbeddedInbox::open(path, limits)?)
        }
        StorageConfig::Cql(config) => {
            std::sync::Arc::new(cql::CqlInbox::connect(config, limits).await?)
        }
    })
}

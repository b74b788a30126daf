//! The bot's own store: one trait, two backends (`embedded` redb,
//! `cql` ScyllaDB), one contract (`tests/store_contract.rs`).
//!
//! - links: which chat acts for which user (a copy of users-svc's, which
//!   stays the authority: every call exchanges a token there);
//! - the Telegram update offset, so a restart does not handle an update
//!   twice;
//! - notification positions per user and topic (epoch, offset), so
//!   following resumes where it stopped;
//! - the sent-log (chat, notification id): a notification is queued for a
//!   chat at most once, in the same write as the queue entry;
//! - the durable outgoing queue, sent in order per chat, with a mark on an
//!   entry while it is being sent (see `sender.rs`: what a crash mid-send
//!   does to it).

pub mod cql;
pub mod embedded;

use std::sync::Arc;

use munity_platform::config::StorageConfig;
pub use munity_store::{StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub chat_id: i64,
    pub text: String,
    /// Inline keyboard rows of (label, callback data); empty: none.
    #[serde(default)]
    pub buttons: Vec<Vec<(String, String)>>,
}

/// A queued message and its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub message: Outgoing,
    /// A send was begun ([`BotStore::begin_send`]) and never acknowledged:
    /// the process died while Telegram may or may not have got it.
    pub attempted: bool,
}

/// Where a user's notifications were followed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

#[async_trait::async_trait]
pub trait BotStore: Send + Sync + 'static {
    /// Binds (or rebinds) a chat to a user.
    async fn put_link(&self, chat_id: i64, user_id: Uuid) -> StoreResult<()>;
    /// Returns whether there was a link.
    async fn remove_link(&self, chat_id: i64) -> StoreResult<bool>;
    async fn get_link(&self, chat_id: i64) -> StoreResult<Option<Uuid>>;
    /// Every link as (chat, user), ordered by chat.
    async fn list_links(&self) -> StoreResult<Vec<(i64, Uuid)>>;
    /// The chats linked to `user_id`, ordered (a follower's question, per
    /// notification: it reads this user's links, not every link).
    async fn chats_of(&self, user_id: Uuid) -> StoreResult<Vec<i64>>;

    /// The next Telegram update id to ask for (0: none handled yet).
    async fn update_offset(&self) -> StoreResult<i64>;
    async fn set_update_offset(&self, offset: i64) -> StoreResult<()>;

    /// Where `user_id`'s follower is in `topic`.
    async fn position(&self, user_id: Uuid, topic: &str) -> StoreResult<Option<Position>>;
    async fn set_position(
        &self,
        user_id: Uuid,
        topic: &str,
        position: &Position,
    ) -> StoreResult<()>;

    /// Queues `message`; with a `dedup` key (a notification id), only when
    /// that key was never queued for the chat before: the sent-log entry
    /// and the queue entry are written together. Returns whether it was
    /// queued.
    async fn enqueue(&self, message: &Outgoing, dedup: Option<&str>) -> StoreResult<bool>;
    /// The oldest `limit` queued messages, in queue order.
    async fn pending(&self, limit: usize) -> StoreResult<Vec<Queued>>;
    /// Marks a queued message as being sent, durably, before it is handed
    /// to Telegram (the intent; `pending` reports it as `attempted`).
    async fn begin_send(&self, seq: u64) -> StoreResult<()>;
    /// Takes the mark off again: the send surely did not reach Telegram
    /// (refused with a 429, or no connection was made).
    async fn abandon_send(&self, seq: u64) -> StoreResult<()>;
    /// Removes a sent message (and its mark) from the queue.
    async fn ack(&self, seq: u64) -> StoreResult<()>;
    /// Messages in the queue.
    async fn queue_len(&self) -> StoreResult<u64>;
}

/// Opens the configured backend.
pub async fn open(storage: &StorageConfig) -> anyhow::Result<Arc<dyn BotStore>> {
    Ok(match storage {
        StorageConfig::Embedded { path } => Arc::new(embedded::EmbeddedStore::open(path)?),
        StorageConfig::Cql(config) => Arc::new(cql::CqlStore::connect(config).await?),
    })
}

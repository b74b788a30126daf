//! The embedded inbox: `inbox.redb` beside the hub's file. Key: user ‖
//! time (big-endian) ‖ source id, read backwards for newest first (the
//! same order as CQL's `(at DESC, id DESC)`). Expired items are hidden at
//! once and removed when their user next gets an item.

use std::{ops::Bound, path::Path};

use munity_store::{
    Millis, StoreResult,
    embedded::{EmbeddedDb, decode, encode},
    internal, now_millis,
};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Inbox, InboxItem, InboxLimits, ItemKey};
use crate::hub::{Notification, from_proto, to_proto};

/// user ‖ at ‖ id → [`Stored`].
const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("inbox");

#[derive(Serialize, Deserialize)]
struct Stored {
    read_at: Option<Millis>,
    /// The notification's protobuf.
    notification: Vec<u8>,
}

fn item_key(user: Uuid, at: Millis, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + 8 + id.len());
    key.extend_from_slice(user.as_bytes());
    key.extend_from_slice(&u64::try_from(at.max(0)).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Past every key of `user` (times never reach `u64::MAX`).
fn user_end(user: Uuid) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.extend_from_slice(&[0xff; 9]);
    key
}

fn item_from(stored: Stored) -> StoreResult<InboxItem> {
    let notification = from_proto(
        munity_proto::notify::v1::Notification::decode(stored.notification.as_slice())
            .map_err(internal)?,
    );
    Ok(InboxItem {
        key: ItemKey::of(&notification),
        notification,
        read_at: stored.read_at,
    })
}

pub struct EmbeddedInbox {
    db: EmbeddedDb,
    limits: InboxLimits,
}

impl EmbeddedInbox {
    /// Opens (or creates) `dir/inbox.redb`.
    pub fn open(dir: &Path, limits: InboxLimits) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "inbox", |txn| {
            txn.open_table(ITEMS)?;
            Ok(())
        })?;
        Ok(EmbeddedInbox { db, limits })
    }

    /// The oldest time still kept.
    fn kept_from(limits: InboxLimits) -> Millis {
        now_millis().saturating_sub(limits.ttl_ms())
    }

    /// Marks read at `at` the unexpired unread items of `user` named by
    /// `keys`, or all of them, in one write transaction.
    async fn mark(&self, user: Uuid, keys: Option<Vec<Vec<u8>>>, at: Millis) -> StoreResult<()> {
        let kept_from = item_key(user, Self::kept_from(self.limits), "");
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(ITEMS).map_err(internal)?;
                let keys = match keys {
                    Some(keys) => keys,
                    None => table
                        .range::<&[u8]>(kept_from.as_slice()..user_end(user).as_slice())
                        .map_err(internal)?
                        .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
                        .collect::<Result<_, _>>()
                        .map_err(internal)?,
                };
                for key in keys {
                    if key < kept_from {
                        continue;
                    }
                    let Some(mut stored) = table
                        .get(key.as_slice())
                        .map_err(internal)?
                        .map(|v| decode::<Stored>(v.value()))
                        .transpose()?
                    else {
                        continue;
                    };
                    if stored.read_at.is_none() {
                        stored.read_at = Some(at);
                        table
                            .insert(key.as_slice(), encode(&stored)?.as_slice())
                            .map_err(internal)?;
                    }
                }
                Ok(())
            })
            .await
    }
}

#[async_trait::async_trait]
impl Inbox for EmbeddedInbox {
    async fn add(&self, user: Uuid, notification: &Notification) -> StoreResult<()> {
        let key = item_key(user, notification.at, &notification.id);
        let value = encode(&Stored {
            read_at: None,
            notification: to_proto(notification).encode_to_vec(),
        })?;
        let kept_from = Self::kept_from(self.limits);
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(ITEMS).map_err(internal)?;
                if table.get(key.as_slice()).map_err(internal)?.is_some() {
                    return Ok(()); // a redelivery: keep the read mark
                }
                table
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(internal)?;
                // This user's expired items go now (a bounded number per
                // add, so one add never does unbounded work).
                let start = item_key(user, 0, "");
                let end = item_key(user, kept_from, "");
                let expired: Vec<Vec<u8>> = table
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(internal)?
                    .take(64)
                    .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(internal)?;
                for key in expired {
                    table.remove(key.as_slice()).map_err(internal)?;
                }
                Ok(())
            })
            .await
    }

    async fn list(
        &self,
        user: Uuid,
        before: Option<&ItemKey>,
        limit: usize,
        unread_only: bool,
    ) -> StoreResult<Vec<InboxItem>> {
        let end = match before {
            Some(key) => Bound::Excluded(item_key(user, key.at, &key.id)),
            None => Bound::Excluded(user_end(user)),
        };
        let start = Bound::Included(item_key(user, Self::kept_from(self.limits), ""));
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(ITEMS).map_err(internal)?;
                let range = (
                    start.as_ref().map(Vec::as_slice),
                    end.as_ref().map(Vec::as_slice),
                );
                let mut items = Vec::new();
                for entry in table.range::<&[u8]>(range).map_err(internal)?.rev() {
                    let (_, value) = entry.map_err(internal)?;
                    let stored: Stored = decode(value.value())?;
                    if unread_only && stored.read_at.is_some() {
                        continue;
                    }
                    items.push(item_from(stored)?);
                    if items.len() >= limit {
                        break;
                    }
                }
                Ok(items)
            })
            .await
    }

    async fn mark_read(&self, user: Uuid, keys: &[ItemKey], at: Millis) -> StoreResult<()> {
        let keys = keys.iter().map(|k| item_key(user, k.at, &k.id)).collect();
        self.mark(user, Some(keys), at).await
    }

    async fn mark_all_read(&self, user: Uuid, at: Millis) -> StoreResult<()> {
        self.mark(user, None, at).await
    }

    async fn unread(&self, user: Uuid) -> StoreResult<u64> {
        let start = item_key(user, Self::kept_from(self.limits), "");
        let end = user_end(user);
        let cap = self.limits.count_cap;
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(ITEMS).map_err(internal)?;
                let mut unread = 0u64;
                for entry in table
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(internal)?
                    .rev()
                    .take(cap)
                {
                    let (_, value) = entry.map_err(internal)?;
                    if decode::<Stored>(value.value())?.read_at.is_none() {
                        unread += 1;
                    }
                }
                Ok(unread)
            })
            .await
    }
}

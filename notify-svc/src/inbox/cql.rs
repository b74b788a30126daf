//! The CQL inbox: one partition per user, newest first. An item is written
//! `USING TTL` until it expires; its read mark is a column of its own that
//! only MarkRead writes (with the same expiry), so adding the item again
//! (a redelivery) never clears it.

use munity_platform::config::CqlConfig;
use munity_store::{
    Millis, StoreResult,
    cql::{CqlStore, ts, ttl_until},
    internal, now_millis,
};
use prost::Message;
use scylla::{statement::prepared::PreparedStatement, value::CqlTimestamp};
use uuid::Uuid;

use super::{Inbox, InboxItem, InboxLimits, ItemKey};
use crate::hub::{Notification, from_proto, to_proto};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS inbox (user_id uuid, at timestamp, id text, \
     notification blob, read_at timestamp, PRIMARY KEY (user_id, at, id)) \
     WITH CLUSTERING ORDER BY (at DESC, id DESC)",
];

/// Rows read per round trip when scanning a partition.
const SCAN: usize = 500;

struct Statements {
    add: PreparedStatement,
    first: PreparedStatement,
    after: PreparedStatement,
    get: PreparedStatement,
    mark: PreparedStatement,
    marks_first: PreparedStatement,
    marks_after: PreparedStatement,
}

pub struct CqlInbox {
    cql: CqlStore,
    s: Statements,
    limits: InboxLimits,
}

type ItemRow = (CqlTimestamp, String, Option<Vec<u8>>, Option<CqlTimestamp>);
type MarkRow = (CqlTimestamp, String, Option<CqlTimestamp>);

impl CqlInbox {
    pub async fn connect(config: &CqlConfig, limits: InboxLimits) -> anyhow::Result<Self> {
        let cql = CqlStore::connect(config, SCHEMA).await?;
        let p = |statement: &'static str| cql.prepare(statement);
        let s = Statements {
            add: p("INSERT INTO inbox (user_id, at, id, notification) VALUES (?, ?, ?, ?) USING TTL ?").await?,
            first: p("SELECT at, id, notification, read_at FROM inbox WHERE user_id = ? LIMIT ?").await?,
            after: p("SELECT at, id, notification, read_at FROM inbox WHERE user_id = ? AND (at, id) < (?, ?) LIMIT ?").await?,
            get: p("SELECT notification, read_at FROM inbox WHERE user_id = ? AND at = ? AND id = ?").await?,
            mark: p("UPDATE inbox USING TTL ? SET read_at = ? WHERE user_id = ? AND at = ? AND id = ?").await?,
            marks_first: p("SELECT at, id, read_at FROM inbox WHERE user_id = ? LIMIT ?").await?,
            marks_after: p("SELECT at, id, read_at FROM inbox WHERE user_id = ? AND (at, id) < (?, ?) LIMIT ?").await?,
        };
        Ok(CqlInbox { cql, s, limits })
    }

    fn expired(&self, at: Millis) -> bool {
        self.limits.expires_at(at) <= now_millis()
    }

    /// One page of a user's rows after `before`.
    async fn rows(
        &self,
        user: Uuid,
        before: Option<&ItemKey>,
        limit: usize,
    ) -> StoreResult<Vec<ItemRow>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        match before {
            None => self.cql.rows(&self.s.first, (user, limit)).await,
            Some(key) => {
                self.cql
                    .rows(&self.s.after, (user, ts(key.at), &key.id, limit))
                    .await
            }
        }
    }

    async fn set_read(&self, user: Uuid, key: &ItemKey, at: Millis) -> StoreResult<()> {
        let ttl = ttl_until(self.limits.expires_at(key.at));
        self.cql
            .execute(&self.s.mark, (ttl, ts(at), user, ts(key.at), &key.id))
            .await
            .map(drop)
    }
}

#[async_trait::async_trait]
impl Inbox for CqlInbox {
    async fn add(&self, user: Uuid, notification: &Notification) -> StoreResult<()> {
        if self.expired(notification.at) {
            return Ok(());
        }
        let ttl = ttl_until(self.limits.expires_at(notification.at));
        self.cql
            .execute(
                &self.s.add,
                (
                    user,
                    ts(notification.at),
                    &notification.id,
                    to_proto(notification).encode_to_vec(),
                    ttl,
                ),
            )
            .await
            .map(drop)
    }

    async fn list(
        &self,
        user: Uuid,
        before: Option<&ItemKey>,
        limit: usize,
        unread_only: bool,
    ) -> StoreResult<Vec<InboxItem>> {
        let mut items = Vec::new();
        let mut cursor = before.cloned();
        // Unread ones may be sparse: read on until the page is full, the
        // partition ends, or the count cap's worth of rows was read.
        let mut budget = self.limits.count_cap.max(limit);
        loop {
            let want = if unread_only {
                SCAN
            } else {
                limit - items.len()
            };
            let rows = self.rows(user, cursor.as_ref(), want).await?;
            let done = rows.len() < want;
            for (at, id, notification, read_at) in rows {
                cursor = Some(ItemKey { at: at.0, id });
                budget = budget.saturating_sub(1);
                // A row with no notification is a read mark that outlived
                // its item by a moment: not an item.
                let Some(notification) = notification else {
                    continue;
                };
                if self.expired(at.0) || (unread_only && read_at.is_some()) {
                    continue;
                }
                let notification = from_proto(
                    munity_proto::notify::v1::Notification::decode(notification.as_slice())
                        .map_err(internal)?,
                );
                items.push(InboxItem {
                    key: ItemKey::of(&notification),
                    notification,
                    read_at: read_at.map(|t| t.0),
                });
                if items.len() >= limit {
                    return Ok(items);
                }
            }
            if done || budget == 0 {
                return Ok(items);
            }
        }
    }

    async fn mark_read(&self, user: Uuid, keys: &[ItemKey], at: Millis) -> StoreResult<()> {
        for key in keys {
            if self.expired(key.at) {
                continue;
            }
            // Only items that exist and are unread: an UPDATE alone would
            // make a row for any key a client names.
            let row: Option<(Option<Vec<u8>>, Option<CqlTimestamp>)> = self
                .cql
                .maybe_row(&self.s.get, (user, ts(key.at), &key.id))
                .await?;
            if let Some((Some(_), None)) = row {
                self.set_read(user, key, at).await?;
            }
        }
        Ok(())
    }

    async fn mark_all_read(&self, user: Uuid, at: Millis) -> StoreResult<()> {
        let mut cursor: Option<ItemKey> = None;
        let scan = i32::try_from(SCAN).unwrap_or(i32::MAX);
        loop {
            let rows: Vec<MarkRow> = match &cursor {
                None => self.cql.rows(&self.s.marks_first, (user, scan)).await?,
                Some(key) => {
                    self.cql
                        .rows(&self.s.marks_after, (user, ts(key.at), &key.id, scan))
                        .await?
                }
            };
            let done = rows.len() < SCAN;
            for (at_ts, id, read_at) in rows {
                let key = ItemKey { at: at_ts.0, id };
                if read_at.is_none() && !self.expired(key.at) {
                    self.set_read(user, &key, at).await?;
                }
                cursor = Some(key);
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn unread(&self, user: Uuid) -> StoreResult<u64> {
        let cap = i32::try_from(self.limits.count_cap).unwrap_or(i32::MAX);
        let rows: Vec<MarkRow> = self.cql.rows(&self.s.marks_first, (user, cap)).await?;
        Ok(rows
            .iter()
            .filter(|(at, _, read_at)| read_at.is_none() && !self.expired(at.0))
            .count() as u64)
    }
}

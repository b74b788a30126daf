//! Chat links and link codes on ScyllaDB (the Telegram bot's linking).
//!
//! - `link_codes`: by code hash, `USING TTL` until expiry; taken by
//!   `DELETE ... IF EXISTS`, so of two redemptions racing one wins.
//! - `link_failures`: a chat's wrong codes, a row each with the window as
//!   its TTL, counted by clustering range (the guessing limit).
//! - `chat_links` (by chat: the one authoritative row) and
//!   `chat_links_by_user` (a user's chats; entries are checked against
//!   `chat_links` when listed, so a stale one is never shown).

use munity_store::cql::{CqlStore as Cql, ts, ttl_until};
use scylla::{DeserializeRow, statement::prepared::PreparedStatement, value::CqlTimestamp};
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::{ChatLinkRecord, LinkCodeRecord, Millis};

/// Tables, each statement idempotent.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS link_codes (
        code_hash text PRIMARY KEY,
        user_id uuid,
        expires_at timestamp)",
    "CREATE TABLE IF NOT EXISTS link_failures (
        chat_id bigint,
        at timestamp,
        id uuid,
        PRIMARY KEY ((chat_id), at, id))",
    "CREATE TABLE IF NOT EXISTS chat_links (
        chat_id bigint PRIMARY KEY,
        user_id uuid,
        linked_at timestamp)",
    "CREATE TABLE IF NOT EXISTS chat_links_by_user (
        user_id uuid,
        chat_id bigint,
        PRIMARY KEY ((user_id), chat_id))",
];

pub(super) struct LinkStatements {
    insert_code: PreparedStatement,
    get_code: PreparedStatement,
    delete_code: PreparedStatement,
    count_failures: PreparedStatement,
    insert_failure: PreparedStatement,
    insert_link: PreparedStatement,
    get_link: PreparedStatement,
    delete_link_if: PreparedStatement,
    insert_by_user: PreparedStatement,
    delete_by_user: PreparedStatement,
    list_by_user: PreparedStatement,
}

#[derive(DeserializeRow)]
struct CodeRow {
    code_hash: String,
    user_id: Uuid,
    expires_at: CqlTimestamp,
}

#[derive(DeserializeRow)]
struct LinkRow {
    chat_id: i64,
    user_id: Uuid,
    linked_at: CqlTimestamp,
}

impl From<LinkRow> for ChatLinkRecord {
    fn from(row: LinkRow) -> Self {
        ChatLinkRecord {
            chat_id: row.chat_id,
            user_id: row.user_id,
            linked_at: row.linked_at.0,
        }
    }
}

impl LinkStatements {
    pub(super) async fn prepare(cql: &Cql) -> anyhow::Result<Self> {
        Ok(LinkStatements {
            insert_code: cql.prepare("INSERT INTO link_codes (code_hash, user_id, expires_at) VALUES (?, ?, ?) IF NOT EXISTS USING TTL ?").await?,
            get_code: cql.prepare("SELECT code_hash, user_id, expires_at FROM link_codes WHERE code_hash = ?").await?,
            delete_code: cql.prepare("DELETE FROM link_codes WHERE code_hash = ? IF EXISTS").await?,
            count_failures: cql.prepare("SELECT COUNT(*) FROM link_failures WHERE chat_id = ? AND at > ?").await?,
            insert_failure: cql.prepare("INSERT INTO link_failures (chat_id, at, id) VALUES (?, ?, ?) USING TTL ?").await?,
            insert_link: cql.prepare("INSERT INTO chat_links (chat_id, user_id, linked_at) VALUES (?, ?, ?)").await?,
            get_link: cql.prepare("SELECT chat_id, user_id, linked_at FROM chat_links WHERE chat_id = ?").await?,
            delete_link_if: cql.prepare("DELETE FROM chat_links WHERE chat_id = ? IF user_id = ?").await?,
            insert_by_user: cql.prepare("INSERT INTO chat_links_by_user (user_id, chat_id) VALUES (?, ?)").await?,
            delete_by_user: cql.prepare("DELETE FROM chat_links_by_user WHERE user_id = ? AND chat_id = ?").await?,
            list_by_user: cql.prepare("SELECT chat_id FROM chat_links_by_user WHERE user_id = ?").await?,
        })
    }

    pub(super) async fn insert_code(&self, cql: &Cql, code: &LinkCodeRecord) -> StoreResult<()> {
        let applied = cql
            .execute_lwt(
                &self.insert_code,
                (
                    &code.code_hash,
                    code.user_id,
                    ts(code.expires_at),
                    ttl_until(code.expires_at),
                ),
            )
            .await?;
        if applied {
            Ok(())
        } else {
            Err(StoreError::Conflict("link code"))
        }
    }

    pub(super) async fn take_code(
        &self,
        cql: &Cql,
        code_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<LinkCodeRecord>> {
        let Some(row) = cql
            .maybe_row::<CodeRow>(&self.get_code, (code_hash,))
            .await?
        else {
            return Ok(None);
        };
        // The delete decides: of two callers that both read the row, one
        // deletes it.
        if !cql.execute_lwt(&self.delete_code, (code_hash,)).await? {
            return Ok(None);
        }
        let code = LinkCodeRecord {
            code_hash: row.code_hash,
            user_id: row.user_id,
            expires_at: row.expires_at.0,
        };
        Ok((code.expires_at > now).then_some(code))
    }

    pub(super) async fn failures(
        &self,
        cql: &Cql,
        chat_id: i64,
        now: Millis,
        window: Millis,
    ) -> StoreResult<u32> {
        let row: Option<(i64,)> = cql
            .maybe_row(&self.count_failures, (chat_id, ts(now - window)))
            .await?;
        Ok(row.map_or(0, |(n,)| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    pub(super) async fn record_failure(
        &self,
        cql: &Cql,
        chat_id: i64,
        now: Millis,
        window: Millis,
    ) -> StoreResult<()> {
        cql.execute(
            &self.insert_failure,
            (chat_id, ts(now), Uuid::now_v7(), ttl_until(now + window)),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn get_link(
        &self,
        cql: &Cql,
        chat_id: i64,
    ) -> StoreResult<Option<ChatLinkRecord>> {
        Ok(cql
            .maybe_row::<LinkRow>(&self.get_link, (chat_id,))
            .await?
            .map(ChatLinkRecord::from))
    }

    pub(super) async fn put_link(&self, cql: &Cql, link: &ChatLinkRecord) -> StoreResult<()> {
        if let Some(old) = self.get_link(cql, link.chat_id).await?
            && old.user_id != link.user_id
        {
            cql.execute(&self.delete_by_user, (old.user_id, old.chat_id))
                .await?;
        }
        // The index entry first: a link without one would be missing from
        // the user's list (and from Unlink-all); an entry without a link is
        // skipped when listed.
        cql.execute(&self.insert_by_user, (link.user_id, link.chat_id))
            .await?;
        cql.execute(
            &self.insert_link,
            (link.chat_id, link.user_id, ts(link.linked_at)),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn list_links(
        &self,
        cql: &Cql,
        user_id: Uuid,
    ) -> StoreResult<Vec<ChatLinkRecord>> {
        let chats: Vec<(i64,)> = cql.rows(&self.list_by_user, (user_id,)).await?;
        let mut links = Vec::with_capacity(chats.len());
        for (chat_id,) in chats {
            if let Some(link) = self.get_link(cql, chat_id).await?
                && link.user_id == user_id
            {
                links.push(link);
            }
        }
        Ok(links)
    }

    pub(super) async fn delete_link(
        &self,
        cql: &Cql,
        chat_id: i64,
        user_id: Option<Uuid>,
    ) -> StoreResult<bool> {
        let Some(link) = self.get_link(cql, chat_id).await? else {
            return Ok(false);
        };
        if user_id.is_some_and(|user| user != link.user_id) {
            return Ok(false);
        }
        let removed = cql
            .execute_lwt(&self.delete_link_if, (chat_id, link.user_id))
            .await?;
        if removed {
            cql.execute(&self.delete_by_user, (link.user_id, chat_id))
                .await?;
        }
        Ok(removed)
    }
}

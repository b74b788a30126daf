//! The ScyllaDB backend.
//!
//! The queue is one partition clustered by sequence number (one sender per
//! keyspace; the numbers are microseconds since the epoch, kept increasing
//! by this process). The sent-log entry of a notification holds the
//! sequence number of its queue entry and whether that entry was written:
//! its `IF NOT EXISTS` decides who queues it, and a writer that died between
//! the two writes is finished by the next attempt (the same sequence
//! number, so the queue entry is written once).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use munity_platform::config::CqlConfig;
use munity_store::{
    StoreError, StoreResult,
    cql::CqlStore as Cql,
    embedded::{decode, encode},
    now_millis,
};
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

use super::{BotStore, Outgoing, Position, Queued};

/// Set in `meta` once `links_by_user` holds every link.
const CHATS_INDEXED: &str = "links_by_user_indexed";

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS links (chat_id bigint PRIMARY KEY, user_id uuid)",
    "CREATE TABLE IF NOT EXISTS meta (name text PRIMARY KEY, value bigint)",
    // The links by user. `links` decides: an entry here whose chat is now
    // linked to someone else (a writer died between the two writes) is
    // skipped when read.
    "CREATE TABLE IF NOT EXISTS links_by_user (
        user_id uuid,
        chat_id bigint,
        PRIMARY KEY ((user_id), chat_id))",
    "CREATE TABLE IF NOT EXISTS positions (
        user_id uuid,
        topic text,
        epoch text,
        offset bigint,
        PRIMARY KEY ((user_id), topic))",
    "CREATE TABLE IF NOT EXISTS sent_log (
        chat_id bigint,
        key text,
        seq bigint,
        queued boolean,
        PRIMARY KEY ((chat_id), key))",
    "CREATE TABLE IF NOT EXISTS outgoing (
        shard int,
        seq bigint,
        message blob,
        PRIMARY KEY ((shard), seq))",
    // Queue entries whose send was begun (a table of its own, so that
    // keyspaces made before it get it from `IF NOT EXISTS`).
    "CREATE TABLE IF NOT EXISTS outgoing_attempts (
        shard int,
        seq bigint,
        PRIMARY KEY ((shard), seq))",
];

struct Statements {
    put_link: PreparedStatement,
    get_link: PreparedStatement,
    delete_link: PreparedStatement,
    list_links: PreparedStatement,
    put_user_chat: PreparedStatement,
    delete_user_chat: PreparedStatement,
    chats_of: PreparedStatement,
    get_meta: PreparedStatement,
    set_meta: PreparedStatement,
    get_position: PreparedStatement,
    set_position: PreparedStatement,
    claim_sent: PreparedStatement,
    get_sent: PreparedStatement,
    mark_queued: PreparedStatement,
    insert_queue: PreparedStatement,
    pending: PreparedStatement,
    ack: PreparedStatement,
    count: PreparedStatement,
    begin_send: PreparedStatement,
    abandon_send: PreparedStatement,
    attempts_in: PreparedStatement,
}

pub struct CqlStore {
    cql: Arc<Cql>,
    s: Statements,
    last_seq: AtomicU64,
}

impl CqlStore {
    pub async fn connect(config: &CqlConfig) -> anyhow::Result<Self> {
        let cql = Arc::new(Cql::connect(config, SCHEMA).await?);
        let p = |q: &'static str| cql.prepare(q);
        let s = Statements {
            put_link: p("INSERT INTO links (chat_id, user_id) VALUES (?, ?)").await?,
            get_link: p("SELECT user_id FROM links WHERE chat_id = ?").await?,
            delete_link: p("DELETE FROM links WHERE chat_id = ? IF EXISTS").await?,
            list_links: p("SELECT chat_id, user_id FROM links").await?,
            put_user_chat: p("INSERT INTO links_by_user (user_id, chat_id) VALUES (?, ?)").await?,
            delete_user_chat: p("DELETE FROM links_by_user WHERE user_id = ? AND chat_id = ?")
                .await?,
            chats_of: p("SELECT chat_id FROM links_by_user WHERE user_id = ?").await?,
            get_meta: p("SELECT value FROM meta WHERE name = ?").await?,
            set_meta: p("INSERT INTO meta (name, value) VALUES (?, ?)").await?,
            get_position: p("SELECT epoch, offset FROM positions WHERE user_id = ? AND topic = ?")
                .await?,
            set_position: p(
                "INSERT INTO positions (user_id, topic, epoch, offset) VALUES (?, ?, ?, ?)",
            )
            .await?,
            claim_sent: p(
                "INSERT INTO sent_log (chat_id, key, seq, queued) VALUES (?, ?, ?, false) IF NOT EXISTS",
            )
            .await?,
            get_sent: p("SELECT seq, queued FROM sent_log WHERE chat_id = ? AND key = ?").await?,
            mark_queued: p("UPDATE sent_log SET queued = true WHERE chat_id = ? AND key = ?")
                .await?,
            insert_queue: p("INSERT INTO outgoing (shard, seq, message) VALUES (0, ?, ?)").await?,
            pending: p("SELECT seq, message FROM outgoing WHERE shard = 0 LIMIT ?").await?,
            ack: p("DELETE FROM outgoing WHERE shard = 0 AND seq = ?").await?,
            count: p("SELECT COUNT(*) FROM outgoing WHERE shard = 0").await?,
            begin_send: p("INSERT INTO outgoing_attempts (shard, seq) VALUES (0, ?)").await?,
            abandon_send: p("DELETE FROM outgoing_attempts WHERE shard = 0 AND seq = ?").await?,
            attempts_in: p(
                "SELECT seq FROM outgoing_attempts WHERE shard = 0 AND seq >= ? AND seq <= ?",
            )
            .await?,
        };
        let store = CqlStore {
            cql,
            s,
            last_seq: AtomicU64::new(0),
        };
        store.index_links().await?;
        Ok(store)
    }

    /// Takes `chat_id` out of `user_id`'s index entries unless the chat is
    /// (again) theirs. The link is read after the delete: a link of the
    /// chat to `user_id` racing this wrote its entry after its link (see
    /// `put_link`), so either that write comes after the delete, or the
    /// link is seen here and the entry is put back.
    async fn unindex(&self, user_id: Uuid, chat_id: i64) -> StoreResult<()> {
        self.cql
            .execute(&self.s.delete_user_chat, (user_id, chat_id))
            .await?;
        if self.get_link(chat_id).await? == Some(user_id) {
            self.cql
                .execute(&self.s.put_user_chat, (user_id, chat_id))
                .await?;
        }
        Ok(())
    }

    /// Fills `links_by_user` from `links` once, for keyspaces made before
    /// it existed (rewriting an entry is harmless, so replicas racing here
    /// agree).
    async fn index_links(&self) -> anyhow::Result<()> {
        let done: Option<(Option<i64>,)> = self
            .cql
            .maybe_row(&self.s.get_meta, (CHATS_INDEXED,))
            .await?;
        if done.is_some() {
            return Ok(());
        }
        for (chat, user) in self.list_links().await? {
            self.cql
                .execute(&self.s.put_user_chat, (user, chat))
                .await?;
        }
        self.cql
            .execute(&self.s.set_meta, (CHATS_INDEXED, 1_i64))
            .await?;
        Ok(())
    }

    /// Microseconds since the epoch, strictly increasing in this process.
    fn next_seq(&self) -> i64 {
        let now = (now_millis() as u64) * 1000;
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_seq
                .compare_exchange(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next as i64,
                Err(seen) => last = seen,
            }
        }
    }

    async fn insert_queue(&self, seq: i64, message: &Outgoing) -> StoreResult<()> {
        self.cql
            .execute(&self.s.insert_queue, (seq, encode(message)?))
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BotStore for CqlStore {
    async fn put_link(&self, chat_id: i64, user_id: Uuid) -> StoreResult<()> {
        // The index entry first: one left behind by a failed link write is
        // skipped by `chats_of` (the link says whose the chat is).
        self.cql
            .execute(&self.s.put_user_chat, (user_id, chat_id))
            .await?;
        let before = self.get_link(chat_id).await?;
        self.cql
            .execute(&self.s.put_link, (chat_id, user_id))
            .await?;
        // And again after it: an unlink or rebind racing this one may have
        // taken the entry out between the first write and the link's (see
        // `unindex`, which looks at the link only after its delete).
        self.cql
            .execute(&self.s.put_user_chat, (user_id, chat_id))
            .await?;
        if let Some(before) = before.filter(|before| *before != user_id) {
            self.unindex(before, chat_id).await?;
        }
        Ok(())
    }

    async fn remove_link(&self, chat_id: i64) -> StoreResult<bool> {
        let before = self.get_link(chat_id).await?;
        let removed = self
            .cql
            .execute_lwt(&self.s.delete_link, (chat_id,))
            .await?;
        if let Some(before) = before {
            self.unindex(before, chat_id).await?;
        }
        Ok(removed)
    }

    async fn chats_of(&self, user_id: Uuid) -> StoreResult<Vec<i64>> {
        let indexed: Vec<(i64,)> = self.cql.rows(&self.s.chats_of, (user_id,)).await?;
        let mut chats = Vec::with_capacity(indexed.len());
        for (chat,) in indexed {
            if self.get_link(chat).await? == Some(user_id) {
                chats.push(chat);
            }
        }
        Ok(chats)
    }

    async fn get_link(&self, chat_id: i64) -> StoreResult<Option<Uuid>> {
        Ok(self
            .cql
            .maybe_row::<(Option<Uuid>,)>(&self.s.get_link, (chat_id,))
            .await?
            .and_then(|(user,)| user))
    }

    async fn list_links(&self) -> StoreResult<Vec<(i64, Uuid)>> {
        let mut links: Vec<(i64, Uuid)> = self.cql.rows(&self.s.list_links, ()).await?;
        links.sort_unstable();
        Ok(links)
    }

    async fn update_offset(&self) -> StoreResult<i64> {
        Ok(self
            .cql
            .maybe_row::<(Option<i64>,)>(&self.s.get_meta, ("update_offset",))
            .await?
            .and_then(|(v,)| v)
            .unwrap_or(0))
    }

    async fn set_update_offset(&self, offset: i64) -> StoreResult<()> {
        self.cql
            .execute(&self.s.set_meta, ("update_offset", offset))
            .await?;
        Ok(())
    }

    async fn position(&self, user_id: Uuid, topic: &str) -> StoreResult<Option<Position>> {
        Ok(self
            .cql
            .maybe_row::<(Option<String>, Option<i64>)>(&self.s.get_position, (user_id, topic))
            .await?
            .map(|(epoch, offset)| Position {
                epoch: epoch.unwrap_or_default(),
                offset: offset.unwrap_or(0) as u64,
            }))
    }

    async fn set_position(
        &self,
        user_id: Uuid,
        topic: &str,
        position: &Position,
    ) -> StoreResult<()> {
        self.cql
            .execute(
                &self.s.set_position,
                (user_id, topic, &position.epoch, position.offset as i64),
            )
            .await?;
        Ok(())
    }

    async fn enqueue(&self, message: &Outgoing, dedup: Option<&str>) -> StoreResult<bool> {
        let Some(key) = dedup else {
            self.insert_queue(self.next_seq(), message).await?;
            return Ok(true);
        };
        let seq = self.next_seq();
        let claimed = self
            .cql
            .execute_lwt(&self.s.claim_sent, (message.chat_id, key, seq))
            .await?;
        let seq = if claimed {
            seq
        } else {
            let (seq, queued): (Option<i64>, Option<bool>) = self
                .cql
                .maybe_row(&self.s.get_sent, (message.chat_id, key))
                .await?
                .ok_or(StoreError::Internal("sent-log entry vanished".to_owned()))?;
            if queued == Some(true) {
                return Ok(false);
            }
            // Claimed by a writer that died before queuing: finish its work
            // under its sequence number.
            seq.ok_or(StoreError::Internal(
                "sent-log entry without seq".to_owned(),
            ))?
        };
        self.insert_queue(seq, message).await?;
        self.cql
            .execute(&self.s.mark_queued, (message.chat_id, key))
            .await?;
        Ok(claimed)
    }

    async fn pending(&self, limit: usize) -> StoreResult<Vec<Queued>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(i64, Vec<u8>)> = self.cql.rows(&self.s.pending, (limit,)).await?;
        let attempted: std::collections::HashSet<i64> = match (rows.first(), rows.last()) {
            (Some((first, _)), Some((last, _))) => {
                let marks: Vec<(i64,)> =
                    self.cql.rows(&self.s.attempts_in, (*first, *last)).await?;
                marks.into_iter().map(|(seq,)| seq).collect()
            }
            _ => Default::default(),
        };
        rows.into_iter()
            .map(|(seq, bytes)| {
                Ok(Queued {
                    seq: seq as u64,
                    message: decode(&bytes)?,
                    attempted: attempted.contains(&seq),
                })
            })
            .collect()
    }

    async fn begin_send(&self, seq: u64) -> StoreResult<()> {
        self.cql.execute(&self.s.begin_send, (seq as i64,)).await?;
        Ok(())
    }

    async fn abandon_send(&self, seq: u64) -> StoreResult<()> {
        self.cql
            .execute(&self.s.abandon_send, (seq as i64,))
            .await?;
        Ok(())
    }

    async fn ack(&self, seq: u64) -> StoreResult<()> {
        // The queue entry first: a crash between the two leaves a mark
        // with no entry, which nothing reads.
        self.cql.execute(&self.s.ack, (seq as i64,)).await?;
        self.cql
            .execute(&self.s.abandon_send, (seq as i64,))
            .await?;
        Ok(())
    }

    async fn queue_len(&self) -> StoreResult<u64> {
        let (n,): (i64,) = self.cql.maybe_row(&self.s.count, ()).await?.unwrap_or((0,));
        Ok(n as u64)
    }
}

//! The embedded backend: `bot.redb` under the configured directory. Each
//! change is one write transaction (the sent-log entry with its queue
//! entry).

use std::path::Path;

use munity_store::{
    StoreError, StoreResult,
    embedded::{EmbeddedDb, decode, encode, read_one},
    internal,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use uuid::Uuid;

use super::{BotStore, Outgoing, Position, Queued};

const LINKS: TableDefinition<i64, &[u8]> = TableDefinition::new("links");
/// `user id (16 bytes) ‖ chat id (8 bytes, big-endian)` to nothing: the
/// links by user, written with each link (a follower reads its user's
/// chats without reading every link).
const CHATS_BY_USER: TableDefinition<&[u8], ()> = TableDefinition::new("chats_by_user");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const POSITIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("positions");
/// `chat id (8 bytes, big-endian) ‖ notification id` to nothing.
const SENT: TableDefinition<&[u8], ()> = TableDefinition::new("sent_log");
/// Queue entries whose send was begun (seq).
const ATTEMPTS: TableDefinition<u64, ()> = TableDefinition::new("queue_attempts");
/// Sequence number to message.
const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("outgoing");

const UPDATE_OFFSET: &str = "update_offset";
/// Set once `CHATS_BY_USER` holds every link (stores made before it
/// existed are indexed when they are opened).
const CHATS_INDEXED: &str = "chats_by_user_indexed";
/// The last sequence number handed out: never reused, even when the queue
/// is empty.
const QUEUE_SEQ: &str = "queue_seq";

#[derive(Clone)]
pub struct EmbeddedStore {
    db: EmbeddedDb,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/bot.redb`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "bot", |txn| {
            let links = txn.open_table(LINKS)?;
            let mut meta = txn.open_table(META)?;
            let mut by_user = txn.open_table(CHATS_BY_USER)?;
            if meta.get(CHATS_INDEXED)?.is_none() {
                for entry in links.iter()? {
                    let (chat, user) = entry?;
                    by_user.insert(user_chat_key(user.value(), chat.value()).as_slice(), ())?;
                }
                meta.insert(CHATS_INDEXED, 1)?;
            }
            txn.open_table(POSITIONS)?;
            txn.open_table(SENT)?;
            txn.open_table(QUEUE)?;
            Ok(())
        })?;
        Ok(EmbeddedStore { db })
    }
}

/// The user's id, then the topic.
fn position_key(user_id: Uuid, topic: &str) -> Vec<u8> {
    let mut bytes = user_id.as_bytes().to_vec();
    bytes.extend_from_slice(topic.as_bytes());
    bytes
}

fn user_chat_key(user_id: &[u8], chat_id: i64) -> Vec<u8> {
    let mut bytes = user_id.to_vec();
    bytes.extend_from_slice(&chat_id.to_be_bytes());
    bytes
}

fn sent_key(chat_id: i64, key: &str) -> Vec<u8> {
    let mut bytes = chat_id.to_be_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

#[async_trait::async_trait]
impl BotStore for EmbeddedStore {
    async fn put_link(&self, chat_id: i64, user_id: Uuid) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                let mut links = txn.open_table(LINKS).map_err(internal)?;
                let mut by_user = txn.open_table(CHATS_BY_USER).map_err(internal)?;
                if let Some(before) = links
                    .insert(chat_id, user_id.as_bytes().as_slice())
                    .map_err(internal)?
                {
                    by_user
                        .remove(user_chat_key(before.value(), chat_id).as_slice())
                        .map_err(internal)?;
                }
                by_user
                    .insert(user_chat_key(user_id.as_bytes(), chat_id).as_slice(), ())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn remove_link(&self, chat_id: i64) -> StoreResult<bool> {
        self.db
            .write(move |txn| {
                let mut links = txn.open_table(LINKS).map_err(internal)?;
                let Some(user) = links.remove(chat_id).map_err(internal)? else {
                    return Ok(false);
                };
                txn.open_table(CHATS_BY_USER)
                    .map_err(internal)?
                    .remove(user_chat_key(user.value(), chat_id).as_slice())
                    .map_err(internal)?;
                Ok(true)
            })
            .await
    }

    async fn get_link(&self, chat_id: i64) -> StoreResult<Option<Uuid>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let links = txn.open_table(LINKS).map_err(internal)?;
                links
                    .get(chat_id)
                    .map_err(internal)?
                    .map(|v| Uuid::from_slice(v.value()).map_err(internal))
                    .transpose()
            })
            .await
    }

    async fn list_links(&self) -> StoreResult<Vec<(i64, Uuid)>> {
        self.db
            .blocking(|db| {
                let txn = db.begin_read().map_err(internal)?;
                let links = txn.open_table(LINKS).map_err(internal)?;
                let mut all = Vec::new();
                for entry in links.iter().map_err(internal)? {
                    let (chat, user) = entry.map_err(internal)?;
                    all.push((
                        chat.value(),
                        Uuid::from_slice(user.value()).map_err(internal)?,
                    ));
                }
                Ok(all)
            })
            .await
    }

    async fn chats_of(&self, user_id: Uuid) -> StoreResult<Vec<i64>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let by_user = txn.open_table(CHATS_BY_USER).map_err(internal)?;
                // Every key that starts with the user's id (a negative
                // chat id's bytes sort after a positive one's).
                let mut from = user_id.as_bytes().to_vec();
                let mut to = from.clone();
                from.extend_from_slice(&[0; 8]);
                to.extend_from_slice(&[0xff; 8]);
                let mut chats = Vec::new();
                for entry in by_user
                    .range(from.as_slice()..=to.as_slice())
                    .map_err(internal)?
                {
                    let (key, _) = entry.map_err(internal)?;
                    let chat: [u8; 8] = key.value()[16..].try_into().map_err(internal)?;
                    chats.push(i64::from_be_bytes(chat));
                }
                chats.sort_unstable();
                Ok(chats)
            })
            .await
    }

    async fn update_offset(&self) -> StoreResult<i64> {
        self.db
            .blocking(|db| {
                let txn = db.begin_read().map_err(internal)?;
                let meta = txn.open_table(META).map_err(internal)?;
                Ok(meta
                    .get(UPDATE_OFFSET)
                    .map_err(internal)?
                    .map_or(0, |v| v.value()))
            })
            .await
    }

    async fn set_update_offset(&self, offset: i64) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                txn.open_table(META)
                    .map_err(internal)?
                    .insert(UPDATE_OFFSET, offset)
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn position(&self, user_id: Uuid, topic: &str) -> StoreResult<Option<Position>> {
        let key = position_key(user_id, topic);
        self.db
            .blocking(move |db| read_one(db, POSITIONS, key.as_slice()))
            .await
    }

    async fn set_position(
        &self,
        user_id: Uuid,
        topic: &str,
        position: &Position,
    ) -> StoreResult<()> {
        let bytes = encode(position)?;
        let key = position_key(user_id, topic);
        self.db
            .write(move |txn| {
                txn.open_table(POSITIONS)
                    .map_err(internal)?
                    .insert(key.as_slice(), bytes.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn enqueue(&self, message: &Outgoing, dedup: Option<&str>) -> StoreResult<bool> {
        let bytes = encode(message)?;
        let sent = dedup.map(|key| sent_key(message.chat_id, key));
        self.db
            .write(move |txn| {
                if let Some(key) = sent {
                    let mut log = txn.open_table(SENT).map_err(internal)?;
                    if log.insert(key.as_slice(), ()).map_err(internal)?.is_some() {
                        return Ok(false);
                    }
                }
                let mut meta = txn.open_table(META).map_err(internal)?;
                let next = meta
                    .get(QUEUE_SEQ)
                    .map_err(internal)?
                    .map_or(0, |v| v.value())
                    + 1;
                meta.insert(QUEUE_SEQ, next).map_err(internal)?;
                txn.open_table(QUEUE)
                    .map_err(internal)?
                    .insert(next as u64, bytes.as_slice())
                    .map_err(internal)?;
                Ok(true)
            })
            .await
    }

    async fn pending(&self, limit: usize) -> StoreResult<Vec<Queued>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let queue = txn.open_table(QUEUE).map_err(internal)?;
                let attempts = match txn.open_table(ATTEMPTS) {
                    Ok(table) => Some(table),
                    Err(redb::TableError::TableDoesNotExist(_)) => None,
                    Err(error) => return Err(internal(error)),
                };
                let mut found = Vec::new();
                for entry in queue.iter().map_err(internal)?.take(limit) {
                    let (seq, value) = entry.map_err(internal)?;
                    let seq = seq.value();
                    let attempted = match &attempts {
                        Some(table) => table.get(seq).map_err(internal)?.is_some(),
                        None => false,
                    };
                    found.push(Queued {
                        seq,
                        message: decode(value.value())?,
                        attempted,
                    });
                }
                Ok(found)
            })
            .await
    }

    async fn begin_send(&self, seq: u64) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                txn.open_table(ATTEMPTS)
                    .map_err(internal)?
                    .insert(seq, ())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn abandon_send(&self, seq: u64) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                txn.open_table(ATTEMPTS)
                    .map_err(internal)?
                    .remove(seq)
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn ack(&self, seq: u64) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                txn.open_table(QUEUE)
                    .map_err(internal)?
                    .remove(seq)
                    .map_err(internal)?;
                txn.open_table(ATTEMPTS)
                    .map_err(internal)?
                    .remove(seq)
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn queue_len(&self) -> StoreResult<u64> {
        self.db
            .blocking(|db| {
                let txn = db.begin_read().map_err(internal)?;
                let queue = txn.open_table(QUEUE).map_err(internal)?;
                queue.len().map_err(|e| StoreError::Internal(e.to_string()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written before `CHATS_BY_USER` existed (links only) has its
    /// links indexed when it is opened.
    #[tokio::test]
    async fn links_of_an_older_store_are_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        {
            let db = redb::Database::create(dir.path().join("bot.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut links = txn.open_table(LINKS).unwrap();
                links.insert(-3, ada.as_bytes().as_slice()).unwrap();
                links.insert(4, ada.as_bytes().as_slice()).unwrap();
                links.insert(8, bob.as_bytes().as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.chats_of(ada).await.unwrap(), vec![-3, 4]);
        assert_eq!(store.chats_of(bob).await.unwrap(), vec![8]);
        // Opened again: indexed once, and the index kept up since.
        store.remove_link(4).await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.chats_of(ada).await.unwrap(), vec![-3]);
    }
}

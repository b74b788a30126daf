//! The embedded hub (`munity dev`): history in one redb file
//! (`notify.redb`), live delivery in-process ([`LiveTopics`]) after each
//! commit. Each publish is one write transaction: the offset, the
//! history entry, the idempotency entry and the trimming together.
//!
//! Keys: `topic ‖ 0 ‖ offset` (big-endian) for history, `topic ‖ 0 ‖ id`
//! for idempotency. The epoch is made once per topic and kept: history
//! trimmed by size or age makes an old position resync, not the epoch.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use munity_store::{
    embedded::{EmbeddedDb, decode, encode},
    internal,
};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    Hub, HubError, HubResult, LiveFeed, LiveTopics, Notification, Position, Publication, Recovery,
    Retention, Stored, from_proto, new_epoch, to_proto,
};

/// topic → its meta.
const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
/// topic ‖ 0 ‖ offset → notification (protobuf).
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
/// topic ‖ 0 ‖ source event id → offset.
const PUBLISHED: TableDefinition<&[u8], u64> = TableDefinition::new("published");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicMeta {
    epoch: String,
    /// The last offset given.
    offset: u64,
}

fn key(topic: &str, tail: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 1 + tail.len());
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(tail);
    key
}

fn history_key(topic: &str, offset: u64) -> Vec<u8> {
    key(topic, &offset.to_be_bytes())
}

fn hub_error(error: munity_store::StoreError) -> HubError {
    HubError::Internal(error.to_string())
}

pub struct EmbeddedHub {
    db: EmbeddedDb,
    retention: Retention,
    live: Arc<LiveTopics>,
    in_flight: Arc<Mutex<InFlight>>,
}

/// Per topic, the offsets committed but not yet sent live, in offset
/// order; `None` until their publish has them durable. Publishes finish in
/// any order (they share fsyncs), but live delivery must keep offset order:
/// a subscriber that hears k+1 before k takes it for a gap and reads
/// history. An offset is entered in the write transaction that assigns it
/// (redb runs those one at a time), and sent only once every lower one of
/// its topic was.
type InFlight = HashMap<String, BTreeMap<u64, Option<Notification>>>;

impl EmbeddedHub {
    /// Settles `offset` of `topic` (sent when `Some`, dropped when `None`:
    /// its publish failed), then sends whatever is now first in line.
    fn settle(&self, topic: &str, offset: u64, notification: Option<Notification>) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pending) = in_flight.get_mut(topic) else {
            return;
        };
        match notification {
            Some(n) => {
                pending.insert(offset, Some(n));
            }
            None => {
                pending.remove(&offset);
            }
        }
        while let Some(entry) = pending.first_entry() {
            if entry.get().is_none() {
                break;
            }
            if let Some(n) = entry.remove() {
                self.live.send(Arc::new(n));
            }
        }
        if pending.is_empty() {
            in_flight.remove(topic);
        }
    }
}

impl EmbeddedHub {
    /// Opens (or creates) `dir/notify.redb`.
    pub fn open(dir: &Path, retention: Retention) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "notify", |txn| {
            txn.open_table(TOPICS)?;
            txn.open_table(HISTORY)?;
            txn.open_table(PUBLISHED)?;
            Ok(())
        })?;
        Ok(EmbeddedHub {
            db,
            retention,
            live: Arc::default(),
            in_flight: Arc::default(),
        })
    }
}

/// The hub's tables, opened once per write transaction (opening one is a
/// lookup in redb's table tree and a check of its types: a good part of a
/// publication when it was done for every read and insert).
struct Tables<'txn> {
    topics: redb::Table<'txn, &'static str, &'static [u8]>,
    history: redb::Table<'txn, &'static [u8], &'static [u8]>,
    published: redb::Table<'txn, &'static [u8], u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> munity_store::StoreResult<Self> {
        Ok(Tables {
            topics: txn.open_table(TOPICS).map_err(internal)?,
            history: txn.open_table(HISTORY).map_err(internal)?,
            published: txn.open_table(PUBLISHED).map_err(internal)?,
        })
    }
}

fn meta(
    topics: &mut redb::Table<'_, &'static str, &'static [u8]>,
    topic: &str,
) -> munity_store::StoreResult<TopicMeta> {
    let existing = topics
        .get(topic)
        .map_err(internal)?
        .map(|v| decode::<TopicMeta>(v.value()))
        .transpose()?;
    match existing {
        Some(meta) => Ok(meta),
        None => {
            let meta = TopicMeta {
                epoch: new_epoch(),
                offset: 0,
            };
            topics
                .insert(topic, encode(&meta)?.as_slice())
                .map_err(internal)?;
            Ok(meta)
        }
    }
}

/// The oldest offset of a topic whose newest is `newest` that history
/// still shows: the last `retention.size`. Reads never go further back,
/// so trimming may lag behind by up to [`TRIM_EVERY`] entries.
fn oldest_kept(newest: u64, retention: Retention) -> u64 {
    newest.saturating_sub(retention.size.max(1)) + 1
}

/// Trimming runs at every this many offsets of a topic, not at each: one
/// range read then removes a few entries together.
const TRIM_EVERY: u64 = 16;

/// Drops history past the retention size (the oldest entries; a bounded
/// number per trim). The embedded hub has no TTL: one process, one disk,
/// and topics stay until trimmed by size.
fn trim(
    tables: &mut Tables<'_>,
    topic: &str,
    newest: u64,
    retention: Retention,
) -> munity_store::StoreResult<()> {
    let oldest_kept = oldest_kept(newest, retention);
    if oldest_kept == 1 || !newest.is_multiple_of(TRIM_EVERY) {
        return Ok(()); // nothing is older yet, or not this one's turn
    }
    let start = history_key(topic, 0);
    let end = history_key(topic, oldest_kept);
    let mut doomed = Vec::new();
    for entry in tables
        .history
        .range::<&[u8]>(start.as_slice()..end.as_slice())
        .map_err(internal)?
        .take(64)
    {
        let (k, v) = entry.map_err(internal)?;
        let notification =
            munity_proto::notify::v1::Notification::decode(v.value()).map_err(internal)?;
        doomed.push((k.value().to_vec(), notification.event_id));
    }
    for (k, id) in doomed {
        tables.history.remove(k.as_slice()).map_err(internal)?;
        tables
            .published
            .remove(key(topic, id.as_bytes()).as_slice())
            .map_err(internal)?;
    }
    Ok(())
}

/// Stores one publication in `tables`: the notification and whether it is
/// new (one published before under its id is answered as stored). A new
/// one's offset is put in flight (delivered live once settled) and in
/// `given`.
fn store_one(
    tables: &mut Tables<'_>,
    item: Publication,
    retention: Retention,
    in_flight: &Mutex<InFlight>,
    given: &Mutex<Vec<(String, u64)>>,
) -> munity_store::StoreResult<(Notification, bool)> {
    let Publication {
        topic,
        id,
        kind,
        payload,
        at,
    } = item;
    let before = tables
        .published
        .get(key(&topic, id.as_bytes()).as_slice())
        .map_err(internal)?
        .map(|v| v.value());
    if let Some(offset) = before
        && let Some(stored) = tables
            .history
            .get(history_key(&topic, offset).as_slice())
            .map_err(internal)?
    {
        let stored =
            munity_proto::notify::v1::Notification::decode(stored.value()).map_err(internal)?;
        return Ok((from_proto(stored), false));
    }
    let mut meta = meta(&mut tables.topics, &topic)?;
    meta.offset += 1;
    tables
        .topics
        .insert(topic.as_str(), encode(&meta)?.as_slice())
        .map_err(internal)?;
    let notification = Notification {
        topic: topic.clone(),
        epoch: meta.epoch,
        offset: meta.offset,
        at,
        kind,
        id: id.clone(),
        payload,
    };
    tables
        .history
        .insert(
            history_key(&topic, meta.offset).as_slice(),
            to_proto(&notification).encode_to_vec().as_slice(),
        )
        .map_err(internal)?;
    tables
        .published
        .insert(key(&topic, id.as_bytes()).as_slice(), meta.offset)
        .map_err(internal)?;
    trim(tables, &topic, meta.offset, retention)?;
    // Last, so that only the commit can still fail.
    in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(topic.clone())
        .or_default()
        .insert(meta.offset, None);
    given
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((topic, meta.offset));
    Ok((notification, true))
}

#[async_trait::async_trait]
impl Hub for EmbeddedHub {
    /// All in one write transaction (one commit, one fsync shared with
    /// other writers), each delivered live once durable, in its topic's
    /// order.
    async fn publish_many(&self, items: Vec<Publication>) -> HubResult<Vec<Notification>> {
        let stored = self.store_many(items).await?;
        self.announce(&stored).await;
        Ok(stored.into_iter().map(|s| s.notification).collect())
    }

    /// All in one write transaction; the new ones wait in their topics'
    /// lines (`in_flight`) until announced.
    async fn store_many(&self, items: Vec<Publication>) -> HubResult<Vec<Stored>> {
        let retention = self.retention;
        // The offsets given, to settle when the write fails after them.
        let assigned: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let (in_flight, given) = (self.in_flight.clone(), assigned.clone());
        let written = self
            .db
            .write(move |txn| {
                let mut tables = Tables::open(txn)?;
                items
                    .into_iter()
                    .map(|item| store_one(&mut tables, item, retention, &in_flight, &given))
                    .collect::<munity_store::StoreResult<Vec<_>>>()
            })
            .await;
        match written {
            Ok(stored) => Ok(stored
                .into_iter()
                .map(|(notification, new)| Stored { notification, new })
                .collect()),
            Err(error) => {
                let assigned =
                    std::mem::take(&mut *assigned.lock().unwrap_or_else(|e| e.into_inner()));
                for (topic, offset) in assigned {
                    self.settle(&topic, offset, None);
                }
                Err(hub_error(error))
            }
        }
    }

    async fn announce(&self, stored: &[Stored]) {
        for stored in stored.iter().filter(|s| s.new) {
            // Durable: whoever hears it can read it back.
            let notification = &stored.notification;
            self.settle(
                &notification.topic,
                notification.offset,
                Some(notification.clone()),
            );
        }
    }

    async fn position(&self, topic: &str) -> HubResult<Position> {
        let topic = topic.to_owned();
        // A read transaction for a topic that exists (every stream asks,
        // for every topic, and history reads too): the single writer and
        // the fsync only for a topic's first epoch.
        let known = {
            let topic = topic.clone();
            self.db
                .blocking(move |db| {
                    let txn = db.begin_read().map_err(internal)?;
                    let topics = txn.open_table(TOPICS).map_err(internal)?;
                    topics
                        .get(topic.as_str())
                        .map_err(internal)?
                        .map(|v| decode::<TopicMeta>(v.value()))
                        .transpose()
                })
                .await
                .map_err(hub_error)?
        };
        let meta = match known {
            Some(meta) => meta,
            None => self
                .db
                .write(move |txn| {
                    let mut topics = txn.open_table(TOPICS).map_err(internal)?;
                    meta(&mut topics, &topic)
                })
                .await
                .map_err(hub_error)?,
        };
        Ok(Position {
            epoch: meta.epoch,
            offset: meta.offset,
        })
    }

    async fn since(&self, topic: &str, after: &Position, limit: usize) -> HubResult<Recovery> {
        let now = self.position(topic).await?;
        if let Some(recovery) = Recovery::without_history(&now, after) {
            return Ok(recovery);
        }
        // Only the last `retention.size` are shown, whatever trimming has
        // not removed yet: a position further back resyncs.
        let from = (after.offset + 1).max(oldest_kept(now.offset, self.retention));
        let topic = topic.to_owned();
        let items = self
            .db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let history = txn.open_table(HISTORY).map_err(internal)?;
                let start = history_key(&topic, from);
                let end = history_key(&topic, u64::MAX);
                let mut items = Vec::new();
                for entry in history
                    .range::<&[u8]>(start.as_slice()..=end.as_slice())
                    .map_err(internal)?
                    .take(limit)
                {
                    let (_, v) = entry.map_err(internal)?;
                    items.push(from_proto(
                        munity_proto::notify::v1::Notification::decode(v.value())
                            .map_err(internal)?,
                    ));
                }
                Ok(items)
            })
            .await
            .map_err(hub_error)?;
        Ok(Recovery::from_history(now, after, items))
    }

    fn follow(&self, topics: Vec<String>) -> LiveFeed {
        self.live.follow(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    /// Trimming runs in steps, so the file may hold a few more than the
    /// retention size, but history shows exactly the last `size` and the
    /// file does not grow past `size + TRIM_EVERY`.
    #[tokio::test]
    async fn history_shows_the_last_size_and_trimming_keeps_the_file_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            size: 5,
            ttl_secs: 3600,
        };
        let hub = EmbeddedHub::open(dir.path(), retention).unwrap();
        let topic = "user:trim";
        for n in 0..100u64 {
            hub.publish(topic, &format!("id-{n}"), "munity.test.Thing", b"x", 1)
                .await
                .unwrap();
            let kept = hub
                .db
                .read_now(|db| {
                    let txn = db.begin_read().map_err(internal)?;
                    let history = txn.open_table(HISTORY).map_err(internal)?;
                    let published = txn.open_table(PUBLISHED).map_err(internal)?;
                    Ok((
                        history.len().map_err(internal)?,
                        published.len().map_err(internal)?,
                    ))
                })
                .await
                .unwrap();
            assert!(kept.0 <= 5 + TRIM_EVERY, "{kept:?} after {}", n + 1);
            assert_eq!(kept.0, kept.1, "history and ids are trimmed together");
        }
        let now = hub.position(topic).await.unwrap();
        assert_eq!(now.offset, 100);
        let at = |offset| Position {
            epoch: now.epoch.clone(),
            offset,
        };
        match hub.since(topic, &at(95), 100).await.unwrap() {
            Recovery::Missed(missed) => {
                let offsets: Vec<u64> = missed.iter().map(|n| n.offset).collect();
                assert_eq!(offsets, [96, 97, 98, 99, 100]);
            }
            other => panic!("{other:?}"),
        }
        // 95 itself is past the last five, though the file may still hold it.
        assert!(matches!(
            hub.since(topic, &at(94), 100).await.unwrap(),
            Recovery::Resync { .. }
        ));
    }
}

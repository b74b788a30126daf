//! The log in a redb file (`<dir>/bus.redb`), for `munity dev`: one per
//! process, shared by every service in it.
//!
//! - `log`: sequence number → encoded [`DomainEvent`]; the oldest entries
//!   are trimmed past `max_len`.
//! - `groups`: group → the last sequence number delivered to it.
//! - `pending`: (group, sequence) → (consumer, delivered at ms): delivered
//!   and not acknowledged.
//!
//! Every read that moves a group's position writes it in the same
//! transaction as the pending entries, so a crash loses no delivery and a
//! restart replays only what was not acknowledged. Waiting readers are
//! woken in-process when events are appended.

use std::{path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use munity_store::{StoreError, StoreResult, embedded::EmbeddedDb, now_millis};
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::Notify;

use crate::{BusError, BusResult, Delivery, DomainEvent, EventLog, GroupConsumer, LogReader};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("bus_log");
const GROUPS: TableDefinition<&str, u64> = TableDefinition::new("bus_groups");
const PENDING: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("bus_pending");

/// The embedded event log.
#[derive(Clone)]
pub struct EmbeddedLog {
    db: EmbeddedDb,
    max_len: u64,
    appended: Arc<Notify>,
    /// Consumers joined in this process. The file is this process's alone
    /// (redb locks it), so a delivery pending for any other consumer was
    /// left by a process that has stopped: it is stale at once, not after
    /// the idle time (a restart of `munity dev` redelivers it right away).
    live: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl EmbeddedLog {
    /// Opens (or creates) `dir/bus.redb`, keeping about `max_len` events.
    pub fn open(dir: &Path, max_len: u64) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "bus", |txn| {
            txn.open_table(LOG)?;
            txn.open_table(GROUPS)?;
            txn.open_table(PENDING)?;
            Ok(())
        })?;
        Ok(EmbeddedLog {
            db,
            max_len: max_len.max(1),
            appended: Arc::new(Notify::new()),
            live: Arc::default(),
        })
    }
}

fn unavailable(error: StoreError) -> BusError {
    BusError::Unavailable(error.to_string())
}

fn store(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(error.to_string())
}

fn decode(seq: u64, bytes: &[u8]) -> BusResult<DomainEvent> {
    DomainEvent::decode(bytes).map_err(|e| BusError::Corrupt {
        id: seq.to_string(),
        reason: e.to_string(),
    })
}

/// The group's position, creating the group just before the oldest event
/// retained.
fn position(txn: &redb::WriteTransaction, group: &str) -> Result<u64, StoreError> {
    let mut groups = txn.open_table(GROUPS).map_err(store)?;
    if let Some(last) = groups.get(group).map_err(store)? {
        return Ok(last.value());
    }
    let log = txn.open_table(LOG).map_err(store)?;
    let oldest = log.first().map_err(store)?.map(|(seq, _)| seq.value());
    let start = oldest.map_or(0, |seq| seq.saturating_sub(1));
    groups.insert(group, start).map_err(store)?;
    Ok(start)
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, events: &[DomainEvent]) -> BusResult<()> {
        let encoded: Vec<Vec<u8>> = events.iter().map(Message::encode_to_vec).collect();
        let max_len = self.max_len;
        self.db
            .write(move |txn| {
                let mut log = txn.open_table(LOG).map_err(store)?;
                let first = log
                    .last()
                    .map_err(store)?
                    .map_or(1, |(seq, _)| seq.value() + 1);
                for (seq, event) in (first..).zip(&encoded) {
                    log.insert(seq, event.as_slice()).map_err(store)?;
                }
                let excess = log.len().map_err(store)?.saturating_sub(max_len);
                for _ in 0..excess {
                    log.pop_first().map_err(store)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)?;
        self.appended.notify_waiters();
        Ok(())
    }

    async fn join(&self, group: &str, consumer: &str) -> BusResult<Box<dyn GroupConsumer>> {
        let owned = group.to_owned();
        self.db
            .write(move |txn| position(txn, &owned).map(drop))
            .await
            .map_err(unavailable)?;
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(consumer.to_owned());
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        }))
    }

    /// From the oldest event retained: sequence numbers say nothing of
    /// time, and a `munity dev` log is small enough to read whole.
    async fn read_from(&self, _since_ms: i64) -> BusResult<Box<dyn LogReader>> {
        Ok(Box::new(EmbeddedReader {
            log: self.clone(),
            after: 0,
        }))
    }

    /// In a read transaction: reporting lag must not cost a commit. A group
    /// not created yet would start before the oldest event: all are lag.
    async fn lag(&self, group: &str) -> BusResult<u64> {
        let group = group.to_owned();
        self.db
            .blocking(move |db| {
                let txn = redb::ReadableDatabase::begin_read(db).map_err(store)?;
                let groups = txn.open_table(GROUPS).map_err(store)?;
                let last = groups
                    .get(group.as_str())
                    .map_err(store)?
                    .map(|v| v.value());
                let log = txn.open_table(LOG).map_err(store)?;
                let undelivered = match last {
                    Some(last) => log.range(last + 1..).map_err(store)?.count() as u64,
                    None => log.len().map_err(store)?,
                };
                let pending = txn.open_table(PENDING).map_err(store)?;
                let waiting = pending
                    .range((group.as_str(), 0)..=(group.as_str(), u64::MAX))
                    .map_err(store)?
                    .count() as u64;
                Ok(undelivered + waiting)
            })
            .await
            .map_err(unavailable)
    }
}

/// A reader of the whole log: its position is the last sequence number it
/// read, in memory only.
struct EmbeddedReader {
    log: EmbeddedLog,
    after: u64,
}

impl EmbeddedReader {
    async fn read(&self, max: usize) -> BusResult<Vec<Delivery>> {
        let after = self.after;
        let raw: Vec<(u64, Vec<u8>)> = self
            .log
            .db
            .blocking(move |db| {
                let txn = redb::ReadableDatabase::begin_read(db).map_err(store)?;
                let log = txn.open_table(LOG).map_err(store)?;
                let mut raw = Vec::new();
                for entry in log.range(after + 1..).map_err(store)?.take(max) {
                    let (seq, bytes) = entry.map_err(store)?;
                    raw.push((seq.value(), bytes.value().to_vec()));
                }
                Ok(raw)
            })
            .await
            .map_err(unavailable)?;
        raw.into_iter()
            .map(|(seq, bytes)| {
                Ok(Delivery {
                    id: seq.to_string(),
                    event: decode(seq, &bytes)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an append in between still wakes us.
            let appended = self.log.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let read = self.read(max.max(1)).await?;
            if let Some(last) = read.last() {
                self.after = last.id.parse().unwrap_or(self.after);
                return Ok(read);
            }
            if wait.is_zero() || tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }
}

/// Deliveries pending in `group` to take over (at most `max`): idle for
/// `idle_ms`, or left by a consumer that is not live in this process.
fn stale_pending(
    pending: &impl ReadableTable<(&'static str, u64), (&'static str, u64)>,
    group: &str,
    idle_ms: u64,
    live: &std::collections::HashSet<String>,
    max: usize,
) -> StoreResult<Vec<u64>> {
    let now = now_millis().max(0) as u64;
    let mut stale = Vec::new();
    for entry in pending
        .range((group, 0)..=(group, u64::MAX))
        .map_err(store)?
    {
        let (key, value) = entry.map_err(store)?;
        let (owner, delivered_at) = value.value();
        if now.saturating_sub(delivered_at) >= idle_ms || !live.contains(owner) {
            stale.push(key.value().1);
            if stale.len() >= max {
                break;
            }
        }
    }
    Ok(stale)
}

struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    consumer: String,
}

impl EmbeddedConsumer {
    /// Delivers up to `max` events past the group's position, in one write
    /// transaction with the new position and their pending entries.
    async fn deliver(&self, max: usize) -> BusResult<Vec<Delivery>> {
        let (group, consumer) = (self.group.clone(), self.consumer.clone());
        let taken: Vec<(u64, Vec<u8>)> = self
            .log
            .db
            .write(move |txn| {
                let last = position(txn, &group)?;
                let log = txn.open_table(LOG).map_err(store)?;
                let mut taken = Vec::new();
                for entry in log.range(last + 1..).map_err(store)?.take(max) {
                    let (seq, bytes) = entry.map_err(store)?;
                    taken.push((seq.value(), bytes.value().to_vec()));
                }
                if let Some((newest, _)) = taken.last() {
                    let now = now_millis().max(0) as u64;
                    let mut pending = txn.open_table(PENDING).map_err(store)?;
                    for (seq, _) in &taken {
                        pending
                            .insert((group.as_str(), *seq), (consumer.as_str(), now))
                            .map_err(store)?;
                    }
                    let mut groups = txn.open_table(GROUPS).map_err(store)?;
                    groups.insert(group.as_str(), *newest).map_err(store)?;
                }
                Ok(taken)
            })
            .await
            .map_err(unavailable)?;
        taken
            .into_iter()
            .map(|(seq, bytes)| {
                Ok(Delivery {
                    id: seq.to_string(),
                    event: decode(seq, &bytes)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl GroupConsumer for EmbeddedConsumer {
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an append in between still wakes us.
            let appended = self.log.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let delivered = self.deliver(max.max(1)).await?;
            if !delivered.is_empty() {
                return Ok(delivered);
            }
            if tokio::time::timeout_at(deadline, appended).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&mut self, ids: &[String]) -> BusResult<()> {
        let seqs: Vec<u64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        let group = self.group.clone();
        self.log
            .db
            .write(move |txn| {
                let mut pending = txn.open_table(PENDING).map_err(store)?;
                for seq in seqs {
                    pending.remove((group.as_str(), seq)).map_err(store)?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn claim_stale(&mut self, idle: Duration, max: usize) -> BusResult<Vec<Delivery>> {
        let (group, consumer) = (self.group.clone(), self.consumer.clone());
        let idle_ms = idle.as_millis() as u64;
        let live = self
            .log
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Most of the time nothing is stale: look in a read transaction
        // first, and write only to claim.
        let (read_group, read_live) = (group.clone(), live.clone());
        let any_stale = self
            .log
            .db
            .blocking(move |db| {
                let txn = redb::ReadableDatabase::begin_read(db).map_err(store)?;
                let pending = txn.open_table(PENDING).map_err(store)?;
                let stale = stale_pending(&pending, &read_group, idle_ms, &read_live, 1)?;
                Ok(!stale.is_empty())
            })
            .await
            .map_err(unavailable)?;
        if !any_stale {
            return Ok(Vec::new());
        }
        let claimed: Vec<(u64, Option<Vec<u8>>)> = self
            .log
            .db
            .write(move |txn| {
                let now = now_millis().max(0) as u64;
                let mut pending = txn.open_table(PENDING).map_err(store)?;
                let stale = stale_pending(&pending, &group, idle_ms, &live, max)?;
                let log = txn.open_table(LOG).map_err(store)?;
                let mut claimed = Vec::new();
                for seq in stale {
                    match log.get(seq).map_err(store)? {
                        Some(bytes) => {
                            pending
                                .insert((group.as_str(), seq), (consumer.as_str(), now))
                                .map_err(store)?;
                            claimed.push((seq, Some(bytes.value().to_vec())));
                        }
                        // Trimmed away while pending: nothing left to deliver.
                        None => {
                            pending.remove((group.as_str(), seq)).map_err(store)?;
                            claimed.push((seq, None));
                        }
                    }
                }
                Ok(claimed)
            })
            .await
            .map_err(unavailable)?;
        claimed
            .into_iter()
            .filter_map(|(seq, bytes)| bytes.map(|b| (seq, b)))
            .map(|(seq, bytes)| {
                Ok(Delivery {
                    id: seq.to_string(),
                    event: decode(seq, &bytes)?,
                })
            })
            .collect()
    }
}

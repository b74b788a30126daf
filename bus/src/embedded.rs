//! The log in a redb file (`<dir>/bus.redb`), for `munity dev`: one per
//! process, shared by every service in it.
//!
//! - `log`: sequence number → encoded [`DomainEvent`]; the oldest entries
//!   are trimmed past `max_len`.
//! - `groups`: group → the last sequence number delivered to it.
//! - `pending`: (group, sequence) → (consumer, delivered at ms): delivered
//!   and not acknowledged.
//!
//! The file is this process's alone (redb locks it), so a group's
//! deliveries are tracked in memory ([`GroupState`]: how far the group was
//! handed events, and what is pending for which consumer), shared by every
//! member in the process, and handing out events is a read. Each
//! acknowledgement writes the group's position and its pending entries in
//! one commit that does not wait for an fsync (the next group commit makes
//! it durable): a crash loses no event, it may only deliver again what was
//! handed out or acknowledged since the last durable commit, and consumers
//! are idempotent. After a restart, what was pending is claimable at once.
//! Waiting readers are woken in-process when events are appended.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use munity_store::{StoreError, embedded::EmbeddedDb, now_millis};
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
    live: Arc<Mutex<HashSet<String>>>,
    /// The groups joined in this process, by name.
    groups: Arc<Mutex<HashMap<String, Arc<Mutex<GroupState>>>>>,
    /// The newest sequence number appended (0: none), so a consumer that
    /// has everything does not open a transaction to find nothing.
    newest: Arc<AtomicU64>,
}

/// A group's deliveries, in memory (see the module doc).
#[derive(Debug, Default)]
struct GroupState {
    /// Events up to this sequence number were handed out.
    delivered: u64,
    /// Handed out and not acknowledged: sequence → (consumer, when, ms).
    pending: BTreeMap<u64, (Arc<str>, u64)>,
}

impl EmbeddedLog {
    /// Opens (or creates) `dir/bus.redb`, keeping about `max_len` events.
    pub fn open(dir: &Path, max_len: u64) -> anyhow::Result<Self> {
        let mut newest = 0;
        let db = EmbeddedDb::open(dir, "bus", |txn| {
            let log = txn.open_table(LOG)?;
            newest = log
                .last()
                .map_err(redb::TableError::Storage)?
                .map_or(0, |(seq, _)| seq.value());
            txn.open_table(GROUPS)?;
            txn.open_table(PENDING)?;
            Ok(())
        })?;
        Ok(EmbeddedLog {
            db,
            max_len: max_len.max(1),
            appended: Arc::new(Notify::new()),
            live: Arc::default(),
            groups: Arc::default(),
            newest: Arc::new(AtomicU64::new(newest)),
        })
    }

    /// The group's state, loaded from disk (creating the group) when no
    /// member in this process has joined it yet.
    async fn group(&self, group: &str) -> BusResult<Arc<Mutex<GroupState>>> {
        if let Some(state) = lock(&self.groups).get(group) {
            return Ok(state.clone());
        }
        let owned = group.to_owned();
        let loaded = self
            .db
            .write(move |txn| {
                let delivered = position(txn, &owned)?;
                let table = txn.open_table(PENDING).map_err(store)?;
                let mut pending = BTreeMap::new();
                for entry in table
                    .range((owned.as_str(), 0)..=(owned.as_str(), u64::MAX))
                    .map_err(store)?
                {
                    let (key, value) = entry.map_err(store)?;
                    let (consumer, at) = value.value();
                    pending.insert(key.value().1, (Arc::<str>::from(consumer), at));
                }
                Ok(GroupState { delivered, pending })
            })
            .await
            .map_err(unavailable)?;
        // Two members joining at once: the first one's state wins.
        Ok(lock(&self.groups)
            .entry(group.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(loaded)))
            .clone())
    }

    /// Events after `after` in the log, at most `max`, read on the calling
    /// thread (a few entries from the page cache).
    async fn entries_after(&self, after: u64, max: usize) -> BusResult<Vec<(u64, Vec<u8>)>> {
        if after >= self.newest.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        self.db
            .read_now(|db| {
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
            .map_err(unavailable)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
        let newest = self
            .db
            .write_shared(move |txn| {
                let mut log = txn.open_table(LOG).map_err(store)?;
                let first = log
                    .last()
                    .map_err(store)?
                    .map_or(1, |(seq, _)| seq.value() + 1);
                let mut newest = first - 1;
                for (seq, event) in (first..).zip(&encoded) {
                    log.insert(seq, event.as_slice()).map_err(store)?;
                    newest = seq;
                }
                let excess = log.len().map_err(store)?.saturating_sub(max_len);
                for _ in 0..excess {
                    log.pop_first().map_err(store)?;
                }
                Ok(newest)
            })
            .await
            .map_err(unavailable)?;
        // Consumers see events once they are durable.
        self.newest.fetch_max(newest, Ordering::AcqRel);
        self.appended.notify_waiters();
        Ok(())
    }

    async fn join(&self, group: &str, consumer: &str) -> BusResult<Box<dyn GroupConsumer>> {
        let state = self.group(group).await?;
        lock(&self.live).insert(consumer.to_owned());
        Ok(Box::new(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_owned(),
            consumer: Arc::from(consumer),
            state,
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
        let joined = lock(&self.groups).get(group).cloned();
        if let Some(state) = joined {
            let state = lock(&state);
            let undelivered = self
                .newest
                .load(Ordering::Acquire)
                .saturating_sub(state.delivered)
                .min(self.max_len);
            return Ok(undelivered + state.pending.len() as u64);
        }
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
        deliveries(self.log.entries_after(self.after, max).await?)
    }
}

fn deliveries(raw: Vec<(u64, Vec<u8>)>) -> BusResult<Vec<Delivery>> {
    raw.into_iter()
        .map(|(seq, bytes)| {
            Ok(Delivery {
                id: seq.to_string(),
                event: decode(seq, &bytes)?,
            })
        })
        .collect()
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

struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    consumer: Arc<str>,
    state: Arc<Mutex<GroupState>>,
}

impl EmbeddedConsumer {
    /// Hands out up to `max` events past the group's position: a read, and
    /// the group's position and pending entries moved in memory.
    async fn deliver(&self, max: usize) -> BusResult<Vec<Delivery>> {
        // Which events is decided under the group's lock, so two members
        // never take the same ones; the read happens outside it (the
        // entries are in the log for good until trimmed).
        loop {
            let after = lock(&self.state).delivered;
            if after >= self.log.newest.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            let mut raw = self.log.entries_after(after, max).await?;
            if raw.is_empty() {
                return Ok(Vec::new());
            }
            let now = now_millis().max(0) as u64;
            let mut state = lock(&self.state);
            // Another member took some of them meanwhile: keep the rest
            // (or look again, when it took them all).
            raw.retain(|(seq, _)| *seq > state.delivered);
            let Some((last, _)) = raw.last() else {
                continue;
            };
            state.delivered = *last;
            for (seq, _) in &raw {
                state.pending.insert(*seq, (self.consumer.clone(), now));
            }
            drop(state);
            return deliveries(raw);
        }
    }

    /// Writes the group's position and pending entries as they are now,
    /// without waiting for an fsync (see the module doc).
    async fn save(&self) -> BusResult<()> {
        let (group, state) = (self.group.clone(), self.state.clone());
        self.log
            .db
            .write_unsynced(move |txn| {
                // Taken inside the transaction: transactions run one at a
                // time, so the last commit holds the latest state.
                let (delivered, pending) = {
                    let state = lock(&state);
                    (state.delivered, state.pending.clone())
                };
                let mut table = txn.open_table(PENDING).map_err(store)?;
                let mut stored = Vec::new();
                for entry in table
                    .range((group.as_str(), 0)..=(group.as_str(), u64::MAX))
                    .map_err(store)?
                {
                    stored.push(entry.map_err(store)?.0.value().1);
                }
                for seq in stored {
                    if !pending.contains_key(&seq) {
                        table.remove((group.as_str(), seq)).map_err(store)?;
                    }
                }
                for (seq, (consumer, at)) in &pending {
                    table
                        .insert((group.as_str(), *seq), (&**consumer, *at))
                        .map_err(store)?;
                }
                let mut groups = txn.open_table(GROUPS).map_err(store)?;
                groups.insert(group.as_str(), delivered).map_err(store)?;
                Ok(())
            })
            .await
            .map_err(unavailable)
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
        {
            let mut state = lock(&self.state);
            for seq in ids.iter().filter_map(|id| id.parse::<u64>().ok()) {
                state.pending.remove(&seq);
            }
        }
        self.save().await
    }

    async fn claim_stale(&mut self, idle: Duration, max: usize) -> BusResult<Vec<Delivery>> {
        let now = now_millis().max(0) as u64;
        let idle_ms = idle.as_millis() as u64;
        let stale: Vec<u64> = {
            let live = lock(&self.log.live);
            let state = lock(&self.state);
            state
                .pending
                .iter()
                .filter(|(_, (owner, at))| {
                    now.saturating_sub(*at) >= idle_ms || !live.contains(&**owner)
                })
                .map(|(seq, _)| *seq)
                .take(max)
                .collect()
        };
        if stale.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<(u64, Option<Vec<u8>>)> = self
            .log
            .db
            .read_now(|db| {
                let txn = redb::ReadableDatabase::begin_read(db).map_err(store)?;
                let log = txn.open_table(LOG).map_err(store)?;
                stale
                    .iter()
                    .map(|seq| {
                        let bytes = log.get(*seq).map_err(store)?;
                        Ok((*seq, bytes.map(|b| b.value().to_vec())))
                    })
                    .collect()
            })
            .await
            .map_err(unavailable)?;
        let mut claimed = Vec::new();
        {
            let live = lock(&self.log.live).clone();
            let mut state = lock(&self.state);
            for (seq, bytes) in found {
                // Acknowledged meanwhile, or claimed by another member:
                // not stale any more.
                let still_stale = state.pending.get(&seq).is_some_and(|(owner, at)| {
                    now.saturating_sub(*at) >= idle_ms || !live.contains(&**owner)
                });
                if !still_stale {
                    continue;
                }
                match bytes {
                    Some(bytes) => {
                        state.pending.insert(seq, (self.consumer.clone(), now));
                        claimed.push((seq, bytes));
                    }
                    // Trimmed away while pending: nothing left to deliver.
                    None => {
                        state.pending.remove(&seq);
                    }
                }
            }
        }
        deliveries(claimed)
    }
}

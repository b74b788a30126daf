//! The transactional outbox: a service writes its change and the domain
//! events that describe it in **one** transaction of its own store, and a
//! [`Relay`] moves them to the [`EventLog`] afterwards. So a change is
//! never committed without its events (nor events published for a change
//! that was rolled back), and writes keep committing while the log (Redis)
//! is down: the relay catches up when it returns.
//!
//! Order: the outbox is read oldest first and a batch is removed only after
//! it was appended, so events reach the log in the order they were staged
//! (per service, hence per aggregate). A relay that fails part way appends
//! the batch again: consumers de-duplicate by event id.
//!
//! The embedded outbox is a table in the service's own redb file
//! ([`stage`] inside its write transaction).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use munity_platform::shutdown::ShutdownToken;
use munity_store::{StoreError, embedded::EmbeddedDb};
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::Notify;

use crate::{BusError, BusResult, DomainEvent, EventLog, metrics};

/// The outbox table in a service's redb file: sequence → encoded event.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");

/// Creates the outbox table; call it where the service creates its tables.
pub fn create_table(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(OUTBOX).map(drop)
}

/// Stages `events` in the service's write transaction `txn`: they are
/// relayed to the log once (and only if) it commits.
pub fn stage(txn: &WriteTransaction, events: &[DomainEvent]) -> Result<(), StoreError> {
    let internal = |e: redb::Error| StoreError::Internal(e.to_string());
    let mut table = txn.open_table(OUTBOX).map_err(|e| internal(e.into()))?;
    let first = table
        .last()
        .map_err(|e| internal(e.into()))?
        .map_or(1, |(seq, _)| seq.value() + 1);
    for (seq, event) in (first..).zip(events) {
        table
            .insert(seq, event.encode_to_vec().as_slice())
            .map_err(|e| internal(e.into()))?;
    }
    Ok(())
}

/// Events staged and not yet relayed, oldest first.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `max` of the oldest staged events, with their outbox keys.
    async fn oldest(&self, max: usize) -> BusResult<Vec<(u64, DomainEvent)>>;
    /// Removes relayed events by key.
    async fn relayed(&self, keys: &[u64]) -> BusResult<()>;
    /// How many events wait.
    async fn backlog(&self) -> BusResult<u64>;
}

/// The outbox table of a service's embedded store.
pub struct EmbeddedOutbox {
    db: EmbeddedDb,
}

impl EmbeddedOutbox {
    /// The outbox in `db`, whose tables include [`create_table`]'s.
    pub fn new(db: EmbeddedDb) -> Self {
        EmbeddedOutbox { db }
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

#[async_trait]
impl Outbox for EmbeddedOutbox {
    async fn oldest(&self, max: usize) -> BusResult<Vec<(u64, DomainEvent)>> {
        let raw: Vec<(u64, Vec<u8>)> = self
            .db
            .blocking(move |db| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let txn = redb::ReadableDatabase::begin_read(db).map_err(|e| internal(e.into()))?;
                let table = txn.open_table(OUTBOX).map_err(|e| internal(e.into()))?;
                let mut raw = Vec::new();
                for entry in table.iter().map_err(|e| internal(e.into()))?.take(max) {
                    let (seq, bytes) = entry.map_err(|e| internal(e.into()))?;
                    raw.push((seq.value(), bytes.value().to_vec()));
                }
                Ok(raw)
            })
            .await
            .map_err(unavailable)?;
        raw.into_iter()
            .map(|(seq, bytes)| {
                DomainEvent::decode(bytes.as_slice())
                    .map(|event| (seq, event))
                    .map_err(|e| BusError::Corrupt {
                        id: format!("outbox {seq}"),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    async fn relayed(&self, keys: &[u64]) -> BusResult<()> {
        let keys = keys.to_vec();
        self.db
            .write(move |txn| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let mut table = txn.open_table(OUTBOX).map_err(|e| internal(e.into()))?;
                for key in keys {
                    table.remove(key).map_err(|e| internal(e.into()))?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn backlog(&self) -> BusResult<u64> {
        self.db
            .blocking(|db| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let txn = redb::ReadableDatabase::begin_read(db).map_err(|e| internal(e.into()))?;
                let table = txn.open_table(OUTBOX).map_err(|e| internal(e.into()))?;
                table.len().map_err(|e| internal(e.into()))
            })
            .await
            .map_err(unavailable)
    }
}

/// Moves staged events from a service's outbox to the log, oldest first,
/// until shut down.
pub struct Relay {
    /// The publishing service (the metrics' `service` label).
    pub service: String,
    pub outbox: Arc<dyn Outbox>,
    pub log: Arc<dyn EventLog>,
    /// Notified by the service after it stages events, to relay at once;
    /// the relay also looks every `poll` regardless.
    pub staged: Arc<Notify>,
    pub poll: Duration,
    pub batch: usize,
}

impl Relay {
    pub async fn run(self, shutdown: ShutdownToken) {
        let backlog = metrics::OUTBOX_BACKLOG.with_label_values(&[&self.service]);
        let lag = metrics::RELAY_LAG.with_label_values(&[&self.service]);
        let relayed = metrics::RELAYED.with_label_values(&[&self.service]);
        let mut failures = 0u32;
        loop {
            let step = self.step().await;
            match &step {
                Ok(_) => {
                    if failures > 0 {
                        tracing::info!(service = %self.service, "event log reachable again; relaying");
                    }
                    failures = 0;
                }
                Err(error) => {
                    if failures == 0 {
                        tracing::warn!(service = %self.service, %error, "cannot relay events; writes keep committing to the outbox");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            if let Ok(count) = self.outbox.backlog().await {
                backlog.set(count as i64);
            }
            let oldest = self
                .outbox
                .oldest(1)
                .await
                .ok()
                .and_then(|o| o.into_iter().next());
            lag.set(oldest.map_or(0.0, |(_, event)| {
                let now = munity_store::now_millis();
                (now - event.occurred_at_ms).max(0) as f64 / 1000.0
            }));
            let pause = match step {
                Ok(count) => {
                    relayed.inc_by(count as u64);
                    // A full batch: more may be waiting; go on at once.
                    (count < self.batch).then_some(self.poll)
                }
                // Back off while the log is away, up to 5 s.
                Err(_) => Some(
                    Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                        .min(Duration::from_secs(5)),
                ),
            };
            let Some(pause) = pause else {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.staged.notified(), if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Relays one batch; how many events it moved.
    async fn step(&self) -> BusResult<usize> {
        let batch = self.outbox.oldest(self.batch.max(1)).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let (keys, events): (Vec<u64>, Vec<DomainEvent>) = batch.into_iter().unzip();
        self.log.append(&events).await?;
        self.outbox.relayed(&keys).await?;
        Ok(keys.len())
    }
}

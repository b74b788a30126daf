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

/// Where a staged event is in its outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedKey {
    /// The embedded outbox's sequence number.
    Seq(u64),
    /// The CQL outbox's partition (minute) and row (event id).
    Cql { minute: i64, id: uuid::Uuid },
}

/// Events staged and not yet relayed, oldest first.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Up to `max` of the oldest staged events, with their outbox keys.
    async fn oldest(&self, max: usize) -> BusResult<Vec<(StagedKey, DomainEvent)>>;
    /// Removes relayed events by key.
    async fn relayed(&self, keys: &[StagedKey]) -> BusResult<()>;
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
    async fn oldest(&self, max: usize) -> BusResult<Vec<(StagedKey, DomainEvent)>> {
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
                    .map(|event| (StagedKey::Seq(seq), event))
                    .map_err(|e| BusError::Corrupt {
                        id: format!("outbox {seq}"),
                        reason: e.to_string(),
                    })
            })
            .collect()
    }

    async fn relayed(&self, keys: &[StagedKey]) -> BusResult<()> {
        let keys: Vec<u64> = keys
            .iter()
            .filter_map(|key| match key {
                StagedKey::Seq(seq) => Some(*seq),
                StagedKey::Cql { .. } => None,
            })
            .collect();
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
        let (keys, events): (Vec<StagedKey>, Vec<DomainEvent>) = batch.into_iter().unzip();
        self.log.append(&events).await?;
        self.outbox.relayed(&keys).await?;
        Ok(keys.len())
    }
}

/// The outbox of a service on CQL: a table in its keyspace, written in the
/// same logged batch as the change it describes.
///
/// Partitioned by the minute an event was staged (so no partition grows
/// without end, and relayed entries' tombstones stay in old partitions), and
/// clustered by event id (UUIDv7: time order). A cursor row remembers the
/// oldest minute that may still hold entries; the relay moves it forward
/// only past minutes older than [`CqlOutbox::SETTLE`], so a write delayed in
/// flight cannot land behind it.
pub mod cql {
    use std::sync::Arc;

    use async_trait::async_trait;
    use munity_store::{StoreError, cql::CqlStore, now_millis};
    use prost::Message;
    use scylla::statement::prepared::PreparedStatement;
    use uuid::Uuid;

    use super::{Outbox, StagedKey};
    use crate::{BusError, BusResult, DomainEvent};

    /// The outbox's tables: add them to the service's schema.
    pub const SCHEMA: &[&str] = &[
        "CREATE TABLE IF NOT EXISTS outbox (
            minute bigint, id uuid, event blob,
            PRIMARY KEY ((minute), id)
        ) WITH CLUSTERING ORDER BY (id ASC)",
        "CREATE TABLE IF NOT EXISTS outbox_cursor (name text PRIMARY KEY, minute bigint)",
    ];

    const MINUTE_MS: i64 = 60_000;

    pub struct CqlOutbox {
        store: Arc<CqlStore>,
        insert: PreparedStatement,
        select: PreparedStatement,
        count: PreparedStatement,
        delete: PreparedStatement,
        cursor: PreparedStatement,
        set_cursor: PreparedStatement,
    }

    /// One outbox row, ready for the service's batch.
    pub type Row = (i64, Uuid, Vec<u8>);

    fn unavailable(error: StoreError) -> BusError {
        BusError::Unavailable(error.to_string())
    }

    impl CqlOutbox {
        /// How long after its minute ends an outbox partition is taken to be
        /// complete (writes in flight have landed).
        pub const SETTLE: i64 = 2 * MINUTE_MS;

        /// Prepares the statements on `store`, whose schema includes [`SCHEMA`].
        pub async fn new(store: Arc<CqlStore>) -> anyhow::Result<Self> {
            Ok(CqlOutbox {
                insert: store
                    .prepare("INSERT INTO outbox (minute, id, event) VALUES (?, ?, ?)")
                    .await?,
                select: store
                    .prepare("SELECT id, event FROM outbox WHERE minute = ? LIMIT ?")
                    .await?,
                count: store
                    .prepare("SELECT COUNT(*) FROM outbox WHERE minute = ?")
                    .await?,
                delete: store
                    .prepare("DELETE FROM outbox WHERE minute = ? AND id = ?")
                    .await?,
                cursor: store
                    .prepare("SELECT minute FROM outbox_cursor WHERE name = 'relay'")
                    .await?,
                set_cursor: store
                    .prepare("UPDATE outbox_cursor SET minute = ? WHERE name = 'relay'")
                    .await?,
                store,
            })
        }

        /// The statement that stages one event: append it to the service's
        /// logged batch, with [`CqlOutbox::row`] among the batch's values.
        pub fn insert_statement(&self) -> &PreparedStatement {
            &self.insert
        }

        /// The values of `event`'s outbox row.
        pub fn row(event: &DomainEvent) -> Row {
            let id = Uuid::parse_str(&event.id).unwrap_or_else(|_| Uuid::now_v7());
            (now_millis() / MINUTE_MS, id, event.encode_to_vec())
        }

        async fn cursor(&self) -> BusResult<i64> {
            let row: Option<(Option<i64>,)> = self
                .store
                .maybe_row(&self.cursor, ())
                .await
                .map_err(unavailable)?;
            // No cursor yet: start an hour back (a new outbox is empty).
            Ok(row
                .and_then(|(minute,)| minute)
                .unwrap_or(now_millis() / MINUTE_MS - 60))
        }

        /// The minutes that may hold entries, oldest first, up to now.
        async fn minutes(&self) -> BusResult<std::ops::RangeInclusive<i64>> {
            let from = self.cursor().await?;
            Ok(from..=now_millis() / MINUTE_MS)
        }
    }

    #[async_trait]
    impl Outbox for CqlOutbox {
        async fn oldest(&self, max: usize) -> BusResult<Vec<(StagedKey, DomainEvent)>> {
            let mut found = Vec::new();
            let settled_before = (now_millis() - Self::SETTLE) / MINUTE_MS;
            let mut cursor_moves_to = None;
            for minute in self.minutes().await? {
                let rows: Vec<(Uuid, Vec<u8>)> = self
                    .store
                    .rows(&self.select, (minute, (max - found.len()) as i32))
                    .await
                    .map_err(unavailable)?;
                if rows.is_empty() && found.is_empty() && minute < settled_before {
                    cursor_moves_to = Some(minute + 1);
                }
                for (id, bytes) in rows {
                    let event =
                        DomainEvent::decode(bytes.as_slice()).map_err(|e| BusError::Corrupt {
                            id: format!("outbox {id}"),
                            reason: e.to_string(),
                        })?;
                    found.push((StagedKey::Cql { minute, id }, event));
                }
                if found.len() >= max {
                    break;
                }
            }
            if let Some(minute) = cursor_moves_to {
                self.store
                    .execute(&self.set_cursor, (minute,))
                    .await
                    .map_err(unavailable)?;
            }
            Ok(found)
        }

        async fn relayed(&self, keys: &[StagedKey]) -> BusResult<()> {
            for key in keys {
                let StagedKey::Cql { minute, id } = *key else {
                    continue;
                };
                self.store
                    .execute(&self.delete, (minute, id))
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        }

        async fn backlog(&self) -> BusResult<u64> {
            let mut count = 0u64;
            for minute in self.minutes().await? {
                let row: Option<(i64,)> = self
                    .store
                    .maybe_row(&self.count, (minute,))
                    .await
                    .map_err(unavailable)?;
                count += row.map_or(0, |(n,)| n.max(0) as u64);
            }
            Ok(count)
        }
    }
}

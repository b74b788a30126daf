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
//! ([`stage`] inside its write transaction). On CQL, a change made in a
//! logged batch carries its outbox row in the batch; a change made by a
//! lightweight transaction (which cannot share a batch across tables)
//! stages its event tentatively first and confirms it once applied, and
//! the relay asks the service ([`Verify`]) about tentative rows left
//! unconfirmed (a writer that died): nothing is lost, and nothing is
//! published for a change that did not happen.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use munity_platform::shutdown::ShutdownToken;
use munity_store::{StoreError, embedded::EmbeddedDb};
use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::Notify;

use crate::{BusError, BusResult, DomainEvent, EventLog, metrics};

/// The outbox table in a service's redb file: sequence → encoded event.
/// Named `outbox`, or `<service>.outbox` in a file several stores share
/// ([`EmbeddedDb::own_table`]).
#[derive(Clone)]
pub struct OutboxTable(Arc<str>);

impl OutboxTable {
    fn definition(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.0)
    }

    /// Stages `events` in the service's write transaction `txn`: they are
    /// relayed to the log once (and only if) it commits.
    pub fn stage(&self, txn: &WriteTransaction, events: &[DomainEvent]) -> Result<(), StoreError> {
        stage(txn, self.definition(), events)
    }
}

fn stage(
    txn: &WriteTransaction,
    outbox: TableDefinition<u64, &[u8]>,
    events: &[DomainEvent],
) -> Result<(), StoreError> {
    let internal = |e: redb::Error| StoreError::Internal(e.to_string());
    let mut table = txn.open_table(outbox).map_err(|e| internal(e.into()))?;
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
    /// The CQL outbox's partition (minute) and row (event id); `tentative`
    /// when staged ahead of a lightweight transaction and not confirmed.
    Cql {
        minute: i64,
        id: uuid::Uuid,
        tentative: bool,
    },
}

impl StagedKey {
    fn is_tentative(&self) -> bool {
        matches!(
            self,
            StagedKey::Cql {
                tentative: true,
                ..
            }
        )
    }

    /// When a CQL outbox row was staged: its id is a UUIDv7.
    fn staged_at_ms(&self) -> Option<i64> {
        let StagedKey::Cql { id, .. } = self else {
            return None;
        };
        let (secs, nanos) = id.get_timestamp()?.to_unix();
        Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
    }
}

/// Whether the change a tentative event describes really happened (asked
/// of the publishing service about tentative outbox rows whose writer
/// never confirmed them: it may have crashed before or after its change).
#[async_trait]
pub trait Verify: Send + Sync {
    async fn happened(&self, event: &DomainEvent) -> BusResult<bool>;
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
    /// Takes or keeps the right to relay this outbox for `ttl`, for
    /// `holder`; false while another holder has it. An outbox that only
    /// one process can open (embedded) is always its own relay's.
    async fn lease(&self, _holder: &str, _ttl: Duration) -> BusResult<bool> {
        Ok(true)
    }
}

/// The outbox table of a service's embedded store.
#[derive(Clone)]
pub struct EmbeddedOutbox {
    db: EmbeddedDb,
    table: OutboxTable,
    /// Notified after a write that staged events (the relay's cue).
    staged: Arc<Notify>,
}

impl EmbeddedOutbox {
    /// The outbox of the store `db`, its table created when missing.
    pub fn new(db: EmbeddedDb) -> anyhow::Result<Self> {
        let table = OutboxTable(Arc::from(db.own_table("outbox")));
        db.create_tables(|txn| txn.open_table(table.definition()).map(drop))?;
        Ok(EmbeddedOutbox {
            db,
            table,
            staged: Arc::new(Notify::new()),
        })
    }

    /// The outbox's table, for writes that stage events themselves.
    pub fn table(&self) -> OutboxTable {
        self.table.clone()
    }

    /// Tells the relay that a committed write staged events.
    pub fn notify_staged(&self) {
        self.staged.notify_one();
    }

    /// One write transaction of the service that answers its value and the
    /// events describing the change: they are staged in the same
    /// transaction, and the relay is told once it commits. The transaction
    /// is shared with concurrent writers ([`EmbeddedDb::write_shared`]), so
    /// `operation` may run more than once (only its last run commits) and
    /// must change nothing outside the transaction.
    pub async fn write<T, F>(&self, operation: F) -> munity_store::StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> munity_store::StoreResult<(T, Vec<DomainEvent>)>
            + Send
            + 'static,
    {
        let table = self.table.clone();
        let (value, staged) = self
            .db
            .write_shared(move |txn| {
                let (value, events) = operation(txn)?;
                table.stage(txn, &events)?;
                Ok((value, !events.is_empty()))
            })
            .await?;
        if staged {
            self.notify_staged();
        }
        Ok(value)
    }
}

/// What a service's relay needs from its store: the outbox, the cue that
/// events were staged, and (on CQL) the check of unconfirmed events.
pub struct Publishing {
    pub outbox: Arc<dyn Outbox>,
    pub verify: Option<Arc<dyn Verify>>,
    pub staged: Arc<Notify>,
}

impl Publishing {
    pub fn embedded(outbox: &EmbeddedOutbox) -> Self {
        Publishing {
            outbox: Arc::new(outbox.clone()),
            verify: None,
            staged: outbox.staged.clone(),
        }
    }

    pub fn cql(outbox: Arc<cql::CqlOutbox>, verify: Arc<dyn Verify>) -> Self {
        Publishing {
            staged: outbox.staged(),
            outbox,
            verify: Some(verify),
        }
    }

    /// Opens `[bus]` and relays `service`'s outbox to it until `shutdown`;
    /// the log, for the service's consumers. Without a log (an embedded
    /// one another process holds; Redis away at start-up is retried by the
    /// relay itself) events wait in the outbox: writes go on, none is lost.
    pub async fn start(
        self,
        bus: &crate::BusConfig,
        service: &str,
        shutdown: &ShutdownToken,
    ) -> Option<Arc<dyn EventLog>> {
        match crate::open(bus).await {
            Err(error) => {
                tracing::error!(
                    service,
                    %error,
                    "the event log cannot be opened; domain events wait in the outbox (munity_bus_outbox_backlog)"
                );
                None
            }
            Ok(log) => {
                let relay = Relay {
                    verify: self.verify,
                    ..Relay::new(service, self.outbox, log.clone(), self.staged)
                };
                tokio::spawn(relay.run(shutdown.clone()));
                Some(log)
            }
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

#[async_trait]
impl Outbox for EmbeddedOutbox {
    async fn oldest(&self, max: usize) -> BusResult<Vec<(StagedKey, DomainEvent)>> {
        let outbox = self.table.clone();
        let raw: Vec<(u64, Vec<u8>)> = self
            .db
            .blocking(move |db| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let txn = redb::ReadableDatabase::begin_read(db).map_err(|e| internal(e.into()))?;
                let table = txn
                    .open_table(outbox.definition())
                    .map_err(|e| internal(e.into()))?;
                let mut raw = Vec::new();
                for entry in table.iter().map_err(|e| internal(e.into()))?.take(max) {
                    let (seq, bytes) = entry.map_err(|e| internal(e.into()))?;
                    raw.push((seq.value(), bytes.value().to_vec()));
                }
                Ok(raw)
            })
            .await
            .map_err(unavailable)?;
        // Only what is durable goes out: a change read before its commit
        // was fsynced (group commit) could still be lost. Everything read
        // was committed before this wait began, so it covers all of it.
        self.db.durable().await.map_err(unavailable)?;
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
        // A crash before this is durable relays these events again:
        // consumers are idempotent, and nothing is lost.
        let outbox = self.table.clone();
        self.db
            .write_unsynced(move |txn| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let mut table = txn
                    .open_table(outbox.definition())
                    .map_err(|e| internal(e.into()))?;
                for &key in &keys {
                    table.remove(key).map_err(|e| internal(e.into()))?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn backlog(&self) -> BusResult<u64> {
        let outbox = self.table.clone();
        self.db
            .blocking(move |db| {
                let internal = |e: redb::Error| StoreError::Internal(e.to_string());
                let txn = redb::ReadableDatabase::begin_read(db).map_err(|e| internal(e.into()))?;
                let table = txn
                    .open_table(outbox.definition())
                    .map_err(|e| internal(e.into()))?;
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
    /// Asked about tentative events left unconfirmed for `settle`; without
    /// it they wait (and show in the backlog).
    pub verify: Option<Arc<dyn Verify>>,
    /// How long a tentative event may stay unconfirmed before its change is
    /// verified (its writer is taken to have died).
    pub settle: Duration,
    /// This relay, as the outbox's lease names it.
    pub holder: String,
    /// How long a lease lasts unrenewed: when one replica relaying a shared
    /// (CQL) outbox dies, another takes over within it. Renewed every
    /// third of it.
    pub lease: Duration,
}

impl Relay {
    /// A relay with no tentative events to verify (embedded outboxes, CQL
    /// outboxes written in logged batches only).
    pub fn new(
        service: &str,
        outbox: Arc<dyn Outbox>,
        log: Arc<dyn EventLog>,
        staged: Arc<Notify>,
    ) -> Self {
        Relay {
            service: service.to_owned(),
            outbox,
            log,
            staged,
            poll: Duration::from_millis(500),
            batch: 100,
            verify: None,
            settle: Duration::from_secs(5),
            holder: format!("{service}-{}", uuid::Uuid::now_v7().simple()),
            lease: Duration::from_secs(6),
        }
    }

    pub async fn run(self, shutdown: ShutdownToken) {
        let backlog = metrics::OUTBOX_BACKLOG.with_label_values(&[&self.service]);
        let lag = metrics::RELAY_LAG.with_label_values(&[&self.service]);
        let relayed = metrics::RELAYED.with_label_values(&[&self.service]);
        let leading = metrics::RELAY_LEADING.with_label_values(&[&self.service]);
        let mut failures = 0u32;
        // Until when this relay may publish without asking again.
        let mut held_until: Option<tokio::time::Instant> = None;
        loop {
            // Several replicas share a CQL outbox: one publishes, the others
            // wait for its lease to lapse (each would otherwise publish every
            // event once more).
            let now = tokio::time::Instant::now();
            if held_until.is_none_or(|until| now >= until) {
                let held = match self.outbox.lease(&self.holder, self.lease).await {
                    Ok(held) => held,
                    Err(error) => {
                        tracing::warn!(service = %self.service, %error, "cannot renew the relay's lease; pausing");
                        false
                    }
                };
                if held && held_until.is_none() {
                    tracing::info!(service = %self.service, holder = %self.holder, "this replica relays the outbox");
                }
                held_until = held.then(|| now + self.lease / 3);
                leading.set(i64::from(held));
                if !held {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.lease / 3) => {}
                    }
                    continue;
                }
            }
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
            // A step that emptied the outbox knows the backlog and lag are
            // nil; asking the outbox would cost two more reads per event
            // under a light load.
            if matches!(step, Ok(Step { drained: true, .. })) {
                backlog.set(0);
                lag.set(0.0);
            } else {
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
            }
            let pause = match step {
                Ok(Step { moved: count, .. }) => {
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

    /// Relays one batch.
    async fn step(&self) -> BusResult<Step> {
        let batch = self.outbox.oldest(self.batch.max(1)).await?;
        // Fewer than asked for: that was all of it, unless some stays.
        let mut drained = batch.len() < self.batch.max(1);
        if batch.is_empty() {
            return Ok(Step { moved: 0, drained });
        }
        // Events go out in order: the batch ends at the first tentative
        // event still young enough for its writer to confirm it.
        let now = munity_store::now_millis();
        let mut keys = Vec::new();
        let mut events = Vec::new();
        let mut discarded = Vec::new();
        for (key, event) in batch {
            if key.is_tentative() {
                let staged_at = key.staged_at_ms().unwrap_or(event.occurred_at_ms);
                let age = Duration::from_millis((now - staged_at).max(0) as u64);
                let Some(verify) = self.verify.as_ref().filter(|_| age >= self.settle) else {
                    drained = false;
                    break;
                };
                if !verify.happened(&event).await? {
                    tracing::info!(service = %self.service, event = %event.id, "dropping an outbox event whose change never happened");
                    discarded.push(key);
                    continue;
                }
            }
            keys.push(key);
            events.push(event);
        }
        // A span per traced event, child of the change that staged it; the
        // event goes on to its consumers carrying the relay span's context.
        let spans: Vec<tracing::Span> = events
            .iter_mut()
            .filter(|event| !event.traceparent.is_empty())
            .map(|event| {
                let span = tracing::info_span!(
                    "outbox.relay",
                    otel.name = %format!("relay {}", event.r#type),
                    otel.kind = "producer",
                    service = %self.service,
                    event.id = %event.id,
                    "event.type" = %event.r#type,
                );
                munity_platform::telemetry::set_parent_from_traceparent(&span, &event.traceparent);
                let relayed = munity_platform::telemetry::traceparent_of(&span);
                if !relayed.is_empty() {
                    event.traceparent = relayed;
                }
                span
            })
            .collect();
        if !events.is_empty() {
            self.log.append(&events).await?;
        }
        drop(spans);
        keys.extend(discarded);
        self.outbox.relayed(&keys).await?;
        Ok(Step {
            moved: events.len(),
            drained,
        })
    }
}

/// What one relay step did.
struct Step {
    /// Events published.
    moved: usize,
    /// Nothing was left in the outbox (as of the step's read).
    drained: bool,
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
            minute bigint, id uuid, event blob, tentative boolean,
            PRIMARY KEY ((minute), id)
        ) WITH CLUSTERING ORDER BY (id ASC)",
        "CREATE TABLE IF NOT EXISTS outbox_cursor (name text PRIMARY KEY, minute bigint)",
        // Which replica relays; the row lapses (TTL) when its holder dies.
        "CREATE TABLE IF NOT EXISTS outbox_lease (name text PRIMARY KEY, holder text)",
    ];

    const MINUTE_MS: i64 = 60_000;

    pub struct CqlOutbox {
        store: Arc<CqlStore>,
        /// Notified when events were staged and confirmed (the relay's cue).
        staged: Arc<tokio::sync::Notify>,
        insert: PreparedStatement,
        insert_tentative: PreparedStatement,
        confirm: PreparedStatement,
        select: PreparedStatement,
        count: PreparedStatement,
        delete: PreparedStatement,
        cursor: PreparedStatement,
        set_cursor: PreparedStatement,
        take_lease: PreparedStatement,
        renew_lease: PreparedStatement,
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
                    .prepare(
                        "INSERT INTO outbox (minute, id, event, tentative) VALUES (?, ?, ?, false)",
                    )
                    .await?,
                insert_tentative: store
                    .prepare(
                        "INSERT INTO outbox (minute, id, event, tentative) VALUES (?, ?, ?, true)",
                    )
                    .await?,
                confirm: store
                    .prepare("UPDATE outbox SET tentative = false WHERE minute = ? AND id = ?")
                    .await?,
                select: store
                    .prepare("SELECT id, event, tentative FROM outbox WHERE minute = ? LIMIT ?")
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
                take_lease: store
                    .prepare("INSERT INTO outbox_lease (name, holder) VALUES ('relay', ?) IF NOT EXISTS USING TTL ?")
                    .await?,
                renew_lease: store
                    .prepare("UPDATE outbox_lease USING TTL ? SET holder = ? WHERE name = 'relay' IF holder = ?")
                    .await?,
                store,
                staged: Arc::new(tokio::sync::Notify::new()),
            })
        }

        /// Notified after events were staged (hand it to the [`super::Relay`]).
        pub fn staged(&self) -> Arc<tokio::sync::Notify> {
            self.staged.clone()
        }

        /// Tells the relay that a batch written by the service staged events.
        pub fn notify_staged(&self) {
            self.staged.notify_one();
        }

        /// Runs `change`, a lightweight transaction answering (applied,
        /// value), with `events` staged around it: tentatively before,
        /// confirmed (and the relay told) when it applied, dropped when it
        /// did not. When `change` fails (a timeout: it may or may not have
        /// applied) they stay tentative, for the relay to verify later.
        pub async fn with_events<T>(
            &self,
            events: &[DomainEvent],
            change: impl std::future::Future<Output = munity_store::StoreResult<(bool, T)>>,
        ) -> munity_store::StoreResult<T> {
            let unavailable = |e: BusError| StoreError::Unavailable(e.to_string());
            let mut keys = Vec::with_capacity(events.len());
            for event in events {
                keys.push(self.stage_tentative(event).await.map_err(unavailable)?);
            }
            let (applied, value) = change.await?;
            if applied {
                for key in keys {
                    self.confirm(key).await.map_err(unavailable)?;
                }
                self.notify_staged();
            } else {
                self.relayed(&keys).await.map_err(unavailable)?;
            }
            Ok(value)
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

        /// For a change made by a lightweight transaction, which cannot
        /// share a batch with the outbox: stage its event first, tentative,
        /// then run the LWT, then [`CqlOutbox::confirm`] it if applied or
        /// [`Outbox::relayed`] (drop) it if not. Should the writer die in
        /// between, the relay asks the service's [`super::Verify`] once the
        /// row has settled.
        pub async fn stage_tentative(&self, event: &DomainEvent) -> BusResult<StagedKey> {
            let (minute, id, bytes) = Self::row(event);
            self.store
                .execute(&self.insert_tentative, (minute, id, bytes))
                .await
                .map_err(unavailable)?;
            Ok(StagedKey::Cql {
                minute,
                id,
                tentative: true,
            })
        }

        /// The change of a tentative event was applied: relay it now.
        pub async fn confirm(&self, key: StagedKey) -> BusResult<()> {
            let StagedKey::Cql { minute, id, .. } = key else {
                return Ok(());
            };
            self.store
                .execute(&self.confirm, (minute, id))
                .await
                .map_err(unavailable)
                .map(drop)
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
                let rows: Vec<(Uuid, Option<Vec<u8>>, Option<bool>)> = self
                    .store
                    .rows(&self.select, (minute, (max - found.len()) as i32))
                    .await
                    .map_err(unavailable)?;
                if rows.is_empty() && found.is_empty() && minute < settled_before {
                    cursor_moves_to = Some(minute + 1);
                }
                for (id, bytes, tentative) in rows {
                    // A confirmation that raced the row's removal leaves a
                    // row with no event: nothing to relay.
                    let Some(bytes) = bytes else {
                        self.store
                            .execute(&self.delete, (minute, id))
                            .await
                            .map_err(unavailable)?;
                        continue;
                    };
                    let event =
                        DomainEvent::decode(bytes.as_slice()).map_err(|e| BusError::Corrupt {
                            id: format!("outbox {id}"),
                            reason: e.to_string(),
                        })?;
                    let tentative = tentative.unwrap_or(false);
                    found.push((
                        StagedKey::Cql {
                            minute,
                            id,
                            tentative,
                        },
                        event,
                    ));
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
                let StagedKey::Cql { minute, id, .. } = *key else {
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

        /// A lightweight transaction: renew the lease this holder has, or
        /// take it when nobody has (the row lapsed with its holder).
        async fn lease(&self, holder: &str, ttl: std::time::Duration) -> BusResult<bool> {
            let ttl = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
            let renewed = self
                .store
                .execute_lwt(&self.renew_lease, (ttl, holder, holder))
                .await
                .map_err(unavailable)?;
            if renewed {
                return Ok(true);
            }
            self.store
                .execute_lwt(&self.take_lease, (holder, ttl))
                .await
                .map_err(unavailable)
        }
    }
}

//! Where records live: one trait, two backends (`embedded`: redb;
//! `cql`: ScyllaDB / Cassandra), one contract (`tests/repository_contract.rs`).
//!
//! Both keep two orders of a source's records:
//! - by (event time, id), for range queries and aggregates: a record's key;
//!   storing a key again stores nothing new, so retries are harmless;
//! - by arrival, for the tail: every stored batch of a source is an
//!   arrival entry (the time it was stored and a batch id), kept for
//!   `warehouse.tail_retention_secs`.

pub mod cql;
pub mod embedded;

use std::sync::Arc;

use bytes::Bytes;
use munity_platform::config::StorageConfig;
use munity_proto::warehouse::v1::Record;
use munity_store::{Millis, StoreResult, now_millis};
use prost::Message;

use crate::{
    config::WarehouseConfig,
    domain::{ArrivalCursor, Range, RecordKey, millis_of, timestamp_of},
};

/// A record ready to store: its protobuf without `stored_at` (as the
/// producer sent it, when it needed no change, or encoded here), and its
/// key.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    pub encoded: Bytes,
    pub source: String,
    pub id: String,
    pub time: Millis,
}

impl EncodedRecord {
    /// A prepared record (see `domain::prepare_batch`).
    pub fn of(mut record: Record) -> Self {
        record.stored_at = None;
        EncodedRecord {
            encoded: Bytes::from(record.encode_to_vec()),
            time: record.time.as_ref().map_or(0, millis_of),
            source: record.source,
            id: record.id,
        }
    }
}

/// The records of one ingest, of any sources, all stored at `stored_at`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub stored_at: Millis,
    pub records: Vec<EncodedRecord>,
}

impl Batch {
    /// Prepared records (see `domain::prepare_batch`), stored at the first
    /// one's `stored_at`.
    pub fn of(records: Vec<Record>) -> Self {
        let stored_at = records
            .first()
            .and_then(|r| r.stored_at.as_ref())
            .map_or_else(now_millis, millis_of);
        Batch {
            stored_at,
            records: records.into_iter().map(EncodedRecord::of).collect(),
        }
    }

    /// `stored_at` as the protobuf field each stored record ends with: a
    /// record is stored as its encoding followed by this (a field appended
    /// is a field set).
    pub fn stored_at_field(&self) -> Vec<u8> {
        let mut field = Vec::with_capacity(16);
        prost::encoding::message::encode(8, &timestamp_of(self.stored_at), &mut field);
        field
    }
}

#[async_trait::async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Stores prepared records (ids and times set), of any sources, and
    /// returns once they are durable. A record whose key its source holds
    /// already is not stored again.
    async fn ingest(&self, batch: Batch) -> StoreResult<()>;

    /// At most `limit` records of `range`, in its order, strictly after
    /// `after` when given. Expired records are never returned.
    async fn read(
        &self,
        range: &Range,
        after: Option<&RecordKey>,
        limit: usize,
    ) -> StoreResult<Vec<Record>>;

    /// At most `limit` of `source`'s records in arrival order, strictly
    /// after `after` (from the oldest kept when `None`), each with its
    /// cursor. Only arrivals the store is sure nothing can land before
    /// are returned (see `warehouse.tail_settle_ms`).
    async fn arrivals(
        &self,
        source: &str,
        after: Option<&ArrivalCursor>,
        limit: usize,
    ) -> StoreResult<Vec<(ArrivalCursor, Record)>>;

    /// The cursor of `source`'s newest arrival, if any is kept.
    async fn newest_arrival(&self, source: &str) -> StoreResult<Option<ArrivalCursor>>;
}

/// Opens the configured backend.
pub async fn open(
    storage: &StorageConfig,
    config: &WarehouseConfig,
) -> anyhow::Result<Arc<dyn RecordStore>> {
    Ok(match storage {
        StorageConfig::Embedded { path } => {
            Arc::new(embedded::EmbeddedRecords::open(path, config.clone())?)
        }
        StorageConfig::Cql(cql) => Arc::new(cql::CqlRecords::connect(cql, config.clone()).await?),
    })
}

/// When a record stored at `stored_at` of `source` expires (`None`: kept).
pub fn expires_at(config: &WarehouseConfig, source: &str, stored_at: Millis) -> Option<Millis> {
    match config.ttl_secs(source) {
        0 => None,
        ttl => Some(
            stored_at
                .saturating_add(Millis::try_from(ttl.saturating_mul(1000)).unwrap_or(Millis::MAX)),
        ),
    }
}

/// The records of an arrival entry: the records' protobuf encodings,
/// framed as an `IngestRequest` (so one encoding of each record serves
/// both orders).
pub fn frame_batch(encoded: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded.iter().map(|r| r.len() + 6).sum());
    for record in encoded {
        // Field 1 (records), wire type 2 (length-delimited).
        out.push(0x0a);
        prost::encoding::encode_varint(record.len() as u64, &mut out);
        out.extend_from_slice(record);
    }
    out
}

/// The records of an arrival entry.
pub fn unframe_batch(bytes: &[u8]) -> StoreResult<Vec<Record>> {
    use prost::Message;
    munity_proto::warehouse::v1::IngestRequest::decode(bytes)
        .map(|batch| batch.records)
        .map_err(munity_store::internal)
}

/// The cursor of the last record of an arrival entry.
pub fn last_cursor(at: Millis, batch: uuid::Uuid, framed: &[u8]) -> StoreResult<ArrivalCursor> {
    let count = unframe_batch(framed)?.len();
    Ok(ArrivalCursor {
        at,
        batch,
        index: u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX),
    })
}

/// The items of `batch` (its records, or their keys) past `after`'s
/// index when `after` names this batch, each with its cursor.
pub fn records_after<T>(
    at: Millis,
    batch: uuid::Uuid,
    items: Vec<T>,
    after: Option<&ArrivalCursor>,
) -> impl Iterator<Item = (ArrivalCursor, T)> {
    let skip_through = after
        .filter(|a| a.at == at && a.batch == batch)
        .map(|a| a.index);
    items
        .into_iter()
        .enumerate()
        .filter_map(move |(index, item)| {
            let index = u32::try_from(index).ok()?;
            if skip_through.is_some_and(|last| index <= last) {
                return None;
            }
            Some((ArrivalCursor { at, batch, index }, item))
        })
}

//! The embedded backend: `warehouse.redb`.
//!
//! - `records`: source ‖ 0 ‖ time ‖ id → expiry ‖ the record's protobuf.
//!   Times are stored sign-flipped big-endian, so byte order is (time, id)
//!   order, the same as CQL's clustering order.
//! - `arrivals`: source ‖ 0 ‖ stored-at ‖ batch id → the batch's new
//!   records. Stored-at and batch id are assigned in the write transaction,
//!   after the source's previous arrival, so arrival order is commit order
//!   and a tail never needs to wait for writes in flight.
//! - `expiry`: expiry ‖ records key, for sources with a TTL: a bounded
//!   number of expired records is removed by each write; reads hide the
//!   rest.

use std::{collections::BTreeMap, ops::Bound, path::Path};

use munity_proto::warehouse::v1::Record;
use munity_store::{Millis, StoreResult, embedded::EmbeddedDb, internal, now_millis};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::{
    Batch, RecordStore, expires_at, frame_batch, last_cursor, records_after, unframe_batch,
};
use crate::{
    config::WarehouseConfig,
    domain::{ArrivalCursor, Range, RecordKey},
};

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const ARRIVALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("arrivals");
/// source → the newest arrival's stored-at ‖ batch id.
const LAST_ARRIVAL: TableDefinition<&str, &[u8]> = TableDefinition::new("last_arrival");
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");

/// Expired records (and arrivals) removed per write, at most: a write
/// never does unbounded work.
const PURGE_PER_WRITE: usize = 256;

/// Byte order = numeric order, negative times included.
fn sortable(time: Millis) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

fn unsortable(bytes: &[u8]) -> Millis {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(raw) ^ (1 << 63)) as Millis
}

fn source_prefix(source: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + 1 + 8 + 64);
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key
}

/// Past every key of `source` (names never hold byte 1).
fn source_end(source: &str) -> Vec<u8> {
    let mut key = source.as_bytes().to_vec();
    key.push(1);
    key
}

fn record_key(source: &str, key: &RecordKey) -> Vec<u8> {
    let mut bytes = source_prefix(source);
    bytes.extend_from_slice(&sortable(key.time));
    bytes.extend_from_slice(key.id.as_bytes());
    bytes
}

/// The first key at or after `time` (ids are never empty).
fn time_key(source: &str, time: Millis) -> Vec<u8> {
    let mut bytes = source_prefix(source);
    bytes.extend_from_slice(&sortable(time));
    bytes
}

fn arrival_key(source: &str, at: Millis, batch: Uuid) -> Vec<u8> {
    let mut bytes = source_prefix(source);
    bytes.extend_from_slice(&sortable(at));
    bytes.extend_from_slice(batch.as_bytes());
    bytes
}

/// (stored-at, batch) from an arrival key of `source`.
fn arrival_of(source: &str, key: &[u8]) -> StoreResult<(Millis, Uuid)> {
    let rest = &key[source.len() + 1..];
    if rest.len() != 24 {
        return Err(internal("malformed arrival key"));
    }
    let batch = Uuid::from_slice(&rest[8..]).map_err(internal)?;
    Ok((unsortable(rest), batch))
}

/// The record in a stored value, unless it has expired.
fn live_record(value: &[u8], now: Millis) -> StoreResult<Option<Record>> {
    if value.len() < 8 {
        return Err(internal("malformed stored record"));
    }
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&value[..8]);
    let expires = Millis::from_be_bytes(raw);
    if expires != 0 && expires <= now {
        return Ok(None);
    }
    Record::decode(&value[8..]).map(Some).map_err(internal)
}

pub struct EmbeddedRecords {
    db: EmbeddedDb,
    config: WarehouseConfig,
}

impl EmbeddedRecords {
    /// Opens (or creates) `dir/warehouse.redb`.
    pub fn open(dir: &Path, config: WarehouseConfig) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "warehouse", |txn| {
            txn.open_table(RECORDS)?;
            txn.open_table(ARRIVALS)?;
            txn.open_table(LAST_ARRIVAL)?;
            txn.open_table(EXPIRY)?;
            Ok(())
        })?;
        Ok(EmbeddedRecords { db, config })
    }
}

/// A record ready for the write transaction: its key and its stored value
/// (expiry ‖ protobuf, `stored_at` last).
struct Prepared {
    key: Vec<u8>,
    value: Vec<u8>,
    expires: Option<Millis>,
}

impl Prepared {
    fn encoded(&self) -> &[u8] {
        &self.value[8..]
    }
}

/// One source's records of an ingest, in request order, and their
/// arrival entry, framed before the write transaction (the transaction
/// uses it as is when every record is new, as it is but for retries).
struct SourceBatch {
    records: Vec<Prepared>,
    framed: Vec<u8>,
}

/// The write transaction of one ingest.
fn store_batch(
    txn: &WriteTransaction,
    batches: BTreeMap<String, SourceBatch>,
    retention_ms: Millis,
) -> StoreResult<()> {
    let now = now_millis();
    let mut table = txn.open_table(RECORDS).map_err(internal)?;
    let mut expiry = txn.open_table(EXPIRY).map_err(internal)?;
    // Each source's arrival entry: its new records, in request order.
    let mut arrived: Vec<(String, Vec<u8>)> = Vec::with_capacity(batches.len());
    for (source, SourceBatch { records, framed }) in batches {
        let mut fresh = vec![true; records.len()];
        for (index, record) in records.iter().enumerate() {
            // One lookup: insert, and put the stored record back in the
            // rare case the key was there already.
            let before = table
                .insert(record.key.as_slice(), record.value.as_slice())
                .map_err(internal)?
                .map(|old| old.value().to_vec());
            if let Some(before) = before {
                table
                    .insert(record.key.as_slice(), before.as_slice())
                    .map_err(internal)?;
                fresh[index] = false; // stored already: a retry
                continue;
            }
            if let Some(expires) = record.expires {
                let mut index = expires.to_be_bytes().to_vec();
                index.extend_from_slice(&record.key);
                expiry.insert(index.as_slice(), ()).map_err(internal)?;
            }
        }
        if fresh.iter().all(|&f| f) {
            arrived.push((source, framed));
        } else if fresh.iter().any(|&f| f) {
            let slices: Vec<&[u8]> = records
                .iter()
                .zip(&fresh)
                .filter(|(_, fresh)| **fresh)
                .map(|(record, _)| record.encoded())
                .collect();
            arrived.push((source, frame_batch(&slices)));
        }
    }

    // Expired records go, a bounded number per write.
    let due: Vec<Vec<u8>> = expiry
        .range::<&[u8]>(..now.to_be_bytes().as_slice())
        .map_err(internal)?
        .take(PURGE_PER_WRITE)
        .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    for index in due {
        expiry.remove(index.as_slice()).map_err(internal)?;
        table.remove(&index[8..]).map_err(internal)?;
    }

    let mut arrivals = txn.open_table(ARRIVALS).map_err(internal)?;
    let mut last = txn.open_table(LAST_ARRIVAL).map_err(internal)?;
    for (source, framed) in arrived {
        // After the source's previous arrival, whatever the clock says.
        let previous = last
            .get(source.as_str())
            .map_err(internal)?
            .map(|v| -> StoreResult<(Millis, Uuid)> {
                let v = v.value();
                Ok((unsortable(v), Uuid::from_slice(&v[8..]).map_err(internal)?))
            })
            .transpose()?;
        let (at, batch) = match previous {
            Some((at, batch)) if at >= now => (at, Uuid::from_u128(batch.as_u128() + 1)),
            _ => (now, Uuid::now_v7()),
        };
        let key = arrival_key(&source, at, batch);
        arrivals
            .insert(key.as_slice(), framed.as_slice())
            .map_err(internal)?;
        let mut newest = sortable(at).to_vec();
        newest.extend_from_slice(batch.as_bytes());
        last.insert(source.as_str(), newest.as_slice())
            .map_err(internal)?;
        // Arrivals past the tail's retention go, a bounded number per write.
        let start = source_prefix(&source);
        let kept_from = time_key(&source, now.saturating_sub(retention_ms));
        let old: Vec<Vec<u8>> = arrivals
            .range::<&[u8]>(start.as_slice()..kept_from.as_slice())
            .map_err(internal)?
            .take(PURGE_PER_WRITE)
            .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(internal)?;
        for key in old {
            arrivals.remove(key.as_slice()).map_err(internal)?;
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl RecordStore for EmbeddedRecords {
    async fn ingest(&self, batch: Batch) -> StoreResult<()> {
        // Everything but the lookups and inserts is done here, outside the
        // write transaction (one at a time for the whole database).
        let stored_at = batch.stored_at_field();
        let mut by_source: BTreeMap<String, Vec<Prepared>> = BTreeMap::new();
        for record in batch.records {
            let expires = expires_at(&self.config, &record.source, batch.stored_at);
            let mut value = Vec::with_capacity(8 + record.encoded.len() + stored_at.len());
            value.extend_from_slice(&expires.unwrap_or(0).to_be_bytes());
            value.extend_from_slice(&record.encoded);
            value.extend_from_slice(&stored_at);
            let prepared = Prepared {
                key: record_key(
                    &record.source,
                    &RecordKey {
                        time: record.time,
                        id: record.id,
                    },
                ),
                value,
                expires,
            };
            match by_source.get_mut(record.source.as_str()) {
                Some(list) => list.push(prepared),
                None => {
                    by_source.insert(record.source, vec![prepared]);
                }
            }
        }
        let batches: BTreeMap<String, SourceBatch> = by_source
            .into_iter()
            .map(|(source, records)| {
                let slices: Vec<&[u8]> = records.iter().map(Prepared::encoded).collect();
                let framed = frame_batch(&slices);
                (source, SourceBatch { records, framed })
            })
            .collect();
        let retention_ms = self.config.tail_retention_ms();
        self.db
            .write(move |txn| store_batch(txn, batches, retention_ms))
            .await
    }

    async fn read(
        &self,
        range: &Range,
        after: Option<&RecordKey>,
        limit: usize,
    ) -> StoreResult<Vec<Record>> {
        let source = range.source.clone();
        let mut lower = Bound::Included(time_key(&source, range.from));
        let mut upper = Bound::Excluded(time_key(&source, range.to));
        if let Some(after) = after {
            let key = Bound::Excluded(record_key(&source, after));
            if range.descending {
                upper = key;
            } else {
                lower = key;
            }
        }
        let descending = range.descending;
        self.db
            .blocking(move |db| {
                let now = now_millis();
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(RECORDS).map_err(internal)?;
                let bounds = (
                    lower.as_ref().map(Vec::as_slice),
                    upper.as_ref().map(Vec::as_slice),
                );
                let entries = table.range::<&[u8]>(bounds).map_err(internal)?;
                let entries: Box<dyn Iterator<Item = _>> = if descending {
                    Box::new(entries.rev())
                } else {
                    Box::new(entries)
                };
                let mut records = Vec::with_capacity(limit.min(1024));
                for entry in entries {
                    let (_, value) = entry.map_err(internal)?;
                    if let Some(record) = live_record(value.value(), now)? {
                        records.push(record);
                        if records.len() >= limit {
                            break;
                        }
                    }
                }
                Ok(records)
            })
            .await
    }

    async fn arrivals(
        &self,
        source: &str,
        after: Option<&ArrivalCursor>,
        limit: usize,
    ) -> StoreResult<Vec<(ArrivalCursor, Record)>> {
        let source = source.to_owned();
        let after = after.copied();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(ARRIVALS).map_err(internal)?;
                let start = match &after {
                    Some(a) => arrival_key(&source, a.at, a.batch),
                    None => source_prefix(&source),
                };
                let end = source_end(&source);
                let mut out = Vec::new();
                for entry in table
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(internal)?
                {
                    let (key, value) = entry.map_err(internal)?;
                    let (at, batch) = arrival_of(&source, key.value())?;
                    let records = unframe_batch(value.value())?;
                    for item in records_after(at, batch, records, after.as_ref()) {
                        out.push(item);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn newest_arrival(&self, source: &str) -> StoreResult<Option<ArrivalCursor>> {
        let source = source.to_owned();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(ARRIVALS).map_err(internal)?;
                let start = source_prefix(&source);
                let end = source_end(&source);
                let newest = table
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(internal)?
                    .next_back()
                    .transpose()
                    .map_err(internal)?;
                let Some((key, value)) = newest else {
                    return Ok(None);
                };
                let (at, batch) = arrival_of(&source, key.value())?;
                last_cursor(at, batch, value.value()).map(Some)
            })
            .await
    }
}

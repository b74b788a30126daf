//! The CQL backend (ScyllaDB; verified on Cassandra 5.0).
//!
//! - `records`: partition (source, hour of event time), clustered by
//!   (time, id): a partition holds one source-hour, so partitions stay
//!   bounded and a range read touches one partition per hour it spans.
//!   Writes are unlogged batches of one partition each (a batch never
//!   spans partitions: that would make one coordinator wait on several
//!   replicas sets), `USING TTL` the source's TTL.
//! - `buckets`: which hours a source has records in, so a long range with
//!   few records reads only the partitions that exist.
//! - `arrivals`: partition (source, hour stored), clustered by (stored
//!   at, batch id): each stored batch's record keys, in request order,
//!   for the tail, `USING TTL` the tail's retention (see [`KEYS_ENTRY`]).
//!   The tail reads the records themselves from `records` by key, so
//!   each record is written once (an entry is about 16 bytes a record,
//!   where the record is about 260). Replicas assign stored-at from their
//!   own clocks and a write may still be in flight when a later one is
//!   read, so arrivals are handed out only `warehouse.tail_settle_ms`
//!   after they were stored.
//!
//! Storing a key again overwrites it with the same record: stored once.
//! (A batch retried after a failure may appear twice in the tail, by id;
//! never twice in queries.) A record the tail reaches after it has
//! expired (a source TTL shorter than the tail's retention) is passed
//! over, as queries pass it over.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures::{StreamExt, TryStreamExt, stream};
use munity_platform::config::CqlConfig;
use munity_proto::warehouse::v1::Record;
use munity_store::{
    Millis, StoreResult,
    cql::{CqlStore, ts},
    internal, now_millis,
};
use prost::Message;
use scylla::{
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::CqlTimestamp,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{RecordStore, expires_at, records_after, unframe_batch};
use crate::{
    config::WarehouseConfig,
    domain::{ArrivalCursor, Range, RecordKey},
};

pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS records (source text, bucket bigint, time timestamp, \
     id text, record blob, PRIMARY KEY ((source, bucket), time, id)) \
     WITH CLUSTERING ORDER BY (time ASC, id ASC)",
    "CREATE TABLE IF NOT EXISTS buckets (source text, bucket bigint, \
     PRIMARY KEY (source, bucket))",
    "CREATE TABLE IF NOT EXISTS arrivals (source text, hour bigint, at timestamp, \
     batch_id uuid, records blob, PRIMARY KEY ((source, hour), at, batch_id))",
];

const HOUR_MS: Millis = 3_600_000;
/// One unlogged batch: at most this many rows, and about this many bytes
/// (Cassandra refuses batches over 50 KiB by default).
const BATCH_ROWS: usize = 64;
const BATCH_BYTES: usize = 32 * 1024;
/// Rows per read round trip when a read spans partitions.
const READ_PAGE: usize = 1_000;
/// Arrival entries per read round trip (at least 2: a page goes on from
/// the last entry of the one before).
const ARRIVAL_PAGE: usize = 64;
/// Keys per `(time, id) IN ?` read (ScyllaDB refuses more than 100
/// clustering keys in one query by default), and such reads in flight.
const IN_KEYS: usize = 100;
const KEY_READS: usize = 8;

/// The first byte of an arrival entry holding its records' keys: then,
/// for each record in request order, its time (8 bytes, big-endian), the
/// length of its id (a varint) and the id. Entries written before this
/// format hold the records themselves, framed as an `IngestRequest`
/// (`super::frame_batch`), and start with 0x0a; both are read (an entry
/// lives `warehouse.tail_retention_secs`).
pub const KEYS_ENTRY: u8 = 0;

/// Appends one record's key to an arrival entry (see [`KEYS_ENTRY`]).
fn push_key(entry: &mut Vec<u8>, time: Millis, id: &str) {
    entry.extend_from_slice(&time.to_be_bytes());
    prost::encoding::encode_varint(id.len() as u64, entry);
    entry.extend_from_slice(id.as_bytes());
}

/// What an arrival entry holds for each of its records.
enum Arrived {
    /// Its key (the record is read from `records`).
    Key(RecordKey),
    /// The record itself (an entry of the earlier format).
    Record(Record),
}

/// The records of an arrival entry, in its order, in either format.
fn arrived(entry: &[u8]) -> StoreResult<Vec<Arrived>> {
    let Some((&KEYS_ENTRY, mut rest)) = entry.split_first() else {
        return Ok(unframe_batch(entry)?
            .into_iter()
            .map(Arrived::Record)
            .collect());
    };
    let malformed = || internal("malformed arrival entry");
    let mut keys = Vec::new();
    while !rest.is_empty() {
        let (time, after_time) = rest.split_at_checked(8).ok_or_else(malformed)?;
        let time = Millis::from_be_bytes(time.try_into().map_err(|_| malformed())?);
        rest = after_time;
        let len = prost::encoding::decode_varint(&mut rest).map_err(|_| malformed())?;
        let len = usize::try_from(len).map_err(|_| malformed())?;
        let (id, after_id) = rest.split_at_checked(len).ok_or_else(malformed)?;
        let id = std::str::from_utf8(id).map_err(|_| malformed())?.to_owned();
        keys.push(Arrived::Key(RecordKey { time, id }));
        rest = after_id;
    }
    Ok(keys)
}

fn hour_of(time: Millis) -> i64 {
    time.div_euclid(HOUR_MS)
}

fn ttl_secs(expires: Option<Millis>, now: Millis) -> i32 {
    match expires {
        None => 0, // CQL: no TTL
        Some(at) => i32::try_from(((at - now) / 1000).max(1)).unwrap_or(i32::MAX),
    }
}

struct Statements {
    insert: PreparedStatement,
    /// An unlogged batch of `BATCH_ROWS` inserts, made once.
    full_batch: Batch,
    bucket: PreparedStatement,
    arrival: PreparedStatement,
    buckets_up: PreparedStatement,
    buckets_down: PreparedStatement,
    read_up: PreparedStatement,
    read_down: PreparedStatement,
    read_keys: PreparedStatement,
    arrivals_after: PreparedStatement,
    newest_arrival: PreparedStatement,
}

pub struct CqlRecords {
    cql: Arc<CqlStore>,
    s: Arc<Statements>,
    config: WarehouseConfig,
    /// Bounds this replica's writes in flight.
    writes: Arc<Semaphore>,
    /// (source, hour) known to be in `buckets` (sources without a TTL
    /// only: their rows never expire).
    known_buckets: Mutex<HashSet<(String, i64)>>,
}

/// The values of [`Statements::insert`] for `row` of `encoded`.
fn row_values<'a>(
    source: &'a str,
    bucket: i64,
    encoded: &'a [u8],
    row: &'a Row,
) -> (&'a str, i64, CqlTimestamp, &'a str, &'a [u8], i32) {
    (
        source,
        bucket,
        ts(row.time),
        row.id.as_str(),
        &encoded[row.encoded.clone()],
        row.ttl,
    )
}

/// One source's records of an ingest: their protobuf encodings, one after
/// the other; its arrival entry (their keys); its rows.
struct SourceWrite {
    encoded: Vec<u8>,
    keys: Vec<u8>,
    rows: Vec<Row>,
}

/// One record ready to write (its source and bucket are its partition's;
/// its protobuf is a part of its source's `encoded`).
struct Row {
    time: Millis,
    id: String,
    encoded: std::ops::Range<usize>,
    ttl: i32,
}

impl CqlRecords {
    pub async fn connect(config: &CqlConfig, own: WarehouseConfig) -> anyhow::Result<Self> {
        let cql = CqlStore::connect(config, SCHEMA).await?;
        let p = |statement: &'static str| cql.prepare(statement);
        let insert = p("INSERT INTO records (source, bucket, time, id, record) VALUES (?, ?, ?, ?, ?) USING TTL ?").await?;
        let mut full_batch = Batch::new(BatchType::Unlogged);
        for _ in 0..BATCH_ROWS {
            full_batch.append_statement(insert.clone());
        }
        let s = Statements {
            insert,
            full_batch,
            bucket: p("INSERT INTO buckets (source, bucket) VALUES (?, ?) USING TTL ?").await?,
            arrival: p("INSERT INTO arrivals (source, hour, at, batch_id, records) VALUES (?, ?, ?, ?, ?) USING TTL ?").await?,
            buckets_up: p("SELECT bucket FROM buckets WHERE source = ? AND bucket >= ? AND bucket <= ?").await?,
            buckets_down: p("SELECT bucket FROM buckets WHERE source = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket DESC").await?,
            read_up: p("SELECT record FROM records WHERE source = ? AND bucket = ? AND (time, id) > (?, ?) AND (time, id) < (?, ?) LIMIT ?").await?,
            read_down: p("SELECT record FROM records WHERE source = ? AND bucket = ? AND (time, id) > (?, ?) AND (time, id) < (?, ?) ORDER BY time DESC, id DESC LIMIT ?").await?,
            read_keys: p("SELECT time, id, record FROM records WHERE source = ? AND bucket = ? AND (time, id) IN ?").await?,
            arrivals_after: p("SELECT at, batch_id, records FROM arrivals WHERE source = ? AND hour = ? AND (at, batch_id) >= (?, ?) AND (at, batch_id) <= (?, ?) LIMIT ?").await?,
            newest_arrival: p("SELECT at, batch_id, records FROM arrivals WHERE source = ? AND hour = ? ORDER BY at DESC, batch_id DESC LIMIT 1").await?,
        };
        let writes = Arc::new(Semaphore::new(own.cql_write_concurrency.max(1)));
        Ok(CqlRecords {
            cql: Arc::new(cql),
            s: Arc::new(s),
            config: own,
            writes,
            known_buckets: Mutex::new(HashSet::new()),
        })
    }

    /// Runs the unlogged batches of one partition's rows, bounded by the
    /// write semaphore.
    async fn write_partition(
        &self,
        source: &str,
        bucket: i64,
        rows: &[Row],
        encoded: &[u8],
    ) -> StoreResult<()> {
        // Index ranges (not slices: the futures below must not be generic
        // over a borrow's lifetime to be Send).
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (index, row) in rows.iter().enumerate() {
            if index > start
                && (index - start >= BATCH_ROWS || bytes + row.encoded.len() > BATCH_BYTES)
            {
                chunks.push(start..index);
                (start, bytes) = (index, 0);
            }
            bytes += row.encoded.len();
        }
        if start < rows.len() {
            chunks.push(start..rows.len());
        }
        stream::iter(chunks)
            .map(|chunk| async move {
                let chunk = &rows[chunk];
                let _permit = self
                    .writes
                    .acquire()
                    .await
                    .map_err(|_| internal("the write limiter closed"))?;
                let values = |row| row_values(source, bucket, encoded, row);
                if let [row] = chunk {
                    return self
                        .cql
                        .execute(&self.s.insert, values(row))
                        .await
                        .map(drop);
                }
                let values: Vec<_> = chunk.iter().map(values).collect();
                if chunk.len() == BATCH_ROWS {
                    return self.cql.batch(&self.s.full_batch, values).await.map(drop);
                }
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in chunk {
                    batch.append_statement(self.s.insert.clone());
                }
                self.cql.batch(&batch, values).await.map(drop)
            })
            .buffer_unordered(self.config.cql_write_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// The hours of `range` that hold records, in the range's order.
    async fn buckets(&self, range: &Range, after: Option<&RecordKey>) -> StoreResult<Vec<i64>> {
        let (mut low, mut high) = (hour_of(range.from), hour_of(range.to - 1));
        if let Some(after) = after {
            if range.descending {
                high = hour_of(after.time);
            } else {
                low = hour_of(after.time);
            }
        }
        let statement = if range.descending {
            &self.s.buckets_down
        } else {
            &self.s.buckets_up
        };
        let rows: Vec<(i64,)> = self.cql.rows(statement, (&range.source, low, high)).await?;
        Ok(rows.into_iter().map(|(b,)| b).collect())
    }
}

#[async_trait::async_trait]
impl RecordStore for CqlRecords {
    async fn ingest(&self, batch: super::Batch) -> StoreResult<()> {
        let now = now_millis();
        // Each source's records in request order, copied into its source's
        // buffer with `stored_at` after each (the rows point into it), and
        // their keys into its arrival entry.
        let stored_at = batch.stored_at_field();
        let total = batch.records.len();
        let mut by_source: BTreeMap<String, SourceWrite> = BTreeMap::new();
        for (index, record) in batch.records.into_iter().enumerate() {
            let expires = expires_at(&self.config, &record.source, batch.stored_at);
            let len = record.encoded.len() + stored_at.len();
            let write = match by_source.get_mut(record.source.as_str()) {
                Some(write) => write,
                None => by_source
                    .entry(record.source)
                    .or_insert_with(|| SourceWrite {
                        encoded: Vec::with_capacity((total - index) * len),
                        keys: Vec::with_capacity(1 + (total - index) * (9 + record.id.len())),
                        rows: Vec::new(),
                    }),
            };
            if write.keys.is_empty() {
                write.keys.push(KEYS_ENTRY);
            }
            push_key(&mut write.keys, record.time, &record.id);
            let start = write.encoded.len();
            write.encoded.extend_from_slice(&record.encoded);
            write.encoded.extend_from_slice(&stored_at);
            write.rows.push(Row {
                time: record.time,
                encoded: start..write.encoded.len(),
                ttl: ttl_secs(expires, now),
                id: record.id,
            });
        }
        // Partitions: (index in `sources`, bucket, rows); sources:
        // (source, encoded records, arrival entry).
        let mut sources: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::with_capacity(by_source.len());
        let mut partitions: Vec<(usize, i64, Vec<Row>)> = Vec::new();
        for (index, (source, write)) in by_source.into_iter().enumerate() {
            let mut buckets: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
            for row in write.rows {
                buckets.entry(hour_of(row.time)).or_default().push(row);
            }
            partitions.extend(
                buckets
                    .into_iter()
                    .map(|(bucket, rows)| (index, bucket, rows)),
            );
            sources.push((source, write.encoded, write.keys));
        }
        let mut bucket_rows: Vec<(String, i64, i32)> = Vec::new();
        {
            let known = self.known_buckets.lock().unwrap_or_else(|e| e.into_inner());
            for (index, bucket, rows) in &partitions {
                let source = &sources[*index].0;
                if known.contains(&(source.clone(), *bucket)) {
                    continue;
                }
                // The bucket row lives at least as long as its records
                // (a source's records of one ingest share their TTL).
                let ttl = rows.first().map_or(0, |row| row.ttl);
                let bucket_ttl = if ttl == 0 {
                    0
                } else {
                    ttl.saturating_add(3600)
                };
                bucket_rows.push((source.clone(), *bucket, bucket_ttl));
            }
        }

        // The bucket index first: a reader never misses a partition that
        // holds records.
        stream::iter(bucket_rows)
            .map(|(source, bucket, ttl)| async move {
                self.cql
                    .execute(&self.s.bucket, (&source, bucket, ttl))
                    .await?;
                if ttl == 0 {
                    self.known_buckets
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((source, bucket));
                }
                Ok::<(), munity_store::StoreError>(())
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;

        let written = &sources;
        stream::iter(partitions)
            .map(|(index, bucket, rows)| async move {
                let (source, encoded, _) = &written[index];
                self.write_partition(source, bucket, &rows, encoded).await
            })
            .buffer_unordered(self.config.cql_write_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        // Then the tail's entries: once they are readable, so are the records.
        let retention_ttl =
            i32::try_from(self.config.tail_retention_secs.max(1)).unwrap_or(i32::MAX);
        let at = now_millis();
        stream::iter(sources)
            .map(|(source, _, keys)| async move {
                self.cql
                    .execute(
                        &self.s.arrival,
                        (
                            &source,
                            hour_of(at),
                            ts(at),
                            Uuid::now_v7(),
                            keys,
                            retention_ttl,
                        ),
                    )
                    .await
                    .map(drop)
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    async fn read(
        &self,
        range: &Range,
        after: Option<&RecordKey>,
        limit: usize,
    ) -> StoreResult<Vec<Record>> {
        let statement = if range.descending {
            &self.s.read_down
        } else {
            &self.s.read_up
        };
        let mut records: Vec<Record> = Vec::new();
        let mut cursor = after.cloned();
        for bucket in self.buckets(range, after).await? {
            loop {
                // (t, "") sorts before every record at time t (ids are
                // never empty): the lower bound takes records at `from`,
                // the upper one leaves out those at `to`.
                let mut lower = (range.from, String::new());
                let mut upper = (range.to, String::new());
                if let Some(cursor) = &cursor {
                    let bound = (cursor.time, cursor.id.clone());
                    if range.descending {
                        upper = bound;
                    } else {
                        lower = bound;
                    }
                }
                let want = (limit - records.len()).min(READ_PAGE);
                let rows: Vec<(Vec<u8>,)> = self
                    .cql
                    .rows(
                        statement,
                        (
                            &range.source,
                            bucket,
                            ts(lower.0),
                            &lower.1,
                            ts(upper.0),
                            &upper.1,
                            i32::try_from(want).unwrap_or(i32::MAX),
                        ),
                    )
                    .await?;
                let got = rows.len();
                for (encoded,) in rows {
                    records.push(Record::decode(encoded.as_slice()).map_err(internal)?);
                }
                if records.len() >= limit {
                    return Ok(records);
                }
                if got < want {
                    break; // this partition has no more in the range
                }
                cursor = records.last().map(RecordKey::of);
            }
        }
        Ok(records)
    }

    async fn arrivals(
        &self,
        source: &str,
        after: Option<&ArrivalCursor>,
        limit: usize,
    ) -> StoreResult<Vec<(ArrivalCursor, Record)>> {
        let mut position = after.copied();
        loop {
            let arrived = self.arrived(source, position.as_ref(), limit).await?;
            let (Some(&(last, _)), seen) = (arrived.last(), arrived.len()) else {
                return Ok(Vec::new());
            };
            let records = self.with_records(source, arrived).await?;
            // All of them expired since: look further, unless that was all.
            if !records.is_empty() || seen < limit {
                return Ok(records);
            }
            position = Some(last);
        }
    }

    async fn newest_arrival(&self, source: &str) -> StoreResult<Option<ArrivalCursor>> {
        let now = now_millis();
        let oldest_hour = hour_of(now.saturating_sub(self.config.tail_retention_ms()));
        let mut hour = hour_of(now) + 1; // a replica's clock may run ahead
        while hour >= oldest_hour {
            let row: Option<(CqlTimestamp, Uuid, Vec<u8>)> = self
                .cql
                .maybe_row(&self.s.newest_arrival, (source, hour))
                .await?;
            if let Some((at, batch, entry)) = row {
                let count = arrived(&entry)?.len();
                return Ok(Some(ArrivalCursor {
                    at: at.0,
                    batch,
                    index: u32::try_from(count.saturating_sub(1)).unwrap_or(u32::MAX),
                }));
            }
            hour -= 1;
        }
        Ok(None)
    }
}

impl CqlRecords {
    /// At most `limit` of `source`'s arrivals strictly after `after`, as
    /// their entries hold them (keys, or records of the earlier format),
    /// each with its cursor, up to the settle horizon.
    async fn arrived(
        &self,
        source: &str,
        after: Option<&ArrivalCursor>,
        limit: usize,
    ) -> StoreResult<Vec<(ArrivalCursor, Arrived)>> {
        let now = now_millis();
        let horizon = now - Millis::try_from(self.config.tail_settle_ms).unwrap_or(0);
        let oldest = now.saturating_sub(self.config.tail_retention_ms());
        let mut from = match after {
            Some(a) => (a.at, a.batch),
            None => (oldest, Uuid::nil()),
        };
        let mut out = Vec::new();
        // The entry handed out last: a page goes on from it (inclusive).
        let mut done: Option<(Millis, Uuid)> = None;
        let mut hour = hour_of(from.0.max(oldest));
        while hour <= hour_of(horizon) && out.len() < limit {
            loop {
                let rows: Vec<(CqlTimestamp, Uuid, Vec<u8>)> = self
                    .cql
                    .rows(
                        &self.s.arrivals_after,
                        (
                            source,
                            hour,
                            ts(from.0),
                            from.1,
                            ts(horizon),
                            Uuid::max(),
                            i32::try_from(ARRIVAL_PAGE).unwrap_or(i32::MAX),
                        ),
                    )
                    .await?;
                let full = rows.len() >= ARRIVAL_PAGE;
                for (at, batch, entry) in rows {
                    if done == Some((at.0, batch)) {
                        continue;
                    }
                    done = Some((at.0, batch));
                    for item in records_after(at.0, batch, arrived(&entry)?, after) {
                        out.push(item);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
                match done {
                    Some(last) if full => from = last,
                    _ => break,
                }
            }
            hour += 1;
        }
        Ok(out)
    }

    /// The records of `arrived`, in its order: those named by key read from
    /// `records` (in `(time, id) IN` reads of one partition each); a key no
    /// longer there (expired) is passed over.
    async fn with_records(
        &self,
        source: &str,
        arrived: Vec<(ArrivalCursor, Arrived)>,
    ) -> StoreResult<Vec<(ArrivalCursor, Record)>> {
        // (bucket, time, id), by bucket; each read an index range of it
        // (not a slice: the futures must not be generic over a borrow's
        // lifetime to be Send).
        let mut keys: Vec<(i64, CqlTimestamp, &str)> = arrived
            .iter()
            .filter_map(|(_, item)| match item {
                Arrived::Key(key) => Some((hour_of(key.time), ts(key.time), key.id.as_str())),
                Arrived::Record(_) => None,
            })
            .collect();
        keys.sort_by_key(|(bucket, ..)| *bucket);
        let mut reads: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for index in 1..=keys.len() {
            if index == keys.len() || keys[index].0 != keys[start].0 || index - start >= IN_KEYS {
                reads.push(start..index);
                start = index;
            }
        }
        let keys = &keys;
        let pages: Vec<Vec<(CqlTimestamp, String, Vec<u8>)>> = stream::iter(reads)
            .map(|read| async move {
                let bucket = keys[read.start].0;
                let values: Vec<(CqlTimestamp, &str)> = keys[read]
                    .iter()
                    .map(|(_, time, id)| (*time, *id))
                    .collect();
                self.cql
                    .rows(&self.s.read_keys, (source, bucket, values))
                    .await
            })
            .buffer_unordered(KEY_READS)
            .try_collect()
            .await?;
        let found: HashMap<RecordKey, Vec<u8>> = pages
            .into_iter()
            .flatten()
            .map(|(time, id, encoded)| (RecordKey { time: time.0, id }, encoded))
            .collect();
        let mut out = Vec::with_capacity(arrived.len());
        for (cursor, item) in arrived {
            let record = match item {
                Arrived::Record(record) => record,
                Arrived::Key(key) => match found.get(&key) {
                    Some(encoded) => Record::decode(encoded.as_slice()).map_err(internal)?,
                    None => continue,
                },
            };
            out.push((cursor, record));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame_batch;

    fn ids(arrived: Vec<Arrived>) -> Vec<(Option<Millis>, String)> {
        arrived
            .into_iter()
            .map(|item| match item {
                Arrived::Key(key) => (Some(key.time), key.id),
                Arrived::Record(record) => (None, record.id),
            })
            .collect()
    }

    #[test]
    fn entries_of_keys_and_of_the_earlier_format_are_read() {
        let mut entry = vec![KEYS_ENTRY];
        push_key(&mut entry, 1_700_000_000_123, "a");
        push_key(&mut entry, 0, &"x".repeat(64));
        assert_eq!(
            ids(arrived(&entry).unwrap()),
            [
                (Some(1_700_000_000_123), "a".to_owned()),
                (Some(0), "x".repeat(64))
            ]
        );
        // Cut short anywhere: refused, never misread.
        for cut in 2..entry.len() {
            if cut != 11 {
                assert!(arrived(&entry[..cut]).is_err(), "cut at {cut}");
            }
        }
        // An entry written before the keys format: the records themselves.
        let records: Vec<Vec<u8>> = ["r1", "r2"]
            .iter()
            .map(|id| {
                Record {
                    id: (*id).to_owned(),
                    source: "s".to_owned(),
                    ..Record::default()
                }
                .encode_to_vec()
            })
            .collect();
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        assert_eq!(
            ids(arrived(&frame_batch(&slices)).unwrap()),
            [(None, "r1".to_owned()), (None, "r2".to_owned())]
        );
    }
}

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
//!   at, batch id): each stored batch's records, for the tail, `USING TTL`
//!   the tail's retention. Replicas assign stored-at from their own
//!   clocks and a write may still be in flight when a later one is read,
//!   so arrivals are handed out only `warehouse.tail_settle_ms` after they
//!   were stored.
//!
//! Storing a key again overwrites it with the same record: stored once.
//! (A batch retried after a failure may appear twice in the tail, by id;
//! never twice in queries.)

use std::{
    collections::{BTreeMap, HashSet},
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

use super::{RecordStore, expires_at, last_cursor, records_after, unframe_batch};
use crate::{
    config::WarehouseConfig,
    domain::{ArrivalCursor, Range, RecordKey, millis_of},
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

/// The values of [`Statements::insert`] for `row` of `framed`.
fn row_values<'a>(
    source: &'a str,
    bucket: i64,
    framed: &'a [u8],
    row: &'a Row,
) -> (&'a str, i64, CqlTimestamp, &'a str, &'a [u8], i32) {
    (
        source,
        bucket,
        ts(row.time),
        row.id.as_str(),
        &framed[row.encoded.clone()],
        row.ttl,
    )
}

/// One record ready to write (its source and bucket are its partition's;
/// its protobuf is a part of its source's arrival entry).
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
        framed: &[u8],
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
                let values = |row| row_values(source, bucket, framed, row);
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
    async fn ingest(&self, records: Vec<Record>) -> StoreResult<()> {
        let now = now_millis();
        // Each source's arrival entry: its records in request order, each
        // encoded once, straight into the entry (framed as an
        // `IngestRequest`, see `frame_batch`); the rows point into it.
        let total = records.len();
        let mut by_source: BTreeMap<String, (Vec<u8>, Vec<Row>)> = BTreeMap::new();
        for (index, record) in records.into_iter().enumerate() {
            let time = record.time.as_ref().map_or(0, millis_of);
            let stored_at = record.stored_at.as_ref().map_or(now, millis_of);
            let expires = expires_at(&self.config, &record.source, stored_at);
            let len = record.encoded_len();
            let (framed, rows) = match by_source.get_mut(record.source.as_str()) {
                Some(entry) => entry,
                None => by_source.entry(record.source.clone()).or_insert_with(|| {
                    (Vec::with_capacity((total - index) * (len + 6)), Vec::new())
                }),
            };
            // Field 1 (records), wire type 2 (length-delimited).
            framed.push(0x0a);
            prost::encoding::encode_varint(len as u64, framed);
            let start = framed.len();
            record.encode_raw(framed);
            rows.push(Row {
                time,
                encoded: start..framed.len(),
                ttl: ttl_secs(expires, now),
                id: record.id,
            });
        }
        // Partitions: (index in `sources`, bucket, rows).
        let mut sources: Vec<(String, Vec<u8>)> = Vec::with_capacity(by_source.len());
        let mut partitions: Vec<(usize, i64, Vec<Row>)> = Vec::new();
        for (index, (source, (framed, rows))) in by_source.into_iter().enumerate() {
            let mut buckets: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
            for row in rows {
                buckets.entry(hour_of(row.time)).or_default().push(row);
            }
            partitions.extend(
                buckets
                    .into_iter()
                    .map(|(bucket, rows)| (index, bucket, rows)),
            );
            sources.push((source, framed));
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
                let (source, framed) = &written[index];
                self.write_partition(source, bucket, &rows, framed).await
            })
            .buffer_unordered(self.config.cql_write_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        // Then the tail's entries: once they are readable, so are the records.
        let retention_ttl =
            i32::try_from(self.config.tail_retention_secs.max(1)).unwrap_or(i32::MAX);
        let at = now_millis();
        stream::iter(sources)
            .map(|(source, framed)| async move {
                self.cql
                    .execute(
                        &self.s.arrival,
                        (
                            &source,
                            hour_of(at),
                            ts(at),
                            Uuid::now_v7(),
                            framed,
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
        let now = now_millis();
        let horizon = now - Millis::try_from(self.config.tail_settle_ms).unwrap_or(0);
        let oldest = now.saturating_sub(self.config.tail_retention_ms());
        let (from_at, from_batch) = match after {
            Some(a) => (a.at, a.batch),
            None => (oldest, Uuid::nil()),
        };
        let mut out = Vec::new();
        let mut hour = hour_of(from_at.max(oldest));
        while hour <= hour_of(horizon) && out.len() < limit {
            let rows: Vec<(CqlTimestamp, Uuid, Vec<u8>)> = self
                .cql
                .rows(
                    &self.s.arrivals_after,
                    (
                        source,
                        hour,
                        ts(from_at),
                        from_batch,
                        ts(horizon),
                        Uuid::max(),
                        i32::try_from(limit.min(READ_PAGE)).unwrap_or(i32::MAX),
                    ),
                )
                .await?;
            let full = rows.len() >= limit.min(READ_PAGE);
            let mut last_seen = None;
            for (at, batch, framed) in rows {
                last_seen = Some((at.0, batch));
                for item in records_after(at.0, batch, unframe_batch(&framed)?, after) {
                    out.push(item);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if full {
                // More in this hour: the caller asks again from the last
                // cursor handed out.
                if last_seen.is_some() && !out.is_empty() {
                    return Ok(out);
                }
            }
            hour += 1;
        }
        Ok(out)
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
            if let Some((at, batch, framed)) = row {
                return last_cursor(at.0, batch, &framed).map(Some);
            }
            hour -= 1;
        }
        Ok(None)
    }
}

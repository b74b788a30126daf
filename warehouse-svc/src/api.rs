//! The gRPC service: check the caller and the request, then the ingestor
//! or the store. Streams (Export, Tail) are pulled by the client: each
//! message is read from storage when the transport has room for it, so a
//! slow client holds its place, never a backlog in memory.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use munity_platform::auth::{Claims, caller};
use munity_proto::warehouse::v1::{
    self as pb, AggregateRequest, AggregateResponse, ExportRequest, Heartbeat, IngestRequest,
    IngestResponse, Order, QueryRequest, QueryResponse, Record, TailRecord, TailRequest,
    TailResponse, tail_response::Kind, warehouse_server::Warehouse,
};
use munity_store::now_millis;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    config::WarehouseConfig,
    domain::{
        ArrivalCursor, BucketWidth, RESERVED_SOURCE_PREFIX, Range, RecordKey, decode_page_token,
        encode_page_token, numeric, prepare_record, timestamp_of, valid_source, valid_time,
    },
    error::WarehouseError,
    ingest::Ingestor,
    store::{Batch, EncodedRecord, RecordStore},
    wire::{Batched, Incoming},
};

/// Scope of service tokens that may write any source (or, as
/// `warehouse.produce:<source>`, one source).
pub const PRODUCE_SCOPE: &str = "warehouse.produce";
/// Scope of service tokens that may read.
pub const READ_SCOPE: &str = "warehouse.read";

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;
/// Records read per storage round trip by Export, Aggregate and Tail.
const SCAN_PAGE: usize = 1_000;
const TAIL_READ: usize = 256;
/// Records Export reads per round trip: with the largest payloads, a page
/// held for a slow client stays a few MiB.
const EXPORT_PAGE: usize = 100;
/// A Query page is cut short past this many bytes of records (clients
/// refuse messages over 4 MiB by default); its token goes on from there.
const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct WarehouseApi {
    ingestor: Ingestor,
    store: Arc<dyn RecordStore>,
    config: Arc<WarehouseConfig>,
    /// Open Tails and Exports on this replica.
    streams: Arc<Semaphore>,
    /// Storage scans running at once (Aggregate, Export page reads).
    scans: Arc<Semaphore>,
}

impl WarehouseApi {
    pub fn new(ingestor: Ingestor, config: WarehouseConfig) -> Self {
        WarehouseApi {
            store: ingestor.store.clone(),
            ingestor,
            streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
            scans: Arc::new(Semaphore::new(config.max_scans.max(1))),
            config: Arc::new(config),
        }
    }

    /// Checks one batch for `claims` and makes it ready to store: the
    /// input rules (`domain::prepare_batch`) for the records that were
    /// decoded; those kept as sent were checked on the wire.
    fn check_batch(
        &self,
        claims: &Claims,
        records: Vec<Incoming>,
    ) -> Result<Batch, WarehouseError> {
        let limits = self.ingestor.limits();
        let now = now_millis();
        let mut violations = crate::domain::check_batch_size(records.len(), limits)?;
        let mut batch = Batch {
            stored_at: now,
            records: Vec::with_capacity(records.len()),
        };
        for (index, record) in records.into_iter().enumerate() {
            match record {
                Incoming::Ready(ready) => batch.records.push(ready),
                Incoming::Decoded(mut record) => {
                    let before = violations.len();
                    prepare_record(index, &mut record, limits, now, &mut violations);
                    if violations.len() == before {
                        batch.records.push(EncodedRecord::of(record));
                    }
                }
            }
        }
        violations.into_result()?;
        for (index, record) in batch.records.iter().enumerate() {
            if !may_produce(claims, &record.source) {
                return Err(WarehouseError::PermissionDenied(format!(
                    "records[{index}]: this caller may not write source {:?}",
                    record.source
                )));
            }
        }
        Ok(batch)
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many tails and exports are open on this replica; try again later",
            )
        })
    }
}

async fn scan_permit(scans: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, Status> {
    scans
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("shutting down"))
}

/// Admins, and service tokens with the produce scope (for any source or
/// this one). Nobody writes the warehouse's own `domain.*` sources.
fn may_produce(claims: &Claims, source: &str) -> bool {
    !source.starts_with(RESERVED_SOURCE_PREFIX)
        && (claims.has_role("admin")
            || claims.has_scope(PRODUCE_SCOPE)
            || claims.has_scope(&format!("{PRODUCE_SCOPE}:{source}")))
}

/// IngestStream's next message, checked.
enum NextBatch {
    Ready(Batch),
    End,
    /// The message could not be received (decoding, transport).
    Unreadable(Status),
    /// The batch breaks a rule, or the caller may not write it.
    Refused(WarehouseError),
}

impl WarehouseApi {
    async fn next_batch<B: Batched>(
        &self,
        claims: &Claims,
        batches: &mut Streaming<B>,
    ) -> NextBatch {
        match batches.message().await {
            Ok(Some(batch)) => match self.check_batch(claims, batch.into_incoming()) {
                Ok(batch) => NextBatch::Ready(batch),
                Err(error) => NextBatch::Refused(error),
            },
            Ok(None) => NextBatch::End,
            Err(status) => NextBatch::Unreadable(status),
        }
    }

    /// IngestStream, whichever way its messages were read.
    pub async fn ingest_batches<B: Batched>(
        &self,
        request: Request<Streaming<B>>,
    ) -> Result<Response<IngestResponse>, Status> {
        let claims = caller(&request)?.clone();
        let mut batches = request.into_inner();
        let (mut stored, mut accepted) = (0u64, 0u64);
        // The next message is received and checked while the one before it
        // is being stored (its storage round trips and fsync are most of
        // the time a batch takes); it is stored only once that one is, and
        // what is wrong with it is told only then, so the stored batches
        // are still the ones before the first that failed.
        let mut next = self.next_batch(&claims, &mut batches).await;
        loop {
            let batch = match next {
                NextBatch::Ready(batch) => batch,
                NextBatch::End => break,
                NextBatch::Unreadable(status) => {
                    // The details (a BadRequest naming the field) stay.
                    return Err(Status::with_details(
                        status.code(),
                        format!(
                            "{} ({stored} batches were stored before it)",
                            status.message()
                        ),
                        status.details().to_vec().into(),
                    ));
                }
                NextBatch::Refused(error) => return Err(refused(stored, error)),
            };
            let storing = self.ingestor.store_all(batch);
            let reading = self.next_batch(&claims, &mut batches);
            tokio::pin!(storing, reading);
            let mut read = None;
            let result = loop {
                tokio::select! {
                    biased;
                    result = &mut storing => break result,
                    following = &mut reading, if read.is_none() => read = Some(following),
                }
            };
            match result {
                Ok(count) => {
                    stored += 1;
                    accepted += count as u64;
                }
                Err(error) => return Err(refused(stored, error)),
            }
            next = match read {
                Some(following) => following,
                None => reading.await,
            };
        }
        Ok(Response::new(IngestResponse {
            accepted,
            ids: Vec::new(),
            batches: stored,
        }))
    }
}

/// IngestStream's answer when batch `stored` (counting from 0) fails.
fn refused(stored: u64, error: WarehouseError) -> Status {
    let status = Status::from(error);
    Status::with_details(
        status.code(),
        format!(
            "batch {stored} (counting from 0): {}; the {stored} batches before it were stored",
            status.message()
        ),
        status.details().to_vec().into(),
    )
}

fn check_reader(claims: &Claims) -> Result<(), WarehouseError> {
    if claims.has_role("admin") || claims.has_scope(READ_SCOPE) {
        Ok(())
    } else {
        Err(WarehouseError::PermissionDenied(format!(
            "reading the warehouse needs an admin or a service token with scope {READ_SCOPE}"
        )))
    }
}

/// The range of a request, or what is wrong with it.
fn range_of(
    source: &str,
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
    order: i32,
) -> Result<Range, WarehouseError> {
    let mut violations = munity_platform::error::FieldViolations::new();
    if !valid_source(source) {
        violations.add("source", "must be a source name (a-z, 0-9, '.', '-', '_')");
    }
    let mut time = |field: &str, value: Option<&prost_types::Timestamp>| match value {
        None => {
            violations.add(field, "is required");
            0
        }
        Some(t) => valid_time(t).unwrap_or_else(|why| {
            violations.add(field, why);
            0
        }),
    };
    let from = time("from", from);
    let to = time("to", to);
    let descending = match Order::try_from(order) {
        Ok(Order::Unspecified | Order::Ascending) => false,
        Ok(Order::Descending) => true,
        Err(_) => {
            violations.add("order", "unknown order");
            false
        }
    };
    if violations.is_empty() && from >= to {
        violations.add("to", "must be after from");
    }
    violations.into_result()?;
    Ok(Range {
        source: source.to_owned(),
        from,
        to,
        descending,
    })
}

#[tonic::async_trait]
impl Warehouse for WarehouseApi {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let claims = caller(&request)?.clone();
        let batch = self.check_batch(&claims, request.into_inner().into_incoming())?;
        let ids = self.ingestor.store(batch).await?;
        Ok(Response::new(IngestResponse {
            accepted: ids.len() as u64,
            ids,
            batches: 1,
        }))
    }

    /// Served by `wire::WarehouseRoutes`, which reads the records'
    /// bytes; this is the same with prost's decoding.
    async fn ingest_stream(
        &self,
        request: Request<Streaming<IngestRequest>>,
    ) -> Result<Response<IngestResponse>, Status> {
        self.ingest_batches(request).await
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        check_reader(caller(&request)?)?;
        let request = request.into_inner();
        let range = range_of(
            &request.source,
            request.from.as_ref(),
            request.to.as_ref(),
            request.order,
        )?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(decode_page_token(&range, token).ok_or_else(|| {
                WarehouseError::invalid(
                    "page_token",
                    "is not a page token of this source, range and order",
                )
            })?),
        };
        if request.page_size > MAX_PAGE {
            return Err(
                WarehouseError::invalid("page_size", &format!("at most {MAX_PAGE}")).into(),
            );
        }
        let page = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n,
        } as usize;
        let mut records = self
            .store
            .read(&range, after.as_ref(), page + 1)
            .await
            .map_err(WarehouseError::from)?;
        // At most `page` records, and at most MAX_PAGE_BYTES of them (but
        // at least one); the token goes on after the last one kept.
        let mut keep = records.len().min(page);
        let mut bytes = 0;
        for (index, record) in records.iter().enumerate().take(keep) {
            bytes += prost::Message::encoded_len(record);
            if bytes > MAX_PAGE_BYTES && index > 0 {
                keep = index;
                break;
            }
        }
        let more = records.len() > keep;
        records.truncate(keep);
        let next_page_token = match records.last() {
            Some(last) if more => encode_page_token(&range, &RecordKey::of(last)),
            _ => String::new(),
        };
        Ok(Response::new(QueryResponse {
            records,
            next_page_token,
        }))
    }

    type ExportStream = BoxStream<Record>;

    async fn export(
        &self,
        request: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        check_reader(caller(&request)?)?;
        let request = request.into_inner();
        let range = range_of(
            &request.source,
            request.from.as_ref(),
            request.to.as_ref(),
            request.order,
        )?;
        let permit = self.stream_permit()?;
        let state = ExportState {
            store: self.store.clone(),
            scans: self.scans.clone(),
            range,
            after: None,
            pending: VecDeque::new(),
            done: false,
            _permit: permit,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            ExportState::next,
        ))))
    }

    async fn aggregate(
        &self,
        request: Request<AggregateRequest>,
    ) -> Result<Response<AggregateResponse>, Status> {
        check_reader(caller(&request)?)?;
        let request = request.into_inner();
        let range = range_of(
            &request.source,
            request.from.as_ref(),
            request.to.as_ref(),
            Order::Ascending as i32,
        )?;
        let width = match pb::BucketWidth::try_from(request.bucket) {
            Ok(pb::BucketWidth::Minute) => BucketWidth::Minute,
            Ok(pb::BucketWidth::Hour) => BucketWidth::Hour,
            Ok(pb::BucketWidth::Day) => BucketWidth::Day,
            _ => {
                return Err(
                    WarehouseError::invalid("bucket", "must be minute, hour or day").into(),
                );
            }
        };
        if request.attribute.len() > crate::domain::MAX_ATTRIBUTE_KEY_BYTES {
            return Err(WarehouseError::invalid("attribute", "at most 64 bytes").into());
        }
        let _permit = scan_permit(&self.scans).await?;
        let cap = self.config.aggregate_max_records;
        let mut buckets: Vec<pb::Bucket> = Vec::new();
        let mut scanned = 0u64;
        let mut after: Option<RecordKey> = None;
        loop {
            let page = self
                .store
                .read(&range, after.as_ref(), SCAN_PAGE)
                .await
                .map_err(WarehouseError::from)?;
            scanned += page.len() as u64;
            if scanned > cap {
                return Err(WarehouseError::FailedPrecondition(format!(
                    "the range holds more than warehouse.aggregate_max_records ({cap}) records: \
                     aggregate a shorter range"
                ))
                .into());
            }
            for record in &page {
                let key = RecordKey::of(record);
                let start = width.start_of(key.time);
                let start_ts = timestamp_of(start);
                if buckets
                    .last()
                    .is_none_or(|b| b.start.as_ref() != Some(&start_ts))
                {
                    buckets.push(pb::Bucket {
                        start: Some(start_ts),
                        ..pb::Bucket::default()
                    });
                }
                let bucket = buckets.last_mut().expect("pushed above");
                bucket.count += 1;
                if let Some(value) = record
                    .attributes
                    .get(&request.attribute)
                    .and_then(|v| numeric(v))
                {
                    if bucket.values == 0 {
                        bucket.min = value;
                        bucket.max = value;
                    } else {
                        bucket.min = bucket.min.min(value);
                        bucket.max = bucket.max.max(value);
                    }
                    bucket.values += 1;
                    bucket.sum += value;
                }
            }
            match page.last() {
                Some(last) if page.len() == SCAN_PAGE => after = Some(RecordKey::of(last)),
                _ => break,
            }
        }
        for bucket in &mut buckets {
            if bucket.values > 0 {
                bucket.avg = bucket.sum / bucket.values as f64;
            }
        }
        Ok(Response::new(AggregateResponse { buckets, scanned }))
    }

    type TailStream = BoxStream<TailResponse>;

    async fn tail(
        &self,
        request: Request<TailRequest>,
    ) -> Result<Response<Self::TailStream>, Status> {
        check_reader(caller(&request)?)?;
        let request = request.into_inner();
        if !valid_source(&request.source) {
            return Err(WarehouseError::invalid(
                "source",
                "must be a source name (a-z, 0-9, '.', '-', '_')",
            )
            .into());
        }
        let after = match request.after.as_str() {
            "" => None,
            text => {
                let cursor = ArrivalCursor::decode(text)
                    .ok_or_else(|| WarehouseError::invalid("after", "is not a cursor from Tail"))?;
                if cursor.at < now_millis().saturating_sub(self.config.tail_retention_ms()) {
                    return Err(WarehouseError::OutOfRange(format!(
                        "the cursor is older than the tail's retention ({} s): query the range instead",
                        self.config.tail_retention_secs
                    ))
                    .into());
                }
                Some(cursor)
            }
        };
        let permit = self.stream_permit()?;
        let cursor = match after {
            Some(cursor) => Some(cursor),
            None => self
                .store
                .newest_arrival(&request.source)
                .await
                .map_err(WarehouseError::from)?,
        };
        let wake = self.ingestor.wakers.watch(&request.source);
        let state = TailState {
            store: self.store.clone(),
            wakers: self.ingestor.wakers.clone(),
            source: request.source,
            cursor,
            pending: VecDeque::new(),
            wake: Some(wake),
            poll: Duration::from_millis(self.config.tail_poll_ms.max(10)),
            heartbeat: Duration::from_secs(self.config.heartbeat_secs.max(1)),
            failed: false,
            _permit: permit,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            TailState::next,
        ))))
    }
}

/// Export's position: reads a page when the last one is sent, holding a
/// scan permit only while it reads (a client that stops reading holds its
/// stream slot, not other callers' scans).
struct ExportState {
    store: Arc<dyn RecordStore>,
    scans: Arc<Semaphore>,
    range: Range,
    after: Option<RecordKey>,
    pending: VecDeque<Record>,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

impl ExportState {
    async fn next(mut self) -> Option<(Result<Record, Status>, Self)> {
        if self.pending.is_empty() && !self.done {
            let read = match scan_permit(&self.scans).await {
                Ok(_permit) => self
                    .store
                    .read(&self.range, self.after.as_ref(), EXPORT_PAGE)
                    .await
                    .map_err(|e| Status::from(WarehouseError::from(e))),
                Err(status) => Err(status),
            };
            match read {
                Ok(page) => {
                    self.done = page.len() < EXPORT_PAGE;
                    self.after = page.last().map(RecordKey::of);
                    self.pending.extend(page);
                }
                Err(status) => {
                    self.done = true;
                    return Some((Err(status), self));
                }
            }
        }
        let record = self.pending.pop_front()?;
        Some((Ok(record), self))
    }
}

/// A tail's position: reads arrivals after its cursor when the last ones
/// are sent; waits for this replica's ingests of the source, or polls (for
/// other replicas'), with heartbeats while idle.
struct TailState {
    store: Arc<dyn RecordStore>,
    wakers: Arc<crate::ingest::Wakers>,
    source: String,
    cursor: Option<ArrivalCursor>,
    pending: VecDeque<TailRecord>,
    wake: Option<Arc<Notify>>,
    poll: Duration,
    heartbeat: Duration,
    failed: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for TailState {
    fn drop(&mut self) {
        if let Some(wake) = self.wake.take() {
            self.wakers.release(&self.source, wake);
        }
    }
}

impl TailState {
    async fn next(mut self) -> Option<(Result<TailResponse, Status>, Self)> {
        if self.failed {
            return None;
        }
        let idle_until = tokio::time::Instant::now() + self.heartbeat;
        loop {
            if let Some(record) = self.pending.pop_front() {
                let response = TailResponse {
                    kind: Some(Kind::Record(record)),
                };
                return Some((Ok(response), self));
            }
            let wake = self.wake.clone()?;
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self
                .store
                .arrivals(&self.source, self.cursor.as_ref(), TAIL_READ)
                .await
            {
                Ok(items) if !items.is_empty() => {
                    for (cursor, record) in items {
                        self.cursor = Some(cursor);
                        self.pending.push_back(TailRecord {
                            record: Some(record),
                            cursor: cursor.encode(),
                        });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    self.failed = true;
                    return Some((Err(WarehouseError::from(error).into()), self));
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(self.poll) => {}
                () = tokio::time::sleep_until(idle_until) => {
                    let heartbeat = TailResponse {
                        kind: Some(Kind::Heartbeat(Heartbeat {
                            at: Some(timestamp_of(now_millis())),
                        })),
                    };
                    return Some((Ok(heartbeat), self));
                }
            }
        }
    }
}

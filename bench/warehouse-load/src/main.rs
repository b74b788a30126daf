//! `warehouse-load`: the load client of `bench/warehouse/run.sh` (issue 10).
//!
//! - `ingest`: S concurrent `IngestStream` calls (over C HTTP/2
//!   connections), each sending batches of B records for D seconds, then
//!   closing and waiting for the answer; records/s = records accepted (the
//!   answers' `accepted`) / time from the first batch to the last answer.
//! - `query`: n `Query` calls with `page_size` 1000 over random windows of
//!   records the ingest stored, each window holding more than a page;
//!   latency p50/p99 (HDR histogram).
//! - `plain-cql`: the comparison for the CQL backend: a plain scylla-crate
//!   writer of the same records into a table of the same shape as
//!   warehouse-svc's `records` (own keyspace), in unlogged single-partition
//!   batches of the same size, with the same number of requests in flight
//!   as warehouse-svc's `cql_write_concurrency`.
//! - `setup` / `service-token`: an admin at users-svc and a service account
//!   with scopes `warehouse.produce warehouse.read`; `health`; `report`
//!   (the table and the targets); `drop-keyspace`.
//!
//! The records. Record n of a run (n = 0, 1, ... handed out in batches from
//! one counter shared by every stream) has:
//! - id `r<n>` and the run's source;
//! - event time `base_ms + n / records_per_ms` (so a window of w ms holds
//!   w x records_per_ms records once the run is over, which `query` relies
//!   on);
//! - `record_bytes` (200) bytes of content: attributes `value` (an 11-byte
//!   number) and `unit` = `celsius` (27 bytes of keys and values), and
//!   `data` of the remaining 173 bytes. Id, source, times and protobuf
//!   framing come on top (`encoded_bytes_per_record` in the results: the
//!   record as warehouse-svc stores it, with `stored_at`).

#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use bench_kit::{
    HealthArgs, ServiceTokenArgs, connect, cpu_secs, histogram, register_or_login, service_account,
    unique, with_bearer,
};
use clap::{Parser, Subcommand};
use futures::stream;
use munity_proto::{
    users::v1::{self as users, users_client::UsersClient},
    warehouse::v1::{
        IngestRequest, QueryRequest, Record, record::Payload, warehouse_client::WarehouseClient,
    },
};
use prost::Message;
use scylla::{
    client::{
        execution_profile::ExecutionProfile, session::Session, session_builder::SessionBuilder,
    },
    statement::batch::{Batch, BatchType},
    value::CqlTimestamp,
};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Load client for warehouse-svc (bench/warehouse)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// S IngestStream calls of B-record batches for D seconds.
    Ingest(IngestArgs),
    /// n Query calls (pages of 1,000) over what `ingest` stored.
    Query(QueryArgs),
    /// The plain scylla-crate writer of the same records.
    PlainCql(PlainArgs),
    /// Registers an admin (whose email is in users-svc's
    /// `users.admin_emails`) and creates a service account with scopes
    /// `warehouse.produce warehouse.read`; prints KEY=VALUE lines.
    Setup(SetupArgs),
    /// Prints a fresh access token for a service account.
    ServiceToken(ServiceTokenArgs),
    /// Waits until a gRPC health check of --service answers SERVING.
    Health(HealthArgs),
    /// Drops a keyspace (after a run).
    DropKeyspace(DropArgs),
    /// Prints the results (JSON files of ingest, plain-cql, query) as one
    /// table, against the targets.
    Report(ReportArgs),
}

#[derive(clap::Args, Clone)]
struct RecordArgs {
    /// The source every record goes to.
    #[arg(long, default_value = "bench.sensors")]
    source: String,
    /// Bytes of content per record: data + attribute keys and values.
    #[arg(long, default_value_t = 200)]
    record_bytes: usize,
    /// Records per millisecond of event time (see the module doc).
    #[arg(long, default_value_t = 100)]
    records_per_ms: u64,
    /// Event time of record 0 (ms since the epoch; default: now).
    #[arg(long)]
    base_ms: Option<i64>,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// warehouse-svc, e.g. http://127.0.0.1:50054.
    #[arg(long)]
    target: String,
    /// A token with scope warehouse.produce.
    #[arg(long, env = "WAREHOUSE_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    records: RecordArgs,
    /// Concurrent IngestStream calls.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// HTTP/2 connections the streams are spread over (0: one per stream).
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// Records per IngestStream message (warehouse.max_batch_records: 1,000).
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The server process, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// The CQL server behind it (CQL backend), for its CPU time.
    #[arg(long)]
    cql_pid: Option<u32>,
    #[arg(long, default_value = "ingest")]
    label: String,
    /// The client's tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct QueryArgs {
    #[arg(long)]
    target: String,
    /// A token with scope warehouse.read.
    #[arg(long, env = "WAREHOUSE_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// The results of the `ingest` that stored the records (source, base,
    /// records per ms, count).
    #[arg(long)]
    ingest_json: PathBuf,
    /// Query calls measured (after --warmup unmeasured ones).
    #[arg(long, default_value_t = 1000)]
    queries: u64,
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    #[arg(long, default_value_t = 1000)]
    page_size: u32,
    /// Records each window holds (more than a page, so every answer is a
    /// full page with a next-page token).
    #[arg(long, default_value_t = 1200)]
    window_records: u64,
    /// Query calls in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value = "query")]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PlainArgs {
    /// CQL contact points.
    #[arg(long, default_value = "127.0.0.1:9042")]
    nodes: Vec<String>,
    /// Its own keyspace (created, with the table).
    #[arg(long)]
    keyspace: String,
    #[command(flatten)]
    records: RecordArgs,
    /// Batches in flight at once (warehouse.cql_write_concurrency: 64).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Rows per unlogged batch (warehouse-svc's BATCH_ROWS: 64).
    #[arg(long, default_value_t = 64)]
    batch_rows: u64,
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Also write what warehouse-svc writes for its tail: after every this
    /// many records a worker wrote, one row of a table shaped like its
    /// `arrivals` holding those records' keys, as warehouse-svc frames them
    /// (store/cql.rs, `KEYS_ENTRY`) (0: records only, the plain writer of
    /// the issue).
    #[arg(long, default_value_t = 0)]
    arrival_records: usize,
    /// Per-request timeout (warehouse-svc's storage.request_timeout_ms).
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    #[arg(long, default_value = "plain")]
    label: String,
    /// The CQL server process, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DropArgs {
    #[arg(long, default_value = "127.0.0.1:9042")]
    nodes: Vec<String>,
    #[arg(long)]
    keyspace: String,
}

#[derive(clap::Args)]
struct SetupArgs {
    #[arg(long)]
    users: String,
    #[arg(long)]
    admin_email: String,
    #[arg(long, default_value = "bench password 0123456789")]
    password: String,
}

#[derive(clap::Args)]
struct ReportArgs {
    files: Vec<PathBuf>,
    /// Target: embedded ingest at least this many records/s.
    #[arg(long, default_value_t = 100_000.0)]
    embedded_target: f64,
    /// Target: CQL ingest through the service at least this fraction of
    /// the plain writer.
    #[arg(long, default_value_t = 0.8)]
    ratio_target: f64,
    /// Append a line per target of issue 24 to this file (bench/summary.py's
    /// format): the two targets above.
    #[arg(long)]
    summary: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Ingest(args) => args.threads,
        Command::PlainCql(args) => args.threads,
        Command::Query(_) => None,
        _ => Some(1),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.build()?.block_on(async move {
        match cli.command {
            Command::Ingest(args) => ingest(args).await,
            Command::Query(args) => query(args).await,
            Command::PlainCql(args) => plain_cql(args).await,
            Command::Setup(args) => setup(args).await,
            Command::ServiceToken(args) => bench_kit::service_token(args).await,
            Command::Health(args) => bench_kit::health(args).await,
            Command::DropKeyspace(args) => drop_keyspace(args).await,
            Command::Report(args) => report(&args),
        }
    })
}

// ------------------------------------------------------------------ helpers

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn write_json<T: Serialize>(path: Option<&PathBuf>, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    if let Some(path) = path {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

// ------------------------------------------------------------------ records

/// What every record of a run shares.
#[derive(Clone)]
struct Shape {
    source: String,
    data: Vec<u8>,
    base_ms: i64,
    records_per_ms: u64,
}

/// Bytes of attribute keys and values per record (see the module doc).
const ATTRIBUTE_BYTES: usize = "value".len() + 11 + "unit".len() + "celsius".len();

impl Shape {
    fn new(args: &RecordArgs) -> anyhow::Result<Self> {
        if args.record_bytes < ATTRIBUTE_BYTES {
            bail!("--record-bytes must be at least {ATTRIBUTE_BYTES}");
        }
        if args.records_per_ms == 0 {
            bail!("--records-per-ms must be positive");
        }
        Ok(Shape {
            source: args.source.clone(),
            data: (0..args.record_bytes - ATTRIBUTE_BYTES)
                .map(|i| b'a' + (i % 26) as u8)
                .collect(),
            base_ms: args.base_ms.unwrap_or_else(now_ms),
            records_per_ms: args.records_per_ms,
        })
    }

    fn time_ms(&self, n: u64) -> i64 {
        self.base_ms + (n / self.records_per_ms) as i64
    }

    /// Record n, as a producer sends it.
    fn record(&self, n: u64) -> Record {
        let mut attributes = HashMap::with_capacity(2);
        attributes.insert(
            "value".to_owned(),
            format!("{:011.3}", (n % 100_000) as f64 / 7.0),
        );
        attributes.insert("unit".to_owned(), "celsius".to_owned());
        Record {
            id: format!("r{n}"),
            source: self.source.clone(),
            time: Some(timestamp(self.time_ms(n))),
            attributes,
            payload: Some(Payload::Data(self.data.clone())),
            content_type: String::new(),
            stored_at: None,
        }
    }

    /// Record n as warehouse-svc stores it (with `stored_at`).
    fn stored(&self, n: u64, stored_at: i64) -> Record {
        let mut record = self.record(n);
        record.stored_at = Some(timestamp(stored_at));
        record
    }
}

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

// ------------------------------------------------------------------- ingest

#[derive(Serialize, Deserialize)]
struct IngestResult {
    kind: String,
    label: String,
    target: String,
    source: String,
    streams: usize,
    connections: usize,
    batch: u64,
    duration_secs: u64,
    record_bytes: usize,
    encoded_bytes_per_record: usize,
    base_ms: i64,
    records_per_ms: u64,
    /// Records accepted (the sum of the answers' `accepted`).
    records: u64,
    batches: u64,
    elapsed_secs: f64,
    records_per_sec: f64,
    content_mib_per_sec: f64,
    server_cpu_secs: Option<f64>,
    server_cpu_us_per_record: Option<f64>,
    client_cpu_secs: Option<f64>,
    #[serde(default)]
    cql_server_cpu_secs: Option<f64>,
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let shape = Arc::new(Shape::new(&args.records)?);
    let streams = args.streams.max(1);
    let connections = match args.connections {
        0 => streams,
        c => c.min(streams),
    };
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(&args.target).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let server_cpu0 = args.pid.and_then(cpu_secs);
    let cql_cpu0 = args.cql_pid.and_then(cpu_secs);
    let client_cpu0 = cpu_secs(std::process::id());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let batch = args.batch.max(1);
    let calls = (0..streams).map(|i| {
        let channel = channels[i % connections].clone();
        let shape = shape.clone();
        let next = next.clone();
        let token = args.token.clone();
        tokio::spawn(async move {
            let batches = stream::unfold((), move |()| {
                let shape = shape.clone();
                let next = next.clone();
                async move {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    let first = next.fetch_add(batch, Relaxed);
                    let records = (first..first + batch).map(|n| shape.record(n)).collect();
                    Some((IngestRequest { records }, ()))
                }
            });
            let mut client = WarehouseClient::new(channel)
                .max_encoding_message_size(64 * 1024 * 1024)
                .max_decoding_message_size(64 * 1024 * 1024);
            let answer = client
                .ingest_stream(with_bearer(batches, &token)?)
                .await
                .context("IngestStream")?
                .into_inner();
            anyhow::Ok(answer)
        })
    });
    let answers = futures::future::try_join_all(calls).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = args
        .pid
        .and_then(cpu_secs)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    let client_cpu = cpu_secs(std::process::id())
        .zip(client_cpu0)
        .map(|(b, a)| b - a);
    let cql_cpu = args
        .cql_pid
        .and_then(cpu_secs)
        .zip(cql_cpu0)
        .map(|(b, a)| b - a);
    let mut records = 0;
    let mut batches = 0;
    for answer in answers {
        let answer = answer?;
        records += answer.accepted;
        batches += answer.batches;
    }
    let handed_out = next.load(Relaxed);
    if records != handed_out {
        bail!("{handed_out} records were sent but {records} accepted");
    }
    let encoded = shape.stored(0, now_ms()).encoded_len();
    let result = IngestResult {
        kind: "ingest".into(),
        label: args.label,
        target: args.target,
        source: shape.source.clone(),
        streams,
        connections,
        batch,
        duration_secs: args.duration,
        record_bytes: args.records.record_bytes,
        encoded_bytes_per_record: encoded,
        base_ms: shape.base_ms,
        records_per_ms: shape.records_per_ms,
        records,
        batches,
        elapsed_secs: elapsed,
        records_per_sec: records as f64 / elapsed,
        content_mib_per_sec: (records as f64 * args.records.record_bytes as f64)
            / elapsed
            / (1024.0 * 1024.0),
        server_cpu_secs: server_cpu,
        server_cpu_us_per_record: server_cpu.map(|cpu| cpu * 1e6 / records.max(1) as f64),
        client_cpu_secs: client_cpu,
        cql_server_cpu_secs: cql_cpu,
    };
    write_json(args.json.as_ref(), &result)
}

// -------------------------------------------------------------------- query

#[derive(Serialize, Deserialize)]
struct QueryResult {
    kind: String,
    label: String,
    target: String,
    queries: u64,
    page_size: u32,
    window_records: u64,
    concurrency: usize,
    records_returned: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    queries_per_sec: f64,
}

/// splitmix64: enough randomness for picking windows.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let ingested: IngestResult = serde_json::from_slice(
        &std::fs::read(&args.ingest_json)
            .with_context(|| format!("cannot read {}", args.ingest_json.display()))?,
    )?;
    let per_ms = ingested.records_per_ms;
    let window_ms = args.window_records.div_ceil(per_ms) as i64;
    // Whole milliseconds of event time only (the last one may be partial).
    let full_ms = (ingested.records / per_ms) as i64;
    if full_ms <= window_ms {
        bail!(
            "the ingest stored {} records: too few for windows of {} records",
            ingested.records,
            args.window_records
        );
    }
    let channel = connect(&args.target).await?;
    let client = WarehouseClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let total = args.warmup + args.queries;
    let issued = Arc::new(AtomicU64::new(0));
    let returned = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let started = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let page_size = args.page_size;
    let workers = (0..args.concurrency.max(1)).map(|worker| {
        let mut client = client.clone();
        let token = args.token.clone();
        let source = ingested.source.clone();
        let (issued, returned, hist, started) = (
            issued.clone(),
            returned.clone(),
            hist.clone(),
            started.clone(),
        );
        let base = ingested.base_ms;
        let mut random = 0x5eed_u64 + worker as u64;
        async move {
            loop {
                let i = issued.fetch_add(1, Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                if i == args.warmup {
                    *started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                }
                let from = base + (next_random(&mut random) % (full_ms - window_ms) as u64) as i64;
                let request = QueryRequest {
                    source: source.clone(),
                    from: Some(timestamp(from)),
                    to: Some(timestamp(from + window_ms)),
                    order: 0,
                    page_size,
                    page_token: String::new(),
                };
                let sent = Instant::now();
                let answer = client
                    .query(with_bearer(request, &token)?)
                    .await
                    .context("Query")?
                    .into_inner();
                let micros = sent.elapsed().as_micros() as u64;
                if answer.records.len() != page_size as usize || answer.next_page_token.is_empty() {
                    bail!(
                        "a window of {} records answered {} records (next page token {:?})",
                        args.window_records,
                        answer.records.len(),
                        answer.next_page_token
                    );
                }
                if i >= args.warmup {
                    returned.fetch_add(answer.records.len() as u64, Relaxed);
                    let _ = hist
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(micros.max(1));
                }
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    let elapsed = started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map_or(0.0, |s| s.elapsed().as_secs_f64());
    let hist = hist.lock().unwrap_or_else(|e| e.into_inner());
    let ms = |micros: u64| micros as f64 / 1000.0;
    let result = QueryResult {
        kind: "query".into(),
        label: args.label,
        target: args.target,
        queries: args.queries,
        page_size,
        window_records: args.window_records,
        concurrency: args.concurrency.max(1),
        records_returned: returned.load(Relaxed),
        p50_ms: ms(hist.value_at_quantile(0.50)),
        p90_ms: ms(hist.value_at_quantile(0.90)),
        p99_ms: ms(hist.value_at_quantile(0.99)),
        max_ms: ms(hist.max()),
        mean_ms: hist.mean() / 1000.0,
        queries_per_sec: args.queries as f64 / elapsed.max(1e-9),
    };
    write_json(args.json.as_ref(), &result)
}

// ---------------------------------------------------------------- plain-cql

/// warehouse-svc's `records` table (store/cql.rs), and its insert.
const RECORDS_TABLE: &str = "CREATE TABLE IF NOT EXISTS records (source text, bucket bigint, \
     time timestamp, id text, record blob, PRIMARY KEY ((source, bucket), time, id)) \
     WITH CLUSTERING ORDER BY (time ASC, id ASC)";
const INSERT: &str = "INSERT INTO records (source, bucket, time, id, record) \
     VALUES (?, ?, ?, ?, ?) USING TTL ?";
const HOUR_MS: i64 = 3_600_000;
/// warehouse-svc's `arrivals` table, and its insert.
const ARRIVALS_TABLE: &str = "CREATE TABLE IF NOT EXISTS arrivals (source text, hour bigint, \
     at timestamp, batch_id uuid, records blob, PRIMARY KEY ((source, hour), at, batch_id))";
const INSERT_ARRIVAL: &str = "INSERT INTO arrivals (source, hour, at, batch_id, records) \
     VALUES (?, ?, ?, ?, ?) USING TTL ?";

#[derive(Serialize, Deserialize)]
struct PlainResult {
    kind: String,
    label: String,
    keyspace: String,
    source: String,
    concurrency: usize,
    batch_rows: u64,
    #[serde(default)]
    arrival_records: usize,
    duration_secs: u64,
    record_bytes: usize,
    encoded_bytes_per_record: usize,
    records: u64,
    batches: u64,
    elapsed_secs: f64,
    records_per_sec: f64,
    server_cpu_secs: Option<f64>,
    client_cpu_secs: Option<f64>,
}

async fn cql_session(nodes: &[String], timeout_ms: u64) -> anyhow::Result<Session> {
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(Duration::from_millis(timeout_ms)))
        .build();
    SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .with_context(|| format!("cannot connect to {nodes:?}"))
}

fn check_keyspace(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    if matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        Ok(())
    } else {
        bail!("bad keyspace name {name:?}")
    }
}

async fn plain_cql(args: PlainArgs) -> anyhow::Result<()> {
    check_keyspace(&args.keyspace)?;
    let shape = Arc::new(Shape::new(&args.records)?);
    let session = Arc::new(cql_session(&args.nodes, args.request_timeout_ms).await?);
    for statement in [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
            args.keyspace
        ),
        format!("USE {}", args.keyspace),
        RECORDS_TABLE.to_owned(),
        ARRIVALS_TABLE.to_owned(),
    ] {
        if let Some(ks) = statement.strip_prefix("USE ") {
            session.use_keyspace(ks, false).await?;
        } else {
            session.query_unpaged(statement.clone(), &[]).await?;
            session.await_schema_agreement().await?;
        }
    }
    let insert = session.prepare(INSERT).await?;
    let insert_arrival = session.prepare(INSERT_ARRIVAL).await?;
    let arrival_records = args.arrival_records;
    let rows = args.batch_rows.max(1);
    let mut full = Batch::new(BatchType::Unlogged);
    for _ in 0..rows {
        full.append_statement(insert.clone());
    }
    let full = Arc::new(full);
    let next = Arc::new(AtomicU64::new(0));
    let server_cpu0 = args.pid.and_then(cpu_secs);
    let client_cpu0 = cpu_secs(std::process::id());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let workers = (0..args.concurrency.max(1)).map(|_| {
        let insert_arrival = insert_arrival.clone();
        let (session, insert, full, shape, next) = (
            session.clone(),
            insert.clone(),
            full.clone(),
            shape.clone(),
            next.clone(),
        );
        tokio::spawn(async move {
            let mut batches = 0u64;
            let mut pending: Vec<u8> = Vec::new();
            let mut pending_records = 0;
            let mut arrival_id = 0u128;
            while Instant::now() < deadline {
                let first = next.fetch_add(rows, Relaxed);
                let stored_at = now_ms();
                // Encoded as warehouse-svc encodes them: the whole record,
                // `stored_at` included.
                let chunk: Vec<(String, i64, CqlTimestamp, String, Vec<u8>, i32)> = (first
                    ..first + rows)
                    .map(|n| {
                        let record = shape.stored(n, stored_at);
                        let time = shape.time_ms(n);
                        (
                            shape.source.clone(),
                            time.div_euclid(HOUR_MS),
                            CqlTimestamp(time),
                            record.id.clone(),
                            record.encode_to_vec(),
                            0,
                        )
                    })
                    .collect();
                // One partition per batch: split where the hour changes.
                let split = chunk
                    .iter()
                    .position(|row| row.1 != chunk[0].1)
                    .unwrap_or(chunk.len());
                let (a, b) = chunk.split_at(split);
                for part in [a, b] {
                    if part.is_empty() {
                        continue;
                    }
                    if part.len() == rows as usize {
                        session.batch(&full, part).await?;
                    } else {
                        let mut batch = Batch::new(BatchType::Unlogged);
                        for _ in part {
                            batch.append_statement(insert.clone());
                        }
                        session.batch(&batch, part).await?;
                    }
                    batches += 1;
                }
                if arrival_records > 0 {
                    // warehouse-svc's arrival entry: a 0, then each
                    // record's time (8 bytes), id length (varint) and id.
                    if pending.is_empty() {
                        pending.push(0);
                    }
                    for row in &chunk {
                        pending.extend_from_slice(&row.2.0.to_be_bytes());
                        prost::encoding::encode_varint(row.3.len() as u64, &mut pending);
                        pending.extend_from_slice(row.3.as_bytes());
                    }
                    pending_records += chunk.len();
                    if pending_records >= arrival_records {
                        let at = now_ms();
                        arrival_id += 1;
                        let batch_id = uuid::Uuid::from_u128(
                            u128::from(std::process::id()) << 64
                                | (first as u128) << 16
                                | arrival_id,
                        );
                        session
                            .execute_unpaged(
                                &insert_arrival,
                                (
                                    &shape.source,
                                    at.div_euclid(HOUR_MS),
                                    CqlTimestamp(at),
                                    batch_id,
                                    std::mem::take(&mut pending),
                                    86_400,
                                ),
                            )
                            .await?;
                        pending_records = 0;
                    }
                }
            }
            anyhow::Ok(batches)
        })
    });
    let done = futures::future::try_join_all(workers).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let server_cpu = args
        .pid
        .and_then(cpu_secs)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);
    let client_cpu = cpu_secs(std::process::id())
        .zip(client_cpu0)
        .map(|(b, a)| b - a);
    let mut batches = 0;
    for worker in done {
        batches += worker?;
    }
    let records = next.load(Relaxed);
    let result = PlainResult {
        kind: "plain".into(),
        label: args.label,
        keyspace: args.keyspace,
        source: shape.source.clone(),
        concurrency: args.concurrency.max(1),
        batch_rows: rows,
        arrival_records,
        duration_secs: args.duration,
        record_bytes: args.records.record_bytes,
        encoded_bytes_per_record: shape.stored(0, now_ms()).encoded_len(),
        records,
        batches,
        elapsed_secs: elapsed,
        records_per_sec: records as f64 / elapsed,
        server_cpu_secs: server_cpu,
        client_cpu_secs: client_cpu,
    };
    write_json(args.json.as_ref(), &result)
}

async fn drop_keyspace(args: DropArgs) -> anyhow::Result<()> {
    check_keyspace(&args.keyspace)?;
    let session = cql_session(&args.nodes, 60_000).await?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", args.keyspace), &[])
        .await?;
    session.await_schema_agreement().await?;
    Ok(())
}

// ------------------------------------------------------------------- set-up

async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let mut users = UsersClient::new(connect(&args.users).await?);
    let admin =
        register_or_login(&mut users, &args.admin_email, &args.password, "Bench admin").await?;
    let (client_id, client_secret) = service_account(
        &mut users,
        &admin.access_token,
        format!("bench-warehouse-{}", unique()),
        &["warehouse.produce", "warehouse.read"],
    )
    .await?;
    let token = users
        .issue_service_token(users::IssueServiceTokenRequest {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
        })
        .await
        .context("IssueServiceToken")?
        .into_inner();
    println!("SERVICE_CLIENT_ID={client_id}");
    println!("SERVICE_CLIENT_SECRET={client_secret}");
    println!("SERVICE_TOKEN={}", token.access_token);
    Ok(())
}

// ------------------------------------------------------------------- report

fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut ingests: Vec<IngestResult> = Vec::new();
    let mut plains: Vec<PlainResult> = Vec::new();
    let mut queries: Vec<QueryResult> = Vec::new();
    for file in &args.files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)?;
        match value["kind"].as_str() {
            Some("ingest") => ingests.push(serde_json::from_value(value)?),
            Some("plain") => plains.push(serde_json::from_value(value)?),
            Some("query") => queries.push(serde_json::from_value(value)?),
            other => bail!("{}: unknown kind {other:?}", file.display()),
        }
    }
    let thousands = |x: f64| {
        let s = format!("{:.0}", x);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let opt = |x: Option<f64>, digits: usize| x.map_or("-".to_owned(), |x| format!("{x:.digits$}"));
    println!();
    println!(
        "| ingest | streams x batch | records | seconds | records/s | MiB/s (content) | warehouse-svc CPU | its µs/record | CQL server CPU µs/record | client CPU |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &ingests {
        println!(
            "| {} (warehouse-svc) | {} x {} | {} | {:.1} | **{}** | {:.1} | {} s | {} | {} | {} s |",
            r.label,
            r.streams,
            r.batch,
            thousands(r.records as f64),
            r.elapsed_secs,
            thousands(r.records_per_sec),
            r.content_mib_per_sec,
            opt(r.server_cpu_secs, 1),
            opt(r.server_cpu_us_per_record, 1),
            opt(
                r.cql_server_cpu_secs
                    .map(|cpu| cpu * 1e6 / r.records.max(1) as f64),
                1
            ),
            opt(r.client_cpu_secs, 1),
        );
    }
    for p in &plains {
        println!(
            "| {} (scylla crate, no service{}) | {} in flight x {} rows | {} | {:.1} | **{}** | {:.1} | - | - | {} | {} s |",
            p.label,
            if p.arrival_records > 0 {
                format!("; + an arrival entry per {} records", p.arrival_records)
            } else {
                String::new()
            },
            p.concurrency,
            p.batch_rows,
            thousands(p.records as f64),
            p.elapsed_secs,
            thousands(p.records_per_sec),
            p.records_per_sec * p.record_bytes as f64 / (1024.0 * 1024.0),
            opt(
                p.server_cpu_secs
                    .map(|cpu| cpu * 1e6 / p.records.max(1) as f64),
                1
            ),
            opt(p.client_cpu_secs, 1),
        );
    }
    if !queries.is_empty() {
        println!();
        println!(
            "| query ({} records per page) | calls | p50 | p90 | p99 | max | calls/s |",
            queries[0].page_size
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for q in &queries {
            println!(
                "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
                q.label, q.queries, q.p50_ms, q.p90_ms, q.p99_ms, q.max_ms, q.queries_per_sec
            );
        }
    }
    println!();
    let verdict = |met: bool| if met { "MET" } else { "MISSED" };
    if let Some(embedded) = ingests.iter().find(|r| r.label == "embedded") {
        let met = embedded.records_per_sec >= args.embedded_target;
        println!(
            "target: embedded ingest >= {} records/s: {} ({} records/s)",
            thousands(args.embedded_target),
            verdict(met),
            thousands(embedded.records_per_sec)
        );
        if let Some(path) = &args.summary {
            bench_kit::summary_row(
                path,
                "warehouse embedded ingest",
                &format!(">= {} records/s", thousands(args.embedded_target)),
                &format!("{} records/s", thousands(embedded.records_per_sec)),
                met,
            )?;
        }
    }
    if let (Some(cql), Some(plain)) = (
        ingests.iter().find(|r| r.label == "cql"),
        plains.iter().find(|p| p.label == "plain"),
    ) {
        let ratio = cql.records_per_sec / plain.records_per_sec;
        if let Some(path) = &args.summary {
            bench_kit::summary_row(
                path,
                "warehouse on Cassandra vs a plain scylla-crate writer",
                &format!(">= {:.1}x", args.ratio_target),
                &format!(
                    "{ratio:.2}x ({} vs {} records/s)",
                    thousands(cql.records_per_sec),
                    thousands(plain.records_per_sec)
                ),
                ratio >= args.ratio_target,
            )?;
        }
        println!(
            "target: CQL ingest through warehouse-svc >= {:.1}x the plain writer: {} ({} / {} records/s = {:.2}x)",
            args.ratio_target,
            verdict(ratio >= args.ratio_target),
            thousands(cql.records_per_sec),
            thousands(plain.records_per_sec),
            ratio
        );
        if let Some(same) = plains.iter().find(|p| p.arrival_records > 0) {
            println!(
                "(diagnostic) beside a plain writer of what warehouse-svc writes, records and arrival entries of {} records: {} / {} records/s = {:.2}x",
                same.arrival_records,
                thousands(cql.records_per_sec),
                thousands(same.records_per_sec),
                cql.records_per_sec / same.records_per_sec
            );
        }
    }
    Ok(())
}

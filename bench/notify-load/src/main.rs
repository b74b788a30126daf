//! `notify-load`: the load client of `bench/notify/run.sh`.
//!
//! `run` opens C HTTP/2 connections (a tonic `Channel` each, connected one
//! by one), spreads N `Subscribe` streams over them, all on one topic, then
//! publishes R notifications/s of P payload bytes for D seconds through
//! notify-svc's `Publish`. Each payload starts with the wall-clock time it
//! was sent (microseconds since the epoch; publisher and subscribers are
//! this one process, so the clocks agree); each stream records receive time
//! minus that into an HDR histogram (sharded, merged at the end), and checks
//! that offsets come one after another (a jump counts as missed, an offset
//! again as duplicated; what a stream still lacks at the end counts as
//! missed too). With `--pid`, the server's VmRSS is read from
//! /proc/<pid>/status before connecting, with the connections open (one
//! health check each, so they really are) and with every stream subscribed:
//! (streams - connections) / N is its resident memory per stream.
//!
//! `setup` makes what a run needs at users-svc (an admin, a subscriber and a
//! service account with scope `notify.publish`), `service-token` exchanges
//! the account's secret for a fresh access token, and `report` prints the
//! JSON results of several runs as one table.

#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use base64::Engine;
use bench_kit::{
    HealthArgs, ServiceTokenArgs, connect, cpu_secs, histogram, register_or_login, service_account,
    unique, with_bearer,
};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use munity_proto::{
    notify::v1::{self as notify, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::users_client::UsersClient,
};
use serde::{Deserialize, Serialize};
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Parser)]
#[command(about = "Load client for notify-svc's Subscribe and Publish (bench/notify)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N streams over C connections, R notifications/s for D seconds.
    Run(Box<RunArgs>),
    /// Registers an admin (whose email must be in users-svc's
    /// `users.admin_emails`) and a subscriber, and creates a service account
    /// with scope `notify.publish`; prints KEY=VALUE lines for a shell.
    Setup(SetupArgs),
    /// Prints a fresh access token for a service account.
    ServiceToken(ServiceTokenArgs),
    /// Prints the JSON results of runs (`run --json`) as one table, with
    /// each against the targets.
    Report(ReportArgs),
    /// Waits until a gRPC health check of --service answers SERVING.
    Health(HealthArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    files: Vec<PathBuf>,
    /// Target: publish-to-receive p99 at most this (ms).
    #[arg(long, default_value_t = 50.0)]
    p99_target_ms: f64,
    /// Target: notify-svc's resident memory per stream at most this (KiB).
    #[arg(long, default_value_t = 16.0)]
    rss_target_kib: f64,
    /// Target: CPU per delivery through the gateway (case c, the gateway
    /// process's CPU while publishing / deliveries) at most this (µs).
    #[arg(long, default_value_t = 5.0)]
    cpu_target_us: f64,
    /// Append a line per target of issue 24 to this file (bench/summary.py's
    /// format): p99 of the direct cases a and b, CPU per delivery of case c.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where the streams go: notify-svc, or the gateway in front of it.
    #[arg(long)]
    target: String,
    /// Where Publish goes (default: --target).
    #[arg(long)]
    publish_target: Option<String>,
    /// Concurrent Subscribe streams.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// HTTP/2 connections the streams are spread over (round robin).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Notifications published per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Payload bytes per notification (the first 16: send time, sequence).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Publish calls in flight at most (0: no limit, one call per tick
    /// whatever the ones before are doing; 1: one publisher, one call after
    /// the other, falling behind the rate when a call takes longer than a
    /// tick).
    #[arg(long, default_value_t = 0)]
    publishes_in_flight: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The process whose VmRSS is measured (notify-svc, or the gateway).
    #[arg(long)]
    pid: Option<u32>,
    /// What --pid is, for the report.
    #[arg(long, default_value = "notify-svc")]
    pid_label: String,
    /// The subscriber's access token.
    #[arg(long, env = "NOTIFY_LOAD_TOKEN", hide_env_values = true)]
    token: String,
    /// An access token with scope `notify.publish`.
    #[arg(long, env = "NOTIFY_LOAD_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: String,
    /// The topic (default: `user:<sub of --token>`).
    #[arg(long)]
    topic: Option<String>,
    /// Publish on this topic instead, which no stream follows (what idle
    /// streams cost a notification of another topic; nothing is expected
    /// to arrive).
    #[arg(long)]
    publish_topic: Option<String>,
    /// Names this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Subscribe calls in flight at once while opening the streams.
    #[arg(long, default_value_t = 200)]
    subscribe_concurrency: usize,
    /// After publishing, how long to wait for what is still on its way.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Pause before each RSS reading, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// The client's tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Writes the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SetupArgs {
    /// users-svc, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    users: String,
    /// The admin's email (listed in users.admin_emails).
    #[arg(long)]
    admin_email: String,
    #[arg(long, default_value = "bench password 0123456789")]
    password: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(args) => args.threads,
        _ => Some(1),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.build()?.block_on(async move {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Setup(args) => setup(args).await,
            Command::ServiceToken(args) => bench_kit::service_token(args).await,
            Command::Report(args) => report(&args),
            Command::Health(args) => bench_kit::health(args).await,
        }
    })
}

// ------------------------------------------------------------------ helpers

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// VmRSS (or another `Vm*` line) of a process, in bytes.
fn vm_bytes(pid: u32, key: &str) -> Option<u64> {
    status_field(pid, key)?
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// A line of /proc/<pid>/status, after `key:`.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().to_owned())
    })
}

fn threads(pid: Option<u32>) -> Option<u64> {
    status_field(pid?, "Threads")?.parse().ok()
}

/// TCP segments the process's sockets have sent so far (`ss`'s
/// `segs_out`, summed over the sockets it holds): with TCP_NODELAY each
/// send of a write system call leaves as at least one segment, so this
/// counts the sends that `/proc/PID/io`'s `syscw` misses (`sendto`, which
/// tokio's `TcpStream::write` makes, is not one of its calls).
fn segments_sent(pid: u32) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args(["-tinpH"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let owner = format!("pid={pid},");
    let mut total = 0;
    let mut ours = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with(char::is_whitespace) {
            // A socket's line; its details follow, indented.
            ours = line.contains(&owner);
            continue;
        }
        if ours {
            total += line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("segs_out:"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

fn self_rss() -> Option<u64> {
    vm_bytes(std::process::id(), "VmRSS")
}

/// The `sub` of a JWT (not verified: only to name the caller's topic).
fn token_subject(token: &str) -> anyhow::Result<String> {
    let payload = token
        .split('.')
        .nth(1)
        .context("the token is not a JWT (no payload)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("the token's payload is not base64url")?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)?;
    claims["sub"]
        .as_str()
        .map(str::to_owned)
        .context("the token has no sub")
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

// ---------------------------------------------------------------------- run

/// What every stream shares. Per stream only its last offset (8 bytes);
/// counters are global, histograms sharded to spread the locking.
struct Shared {
    delivered: AtomicU64,
    missed: AtomicU64,
    duplicated: AtomicU64,
    resyncs: AtomicU64,
    heartbeats: AtomicU64,
    bad_payloads: AtomicU64,
    ended: AtomicU64,
    end_reasons: Mutex<BTreeMap<String, u64>>,
    last: Vec<AtomicU64>,
    latency: Vec<Mutex<Histogram<u64>>>,
}

const SHARDS: usize = 16;

impl Shared {
    fn new(streams: usize) -> Self {
        Shared {
            delivered: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            bad_payloads: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            end_reasons: Mutex::default(),
            last: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    fn end(&self, reason: String) {
        self.ended.fetch_add(1, Relaxed);
        *self
            .end_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_insert(0) += 1;
    }

    fn merged_latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for shard in &self.latency {
            all.add(&*shard.lock().unwrap_or_else(|e| e.into_inner()))
                .expect("same bounds");
        }
        all
    }
}

/// Reads stream `i` until it ends.
async fn follow(i: usize, mut stream: Streaming<notify::SubscribeResponse>, shared: Arc<Shared>) {
    let mut last = shared.last[i].load(Relaxed);
    let shard = &shared.latency[i % SHARDS];
    loop {
        match stream.message().await {
            Ok(Some(response)) => match response.message {
                Some(Message::Notification(n)) => {
                    let received = now_micros();
                    if n.offset <= last {
                        shared.duplicated.fetch_add(1, Relaxed);
                        continue;
                    }
                    if n.offset > last + 1 {
                        shared.missed.fetch_add(n.offset - last - 1, Relaxed);
                    }
                    last = n.offset;
                    shared.last[i].store(last, Relaxed);
                    shared.delivered.fetch_add(1, Relaxed);
                    match n.payload.as_ref().map(|p| p.value.as_slice()) {
                        Some(value) if value.len() >= 8 => {
                            let sent = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                            let micros = received.saturating_sub(sent).max(1);
                            let _ = shard
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .record(micros);
                        }
                        _ => {
                            shared.bad_payloads.fetch_add(1, Relaxed);
                        }
                    }
                }
                Some(Message::Heartbeat(_)) => {
                    shared.heartbeats.fetch_add(1, Relaxed);
                }
                Some(Message::Resync(resync)) => {
                    shared.resyncs.fetch_add(1, Relaxed);
                    if let Some(position) = resync.position {
                        last = position.offset;
                        shared.last[i].store(last, Relaxed);
                    }
                }
                Some(Message::Subscribed(_)) | None => {}
            },
            Ok(None) => {
                shared.end("ended by the server with OK".to_owned());
                return;
            }
            Err(status) => {
                shared.end(format!("{:?}: {}", status.code(), status.message()));
                return;
            }
        }
    }
}

/// An open stream, and the topic's offset when it was subscribed.
type Opened = (Streaming<notify::SubscribeResponse>, u64);

/// Opens a stream and waits for its `subscribed`.
async fn open_stream(
    mut client: NotifyClient<Channel>,
    topic: String,
    token: &str,
) -> anyhow::Result<Opened> {
    let request = with_bearer(
        notify::SubscribeRequest {
            topics: vec![topic.clone()],
            resume: Vec::new(),
        },
        token,
    )?;
    let mut stream = client.subscribe(request).await?.into_inner();
    match stream.message().await? {
        Some(notify::SubscribeResponse {
            message: Some(Message::Subscribed(subscribed)),
        }) => {
            let offset = subscribed
                .positions
                .iter()
                .find(|p| p.topic == topic)
                .map_or(0, |p| p.offset);
            Ok((stream, offset))
        }
        Some(other) => bail!("first message was not `subscribed`: {other:?}"),
        None => bail!("the stream ended before `subscribed`"),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RunReport {
    label: String,
    target: String,
    topic: String,
    /// Where the notifications went, when not to `topic`.
    #[serde(default)]
    publish_topic: Option<String>,
    streams: usize,
    streams_open: usize,
    subscribe_failures: usize,
    first_subscribe_error: Option<String>,
    connections: usize,
    rate: f64,
    payload_bytes: usize,
    duration_secs: u64,
    open_secs: f64,
    published: u64,
    publish_failures: u64,
    first_publish_error: Option<String>,
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    publish_max_ms: f64,
    publishes_in_flight: usize,
    /// Seconds from the first publish to the last one's answer.
    publish_secs: f64,
    expected_deliveries: u64,
    delivered: u64,
    delivered_in_window: u64,
    delivered_per_sec: f64,
    missed: u64,
    duplicated: u64,
    resyncs: u64,
    bad_payloads: u64,
    streams_ended_early: u64,
    end_reasons: BTreeMap<String, u64>,
    latency_samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    rss_process: String,
    rss_before: Option<u64>,
    rss_connections: Option<u64>,
    rss_streams: Option<u64>,
    rss_after_load: Option<u64>,
    hwm_after_load: Option<u64>,
    rss_per_connection: Option<f64>,
    rss_per_stream: Option<f64>,
    /// (after load - connections) / streams: with every stream's buffers
    /// in use (as in steady state), not only just subscribed.
    rss_per_stream_after_load: Option<f64>,
    client_rss: Option<u64>,
    /// The measured process's threads (tokio workers and blocking pool)
    /// before connecting, with every stream subscribed, after the load.
    threads_before: Option<u64>,
    threads_streams: Option<u64>,
    threads_after_load: Option<u64>,
    /// CPU used while publishing (the --duration window), in % of one core.
    server_cpu_percent: Option<f64>,
    client_cpu_percent: Option<f64>,
    /// TCP segments the measured process sent per second while publishing
    /// ([`segments_sent`]): how well it batches frames.
    server_segments_per_sec: Option<f64>,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.streams == 0 || args.connections == 0 {
        bail!("--streams and --connections must be at least 1");
    }
    if args.payload < 16 || args.payload > 16 * 1024 {
        bail!("--payload must be 16 to 16384 bytes");
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => format!("user:{}", token_subject(&args.token)?),
    };
    let publish_topic = args.publish_topic.clone().filter(|t| *t != topic);
    let settle = Duration::from_millis(args.settle_ms);
    let rss = |key: &str| args.pid.and_then(|pid| vm_bytes(pid, key));
    let mut report = RunReport {
        label: args.label.clone(),
        target: args.target.clone(),
        topic: topic.clone(),
        publish_topic: publish_topic.clone(),
        streams: args.streams,
        connections: args.connections,
        rate: args.rate,
        payload_bytes: args.payload,
        duration_secs: args.duration,
        rss_process: args.pid_label.clone(),
        publishes_in_flight: args.publishes_in_flight,
        ..RunReport::default()
    };
    say(
        &args.label,
        format!(
            "{} streams on {topic} over {} connections to {}; {} notifications/s of {} bytes for {} s",
            args.streams, args.connections, args.target, args.rate, args.payload, args.duration
        ),
    );

    // 1. Before connecting.
    if args.pid.is_some() {
        tokio::time::sleep(settle).await;
        report.rss_before = rss("VmRSS");
        report.threads_before = threads(args.pid);
        if report.rss_before.is_none() {
            bail!("cannot read VmRSS of pid {:?}", args.pid);
        }
    }

    // 2. C connections, each with one health check.
    let started = Instant::now();
    let channels: Vec<Channel> = futures::stream::iter(0..args.connections)
        .map(|_| connect(&args.target))
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let checks = futures::future::join_all(channels.iter().map(|channel| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
        }
    }))
    .await;
    let failed_checks: Vec<_> = checks
        .iter()
        .filter_map(|c| c.as_ref().err())
        .filter(|s| s.code() != Code::NotFound && s.code() != Code::Unauthenticated)
        .collect();
    if let Some(status) = failed_checks.first() {
        say(
            &args.label,
            format!(
                "warning: {} of {} health checks failed (first: {:?} {})",
                failed_checks.len(),
                channels.len(),
                status.code(),
                status.message()
            ),
        );
    }
    if args.pid.is_some() {
        tokio::time::sleep(settle).await;
        report.rss_connections = rss("VmRSS");
    }

    // 3. N streams, opened at most --subscribe-concurrency at a time.
    let shared = Arc::new(Shared::new(args.streams));
    let clients: Vec<NotifyClient<Channel>> =
        channels.iter().cloned().map(NotifyClient::new).collect();
    let open_started = Instant::now();
    let opened: Vec<(usize, anyhow::Result<Opened>)> = futures::stream::iter(0..args.streams)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let topic = topic.clone();
            let token = args.token.as_str();
            async move {
                let opened = tokio::time::timeout(
                    Duration::from_secs(30),
                    open_stream(client, topic, token),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no `subscribed` within 30 s")));
                (i, opened)
            }
        })
        .buffer_unordered(args.subscribe_concurrency.max(1))
        .collect()
        .await;
    let mut followers = Vec::with_capacity(args.streams);
    let mut open = vec![false; args.streams];
    for (i, opened) in opened {
        match opened {
            Ok((stream, offset)) => {
                shared.last[i].store(offset, Relaxed);
                open[i] = true;
                followers.push(tokio::spawn(follow(i, stream, shared.clone())));
            }
            Err(error) => {
                report.subscribe_failures += 1;
                report
                    .first_subscribe_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    report.streams_open = followers.len();
    report.open_secs = open_started.elapsed().as_secs_f64();
    say(
        &args.label,
        format!(
            "{} connections in {:.1} s; {} of {} streams subscribed in {:.1} s{}",
            args.connections,
            (open_started - started).as_secs_f64(),
            report.streams_open,
            args.streams,
            report.open_secs,
            report
                .first_subscribe_error
                .as_ref()
                .map(|e| format!(" (first failure: {e})"))
                .unwrap_or_default()
        ),
    );
    if report.streams_open == 0 {
        print_run(&report);
        bail!("no stream opened");
    }
    if args.pid.is_some() {
        tokio::time::sleep(settle).await;
        report.rss_streams = rss("VmRSS");
        report.threads_streams = threads(args.pid);
    }

    // 4. Publish at --rate for --duration.
    let publish_channel = connect(args.publish_target.as_deref().unwrap_or(&args.target)).await?;
    let publisher = NotifyClient::new(publish_channel);
    let total = (args.rate * args.duration as f64).round().max(1.0) as u64;
    let run_id = format!("{:x}{:x}", now_micros(), std::process::id());
    let publish_latency = Arc::new(Mutex::new(histogram()));
    let publish_errors: Arc<Mutex<(u64, Option<String>)>> = Arc::default();
    let max_offset = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick.tick().await;
    let window_start = tokio::time::Instant::now();
    let window = Duration::from_secs(args.duration);
    let in_window = {
        let shared = shared.clone();
        let before = shared.delivered.load(Relaxed);
        let pid = args.pid;
        let cpu_before = (pid.and_then(cpu_secs), cpu_secs(std::process::id()));
        let segments_before = pid.and_then(segments_sent);
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start + window).await;
            let delivered = shared.delivered.load(Relaxed) - before;
            let elapsed = window_start.elapsed().as_secs_f64();
            let percent = |before: Option<f64>, after: Option<f64>| {
                Some((after? - before?) / elapsed * 100.0)
            };
            let server = percent(cpu_before.0, pid.and_then(cpu_secs));
            let client = percent(cpu_before.1, cpu_secs(std::process::id()));
            let segments = pid
                .and_then(segments_sent)
                .zip(segments_before)
                .map(|(after, before)| after.saturating_sub(before) as f64 / elapsed);
            (delivered, server, client, segments)
        })
    };
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        if args.publishes_in_flight == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            args.publishes_in_flight
        },
    ));
    let mut publishes = Vec::with_capacity(total as usize);
    for seq in 0..total {
        if seq > 0 {
            tick.tick().await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let mut client = publisher.clone();
        let token = args.publish_token.clone();
        let topic = publish_topic.clone().unwrap_or_else(|| topic.clone());
        let id = format!("bench-{run_id}-{seq}");
        let payload_len = args.payload;
        let publish_latency = publish_latency.clone();
        let publish_errors = publish_errors.clone();
        let max_offset = max_offset.clone();
        let published = published.clone();
        publishes.push(tokio::spawn(async move {
            let _permit = permit;
            let mut value = vec![b'.'; payload_len];
            let sent = now_micros();
            value[..8].copy_from_slice(&sent.to_le_bytes());
            value[8..16].copy_from_slice(&seq.to_le_bytes());
            let request = notify::PublishRequest {
                topic,
                id,
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/munity.bench.v1.Load".to_owned(),
                    value,
                }),
            };
            let result = match with_bearer(request, &token) {
                Ok(request) => client
                    .publish(request)
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message())),
                Err(error) => Err(format!("{error:#}")),
            };
            match result {
                Ok(response) => {
                    let took = now_micros().saturating_sub(sent).max(1);
                    let _ = publish_latency
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(took);
                    published.fetch_add(1, Relaxed);
                    if let Some(n) = response.into_inner().notification {
                        max_offset.fetch_max(n.offset, Relaxed);
                    }
                }
                Err(error) => {
                    let mut errors = publish_errors.lock().unwrap_or_else(|e| e.into_inner());
                    errors.0 += 1;
                    errors.1.get_or_insert(error);
                }
            }
        }));
    }
    for publish in publishes {
        let _ = publish.await;
    }
    report.publish_secs = window_start.elapsed().as_secs_f64();
    (
        report.delivered_in_window,
        report.server_cpu_percent,
        report.client_cpu_percent,
        report.server_segments_per_sec,
    ) = in_window.await.unwrap_or((0, None, None, None));
    report.delivered_per_sec = report.delivered_in_window as f64 / args.duration as f64;
    report.published = published.load(Relaxed);
    {
        let errors = publish_errors.lock().unwrap_or_else(|e| e.into_inner());
        report.publish_failures = errors.0;
        report.first_publish_error = errors.1.clone();
    }
    report.expected_deliveries = if publish_topic.is_some() {
        0
    } else {
        report.published * report.streams_open as u64
    };
    if let Some(error) = &report.first_publish_error {
        say(
            &args.label,
            format!(
                "{} of {total} publishes failed (first: {error})",
                report.publish_failures
            ),
        );
    }

    // 5. What is still on its way.
    let drain_until = Instant::now() + Duration::from_secs(args.drain_secs);
    while shared.delivered.load(Relaxed) < report.expected_deliveries
        && Instant::now() < drain_until
        && shared.ended.load(Relaxed) < report.streams_open as u64
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if args.pid.is_some() {
        report.rss_after_load = rss("VmRSS");
        report.hwm_after_load = rss("VmHWM");
        report.threads_after_load = threads(args.pid);
    }
    report.client_rss = self_rss();

    // 6. Tally: a stream short of the last offset published missed the rest.
    // (Notifications of another topic are nothing a stream should get.)
    let final_offset = if publish_topic.is_some() {
        0
    } else {
        max_offset.load(Relaxed)
    };
    let mut tail_missed = 0;
    for (i, is_open) in open.iter().enumerate() {
        if *is_open {
            let last = shared.last[i].load(Relaxed);
            tail_missed += final_offset.saturating_sub(last);
        }
    }
    for follower in &followers {
        follower.abort();
    }
    report.delivered = shared.delivered.load(Relaxed);
    report.missed = shared.missed.load(Relaxed) + tail_missed;
    report.duplicated = shared.duplicated.load(Relaxed);
    report.resyncs = shared.resyncs.load(Relaxed);
    report.bad_payloads = shared.bad_payloads.load(Relaxed);
    report.streams_ended_early = shared.ended.load(Relaxed);
    report.end_reasons = shared
        .end_reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let latency = shared.merged_latency();
    report.latency_samples = latency.len();
    if !latency.is_empty() {
        report.p50_ms = ms(latency.value_at_quantile(0.50));
        report.p90_ms = ms(latency.value_at_quantile(0.90));
        report.p99_ms = ms(latency.value_at_quantile(0.99));
        report.p999_ms = ms(latency.value_at_quantile(0.999));
        report.max_ms = ms(latency.max());
    }
    {
        let publish = publish_latency.lock().unwrap_or_else(|e| e.into_inner());
        if !publish.is_empty() {
            report.publish_p50_ms = ms(publish.value_at_quantile(0.50));
            report.publish_p99_ms = ms(publish.value_at_quantile(0.99));
            report.publish_max_ms = ms(publish.max());
        }
    }
    if let (Some(before), Some(conns)) = (report.rss_before, report.rss_connections) {
        report.rss_per_connection = Some((conns as f64 - before as f64) / args.connections as f64);
    }
    if let (Some(conns), Some(streams)) = (report.rss_connections, report.rss_streams) {
        report.rss_per_stream = Some((streams as f64 - conns as f64) / report.streams_open as f64);
    }
    if let (Some(conns), Some(after)) = (report.rss_connections, report.rss_after_load) {
        report.rss_per_stream_after_load =
            Some((after as f64 - conns as f64) / report.streams_open as f64);
    }
    print_run(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(followers);
    drop(clients);
    Ok(())
}

fn say(label: &str, message: String) {
    eprintln!("[notify-load {label}] {message}");
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".to_owned(), |b| {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

fn print_run(r: &RunReport) {
    println!("== notify-load {} ==", r.label);
    println!("target            {} (topic {})", r.target, r.topic);
    println!(
        "streams           {} open of {} over {} connections (opened in {:.1} s; {} failed{})",
        r.streams_open,
        r.streams,
        r.connections,
        r.open_secs,
        r.subscribe_failures,
        r.first_subscribe_error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    println!(
        "published         {} at {}/s x {} B for {} s (done in {:.1} s; at most {} in flight; {} failed{}); Publish p50 {:.2} p99 {:.2} max {:.2} ms",
        r.published,
        r.rate,
        r.payload_bytes,
        r.duration_secs,
        r.publish_secs,
        if r.publishes_in_flight == 0 {
            "any number".to_owned()
        } else {
            r.publishes_in_flight.to_string()
        },
        r.publish_failures,
        r.first_publish_error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default(),
        r.publish_p50_ms,
        r.publish_p99_ms,
        r.publish_max_ms
    );
    println!(
        "delivered         {} of {} expected; {:.0}/s during the {} s of publishing",
        r.delivered, r.expected_deliveries, r.delivered_per_sec, r.duration_secs
    );
    println!(
        "publish->receive  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.latency_samples
    );
    println!(
        "missed            {}; duplicated {}; resyncs {}; bad payloads {}; streams ended early {}",
        r.missed, r.duplicated, r.resyncs, r.bad_payloads, r.streams_ended_early
    );
    for (reason, count) in &r.end_reasons {
        println!("  ended: {count} x {reason}");
    }
    if r.rss_before.is_some() {
        println!(
            "{} RSS   before {}, {} connections {}, {} streams {}, after load {} (peak {})",
            r.rss_process,
            mib(r.rss_before),
            r.connections,
            mib(r.rss_connections),
            r.streams_open,
            mib(r.rss_streams),
            mib(r.rss_after_load),
            mib(r.hwm_after_load)
        );
        let count = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
        println!(
            "{} threads  {} before, {} with the streams, {} after load",
            r.rss_process,
            count(r.threads_before),
            count(r.threads_streams),
            count(r.threads_after_load)
        );
        let bytes = |b: Option<f64>| {
            b.map_or("-".to_owned(), |b| {
                format!("{:.0} B ({:.1} KiB)", b, b / 1024.0)
            })
        };
        println!(
            "per connection    {}; per stream {} subscribed, {} after load",
            bytes(r.rss_per_connection),
            bytes(r.rss_per_stream),
            bytes(r.rss_per_stream_after_load),
        );
    }
    println!(
        "CPU publishing    {} {}, notify-load {} (% of one core)",
        r.rss_process,
        r.server_cpu_percent
            .map_or("-".to_owned(), |p| format!("{p:.0}%")),
        r.client_cpu_percent
            .map_or("-".to_owned(), |p| format!("{p:.0}%")),
    );
    if let Some(elsewhere) = &r.publish_topic {
        println!(
            "published on      {elsewhere} (no stream's topic): {} CPU {:.1} us per Publish",
            r.rss_process,
            cpu_per_publish_us(r).unwrap_or(0.0)
        );
    }
    if let Some(segments) = r.server_segments_per_sec {
        println!(
            "{} sends   {:.0} TCP segments/s while publishing, {:.2} per delivery; CPU {:.1} us per delivery",
            r.rss_process,
            segments,
            segments / r.delivered_per_sec.max(1.0),
            r.server_cpu_percent.unwrap_or(0.0) / 100.0 * 1e6 / r.delivered_per_sec.max(1.0),
        );
    }
    println!("client RSS        {}", mib(r.client_rss));
}

/// The measured process's CPU per Publish while publishing, in µs.
fn cpu_per_publish_us(r: &RunReport) -> Option<f64> {
    let cpu_secs = r.server_cpu_percent? / 100.0 * r.duration_secs as f64;
    (r.published > 0).then(|| cpu_secs * 1e6 / r.published as f64)
}

fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let files = &args.files;
    let mut verdicts = Vec::new();
    let mut runs = Vec::new();
    println!(
        "{:<22} {:>7} {:>5} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>5} {:>12} {:>12}  Publish p50/p99 ms, CPU % server/client",
        "case",
        "streams",
        "conns",
        "expected",
        "delivered",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "missed",
        "dup",
        "RSS/stream",
        "after load",
    );
    for file in files {
        let r: RunReport = serde_json::from_slice(
            &std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?,
        )?;
        let kib = |b: Option<f64>| match (r.rss_process.as_str(), b) {
            (_, None) => "-".to_owned(),
            ("notify-svc", Some(b)) => format!("{:.1} KiB", b / 1024.0),
            (process, Some(b)) => format!(
                "{:.1} KiB {}",
                b / 1024.0,
                process.get(..2).unwrap_or(process)
            ),
        };
        let per_stream = kib(r.rss_per_stream);
        let after_load = kib(r.rss_per_stream_after_load);
        println!(
            "{:<22} {:>7} {:>5} {:>10} {:>10} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>5} {:>12} {:>12}  {:.1}/{:.1}, {}/{}",
            r.label,
            r.streams_open,
            r.connections,
            r.expected_deliveries,
            r.delivered,
            r.delivered_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.missed,
            r.duplicated,
            per_stream,
            after_load,
            r.publish_p50_ms,
            r.publish_p99_ms,
            r.server_cpu_percent
                .map_or("-".to_owned(), |p| format!("{p:.0}")),
            r.client_cpu_percent
                .map_or("-".to_owned(), |p| format!("{p:.0}")),
        );
        let mut missed = Vec::new();
        if r.missed > 0 || r.delivered < r.expected_deliveries {
            missed.push(format!(
                "{} missed",
                r.missed
                    .max(r.expected_deliveries.saturating_sub(r.delivered))
            ));
        }
        if r.duplicated > 0 {
            missed.push(format!("{} duplicated", r.duplicated));
        }
        if r.streams_open < r.streams {
            missed.push(format!(
                "{} streams did not open",
                r.streams - r.streams_open
            ));
        }
        if r.published == 0 {
            missed.push("nothing published".to_owned());
        }
        if r.publish_topic.is_some() && r.delivered > 0 {
            missed.push(format!(
                "{} delivered from a topic no stream follows",
                r.delivered
            ));
        }
        let mut verdict = vec![if missed.is_empty() {
            "nothing missed: yes".to_owned()
        } else {
            format!("nothing missed: NO ({})", missed.join(", "))
        }];
        match &r.publish_topic {
            Some(elsewhere) => verdict.push(format!(
                "published on {elsewhere}: {} CPU {:.1} us per Publish",
                r.rss_process,
                cpu_per_publish_us(&r).unwrap_or(0.0)
            )),
            None => verdict.push(format!(
                "p99 <= {} ms: {}",
                args.p99_target_ms,
                if r.latency_samples > 0 && r.p99_ms <= args.p99_target_ms {
                    "yes"
                } else {
                    "NO"
                }
            )),
        }
        if let ("notify-svc", Some(b)) = (r.rss_process.as_str(), r.rss_per_stream) {
            verdict.push(format!(
                "<= {} KiB/stream: {}",
                args.rss_target_kib,
                if b / 1024.0 <= args.rss_target_kib {
                    "yes"
                } else {
                    "NO"
                }
            ));
        }
        verdicts.push(format!("{:<22} {}", r.label, verdict.join("; ")));
        runs.push((r, missed));
    }
    println!();
    for verdict in verdicts {
        println!("{verdict}");
    }
    if let Some(path) = &args.summary {
        write_summary(path, args, &runs)?;
    }
    Ok(())
}

/// Issue 24's notify targets, one summary line each: publish-to-receive p99
/// of the direct cases a (10,000 streams) and b (1,000), with Publish's own
/// p99 beside, and CPU per delivery through the gateway (case c). A run
/// that missed anything meets no target.
fn write_summary(
    path: &std::path::Path,
    args: &ReportArgs,
    runs: &[(RunReport, Vec<String>)],
) -> anyhow::Result<()> {
    for (r, problems) in runs {
        let problems = if problems.is_empty() {
            String::new()
        } else {
            format!("; {}", problems.join(", "))
        };
        let case = r.label.split('_').next().unwrap_or_default();
        match case {
            "a" | "b" => {
                let measured = if r.latency_samples > 0 {
                    format!(
                        "{:.1} ms (Publish p99 {:.1} ms{problems})",
                        r.p99_ms, r.publish_p99_ms
                    )
                } else {
                    format!("- (no deliveries{problems})")
                };
                bench_kit::summary_row(
                    path,
                    &format!("notify p99 at {} streams, direct", thousands(r.streams)),
                    &format!("<= {} ms", args.p99_target_ms),
                    &measured,
                    problems.is_empty() && r.latency_samples > 0 && r.p99_ms <= args.p99_target_ms,
                )?;
            }
            "c" => {
                let us = r
                    .server_cpu_percent
                    .filter(|_| r.delivered_per_sec > 0.0)
                    .map(|p| p / 100.0 * 1e6 / r.delivered_per_sec);
                bench_kit::summary_row(
                    path,
                    "notify CPU per delivery through the gateway",
                    &format!("<= {} us", args.cpu_target_us),
                    &format!(
                        "{} (the gateway's, {} streams{problems})",
                        us.map_or("-".to_owned(), |us| format!("{us:.1} us")),
                        thousands(r.streams)
                    ),
                    problems.is_empty() && us.is_some_and(|us| us <= args.cpu_target_us),
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// 10000 -> "10,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// -------------------------------------------------------------- set-up

async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let mut users = UsersClient::new(connect(&args.users).await?);
    let admin =
        register_or_login(&mut users, &args.admin_email, &args.password, "Bench admin").await?;
    let subscriber_email = format!("bench-subscriber-{}@example.com", unique());
    let subscriber = register_or_login(
        &mut users,
        &subscriber_email,
        &args.password,
        "Bench subscriber",
    )
    .await?;
    let subscriber_id = subscriber
        .user
        .as_ref()
        .map(|u| u.id.clone())
        .context("Register answered no user")?;
    println!("ADMIN_TOKEN={}", admin.access_token);
    println!("SUBSCRIBER_ID={subscriber_id}");
    println!("SUBSCRIBER_TOKEN={}", subscriber.access_token);
    let (client_id, client_secret) = service_account(
        &mut users,
        &admin.access_token,
        format!("bench-publisher-{}", unique()),
        &["notify.publish"],
    )
    .await?;
    println!("SERVICE_CLIENT_ID={client_id}");
    println!("SERVICE_CLIENT_SECRET={client_secret}");
    Ok(())
}

//! `bot-load`: the set-up and load client of `bench/bot/run.sh`.
//!
//! `setup` makes N real users at users-svc (Register, so each password is
//! hashed with the real Argon2id cost: that is most of the set-up time,
//! done C at a time), one meeting each at events-svc (voting open), a link
//! code each (CreateLinkCode), and has each Telegram chat send `/link CODE`
//! to the bot through telegram-test-api's client API: real links, made by
//! the real bot-svc and users-svc. It then waits until bot-svc reports
//! every chat linked and every user followed (GetStatus), and writes what
//! `deliver` needs to a state file.
//!
//! `deliver` (against a bot-svc started again on the same store, with the
//! rate under test) waits until bot-svc follows every user again, closes
//! every meeting's voting at once (CloseVoting straight to events-svc, C at
//! a time, each as its owner): notify-svc pushes one "Voting closed" to each
//! owner's `user:` topic, and the bot queues one message for each chat and
//! sends them within its configured rates. It counts at the stand-in, per
//! chat, what arrived (nothing lost, nothing doubled, nothing in the wrong
//! chat), times it by the stand-in's own arrival stamps, and reads the
//! bot's CPU and memory from /proc. With `--summary` it appends TSV lines
//! `figure, goal, measured, met` for bench/all.sh.

#![forbid(unsafe_code)]

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use bench_kit::{HealthArgs, connect, cpu_secs, unique, with_bearer};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use munity_proto::{
    bot::v1::{GetStatusRequest, bot_client::BotClient},
    events::v1::{self as events, events_client::EventsClient},
    users::v1::{self as users, users_client::UsersClient},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "Set-up and load client for bot-svc (bench/bot)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N users, a meeting each, N chats linked through the bot.
    Setup(SetupArgs),
    /// Closes every meeting; counts and times what the chats get.
    Deliver(DeliverArgs),
    /// Registers an admin and makes the bot's service account (scopes
    /// bot.link, bot.act): prints CLIENT_ID= and CLIENT_SECRET= lines.
    Account(AccountArgs),
    /// Waits until a server answers SERVING.
    Health(HealthArgs),
}

#[derive(Debug, clap::Args)]
struct AccountArgs {
    #[arg(long)]
    users: String,
    /// An email in users.admin_emails.
    #[arg(long)]
    admin_email: String,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// users-svc, straight (not through the gateway, whose Register quota
    /// is 5 a minute per client).
    #[arg(long)]
    users: String,
    #[arg(long)]
    events: String,
    /// bot-svc (GetStatus).
    #[arg(long)]
    bot: String,
    /// telegram-test-api's port, through the proxy of
    /// `bot-svc/tests/telegram/server.js` (its client API and history, and
    /// `/stats`).
    #[arg(long)]
    stand_in: u16,
    /// The bot's token at the stand-in.
    #[arg(long)]
    bot_token: String,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long)]
    state: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SetupArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10_000)]
    chats: usize,
    /// The first chat's id; the others follow it.
    #[arg(long, default_value_t = 1_000_000)]
    first_chat: i64,
    /// Gives up waiting for the bot after this long.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
struct DeliverArgs {
    #[command(flatten)]
    common: Common,
    /// bot-svc's pid, for its CPU and memory.
    #[arg(long)]
    bot_pid: u32,
    /// The bot's configured `bot.messages_per_sec` (what the rate is held to).
    #[arg(long)]
    messages_per_sec: f64,
    /// Appends `figure<TAB>goal<TAB>measured<TAB>met` lines here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Gives up when nothing arrives for this long.
    #[arg(long, default_value_t = 120)]
    stall_secs: u64,
}

/// One linked chat and what it should get.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chat {
    chat: i64,
    user: String,
    event: String,
    /// The owner's access token (CloseVoting is the owner's).
    token: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    chats: Vec<Chat>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup(args) => setup(args).await,
        Command::Deliver(args) => deliver(args).await,
        Command::Account(args) => account(args).await,
        Command::Health(args) => bench_kit::health(args).await,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn in_days(days: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_now() + days * 86_400,
        nanos: 0,
    }
}

/// Runs `f` over `items`, `concurrency` at a time; the first error stops it.
async fn each<T, R, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> anyhow::Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

async fn account(args: AccountArgs) -> anyhow::Result<()> {
    let mut users = UsersClient::new(connect(&args.users).await?);
    let admin = bench_kit::register_or_login(
        &mut users,
        &args.admin_email,
        "bench-admin-password",
        "Bench admin",
    )
    .await?;
    let (id, secret) = bench_kit::service_account(
        &mut users,
        &admin.access_token,
        format!("telegram-bot-bench-{}", unique()),
        &["bot.link", "bot.act"],
    )
    .await?;
    println!("CLIENT_ID={id}\nCLIENT_SECRET={secret}");
    Ok(())
}

async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let users = UsersClient::new(connect(&c.users).await?);
    let events = EventsClient::new(connect(&c.events).await?);
    let run = unique();
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let total = args.chats as u64;
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                eprintln!(
                    "  set-up: {} of {total} users registered, with a meeting and a code sent",
                    done.load(Relaxed)
                );
            }
        })
    };
    let made = each((0..args.chats).collect(), c.concurrency, |i| {
        let (mut users, mut events, done) = (users.clone(), events.clone(), done.clone());
        let run = run.clone();
        let chat = args.first_chat + i as i64;
        let (port, bot_token) = (c.stand_in, c.bot_token.clone());
        async move {
            let email = format!("bot-bench-{run}-{i}@example.com");
            let auth = users
                .register(users::RegisterRequest {
                    email: email.clone(),
                    password: format!("bench-password-{run}"),
                    display_name: format!("Bench {i}"),
                })
                .await
                .with_context(|| format!("Register {email}"))?
                .into_inner();
            let token = auth.access_token;
            let user = auth.user.context("a user in Register's answer")?.id;
            let event = events
                .create_event(with_bearer(
                    events::CreateEventRequest {
                        title: format!("Bench meeting {i}"),
                        options: vec![events::TimeOptionInput {
                            start: Some(in_days(30)),
                            end: Some(in_days(31)),
                        }],
                        voting_deadline: Some(in_days(20)),
                        ..Default::default()
                    },
                    &token,
                )?)
                .await
                .context("CreateEvent")?
                .into_inner()
                .id;
            let code = users
                .create_link_code(with_bearer(users::CreateLinkCodeRequest {}, &token)?)
                .await
                .context("CreateLinkCode")?
                .into_inner()
                .code;
            // The chat sends `/link CODE` to the bot, as a person would.
            let said = http(
                port,
                "/sendMessage",
                &json!({
                    "botToken": bot_token,
                    "date": unix_now(),
                    "chat": {"id": chat, "type": "private", "first_name": "Bench"},
                    "from": {"id": chat, "is_bot": false, "first_name": "Bench"},
                    "text": format!("/link {code}"),
                }),
            )
            .await?;
            if said["ok"] != json!(true) {
                bail!("the stand-in refused a message: {said}");
            }
            done.fetch_add(1, Relaxed);
            Ok(Chat {
                chat,
                user,
                event,
                token,
            })
        }
    })
    .await?;
    progress.abort();
    let registered = started.elapsed();
    println!(
        "set-up: {} users registered (Argon2id), a meeting and a link code each, /link sent from {} chats in {:.1} s ({:.0} users/s, {} at a time)",
        made.len(),
        made.len(),
        registered.as_secs_f64(),
        made.len() as f64 / registered.as_secs_f64(),
        c.concurrency
    );

    // The bot links each chat (RedeemLinkCode), then follows each user.
    let probe = &made[0].token;
    let mut bot = BotClient::new(connect(&c.bot).await?);
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut linked_at = None;
    loop {
        let status = bot
            .get_status(with_bearer(GetStatusRequest {}, probe)?)
            .await
            .context("GetStatus")?
            .into_inner();
        if linked_at.is_none() && status.linked_chats >= total {
            linked_at = Some(started.elapsed());
            println!(
                "set-up: {} chats linked by the bot after {:.1} s",
                status.linked_chats,
                started.elapsed().as_secs_f64()
            );
        }
        // The replies to /link sent too, so the next bot starts with an
        // empty queue.
        if linked_at.is_some() && status.following_users >= total && status.queued_messages == 0 {
            println!(
                "set-up: {} users followed by the bot and its replies sent after {:.1} s",
                status.following_users,
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after {} s the bot has {} chats linked and follows {} users, of {total}; {} messages queued",
                args.timeout_secs,
                status.linked_chats,
                status.following_users,
                status.queued_messages
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let state = State { chats: made };
    std::fs::write(&c.state, serde_json::to_vec(&state)?)
        .with_context(|| format!("writing {}", c.state.display()))?;
    println!("set-up: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// VmRSS / VmHWM of a process, in bytes.
fn vm_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn deliver(args: DeliverArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let state: State = serde_json::from_slice(
        &std::fs::read(&c.state).with_context(|| format!("reading {}", c.state.display()))?,
    )?;
    let total = state.chats.len() as u64;
    let events = EventsClient::new(connect(&c.events).await?);
    let mut bot = BotClient::new(connect(&c.bot).await?);
    let probe = state.chats[0].token.clone();

    // The bot was started again: it resumes every user's stream from its
    // stored position.
    let started = Instant::now();
    loop {
        let status = bot
            .get_status(with_bearer(GetStatusRequest {}, &probe)?)
            .await
            .context("GetStatus")?
            .into_inner();
        if status.following_users >= total {
            println!(
                "deliver: bot-svc follows {} users again {:.1} s after it answered",
                status.following_users,
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "bot-svc follows {} of {total} users",
                status.following_users
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = closed_messages(c.stand_in, &c.bot_token).await?;
    if !before.is_empty() {
        bail!(
            "the stand-in already holds {} 'Voting closed' messages",
            before.len()
        );
    }
    let cpu_start = cpu_secs(args.bot_pid).context("bot-svc's CPU time")?;
    let rss_start = vm_bytes(args.bot_pid, "VmRSS").unwrap_or(0);
    let mut rss_peak_sampled = rss_start;

    // Every meeting closed, each by its owner: one push each.
    let t0 = Instant::now();
    let t0_ms = unix_millis();
    let closes = {
        let chats = state.chats.clone();
        let concurrency = c.concurrency;
        tokio::spawn(async move {
            let began = Instant::now();
            let result = each(chats, concurrency, |chat| {
                let mut events = events.clone();
                async move {
                    events
                        .close_voting(with_bearer(
                            events::CloseVotingRequest {
                                event_id: chat.event.clone(),
                            },
                            &chat.token,
                        )?)
                        .await
                        .with_context(|| format!("CloseVoting {}", chat.event))?;
                    Ok(())
                }
            })
            .await;
            result.map(|done| (done.len(), began.elapsed()))
        })
    };

    // Progress, from the stand-in's count of what the bot sent.
    let mut last_count = 0;
    let mut last_change = Instant::now();
    let mut closes = Some(closes);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(rss) = vm_bytes(args.bot_pid, "VmRSS") {
            rss_peak_sampled = rss_peak_sampled.max(rss);
        }
        if closes.as_ref().is_some_and(|task| task.is_finished())
            && let Some(task) = closes.take()
        {
            let (n, took) = task.await??;
            println!(
                "deliver: {n} meetings closed in {:.1} s ({:.0} CloseVoting/s)",
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64()
            );
        }
        let stats = http_get(c.stand_in, "/stats").await?;
        let count = stats["closed"].as_u64().unwrap_or(0);
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        }
        if t0.elapsed().as_secs().is_multiple_of(15) {
            eprintln!(
                "  deliver: {count} of {total} at the stand-in after {:.0} s",
                t0.elapsed().as_secs_f64()
            );
        }
        if count >= total && closes.is_none() {
            // Anything doubled would come right after: wait a moment.
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
        if last_change.elapsed() > Duration::from_secs(args.stall_secs) {
            println!(
                "deliver: nothing more arrived for {} s; counting what is there",
                args.stall_secs
            );
            break;
        }
    }
    let cpu = cpu_secs(args.bot_pid).unwrap_or(cpu_start) - cpu_start;
    let rss_end = vm_bytes(args.bot_pid, "VmRSS").unwrap_or(0);
    let rss_hwm = vm_bytes(args.bot_pid, "VmHWM").unwrap_or(0);

    // Per chat: exactly one, for its own meeting.
    let received = closed_messages(c.stand_in, &c.bot_token).await?;
    let wanted: HashMap<i64, &str> = state
        .chats
        .iter()
        .map(|chat| (chat.chat, chat.event.as_str()))
        .collect();
    let mut per_chat: HashMap<i64, u64> = HashMap::new();
    let mut wrong = 0u64;
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for (chat, text, at) in &received {
        match wanted.get(chat) {
            Some(event) if text.contains(event) => {
                *per_chat.entry(*chat).or_default() += 1;
                first = first.min(*at);
                last = last.max(*at);
            }
            _ => wrong += 1,
        }
    }
    let lost = wanted.keys().filter(|c| !per_chat.contains_key(c)).count() as u64;
    let doubled = per_chat.values().filter(|n| **n > 1).count() as u64;
    let delivered = per_chat.len() as u64;
    let spread_secs = (last - first).max(1) as f64 / 1000.0;
    let rate = if delivered > 1 {
        (delivered - 1) as f64 / spread_secs
    } else {
        0.0
    };
    let all_secs = (last - t0_ms) as f64 / 1000.0;
    println!(
        "deliver: {delivered} of {total} chats got their message; lost {lost}, doubled {doubled}, in a wrong chat {wrong}"
    );
    println!(
        "deliver: all delivered {all_secs:.1} s after the first close; first to last arrival {spread_secs:.1} s: {rate:.1} messages/s against bot.messages_per_sec = {}, {:.2}x",
        args.messages_per_sec,
        rate / args.messages_per_sec
    );
    println!(
        "deliver: bot-svc CPU {cpu:.1} s over the delivery ({:.2} s per 1,000 messages, {:.0}% of a core); RSS peak {:.1} MiB (VmHWM, whole life; sampled peak during delivery {:.1} MiB), at the end {:.1} MiB",
        cpu * 1000.0 / delivered.max(1) as f64,
        100.0 * cpu / t0.elapsed().as_secs_f64(),
        mib(rss_hwm),
        mib(rss_peak_sampled),
        mib(rss_end)
    );
    if let Some(path) = &args.summary {
        let goal_rate = 0.9 * args.messages_per_sec;
        let lines = [
            (
                "bot: delivered messages/s".to_owned(),
                format!(">= {goal_rate:.1} (0.9 x bot.messages_per_sec)"),
                format!("{rate:.1}"),
                rate >= goal_rate,
            ),
            (
                format!("bot: chats lost (of {total})"),
                "0".to_owned(),
                lost.to_string(),
                lost == 0,
            ),
            (
                format!("bot: chats doubled (of {total})"),
                "0".to_owned(),
                doubled.to_string(),
                doubled == 0,
            ),
            (
                "bot: messages in a wrong chat".to_owned(),
                "0".to_owned(),
                wrong.to_string(),
                wrong == 0,
            ),
        ];
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        for (figure, goal, measured, met) in lines {
            writeln!(
                file,
                "{figure}\t{goal}\t{measured}\t{}",
                if met { "yes" } else { "no" }
            )?;
        }
    }
    if lost > 0 || doubled > 0 || wrong > 0 {
        bail!("lost {lost}, doubled {doubled}, wrong chat {wrong}");
    }
    Ok(())
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Every "Voting closed" message the bot sent: (chat, text, arrival ms).
async fn closed_messages(port: u16, bot_token: &str) -> anyhow::Result<Vec<(i64, String, i64)>> {
    let history = http(port, "/getUpdatesHistory", &json!({"token": bot_token})).await?;
    Ok(history["result"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|entry| entry["message"].get("from").is_none())
        .filter_map(|entry| {
            let message = &entry["message"];
            let text = message["text"].as_str()?;
            if !text.starts_with("Voting closed") {
                return None;
            }
            let chat = &message["chat_id"];
            let chat = chat
                .as_i64()
                .or_else(|| chat.as_str().and_then(|s| s.parse().ok()))?;
            Some((chat, text.to_owned(), entry["time"].as_i64().unwrap_or(0)))
        })
        .collect())
}

/// One HTTP/1.1 exchange with the stand-in (a connection each): the
/// answer's JSON.
async fn exchange(port: u16, request: String) -> anyhow::Result<Value> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .context("connecting to the stand-in")?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("not an HTTP answer")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).with_context(|| format!("the stand-in's answer: {head}"))
}

async fn http(port: u16, path: &str, body: &Value) -> anyhow::Result<Value> {
    let body = body.to_string();
    exchange(
        port,
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<Value> {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .await
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

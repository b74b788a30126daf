//! The Telegram bot end to end: a real `munity dev` with bot-svc turned on,
//! talking to `telegram-test-api` (npm 4.2.1, `bot-svc/tests/telegram/`),
//! the agreed stand-in for Telegram's Bot API, started by this test. The
//! test plays the Telegram users through the stand-in's client API and
//! Munity's users through its gateway.
//!
//! Known flaws of the stand-in, worked around here: it answers getUpdates
//! at once (no long polling), builds callback queries from what the client
//! posts (so this test posts whole messages), and answers editMessageText
//! and answerCallbackQuery with `null`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use munity_platform::auth::with_bearer;
use munity_proto::{events::v1 as events_pb, users::v1 as users_pb};
use munity_testkit::{ADMIN_EMAIL, Ready, free_port, register, register_as, spawn_ready};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const BOT_TOKEN: &str = "123456:munity-test";

fn stand_in_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bot-svc/tests/telegram")
}

/// The stand-in, killed when dropped.
struct StandIn {
    child: Child,
    port: u16,
    /// The proxy in front of it, where the bot is pointed (429s on demand).
    proxy_port: u16,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_stand_in() -> Option<StandIn> {
    let dir = stand_in_dir();
    if !dir.join("node_modules/telegram-test-api").exists() {
        assert!(
            !munity_testkit::in_ci(),
            "telegram-test-api is not installed: npm ci in bot-svc/tests/telegram"
        );
        eprintln!("skipping: npm ci in bot-svc/tests/telegram first");
        return None;
    }
    let (port, proxy_port) = (free_port(), free_port());
    let child = Command::new("node")
        .arg("server.js")
        .arg(port.to_string())
        .arg(proxy_port.to_string())
        .current_dir(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("node runs");
    let stand_in = StandIn {
        child,
        port,
        proxy_port,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the stand-in did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(stand_in)
}

/// POSTs JSON to the stand-in's client API (HTTP/1.1, one connection per
/// call) and returns the answer's JSON.
async fn post(port: u16, path: &str, body: &Value) -> Value {
    post_http(port, path, &[], &body.to_string()).await.1
}

/// Sends `request` (a whole HTTP/1.1 request that closes the connection)
/// to `port`; the answer's status and JSON body (`Null` when none).
async fn exchange(port: u16, request: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    parse_answer(&String::from_utf8_lossy(&answer))
}

/// An HTTP answer's status and JSON body, chunked or not.
fn parse_answer(answer: &str) -> (u16, Value) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = serde_json::from_str(body)
        .or_else(|_| serde_json::from_str(&dechunk(body)))
        .unwrap_or(Value::Null);
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// A Telegram user in one private chat.
struct TgUser {
    port: u16,
    chat_id: i64,
}

impl TgUser {
    fn chat(&self) -> Value {
        json!({"id": self.chat_id, "type": "private", "first_name": "Tester"})
    }

    fn from(&self) -> Value {
        json!({"id": self.chat_id, "is_bot": false, "first_name": "Tester"})
    }

    async fn says(&self, text: &str) {
        let message = json!({
            "botToken": BOT_TOKEN,
            "date": unix_now(),
            "chat": self.chat(),
            "from": self.from(),
            "text": text,
        });
        post(self.port, "/sendMessage", &message).await;
    }

    /// Presses a button with `data` under the bot's message `message_id`.
    async fn presses(&self, message_id: i64, data: &str) {
        let query = json!({
            "botToken": BOT_TOKEN,
            "from": self.from(),
            "message": {
                "message_id": message_id,
                "date": unix_now(),
                "chat": self.chat(),
                "text": "a meeting",
            },
            "data": data,
        });
        post(self.port, "/sendCallback", &query).await;
    }

    /// What the bot sent this chat so far (edits applied), oldest first:
    /// (message id, text, inline keyboard).
    async fn received(&self) -> Vec<(i64, String, Value)> {
        let history = post(
            self.port,
            "/getUpdatesHistory",
            &json!({"token": BOT_TOKEN}),
        )
        .await;
        history["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            // The bot's messages (what it sent: `chat_id`, as a number or
            // a string), not the users'.
            .filter(|entry| {
                let to = &entry["message"]["chat_id"];
                to.as_i64() == Some(self.chat_id)
                    || to.as_str() == Some(self.chat_id.to_string().as_str())
            })
            .filter(|entry| {
                entry.get("messageId").is_some()
                    && entry["message"].get("text").is_some()
                    && entry["message"].get("from").is_none()
            })
            .map(|entry| {
                (
                    entry["messageId"].as_i64().unwrap_or(0),
                    entry["message"]["text"].as_str().unwrap_or("").to_owned(),
                    entry["message"]["reply_markup"].clone(),
                )
            })
            .collect()
    }

    /// Waits for the bot's `n`th message (1-based) to this chat.
    async fn nth_reply(&self, n: usize) -> (i64, String, Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let received = self.received().await;
            if received.len() >= n {
                return received[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "chat {} got {} messages, waited for {n}: {received:?}",
                self.chat_id,
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a message from the bot starting with `prefix`.
    async fn waits_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let received = self.received().await;
            if let Some((_, text, _)) = received.iter().find(|(_, t, _)| t.starts_with(prefix)) {
                return text.clone();
            }
            assert!(
                Instant::now() < deadline,
                "chat {} never got {prefix:?}: {received:?}",
                self.chat_id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the bot's message `message_id` reads `wanted`.
    async fn edited(&self, message_id: i64, wanted: &str) -> String {
        self.edited_until(message_id, wanted, |text| text.contains(wanted))
            .await
    }

    /// Waits until the bot's message `message_id` passes `check`.
    async fn edited_until(
        &self,
        message_id: i64,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let received = self.received().await;
            if let Some((_, text, _)) = received.iter().find(|(id, _, _)| *id == message_id)
                && check(text)
            {
                return text.clone();
            }
            assert!(
                Instant::now() < deadline,
                "message {message_id} never read {what:?}: {received:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Chat `chat_id` on the stand-in at `port` links to the user of `token`
/// (Ada) with a one-time code: the chat and the code it used.
async fn link(
    users: &mut users_pb::users_client::UsersClient<Channel>,
    port: u16,
    chat_id: i64,
    token: &str,
) -> (TgUser, String) {
    let chat = TgUser { port, chat_id };
    let code = users
        .create_link_code(with_bearer(users_pb::CreateLinkCodeRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .code;
    chat.says(&format!("/link {code}")).await;
    let (_, text, _) = chat.nth_reply(1).await;
    assert!(text.starts_with("Linked to Ada"), "{text}");
    (chat, code)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The command of `munity dev` on `data`, with `extra` appended to its
/// config.
fn munity_dev(data: &Path, extra: &str) -> Command {
    let config = data.join("munity.toml");
    std::fs::write(
        &config,
        format!("[users]\nadmin_emails = [\"{ADMIN_EMAIL}\"]\n{extra}"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_munity"));
    command
        .arg("--config")
        .arg(&config)
        .args(["dev", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    command
}

/// `munity dev` with `extra` appended to its config.
async fn start_munity(data: &Path, extra: &str) -> (Ready, Channel) {
    let mut command = munity_dev(data, extra);
    command.env("MUNITY_DEV__ANY_PORT", "true");
    let ready = spawn_ready(command, Duration::from_secs(60)).await;
    let channel = Channel::from_shared(format!("http://{}", ready.address("gateway")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (ready, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_chat_lists_votes_hears_reminders_and_is_refused_what_is_not_its_users() {
    let Some(stand_in) = start_stand_in().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();

    // First start: the bot is off; an admin makes its service account.
    let (ready, gateway) = start_munity(data.path(), "").await;
    let mut users = users_pb::users_client::UsersClient::new(gateway.clone());
    let status = munity_proto::bot::v1::bot_client::BotClient::new(gateway.clone());
    let (admin, _) = register_as(&gateway, "Admin", ADMIN_EMAIL).await;
    let off = status
        .clone()
        .get_status(with_bearer(
            munity_proto::bot::v1::GetStatusRequest {},
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!off.enabled);
    assert!(off.hint.contains("bot.telegram_token"), "{}", off.hint);
    let account = users
        .create_service_account(with_bearer(
            users_pb::CreateServiceAccountRequest {
                name: "telegram".to_owned(),
                scopes: vec!["bot.link".to_owned(), "bot.act".to_owned()],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    drop(ready);

    // Second start: the bot on, pointed at the stand-in.
    let bot_section = format!(
        "[events]\nreminders_before_secs = [150]\n[bot]\ntelegram_token = \"{BOT_TOKEN}\"\ntelegram_api_url = \"http://127.0.0.1:{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
        stand_in.proxy_port,
        account.account.as_ref().unwrap().id,
        account.client_secret
    );
    let (_ready, gateway) = start_munity(data.path(), &bot_section).await;
    let mut users = users_pb::users_client::UsersClient::new(gateway.clone());
    let mut events = events_pb::events_client::EventsClient::new(gateway.clone());

    let (ada, _) = register(&gateway, "Ada").await;
    let (bob, _) = register(&gateway, "Bob").await;
    let community = users
        .create_community(with_bearer(
            users_pb::CreateCommunityRequest {
                name: "Rustaceans Lisbon".to_owned(),
                description: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    // Its first time starts in 3 minutes: with `events.reminders_before_secs
    // = [150]` its reminder falls due 30 s from now, after voting closes.
    let mut request = munity_testkit::meeting_request("Tuesday hack night");
    request.options[0].start = Some(munity_testkit::in_secs(180));
    request.options[0].end = Some(munity_testkit::in_secs(3600));
    request.voting_deadline = Some(munity_testkit::in_secs(120));
    let meeting = events
        .create_event(with_bearer(request, &ada))
        .await
        .unwrap()
        .into_inner();
    // Bob's meeting in Bob's own community, which Ada cannot see.
    let bobs_community = users
        .create_community(with_bearer(
            users_pb::CreateCommunityRequest {
                name: "Bob's club".to_owned(),
                description: String::new(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    let bobs_meeting = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut request = munity_testkit::meeting_request("Bob's private meeting");
            request.community_id = bobs_community.id.clone();
            // events-svc learns the membership from the event log.
            match events.create_event(with_bearer(request, &bob)).await {
                Ok(event) => break event.into_inner(),
                Err(status) if Instant::now() < deadline => {
                    let _ = status;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    };

    // An unlinked chat gets the linking help and nothing else.
    let stranger = TgUser {
        port: stand_in.port,
        chat_id: 9001,
    };
    stranger.says("/communities").await;
    let (_, text, _) = stranger.nth_reply(1).await;
    assert!(text.contains("not linked"), "{text}");
    assert!(!text.contains("Rustaceans"), "{text}");

    // Ada links her chat with a one-time code.
    let (chat, code) = link(&mut users, stand_in.port, 4242, &ada).await;
    // The code is used up: another chat cannot take it.
    stranger.says(&format!("/link {code}")).await;
    let (_, text, _) = stranger.nth_reply(2).await;
    assert!(text.contains("wrong, used or expired"), "{text}");

    chat.says("/communities").await;
    let (_, text, _) = chat.nth_reply(2).await;
    assert!(text.contains("Rustaceans Lisbon"), "{text}");
    assert!(text.contains(&community.id), "{text}");

    chat.says("/events").await;
    let (_, text, _) = chat.nth_reply(3).await;
    assert!(text.contains("Tuesday hack night"), "{text}");

    // The meeting with a button per time; a press votes and the message is
    // edited with the new count.
    chat.says(&format!("/event {}", meeting.id)).await;
    let (message_id, text, keyboard) = chat.nth_reply(4).await;
    assert!(text.contains("1. ") && text.contains(": 0 votes"), "{text}");
    let first = &keyboard["inline_keyboard"][0][0];
    assert_eq!(
        first["callback_data"].as_str().unwrap(),
        format!("v:{}:0", meeting.id)
    );
    chat.presses(message_id, &format!("v:{}:0", meeting.id))
        .await;
    let text = chat.edited(message_id, "1 votes (yours)").await;
    assert!(text.contains("Tuesday hack night"), "{text}");
    let counted = events
        .get_event(with_bearer(
            events_pb::GetEventRequest {
                event_id: meeting.id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.options[0].votes, 1);
    // Pressed again: the vote is withdrawn.
    chat.presses(message_id, &format!("v:{}:0", meeting.id))
        .await;
    let text = chat
        .edited_until(message_id, "no vote of mine", |text| {
            !text.contains("(yours)")
        })
        .await;
    assert!(!text.contains(": 1 votes"), "{text}");

    // A forged press naming Bob's meeting: events-svc refuses Ada's token
    // (she cannot see it), so nothing is counted and nothing edited.
    chat.presses(message_id, &format!("v:{}:0", bobs_meeting.id))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = events
        .get_event(with_bearer(
            events_pb::GetEventRequest {
                event_id: bobs_meeting.id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(untouched.options[0].votes, 0);
    let received = chat.received().await;
    assert!(
        received
            .iter()
            .all(|(_, text, _)| !text.contains("Bob's private meeting")),
        "{received:?}"
    );

    // Join by command; Telegram answers the reply with a 429 first (the
    // proxy): it goes out after `retry_after`, once.
    post(
        stand_in.proxy_port,
        "/inject429?count=1&retry_after=2",
        &json!({}),
    )
    .await;
    let asked = Instant::now();
    chat.says(&format!("/join {}", meeting.id)).await;
    let (_, text, _) = chat.nth_reply(5).await;
    assert_eq!(text, "You are in.");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let rejected = post(stand_in.proxy_port, "/rejected", &json!({})).await;
    assert_eq!(rejected["result"], 1);

    // Pushes: Ada closes the voting; the chat hears that, and then the
    // reminder (150 s before the start).
    events
        .close_voting(with_bearer(
            events_pb::CloseVotingRequest {
                event_id: meeting.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap();
    let closed = chat.waits_for("Voting closed").await;
    assert_eq!(
        chat.received()
            .await
            .iter()
            .filter(|(_, text, _)| text == "You are in.")
            .count(),
        1
    );
    assert!(closed.contains(&meeting.id), "{closed}");
    let reminder = chat.waits_for("Reminder:").await;
    assert!(reminder.contains(&meeting.id), "{reminder}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = chat.received().await;
    assert_eq!(
        received
            .iter()
            .filter(|(_, text, _)| text.starts_with("Reminder:"))
            .count(),
        1,
        "{received:?}"
    );

    // Unlinked from the account side: the chat sees no Munity data.
    users
        .unlink(with_bearer(users_pb::UnlinkRequest { chat_id: 0 }, &ada))
        .await
        .unwrap();
    chat.says("/communities").await;
    let (_, text, _) = chat.nth_reply(received.len() + 1).await;
    assert!(text.contains("not linked"), "{text}");
}

/// `bot-svc` as its own process beside `munity dev` (whose bot is off),
/// with its store in `dir`, warnings appended to `log`.
fn bot_command(
    dir: &Path,
    log: &Path,
    munity: &Ready,
    listen: u16,
    api_port: u16,
    account: (&str, &str),
) -> Command {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let url = |section: &str| format!("http://{}", munity.address(section));
    let mut command = Command::new(munity_testkit::workspace_bin("bot-svc"));
    command
        .env("MUNITY_BOT__LISTEN", format!("127.0.0.1:{listen}"))
        .env("MUNITY_BOT__STORAGE__PATH", dir.join("store"))
        // Its own (empty) event log: `munity dev`'s embedded one has one
        // opener; revocations are not what this test is about.
        .env("MUNITY_BUS__PATH", dir.join("bus"))
        .env("MUNITY_AUTH__JWKS_URL", url("users"))
        .env("MUNITY_BOT__USERS_URL", url("users"))
        .env("MUNITY_BOT__EVENTS_URL", url("events"))
        .env("MUNITY_BOT__NOTIFY_URL", url("notify"))
        .env("MUNITY_BOT__TELEGRAM_TOKEN", BOT_TOKEN)
        .env(
            "MUNITY_BOT__TELEGRAM_API_URL",
            format!("http://127.0.0.1:{api_port}"),
        )
        .env("MUNITY_BOT__CLIENT_ID", account.0)
        .env("MUNITY_BOT__CLIENT_SECRET", account.1)
        // Slow enough that the kill lands mid-batch, and one chat may take
        // them all (the stand-in has no per-chat limit).
        .env("MUNITY_BOT__MESSAGES_PER_SEC", "10")
        .env("MUNITY_BOT__CHAT_INTERVAL_MS", "0")
        .env("RUST_LOG", "warn")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    command
}

/// The meeting ids of the reminders among `received`, in arrival order.
fn reminders(received: &[(i64, String, Value)]) -> Vec<String> {
    received
        .iter()
        .filter(|(_, text, _)| text.starts_with("Reminder:"))
        .filter_map(|(_, text, _)| {
            let (_, tail) = text.rsplit_once("/event ")?;
            Some(tail.trim_end_matches(')').to_owned())
        })
        .collect()
}

/// Warnings of sends begun before a crash and not repeated.
fn dropped_in_flight(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("is not sent again (at most once)"))
        .count()
}

/// 50 reminders for a linked user are being sent when the real bot-svc
/// process is SIGKILLed; restarted, it sends the rest. Counted at the
/// stand-in: none twice, and every one there but at most the one whose
/// send had begun at the kill (which the bot drops and says so: Telegram
/// cannot be asked whether it got it, so the bot keeps to at most once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_arrive_once_across_a_sigkill_of_bot_svc() {
    const MEETINGS: usize = 50;
    let Some(stand_in) = start_stand_in().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let bot_dir = tempfile::tempdir().unwrap();
    let log = bot_dir.path().join("bot-svc.log");
    // Reminders 80 s before the start; the meetings start 100 s after they
    // are made and voting is closed at once: all 50 fall due together
    // about 20 s in.
    let (ready, gateway) =
        start_munity(data.path(), "[events]\nreminders_before_secs = [80]\n").await;
    let mut users = users_pb::users_client::UsersClient::new(gateway.clone());
    let (admin, _) = register_as(&gateway, "Admin", ADMIN_EMAIL).await;
    let account = users
        .create_service_account(with_bearer(
            users_pb::CreateServiceAccountRequest {
                name: "telegram".to_owned(),
                scopes: vec!["bot.link".to_owned(), "bot.act".to_owned()],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let account_id = account.account.as_ref().unwrap().id.clone();
    let bot_port = free_port();
    let start_bot = || {
        spawn_ready(
            bot_command(
                bot_dir.path(),
                &log,
                &ready,
                bot_port,
                stand_in.port,
                (&account_id, &account.client_secret),
            ),
            Duration::from_secs(60),
        )
    };
    let mut bot = start_bot().await;

    let (ada, _) = register(&gateway, "Ada").await;
    let (chat, _) = link(&mut users, stand_in.port, 5151, &ada).await;

    // Straight to events-svc: the gateway's CreateEvent quota is not what
    // this test is about.
    let events_channel = Channel::from_shared(format!("http://{}", ready.address("events")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut events = events_pb::events_client::EventsClient::new(events_channel);
    // The bot follows Ada's topic from when it first subscribes (it rescans
    // the links every 2 s); until then her notifications are not its to
    // send. Probe meetings (starting in hours: no reminder within this
    // test) are closed until the chat hears of one.
    let deadline = Instant::now() + Duration::from_secs(60);
    'probe: loop {
        let probe = events
            .create_event(with_bearer(munity_testkit::meeting_request("probe"), &ada))
            .await
            .unwrap()
            .into_inner();
        events
            .close_voting(with_bearer(
                events_pb::CloseVotingRequest {
                    event_id: probe.id.clone(),
                },
                &ada,
            ))
            .await
            .unwrap();
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(3) {
            let heard =
                chat.received().await.iter().any(|(_, text, _)| {
                    text.starts_with("Voting closed") && text.contains(&probe.id)
                });
            if heard {
                break 'probe;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(Instant::now() < deadline, "the bot never followed Ada");
    }
    let now = unix_now();
    let mut ids = Vec::new();
    for i in 0..MEETINGS {
        let mut request = munity_testkit::meeting_request(&format!("Meeting {i}"));
        request.options.truncate(1);
        request.options[0].start = Some(munity_testkit::in_secs(100));
        request.options[0].end = Some(munity_testkit::in_secs(3600));
        request.voting_deadline = Some(munity_testkit::in_secs(95));
        let meeting = events
            .create_event(with_bearer(request, &ada))
            .await
            .unwrap()
            .into_inner();
        events
            .close_voting(with_bearer(
                events_pb::CloseVotingRequest {
                    event_id: meeting.id.clone(),
                },
                &ada,
            ))
            .await
            .unwrap();
        ids.push(meeting.id);
    }
    println!(
        "{MEETINGS} meetings made and closed in {} s",
        unix_now() - now
    );

    // Mid-batch: some reminders are at the stand-in, not all. SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(120);
    let before_kill = loop {
        let got = reminders(&chat.received().await).len();
        if got >= 10 {
            break got;
        }
        assert!(Instant::now() < deadline, "reminders never came: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    bot.process.child_mut().kill().unwrap();
    bot.process.child_mut().wait().unwrap();
    let at_kill = reminders(&chat.received().await).len();
    println!("SIGKILLed with {before_kill} reminders seen ({at_kill} once it was dead)");
    assert!(at_kill < MEETINGS, "the kill came after the whole batch");

    // Restarted on the same store: the rest go out, until its queue is
    // empty.
    let _bot = start_bot().await;
    let mut status = munity_proto::bot::v1::bot_client::BotClient::connect(format!(
        "http://127.0.0.1:{bot_port}"
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (got, dropped) = loop {
        let got = reminders(&chat.received().await);
        let mut distinct = got.clone();
        distinct.sort();
        distinct.dedup();
        let dropped = dropped_in_flight(&log);
        let queued = status
            .get_status(with_bearer(
                munity_proto::bot::v1::GetStatusRequest {},
                &ada,
            ))
            .await
            .unwrap()
            .into_inner()
            .queued_messages;
        if distinct.len() + dropped >= MEETINGS && queued == 0 {
            // Read again: the last one sent before the queue was seen
            // empty is there now.
            break (reminders(&chat.received().await), dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {MEETINGS} reminders, {dropped} dropped in flight, {queued} queued",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for id in &got {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    println!(
        "{} reminders received for {MEETINGS} meetings: {} doubled, {} missing, {dropped} dropped in flight at the kill",
        got.len(),
        doubled.len(),
        missing.len(),
    );
    assert!(doubled.is_empty(), "sent twice: {doubled:?}");
    assert!(dropped <= 1, "one send at a time: {dropped}");
    assert!(missing.len() <= dropped, "lost: {missing:?}");
    assert!(counts.keys().all(|id| ids.iter().any(|m| m == id)));
}

/// `munity dev` with `bot.telegram_token` set and no service account
/// configured makes the bot's account on its first start, keeps it (the
/// secret in a file only its owner reads), and uses it again after a
/// restart: linking a chat (which takes the bot's own token) works both
/// times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn munity_dev_provisions_the_bots_service_account() {
    let Some(stand_in) = start_stand_in().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let bot_section = format!(
        "[bot]\ntelegram_token = \"{BOT_TOKEN}\"\ntelegram_api_url = \"http://127.0.0.1:{}\"\n",
        stand_in.port
    );
    for (round, chat_id) in [(1, 6161), (2, 6262)] {
        let (ready, gateway) = start_munity(data.path(), &bot_section).await;
        let file = data.path().join(munity::BOT_ACCOUNT_FILE);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        let mut users = users_pb::users_client::UsersClient::new(gateway.clone());
        let (ada, _) = register(&gateway, &format!("Ada{round}")).await;
        let chat = TgUser {
            port: stand_in.port,
            chat_id,
        };
        let code = users
            .create_link_code(with_bearer(users_pb::CreateLinkCodeRequest {}, &ada))
            .await
            .unwrap()
            .into_inner()
            .code;
        chat.says(&format!("/link {code}")).await;
        let (_, text, _) = chat.nth_reply(1).await;
        assert!(
            text.starts_with(&format!("Linked to Ada{round}")),
            "round {round}: {text}"
        );
        drop(ready);
    }
}

/// POSTs `body` to `path` on the gateway at `port` (HTTP/1.1, as Telegram
/// posts webhooks) with `headers`; the answer's status and JSON.
async fn post_http(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(port, &request).await
}

/// Sends only the head of a POST whose `Content-Length` says `length`
/// bytes follow, and reads the answer (given before any of them is sent).
async fn post_http_declaring(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    length: usize,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // The answer, up to the end of its JSON body (the connection may stay
    // open, waiting for the body it was promised).
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && (serde_json::from_str::<Value>(body).is_ok()
                    || serde_json::from_str::<Value>(&dechunk(body)).is_ok())
            {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer before the body was sent");
    parse_answer(&String::from_utf8_lossy(&answer))
}

/// `munity dev` with `extra` appended to its config and the gateway on
/// `gateway_port` (a webhook URL names it before the start), every other
/// listener on any free port.
async fn start_munity_on(data: &Path, extra: &str, gateway_port: u16) -> Ready {
    let mut command = munity_dev(data, extra);
    command
        .env(
            "MUNITY_GATEWAY__LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        )
        .env("MUNITY_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0");
    for section in ["USERS", "EVENTS", "NOTIFY", "WAREHOUSE", "DISCUSS", "BOT"] {
        command.env(format!("MUNITY_{section}__LISTEN"), "127.0.0.1:0");
    }
    spawn_ready(command, Duration::from_secs(60)).await
}

/// The webhooks the stand-in has set, by bot token.
async fn webhooks(stand_in: &StandIn) -> Value {
    let request = "GET /webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    exchange(stand_in.proxy_port, request).await.1["result"].clone()
}

/// Webhook mode end to end: with `bot.webhook_url` set the bot calls
/// setWebhook with its secret, and the stand-in posts each update to the
/// URL (through server.js's relay, which adds the secret header as
/// Telegram does) — the real gateway's `POST /v1/telegram/webhook`, routed
/// to the real bot-svc, handled as polled updates are: a chat links, lists
/// its communities and votes with a button. Posts straight to the gateway
/// with no secret, a wrong one or a prefix of it get 401 and do nothing;
/// malformed, too deep or too large bodies get 400 (413 when the declared
/// length alone is too large, before anything is read); an update posted
/// again, or several times at once, is handled once. Restarted without the
/// URL, the bot deletes the webhook and polls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_hears_telegram_by_webhook_through_the_gateway() {
    const SECRET: &str = "munity-webhook_secret-1";
    let Some(stand_in) = start_stand_in().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let gateway_port = free_port();
    let webhook_url = format!("http://127.0.0.1:{gateway_port}/v1/telegram/webhook");
    let polling = format!(
        "[bot]\ntelegram_token = \"{BOT_TOKEN}\"\ntelegram_api_url = \"http://127.0.0.1:{}\"\n",
        stand_in.proxy_port
    );
    let hooked =
        format!("{polling}webhook_url = \"{webhook_url}\"\nwebhook_secret = \"{SECRET}\"\n");

    let ready = start_munity_on(data.path(), &hooked, gateway_port).await;
    let gateway = Channel::from_shared(format!("http://127.0.0.1:{gateway_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // setWebhook was called with the URL and the secret.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hooks = webhooks(&stand_in).await;
        if hooks[BOT_TOKEN]["url"] == json!(webhook_url) {
            assert_eq!(hooks[BOT_TOKEN]["has_secret"], json!(true), "{hooks}");
            break;
        }
        assert!(Instant::now() < deadline, "no webhook set: {hooks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut users = users_pb::users_client::UsersClient::new(gateway.clone());
    let mut events = events_pb::events_client::EventsClient::new(gateway.clone());
    let (ada, _) = register(&gateway, "Ada").await;
    let community = users
        .create_community(with_bearer(
            users_pb::CreateCommunityRequest {
                name: "Webhook walkers".to_owned(),
                description: String::new(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    // The stand-in posts the `/link` to the webhook (it keeps nothing for
    // getUpdates while one is set).
    let (chat, _) = link(&mut users, stand_in.port, 7171, &ada).await;
    chat.says("/communities").await;
    let (_, text, _) = chat.nth_reply(2).await;
    assert!(text.contains("Webhook walkers"), "{text}");

    // A button press arrives by webhook too: the vote is counted and the
    // message edited.
    let meeting = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut request = munity_testkit::meeting_request("Webhook hike");
            request.community_id = community.id.clone();
            // events-svc learns the membership from the event log.
            match events.create_event(with_bearer(request, &ada)).await {
                Ok(event) => break event.into_inner(),
                Err(status) if Instant::now() < deadline => {
                    let _ = status;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    };
    chat.says(&format!("/event {}", meeting.id)).await;
    let (message_id, text, _) = chat.nth_reply(3).await;
    assert!(
        text.contains("Webhook hike") && text.contains(": 0 votes"),
        "{text}"
    );
    chat.presses(message_id, &format!("v:{}:0", meeting.id))
        .await;
    chat.edited(message_id, "1 votes (yours)").await;
    let counted = events
        .get_event(with_bearer(
            events_pb::GetEventRequest {
                event_id: meeting.id.clone(),
            },
            &ada,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.options[0].votes, 1);

    // Straight to the gateway, as a stranger would: an update from a chat
    // of its own choosing. Without the secret, or with a wrong one: 401,
    // and the bot does nothing (no reply to that chat).
    let forged = json!({
        "update_id": 900_000_001u64,
        "message": {
            "message_id": 1,
            "date": unix_now(),
            "chat": {"id": 7272, "type": "private", "first_name": "Mallory"},
            "from": {"id": 7272, "is_bot": false, "first_name": "Mallory"},
            "text": "/help",
        },
    })
    .to_string();
    let path = "/v1/telegram/webhook";
    let (status, body) = post_http(gateway_port, path, &[], &forged).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post_http(
        gateway_port,
        path,
        &[("X-Telegram-Bot-Api-Secret-Token", "munity-webhook_secret-2")],
        &forged,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], json!(16), "{body}");
    // A prefix of the secret is no better.
    let (status, body) = post_http(
        gateway_port,
        path,
        &[(
            "X-Telegram-Bot-Api-Secret-Token",
            &SECRET[..SECRET.len() - 1],
        )],
        &forged,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("x-telegram-bot-api-secret-token"),
        "{body}"
    );
    // With the secret but not an update (no update_id): 400.
    let secret = [("X-Telegram-Bot-Api-Secret-Token", SECRET)];
    let (status, body) = post_http(
        gateway_port,
        path,
        &secret,
        r#"{"message": {"text": "/help"}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], json!(3), "{body}");
    for malformed in [
        "[1, 2",
        "[1, 2]",
        "\"update\"",
        "",
        "{\"update_id\": 1e400}",
    ] {
        let (status, body) = post_http(gateway_port, path, &secret, malformed).await;
        assert_eq!(status, 400, "{malformed}: {body}");
        assert_eq!(body["code"], json!(3), "{malformed}: {body}");
    }
    // Nested past what the gateway reads: 400, nothing breaks.
    let deep = format!(
        "{{\"update_id\": 900000002, \"message\": {}1{}}}",
        "{\"a\": ".repeat(200),
        "}".repeat(200)
    );
    let (status, body) = post_http(gateway_port, path, &secret, &deep).await;
    assert_eq!(status, 400, "{body}");
    // Larger than the gateway takes: refused from the declared length
    // alone, before any of it is read (413, INVALID_ARGUMENT).
    let (status, body) = post_http_declaring(gateway_port, path, &secret, 2 << 20).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], json!(3), "{body}");
    // Within the gateway's bound but over bot-svc's own (256 KiB): 400
    // (tonic's OUT_OF_RANGE for an oversized message).
    let big = json!({
        "update_id": 900_000_003u64,
        "message": {
            "message_id": 2, "date": unix_now(),
            "chat": {"id": 7272, "type": "private", "first_name": "Mallory"},
            "text": "x".repeat(300 * 1024),
        },
    })
    .to_string();
    let (status, body) = post_http(gateway_port, path, &secret, &big).await;
    assert_eq!(status, 400, "{body}");
    // The same update with the secret is heard: the chat gets the help.
    let (status, body) = post_http(gateway_port, path, &secret, &forged).await;
    assert_eq!(status, 200, "{body}");
    let mallory = TgUser {
        port: stand_in.port,
        chat_id: 7272,
    };
    let (_, text, _) = mallory.nth_reply(1).await;
    assert!(text.contains("not linked"), "{text}");
    // Posted again (Telegram redelivers when it missed the answer), even
    // several times at once: handled once.
    let again = (0..4).map(|_| post_http(gateway_port, path, &secret, &forged));
    for (status, body) in futures::future::join_all(again).await {
        assert_eq!(status, 200, "{body}");
    }
    // The next update is heard, once, however often it is posted at once.
    let next = forged.replace("900000001", "900000004");
    let next = (0..4).map(|_| post_http(gateway_port, path, &secret, &next));
    for (status, body) in futures::future::join_all(next).await {
        assert_eq!(status, 200, "{body}");
    }
    mallory.nth_reply(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mallory.received().await.len(), 2);
    drop(ready);

    // Without the URL: the webhook is deleted and the bot polls.
    let _ready = start_munity_on(data.path(), &polling, gateway_port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while webhooks(&stand_in).await.get(BOT_TOKEN).is_some() {
        assert!(Instant::now() < deadline, "the webhook was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chat.says("/communities").await;
    let (_, text, _) = chat.nth_reply(4).await;
    assert!(text.contains("Webhook walkers"), "{text}");
}

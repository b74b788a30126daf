//! `[bot]`: bot-svc's own keys. The shared keys (`listen`,
//! `shutdown_grace_secs`, `storage`) are the platform's.

use serde::{Deserialize, Serialize};

/// Unknown keys are refused by the platform (which sees the whole section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BotConfig {
    /// The bot's token from @BotFather. Empty: the bot is off (bot-svc
    /// serves only its status).
    pub telegram_token: String,
    /// The Bot API's base URL (a stand-in in tests).
    pub telegram_api_url: String,
    /// The bot's service account at users-svc (scopes `bot.link` and
    /// `bot.act`): its client id and secret.
    pub client_id: String,
    pub client_secret: String,
    /// Where users-svc, events-svc and notify-svc answer (`munity dev`
    /// sets them).
    pub users_url: String,
    pub events_url: String,
    pub notify_url: String,
    /// The public HTTPS URL Telegram posts updates to (it must reach the
    /// gateway's `POST /v1/telegram/webhook`). Empty: long polling (and
    /// any webhook set before is deleted).
    pub webhook_url: String,
    /// Sent by Telegram with every posted update
    /// (`X-Telegram-Bot-Api-Secret-Token`); required with `webhook_url`:
    /// 1-256 characters of `A-Z a-z 0-9 _ -`.
    pub webhook_secret: String,
    /// Long-polling timeout of each `getUpdates`, in seconds (below the
    /// HTTP client's own 17 s).
    pub poll_timeout_secs: u32,
    /// Messages sent per second, all chats together (Telegram's limit is
    /// about 30).
    pub messages_per_sec: u32,
    /// At least this long between two messages to one chat, in ms
    /// (Telegram's limit is about one a second).
    pub chat_interval_ms: u64,
    /// The outgoing queue holds at most this many messages; pushes beyond
    /// it wait for room (a slow Telegram does not grow the store without
    /// bound).
    pub queue_capacity: u64,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            telegram_token: String::new(),
            telegram_api_url: "https://api.telegram.org".to_owned(),
            client_id: String::new(),
            client_secret: String::new(),
            users_url: "http://127.0.0.1:50051".to_owned(),
            events_url: "http://127.0.0.1:50052".to_owned(),
            notify_url: "http://127.0.0.1:50053".to_owned(),
            webhook_url: String::new(),
            webhook_secret: String::new(),
            poll_timeout_secs: 10,
            messages_per_sec: 30,
            chat_interval_ms: 1000,
            queue_capacity: 100_000,
        }
    }
}

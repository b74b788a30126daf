//! Telegram's webhook, the option beside long polling: with
//! `bot.webhook_url` set the bot calls setWebhook (with
//! `bot.webhook_secret`) at start, and the Bot API POSTs every update to
//! that public URL, which reaches the gateway's `POST /v1/telegram/webhook`
//! (bound in `bot.proto` to `Bot/ReceiveUpdate`, so the gateway routes,
//! bounds and rate-limits it like any HTTP/JSON call; the body arrives as a
//! `google.protobuf.Struct`). Without it the bot polls, and calls
//! deleteWebhook first: Telegram refuses getUpdates while a webhook is set.
//!
//! Who is heard: only a caller that sends the secret in
//! `X-Telegram-Bot-Api-Secret-Token` (Telegram does, once setWebhook was
//! given it); anyone else could otherwise post updates as any chat. The
//! compare is constant-time. A webhook without a secret is refused at
//! start.
//!
//! Same handling as polling (`Chat::on_update`), one update at a time and
//! in order: setWebhook asks for one connection, and a lock keeps it so if
//! two arrive anyway. The stored update offset (shared with polling) skips
//! a redelivery: Telegram posts an update again when it did not see the
//! answer, and a vote press handled twice would undo itself.

use std::{sync::Arc, time::Duration};

use munity_platform::shutdown::ShutdownToken;
use prost_types::value::Kind;
use serde_json::Value as Json;
use subtle::ConstantTimeEq;
use teloxide::{RequestError, prelude::*, types::Update};
use tokio::sync::Mutex;
use tonic::{Status, metadata::MetadataMap};

use crate::{chat::Chat, config::BotConfig};

/// The header Telegram sends the secret in (as gRPC metadata, lower case).
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// An update id this far below the stored offset is not a redelivery but
/// Telegram's sequence started again (it picks a new random start after a
/// week without updates): handled.
const REDELIVERY_WINDOW: i64 = 100_000;

/// What ReceiveUpdate needs when the bot runs by webhook.
pub struct Webhook {
    pub chat: Arc<Chat>,
    pub secret: String,
    /// One update at a time, in order, with its offset bookkeeping.
    turn: Mutex<()>,
}

/// A webhook's keys, checked at start: the URL parses, and the secret is
/// what Telegram accepts (1-256 of `A-Z a-z 0-9 _ -`).
pub fn check_config(config: &BotConfig) -> anyhow::Result<Option<url::Url>> {
    if config.webhook_url.is_empty() {
        return Ok(None);
    }
    let url: url::Url = config
        .webhook_url
        .parse()
        .map_err(|e| anyhow::anyhow!("bot.webhook_url {:?}: {e}", config.webhook_url))?;
    let secret = &config.webhook_secret;
    anyhow::ensure!(
        !secret.is_empty(),
        "bot.webhook_url is set but bot.webhook_secret is empty: without a secret anyone could post updates as any chat"
    );
    anyhow::ensure!(
        secret.len() <= 256
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "bot.webhook_secret must be 1 to 256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)"
    );
    Ok(Some(url))
}

impl Webhook {
    pub fn new(chat: Arc<Chat>, secret: String) -> Self {
        Webhook {
            chat,
            secret,
            turn: Mutex::new(()),
        }
    }

    /// UNAUTHENTICATED unless the caller sent the secret.
    pub fn check_secret(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let sent = metadata
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(sent.ct_eq(self.secret.as_bytes())) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "missing or wrong {SECRET_HEADER}"
            )))
        }
    }

    /// Handles one posted update.
    pub async fn receive(&self, update: Option<prost_types::Struct>) -> Result<(), Status> {
        let json = Json::Object(struct_to_json(update.unwrap_or_default()));
        let update: Update = serde_json::from_value(json)
            .map_err(|e| Status::invalid_argument(format!("not a Telegram update: {e}")))?;
        let id = i64::from(update.id.0);
        let _turn = self.turn.lock().await;
        let store = &self.chat.store;
        let offset = store.update_offset().await.map_err(Status::from)?;
        if id < offset && offset - id <= REDELIVERY_WINDOW {
            tracing::debug!(update = id, offset, "an update handled before; skipped");
            return Ok(());
        }
        if let Err(error) = self.chat.on_update(update).await {
            // As when polling: told in the log, not retried (Telegram would
            // post it again and again).
            tracing::warn!(%error, update = id, "update not handled");
        }
        store
            .set_update_offset(id + 1)
            .await
            .map_err(Status::from)?;
        Ok(())
    }
}

/// A Struct as the JSON it was read from. JSON numbers arrive as f64
/// (protobuf's `Value`): whole ones become integers again, since Telegram's
/// ids are integers (and below 2^53, which Telegram promises).
pub fn struct_to_json(value: prost_types::Struct) -> serde_json::Map<String, Json> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, value_to_json(value)))
        .collect()
}

fn value_to_json(value: prost_types::Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Json::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.into_iter().map(value_to_json).collect())
        }
    }
}

/// Asks Telegram to post updates to `url` with the secret, until it agrees
/// (it may not be reachable at start).
pub async fn set(bot: &Bot, url: url::Url, secret: &str, shutdown: &ShutdownToken) {
    loop {
        let asked = bot
            .set_webhook(url.clone())
            .secret_token(secret.to_owned())
            // One update at a time, in order, as polling has them.
            .max_connections(1)
            .await;
        match asked {
            Ok(_) => return,
            // HTTP 200 with an answer that did not parse (stand-ins answer
            // `null`): taken.
            Err(RequestError::InvalidJson { .. }) => return,
            Err(error) => tracing::warn!(%error, "setWebhook failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Back to polling: Telegram refuses getUpdates while a webhook is set, so
/// it is deleted first (a no-op when there is none).
pub async fn delete(bot: &Bot, shutdown: &ShutdownToken) {
    loop {
        match bot.delete_webhook().await {
            Ok(_) | Err(RequestError::InvalidJson { .. }) => return,
            Err(error) => tracing::warn!(%error, "deleteWebhook failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

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
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use teloxide::{
    RequestError,
    prelude::*,
    types::{Update, UpdateKind},
};
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
    secret: Secret,
    /// One update at a time, in order, with its offset bookkeeping.
    turn: Mutex<()>,
}

/// `bot.webhook_secret`, as its SHA-256.
pub struct Secret([u8; 32]);

impl Secret {
    pub fn new(secret: &str) -> Self {
        Secret(Sha256::digest(secret.as_bytes()).into())
    }

    /// UNAUTHENTICATED unless `metadata` holds the secret in
    /// [`SECRET_HEADER`]. What was sent is hashed too and the digests
    /// compared in constant time, so neither how much of a guess matched
    /// nor the secret's length shows in the time taken.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let sent = metadata
            .get(SECRET_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let sent: [u8; 32] = Sha256::digest(sent).into();
        if bool::from(sent.ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "missing or wrong {SECRET_HEADER}"
            )))
        }
    }
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
            secret: Secret::new(&secret),
            turn: Mutex::new(()),
        }
    }

    /// UNAUTHENTICATED unless the caller sent the secret.
    pub fn check_secret(&self, metadata: &MetadataMap) -> Result<(), Status> {
        self.secret.check(metadata)
    }

    /// Handles one posted update.
    pub async fn receive(&self, update: Option<prost_types::Struct>) -> Result<(), Status> {
        let json = Json::Object(struct_to_json(update.unwrap_or_default()));
        let update = parse_update(json)
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
        // Handled: answered 200 even if the offset cannot be stored, as an
        // error would make Telegram post it again (and a press handled twice
        // undoes itself). The next stored offset covers it.
        if let Err(error) = store.set_update_offset(id + 1).await {
            tracing::warn!(%error, update = id, "cannot store the update offset");
        }
        Ok(())
    }
}

/// The `Update` a posted JSON object holds, read exactly as teloxide reads
/// a polled one: from text, and with what it could not read kept in
/// `UpdateKind::Error`.
///
/// Not `serde_json::from_value`: teloxide's `UpdateKind` (a flattened
/// field) asks for its key as a borrowed `&str` and, when that fails, asks
/// again for an owned `String`, but the first ask has already consumed the
/// key, so the second reads past it. A `Value`'s keys are owned strings and
/// cannot be borrowed, so every update read that way came out as
/// `UpdateKind::Error({})` and was dropped as "not for the bot". Keys read
/// from text borrow from it, as getUpdates' answers do.
pub fn parse_update(json: Json) -> Result<Update, serde_json::Error> {
    let mut update: Update = serde_json::from_str(&json.to_string())?;
    // What teloxide does for getUpdates too: an update it cannot read comes
    // with an empty `Error`; the raw update is put in, so the lenient
    // callback reading (and the log) sees it.
    if let UpdateKind::Error(raw) = &mut update.kind {
        *raw = json;
    }
    Ok(update)
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

#[cfg(test)]
mod tests {
    use prost_types::{ListValue, Struct, Value};
    use serde_json::json;

    use super::*;

    /// What the gateway makes of a JSON body (proto3 JSON into a Struct:
    /// every number an f64).
    fn to_struct(json: Json) -> Struct {
        fn value(json: Json) -> Value {
            let kind = match json {
                Json::Null => Kind::NullValue(0),
                Json::Bool(b) => Kind::BoolValue(b),
                Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                Json::String(s) => Kind::StringValue(s),
                Json::Array(list) => Kind::ListValue(ListValue {
                    values: list.into_iter().map(value).collect(),
                }),
                Json::Object(map) => Kind::StructValue(Struct {
                    fields: map.into_iter().map(|(k, v)| (k, value(v))).collect(),
                }),
            };
            Value { kind: Some(kind) }
        }
        match value(json).kind {
            Some(Kind::StructValue(s)) => s,
            _ => panic!("an object"),
        }
    }

    fn posted(json: Json) -> Result<Update, serde_json::Error> {
        parse_update(Json::Object(struct_to_json(to_struct(json))))
    }

    #[test]
    fn a_posted_message_reads_as_a_message() {
        // As telegram-test-api posts it (extra fields included), in a
        // group whose id needs more than 32 bits.
        let update = posted(json!({
            "update_id": 41,
            "message": {
                "botToken": "123456:t",
                "message_id": 7,
                "date": 1_796_550_815,
                "chat": {"id": -1_001_234_567_890i64, "type": "supergroup", "title": "Walkers"},
                "from": {"id": 7171, "is_bot": false, "first_name": "Tester"},
                "text": "/link ART9VXSE",
            },
        }))
        .unwrap();
        assert_eq!(update.id.0, 41);
        let UpdateKind::Message(message) = update.kind else {
            panic!("not a message: {update:?}");
        };
        assert_eq!(message.chat.id.0, -1_001_234_567_890);
        assert_eq!(message.text(), Some("/link ART9VXSE"));
    }

    #[test]
    fn a_posted_button_press_reads_as_a_callback_query() {
        let update = posted(json!({
            "update_id": 42,
            "callback_query": {
                "id": "5",
                "chat_instance": "-42",
                "from": {"id": 7171, "is_bot": false, "first_name": "Tester"},
                "message": {
                    "message_id": 9, "date": 1_796_550_815,
                    "chat": {"id": 7171, "type": "private", "first_name": "Tester"},
                    "text": "a meeting",
                },
                "data": "v:x:1",
            },
        }))
        .unwrap();
        let UpdateKind::CallbackQuery(query) = update.kind else {
            panic!("not a callback query: {update:?}");
        };
        assert_eq!(query.data.as_deref(), Some("v:x:1"));
    }

    #[test]
    fn what_teloxide_cannot_read_is_kept_whole() {
        // Stand-ins leave out `chat_instance`: teloxide cannot read the
        // press, and the raw update is kept for the lenient reading.
        let raw = json!({
            "update_id": 43,
            "callback_query": {
                "id": "6",
                "from": {"id": 7171, "is_bot": false, "first_name": "Tester"},
                "data": "v:x:1",
            },
        });
        let update = posted(raw.clone()).unwrap();
        assert_eq!(update.id.0, 43);
        assert_eq!(update.kind, UpdateKind::Error(raw));
    }

    #[test]
    fn numbers_keep_their_kind() {
        let json = Json::Object(struct_to_json(to_struct(json!({
            "i": 9_007_199_254_740_991i64, "n": -5, "f": 4.5, "big": 1e300, "l": [1, 2.5],
        }))));
        assert_eq!(
            json,
            json!({"i": 9_007_199_254_740_991i64, "n": -5, "f": 4.5, "big": 1e300, "l": [1, 2.5]})
        );
    }

    #[test]
    fn only_the_secret_is_heard() {
        let secret = Secret::new("munity-webhook_secret-1");
        let sent = |value: Option<&str>| {
            let mut metadata = MetadataMap::new();
            if let Some(value) = value {
                metadata.insert(SECRET_HEADER, value.parse().unwrap());
            }
            secret.check(&metadata).map_err(|status| status.code())
        };
        assert_eq!(sent(Some("munity-webhook_secret-1")), Ok(()));
        let refused = Err(tonic::Code::Unauthenticated);
        assert_eq!(sent(None), refused);
        assert_eq!(sent(Some("")), refused);
        assert_eq!(sent(Some("munity-webhook_secret-2")), refused);
        assert_eq!(sent(Some("munity-webhook_secret-")), refused);
        assert_eq!(sent(Some("munity-webhook_secret-11")), refused);
    }

    #[test]
    fn not_an_update_is_an_error() {
        assert!(posted(json!({"message": {"text": "/help"}})).is_err());
        assert!(posted(json!({"update_id": "one", "message": {}})).is_err());
        assert!(posted(json!({"update_id": 5_000_000_000i64})).is_err());
        assert!(posted(json!({"update_id": -1})).is_err());
        assert!(posted(json!({"update_id": 1.5})).is_err());
    }
}

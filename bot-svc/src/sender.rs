//! The durable outgoing queue's sender: messages leave in queue order per
//! chat, at most `messages_per_sec` in all and one per `chat_interval_ms`
//! per chat (Telegram's documented limits), and a 429 stops sending for
//! its `retry_after` before the same message is tried again. A message is
//! removed from the queue only once Telegram accepted it, so a crash sends
//! it again at worst (never loses it).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use munity_platform::shutdown::ShutdownToken;
use teloxide::{RequestError, prelude::*};

use crate::{chat::keyboard, config::BotConfig, store::BotStore};

const BATCH: usize = 200;
const IDLE: Duration = Duration::from_millis(50);

pub async fn run(bot: Bot, store: Arc<dyn BotStore>, config: BotConfig, shutdown: ShutdownToken) {
    let spacing = Duration::from_secs(1) / config.messages_per_sec.max(1);
    let chat_interval = Duration::from_millis(config.chat_interval_ms);
    let mut next_send = Instant::now();
    let mut chat_free_at: HashMap<i64, Instant> = HashMap::new();
    while !shutdown.is_cancelled() {
        let batch = match store.pending(BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "cannot read the outgoing queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut sent_any = false;
        // A chat whose earlier message waits keeps its later ones waiting.
        let mut held: HashSet<i64> = HashSet::new();
        for queued in batch {
            let chat = queued.message.chat_id;
            if held.contains(&chat) {
                continue;
            }
            let now = Instant::now();
            if chat_free_at.get(&chat).is_some_and(|at| *at > now) {
                held.insert(chat);
                continue;
            }
            if next_send > now {
                tokio::time::sleep(next_send - now).await;
            }
            let mut request = bot.send_message(ChatId(chat), queued.message.text.clone());
            if !queued.message.buttons.is_empty() {
                request = request.reply_markup(keyboard(&queued.message.buttons));
            }
            let sent = request.await;
            next_send = Instant::now() + spacing;
            match sent {
                Ok(_) => {
                    chat_free_at.insert(chat, Instant::now() + chat_interval);
                    if let Err(error) = store.ack(queued.seq).await {
                        tracing::warn!(%error, "cannot remove a sent message from the queue");
                    }
                    sent_any = true;
                }
                Err(RequestError::RetryAfter(wait)) => {
                    tracing::info!(secs = wait.seconds(), "Telegram asks to wait (429)");
                    tokio::time::sleep(wait.duration()).await;
                    held.insert(chat);
                    break;
                }
                Err(RequestError::InvalidJson { source, .. }) => {
                    // Telegram took it (HTTP 200) but the answer did not
                    // parse: sending again would show it twice.
                    tracing::warn!(%source, chat, "Telegram's answer to a sent message did not parse");
                    let _ = store.ack(queued.seq).await;
                    sent_any = true;
                }
                Err(RequestError::Api(error)) => {
                    // The chat is gone or blocked the bot: this message can
                    // never go, and must not hold the queue.
                    tracing::warn!(%error, chat, "Telegram refused a message; dropped");
                    let _ = store.ack(queued.seq).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reach Telegram; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
        chat_free_at.retain(|_, at| *at > Instant::now());
        if !sent_any {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(IDLE) => {}
            }
        }
    }
}

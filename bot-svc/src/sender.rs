//! The durable outgoing queue's sender: messages leave in queue order per
//! chat, at most `messages_per_sec` in all and one per `chat_interval_ms`
//! per chat (Telegram's documented limits), and a 429 stops sending for
//! its `retry_after` before the same message is tried again.
//!
//! At most once, and what a crash can cost: Telegram's sendMessage has no
//! idempotency key and no way to ask what was sent, so a process killed
//! after Telegram took a message but before the queue entry was removed
//! cannot tell whether it went. Removing after the send (as this did
//! first) made that boundary at-least-once: the message went again after a
//! restart. Now the intent is written first: the entry is marked
//! (`BotStore::begin_send`) before the request leaves, and an entry found
//! marked after a restart is dropped with a warning, not sent again. So
//! each notification reaches a chat at most once; the one cost is the
//! message that was in flight at the crash (at most one: sends are one at
//! a time), lost if the request had not reached Telegram yet. A send that
//! surely did not reach Telegram (a 429, no connection made) takes the
//! mark off and is tried again; one whose fate is unknown (the connection
//! broke mid-request) is treated like a crash.

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
            // The rate counts from when each send begins: counted from when
            // it ended, every send's own time (two store writes and the
            // request) came on top of the spacing, and fewer than
            // `messages_per_sec` went out.
            let began = Instant::now();
            if queued.attempted {
                // Begun before a crash, fate unknown: at most once.
                tracing::warn!(
                    seq = queued.seq,
                    chat,
                    "a message whose send was begun before a restart is not sent again (at most once); Telegram may not have got it"
                );
                let _ = store.ack(queued.seq).await;
                continue;
            }
            if let Err(error) = store.begin_send(queued.seq).await {
                tracing::warn!(%error, "cannot mark a message as being sent; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                break;
            }
            let mut request = bot.send_message(ChatId(chat), queued.message.text.clone());
            if !queued.message.buttons.is_empty() {
                request = request.reply_markup(keyboard(&queued.message.buttons));
            }
            let sent = request.await;
            next_send = began + spacing;
            match sent {
                Ok(_) => {
                    chat_free_at.insert(chat, Instant::now() + chat_interval);
                    if let Err(error) = store.ack(queued.seq).await {
                        // Marked: a later pass drops it (never twice).
                        tracing::warn!(%error, "cannot remove a sent message from the queue");
                    }
                    sent_any = true;
                }
                Err(RequestError::RetryAfter(wait)) => {
                    tracing::info!(secs = wait.seconds(), "Telegram asks to wait (429)");
                    let _ = store.abandon_send(queued.seq).await;
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
                Err(RequestError::Network(error)) if error.is_connect() => {
                    // No connection: Telegram surely did not get it.
                    tracing::warn!(%error, "cannot reach Telegram; retrying");
                    let _ = store.abandon_send(queued.seq).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
                Err(error) => {
                    // Broken mid-request: it may have gone. At most once.
                    tracing::warn!(%error, seq = queued.seq, chat, "a send failed mid-way; not sent again (at most once)");
                    let _ = store.ack(queued.seq).await;
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

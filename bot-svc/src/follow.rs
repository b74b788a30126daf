//! Pushes: the bot follows each linked user's `user:<id>` topic on
//! notify-svc with a token exchanged for that user, and queues each
//! notification for the user's chats.
//!
//! At most once per chat: the queue entry is written with a sent-log entry
//! keyed by the notification's domain-event id (`BotStore::enqueue`), so a
//! notification seen again after a restart is not queued again. None lost:
//! the position (epoch, offset) is stored only after the notification is
//! queued, and the stream resumes after it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use munity_platform::{auth::with_bearer, shutdown::ShutdownToken};
use munity_proto::{events::v1 as events_pb, notify::v1 as notify_pb};
use prost::Message;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    chat::when,
    munity::Munity,
    store::{BotStore, Outgoing, Position},
};

/// How often the set of followed users is compared with the links.
const RESCAN: Duration = Duration::from_secs(2);

/// A notification as a line in a chat.
pub fn describe(n: &notify_pb::Notification) -> String {
    let Some(payload) = &n.payload else {
        return n.kind.clone();
    };
    let bytes = payload.value.as_slice();
    match n.kind.as_str() {
        "munity.events.v1.ReminderDue" => match events_pb::ReminderDue::decode(bytes) {
            Ok(r) => format!(
                "Reminder: your meeting starts at {} (/event {})",
                when(&r.start),
                r.event_id
            ),
            Err(_) => n.kind.clone(),
        },
        "munity.events.v1.VotingClosed" => match events_pb::VotingClosed::decode(bytes) {
            Ok(v) => format!(
                "Voting closed: the meeting is at {} (/event {})",
                when(&v.start),
                v.event_id
            ),
            Err(_) => n.kind.clone(),
        },
        "munity.events.v1.EventCancelled" => match events_pb::EventCancelled::decode(bytes) {
            Ok(c) => format!("A meeting was cancelled (/event {})", c.event_id),
            Err(_) => n.kind.clone(),
        },
        "munity.events.v1.EventCreated" => match events_pb::EventCreated::decode(bytes) {
            Ok(e) => {
                let event = e.event.unwrap_or_default();
                format!("New meeting: {} (/event {})", event.title, event.id)
            }
            Err(_) => n.kind.clone(),
        },
        "munity.events.v1.ParticipantJoined" => match events_pb::ParticipantJoined::decode(bytes) {
            Ok(j) => format!("Someone joined your meeting (/event {})", j.event_id),
            Err(_) => n.kind.clone(),
        },
        other => other.rsplit('.').next().unwrap_or(other).to_owned(),
    }
}

/// Keeps one follower per linked user until `shutdown`.
pub async fn supervise(
    munity: Arc<Munity>,
    store: Arc<dyn BotStore>,
    queue_capacity: u64,
    shutdown: ShutdownToken,
) {
    let mut followers: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
    loop {
        match store.list_links().await {
            Ok(links) => {
                let mut chats: HashMap<Uuid, Vec<i64>> = HashMap::new();
                for (chat, user) in links {
                    chats.entry(user).or_default().push(chat);
                }
                followers.retain(|user, task| chats.contains_key(user) && !task.is_finished());
                for (user, _) in chats {
                    followers.entry(user).or_insert_with(|| {
                        tokio::spawn(follow(
                            munity.clone(),
                            store.clone(),
                            user,
                            queue_capacity,
                            shutdown.clone(),
                        ))
                    });
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the links"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
    for (_, task) in followers {
        task.abort();
    }
}

/// The chats linked to `user`.
async fn chats_of(store: &dyn BotStore, user: Uuid) -> Vec<i64> {
    store
        .list_links()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, u)| *u == user)
        .map(|(chat, _)| chat)
        .collect()
}

async fn follow(
    munity: Arc<Munity>,
    store: Arc<dyn BotStore>,
    user: Uuid,
    queue_capacity: u64,
    shutdown: ShutdownToken,
) {
    let topic = format!("user:{user}");
    loop {
        let chats = chats_of(store.as_ref(), user).await;
        let Some(&chat) = chats.first() else {
            return;
        };
        let result = follow_once(&munity, store.as_ref(), user, chat, &topic, queue_capacity).await;
        match result {
            Ok(false) => {
                // Unlinked from the account side.
                let _ = store.remove_link(chat).await;
            }
            Ok(true) => {}
            Err(error) => tracing::debug!(%error, %user, "following ended; resuming"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One Subscribe stream; `Ok(false)` when the chat is no longer linked.
async fn follow_once(
    munity: &Munity,
    store: &dyn BotStore,
    user: Uuid,
    chat: i64,
    topic: &str,
    queue_capacity: u64,
) -> anyhow::Result<bool> {
    let Some(token) = munity.user_token(chat).await? else {
        return Ok(false);
    };
    let position = store.position(user).await?;
    let request = match &position {
        Some(p) => notify_pb::SubscribeRequest {
            topics: Vec::new(),
            resume: vec![notify_pb::TopicPosition {
                topic: topic.to_owned(),
                epoch: p.epoch.clone(),
                offset: p.offset,
            }],
        },
        None => notify_pb::SubscribeRequest {
            topics: vec![topic.to_owned()],
            resume: Vec::new(),
        },
    };
    let mut stream = munity
        .notify
        .clone()
        .subscribe(with_bearer(request, &token.token))
        .await?
        .into_inner();
    let mut started = position.is_some();
    while let Some(answer) = stream.message().await? {
        use notify_pb::subscribe_response::Message as M;
        match answer.message {
            Some(M::Subscribed(subscribed)) if !started => {
                // First follow: from now on (what came before linking is in
                // the inbox).
                if let Some(p) = subscribed.positions.iter().find(|p| p.topic == topic) {
                    store
                        .set_position(
                            user,
                            &Position {
                                epoch: p.epoch.clone(),
                                offset: p.offset,
                            },
                        )
                        .await?;
                }
                started = true;
            }
            Some(M::Notification(n)) => {
                let text = describe(&n);
                let dedup = if n.event_id.is_empty() {
                    format!("{}:{}:{}", n.topic, n.epoch, n.offset)
                } else {
                    n.event_id.clone()
                };
                // Bounded queue: a slow Telegram makes following wait, not
                // the store grow.
                while store.queue_len().await? >= queue_capacity {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                for chat in chats_of(store, user).await {
                    store
                        .enqueue(
                            &Outgoing {
                                chat_id: chat,
                                text: text.clone(),
                                buttons: Vec::new(),
                            },
                            Some(&dedup),
                        )
                        .await?;
                }
                store
                    .set_position(
                        user,
                        &Position {
                            epoch: n.epoch.clone(),
                            offset: n.offset,
                        },
                    )
                    .await?;
            }
            Some(M::Resync(resync)) => {
                if let Some(p) = resync.position {
                    store
                        .set_position(
                            user,
                            &Position {
                                epoch: p.epoch,
                                offset: p.offset,
                            },
                        )
                        .await?;
                }
            }
            _ => {}
        }
    }
    Ok(true)
}

//! Pushes: the bot follows each linked user's `user:<id>` topic on
//! notify-svc, with a token exchanged for that user (so notify-svc decides
//! what the user may follow), and queues each notification for the user's
//! chats. notify-svc publishes there everything a person is told: the
//! reminders, closes and cancellations of meetings they made, joined or
//! voted in, new meetings in their communities, and joins to their
//! meetings. (Before it did, the bot also followed the `event:` topics of
//! the meetings a user made or joined; that is gone: one stream a user.)
//!
//! At most once per chat: the queue entry is written with a sent-log entry
//! keyed by the notification's domain-event id (`BotStore::enqueue`), so a
//! notification seen again after a restart is not queued again. None lost:
//! the position (epoch, offset) is stored only after the notification is
//! queued, and the stream resumes after it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

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

/// A notification as a line in `user`'s chat; `None` for what a chat is
/// not told (votes, updates, its own joins: they would drown the
/// reminders).
pub fn push_text(n: &notify_pb::Notification, user: &str) -> Option<String> {
    let bytes = n.payload.as_ref()?.value.as_slice();
    match n.kind.as_str() {
        "munity.events.v1.ParticipantJoined" => {
            let j = events_pb::ParticipantJoined::decode(bytes).ok()?;
            (j.owner_id == user && j.user_id != user).then(|| describe(n))
        }
        "munity.events.v1.ReminderDue"
        | "munity.events.v1.VotingClosed"
        | "munity.events.v1.EventCancelled"
        | "munity.events.v1.EventCreated" => Some(describe(n)),
        _ => None,
    }
}

/// A notification as a line (the inbox lists every kind).
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

/// Users whose stream is open right now (GetStatus' `following_users`;
/// a benchmark waits on it before it makes notifications).
#[derive(Debug, Default)]
pub struct Following(AtomicU64);

impl Following {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one open stream while it lives.
struct Open<'a>(&'a Following);

impl<'a> Open<'a> {
    fn new(following: &'a Following) -> Self {
        following.0.fetch_add(1, Ordering::Relaxed);
        Open(following)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps one follower per linked user until `shutdown`.
pub async fn supervise(
    munity: Arc<Munity>,
    store: Arc<dyn BotStore>,
    queue_capacity: u64,
    following: Arc<Following>,
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
                            following.clone(),
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

async fn follow(
    munity: Arc<Munity>,
    store: Arc<dyn BotStore>,
    user: Uuid,
    queue_capacity: u64,
    following: Arc<Following>,
    shutdown: ShutdownToken,
) {
    loop {
        let chats = store.chats_of(user).await.unwrap_or_default();
        let Some(&chat) = chats.first() else {
            return;
        };
        let result = follow_once(
            &munity,
            store.as_ref(),
            user,
            chat,
            queue_capacity,
            &following,
        )
        .await;
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

/// One Subscribe stream; `Ok(false)` when the chat is no longer linked,
/// `Ok(true)` when the stream ended.
async fn follow_once(
    munity: &Munity,
    store: &dyn BotStore,
    user: Uuid,
    chat: i64,
    queue_capacity: u64,
    following: &Following,
) -> anyhow::Result<bool> {
    let Some(token) = munity.user_token(chat).await? else {
        return Ok(false);
    };
    let topics = [format!("user:{user}")];
    let mut request = notify_pb::SubscribeRequest::default();
    let mut unplaced = Vec::new();
    for topic in &topics {
        match store.position(user, topic).await? {
            Some(p) => request.resume.push(notify_pb::TopicPosition {
                topic: topic.clone(),
                epoch: p.epoch,
                offset: p.offset,
            }),
            None => {
                request.topics.push(topic.clone());
                unplaced.push(topic.clone());
            }
        }
    }
    let mut stream = munity
        .notify
        .clone()
        .subscribe(with_bearer(request, &token.token))
        .await?
        .into_inner();
    let mut open = None;
    loop {
        let Some(answer) = stream.message().await? else {
            return Ok(true);
        };
        use notify_pb::subscribe_response::Message as M;
        match answer.message {
            Some(M::Subscribed(subscribed)) => {
                open.get_or_insert_with(|| Open::new(following));
                // A topic followed for the first time: from now on (what
                // came before is in the inbox).
                for p in subscribed.positions {
                    if unplaced.contains(&p.topic) {
                        store
                            .set_position(
                                user,
                                &p.topic,
                                &Position {
                                    epoch: p.epoch.clone(),
                                    offset: p.offset,
                                },
                            )
                            .await?;
                    }
                }
                unplaced.clear();
            }
            Some(M::Notification(n)) => {
                let text = push_text(&n, &user.to_string());
                let dedup = if n.event_id.is_empty() {
                    format!("{}:{}:{}", n.topic, n.epoch, n.offset)
                } else {
                    // The domain event's id: one event is one message, also
                    // for positions kept from when the bot followed
                    // `event:` topics too.
                    n.event_id.clone()
                };
                // Bounded queue: a slow Telegram makes following wait, not
                // the store grow.
                while store.queue_len().await? >= queue_capacity {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let chats = match text {
                    Some(_) => store.chats_of(user).await?,
                    None => Vec::new(),
                };
                let text = text.unwrap_or_default();
                for chat in chats {
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
                        &n.topic,
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
                            &p.topic,
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
}

//! The `munity.notify.v1.Notify` gRPC service: Subscribe, Publish (service
//! callers) and the caller's inbox.
//!
//! A stream, once its topics are allowed (`access.rs`), is a follower,
//! run by the task that writes the response, that listens to its topics'
//! live notifications *before* reading each topic's
//! position, then for each topic delivers in offset order: what the client
//! missed (from history), then live ones. A live notification past the next
//! offset (one lost on the way, or a lagging receiver) sends the stream to
//! history for the gap; one at or below the last delivered is a duplicate
//! and skipped. So nothing is skipped or repeated, however live and
//! history interleave.
//!
//! Bounds: topics per stream and streams per user. Nothing is buffered per
//! stream: the follower makes its next message only once the client has
//! taken the last one (HTTP/2 flow control says when), so a slow reader
//! falls behind its topic's bounded live buffer, shared by the topic's
//! streams, and then catches up from history at its own pace.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use munity_platform::{auth::caller, error::FieldViolations, wire::timestamp};
use munity_proto::notify::v1::{self as pb, notify_server::Notify};
use munity_store::now_millis;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    access::Access,
    config::NotifyConfig,
    error::NotifyError,
    hub::{Heard, Hub, LiveFeed, Notification, Position, Recovery, to_proto, valid_topic},
    inbox::{self, ItemKey},
    publish::Publisher,
};

pub struct NotifyApi {
    /// The hub and the inbox.
    publisher: Publisher,
    access: Access,
    config: Arc<NotifyConfig>,
    /// Open streams per user.
    streams: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl NotifyApi {
    pub fn new(publisher: Publisher, access: Access, config: NotifyConfig) -> Self {
        NotifyApi {
            publisher,
            access,
            config: Arc::new(config),
            streams: Arc::default(),
        }
    }
}

/// One of a user's open streams; given back when dropped.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<Uuid, usize>>>,
    user: Uuid,
}

impl StreamSlot {
    fn take(
        streams: &Arc<Mutex<HashMap<Uuid, usize>>>,
        user: Uuid,
        max: usize,
    ) -> Result<Self, Status> {
        let mut open = streams.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(user).or_insert(0);
        if *count >= max {
            return Err(Status::resource_exhausted(format!(
                "at most {max} streams per user are open at once; close one first"
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: streams.clone(),
            user,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// The response stream. It is the follower itself, run by the task that
/// writes the response (no task and channel of its own between them): a
/// notification wakes that task once, and the follower's next message is
/// handed straight to it.
///
/// The follower runs only while the stream is read and nothing it made is
/// waiting to be taken ([`Drained`]), so nothing piles up per stream: a
/// client that stops reading falls behind its topics' bounded live
/// buffers, and once it reads again its stream catches up from history at its pace.
pub struct Outbound {
    /// None once the follower is done.
    follower: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    shared: Arc<Mutex<Produced>>,
}

/// What the follower made and the client has not taken yet.
#[derive(Default)]
struct Produced {
    next: Option<pb::SubscribeResponse>,
    /// The status the stream ends with, if it ends with one.
    end: Option<Status>,
}

impl tokio_stream::Stream for Outbound {
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(message) = lock(&self.shared).next.take() {
            return Poll::Ready(Some(Ok(message)));
        }
        // The follower's last message is taken: it may make the next one.
        if let Some(follower) = self.follower.as_mut()
            && follower.as_mut().poll(cx).is_ready()
        {
            self.follower = None;
        }
        let mut shared = lock(&self.shared);
        if let Some(message) = shared.next.take() {
            // Polled again once this one is on its way.
            return Poll::Ready(Some(Ok(message)));
        }
        if self.follower.is_none() {
            // Its status once, then the end.
            return Poll::Ready(shared.end.take().map(Err));
        }
        Poll::Pending
    }
}

fn lock(shared: &Mutex<Produced>) -> std::sync::MutexGuard<'_, Produced> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ready once the client has taken the follower's last message.
///
/// Pending without a waker, and rightly: the follower is only polled by
/// [`Outbound::poll_next`], which takes the message first and, having
/// returned it, is polled again by the response's writer when the client
/// can take more.
struct Drained<'a>(&'a Mutex<Produced>);

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if lock(self.0).next.is_none() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The stream cannot go on (the server is stopping, or history failed).
struct Stop;

/// Follows a stream's topics while the client reads it.
struct Follower {
    hub: Arc<dyn Hub>,
    shared: Arc<Mutex<Produced>>,
    /// Per topic: where the client is (the last offset delivered).
    at: BTreeMap<String, Position>,
}

impl Follower {
    /// Hands `message` to the client, once it has taken the one before.
    async fn send(&self, message: pb::subscribe_response::Message) {
        Drained(&self.shared).await;
        lock(&self.shared).next = Some(pb::SubscribeResponse {
            message: Some(message),
        });
    }

    fn finish(&self, status: Status) {
        lock(&self.shared).end = Some(status);
    }

    fn unavailable(&self, error: impl std::fmt::Display) -> Stop {
        self.finish(Status::unavailable(format!(
            "notification history is unavailable ({error}); reconnect and resume"
        )));
        Stop
    }

    async fn deliver(&mut self, notification: &Notification) {
        self.send(pb::subscribe_response::Message::Notification(to_proto(
            notification,
        )))
        .await;
        self.delivered(notification);
    }

    fn delivered(&mut self, notification: &Notification) {
        if let Some(at) = self.at.get_mut(&notification.topic) {
            at.offset = notification.offset;
        }
    }

    /// Delivers what `topic` holds after the client's position (or says
    /// to resync, and moves it to now).
    async fn catch_up(&mut self, topic: &str) -> Result<(), Stop> {
        loop {
            let Some(at) = self.at.get(topic).cloned() else {
                return Ok(());
            };
            match self.hub.since(topic, &at, 100).await {
                Ok(Recovery::Missed(missed)) if missed.is_empty() => return Ok(()),
                Ok(Recovery::Missed(missed)) => {
                    for notification in &missed {
                        self.deliver(notification).await;
                    }
                }
                Ok(Recovery::Resync { now, reason }) => {
                    self.send(pb::subscribe_response::Message::Resync(
                        pb::ResyncRequired {
                            position: Some(pb::TopicPosition {
                                topic: topic.to_owned(),
                                epoch: now.epoch.clone(),
                                offset: now.offset,
                            }),
                            reason: reason.to_owned(),
                        },
                    ))
                    .await;
                    self.at.insert(topic.to_owned(), now);
                    return Ok(());
                }
                Err(error) => return Err(self.unavailable(error)),
            }
        }
    }

    async fn run(
        mut self,
        topics: BTreeMap<String, Option<Position>>,
        mut live: LiveFeed,
        heartbeat: Duration,
    ) -> Result<(), Stop> {
        // `live` was opened before these positions were read: nothing
        // published after them is missed.
        let mut positions = Vec::new();
        let mut resumed = Vec::new();
        for (topic, resume) in topics {
            let now = self
                .hub
                .position(&topic)
                .await
                .map_err(|e| self.unavailable(e))?;
            positions.push(pb::TopicPosition {
                topic: topic.clone(),
                epoch: now.epoch.clone(),
                offset: now.offset,
            });
            if resume.is_some() {
                resumed.push(topic.clone());
            }
            self.at.insert(topic, resume.unwrap_or(now));
        }
        self.send(pb::subscribe_response::Message::Subscribed(
            pb::Subscribed { positions },
        ))
        .await;
        for topic in resumed {
            self.catch_up(&topic).await?;
        }
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    self.send(pb::subscribe_response::Message::Heartbeat(pb::Heartbeat {
                        at: Some(timestamp(now_millis())),
                    }))
                    .await;
                }
                heard = live.next() => match heard {
                    Some(Heard::Notification(notification)) => {
                        let Some(at) = self.at.get(&notification.topic) else {
                            continue;
                        };
                        if notification.epoch == at.epoch && notification.offset <= at.offset {
                            continue; // delivered already
                        }
                        if notification.epoch == at.epoch && notification.offset == at.offset + 1 {
                            self.deliver(&notification).await;
                        } else {
                            // A gap, or another epoch: history decides.
                            let topic = notification.topic.clone();
                            self.catch_up(&topic).await?;
                        }
                    }
                    Some(Heard::Behind(topic)) => self.catch_up(&topic).await?,
                    None => {
                        self.finish(Status::unavailable("the server is stopping; reconnect and resume"));
                        return Err(Stop);
                    }
                }
            }
        }
    }
}

/// The raw access token of a request (to ask events-svc as the caller).
fn bearer<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("this method needs a bearer access token"))
}

#[tonic::async_trait]
impl Notify for NotifyApi {
    type SubscribeStream = Outbound;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Outbound>, Status> {
        let claims = caller(&request)?.clone();
        let token = bearer(&request)?;
        let message = request.into_inner();

        let mut violations = FieldViolations::new();
        let mut topics: BTreeMap<String, Option<Position>> = BTreeMap::new();
        for (i, topic) in message.topics.iter().enumerate() {
            if valid_topic(topic) {
                topics.entry(topic.clone()).or_insert(None);
            } else {
                violations.add(
                    format!("topics[{i}]"),
                    "must be user:<id>, event:<id> or community:<id>",
                );
            }
        }
        for (i, resume) in message.resume.iter().enumerate() {
            if valid_topic(&resume.topic) {
                topics.insert(
                    resume.topic.clone(),
                    Some(Position {
                        epoch: resume.epoch.clone(),
                        offset: resume.offset,
                    }),
                );
            } else {
                violations.add(
                    format!("resume[{i}].topic"),
                    "must be user:<id>, event:<id> or community:<id>",
                );
            }
        }
        let max = self.config.max_topics_per_stream;
        if topics.is_empty() || topics.len() > max {
            violations.add(
                "topics",
                format!("must name 1 to {max} topics (with resume)"),
            );
        }
        if !violations.is_empty() {
            return Err(NotifyError::from(violations).into());
        }
        for topic in topics.keys() {
            self.access.check(&claims, &token, topic).await?;
        }
        let slot = StreamSlot::take(&self.streams, claims.sub, self.config.max_streams_per_user)?;

        let live = self.publisher.hub.follow(topics.keys().cloned().collect());
        let shared = Arc::new(Mutex::new(Produced::default()));
        let follower = Follower {
            hub: self.publisher.hub.clone(),
            shared: shared.clone(),
            at: BTreeMap::new(),
        };
        let heartbeat = Duration::from_secs(self.config.heartbeat_secs.max(1));
        Ok(Response::new(Outbound {
            // The slot is given back when the response is dropped (the
            // stream ended, or the client went away).
            follower: Some(Box::pin(async move {
                let _slot = slot;
                let _ = follower.run(topics, live, heartbeat).await;
            })),
            shared,
        }))
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        // Who may publish (service tokens with scope `notify.publish`) is
        // declared in notify.proto and enforced by the platform's AuthLayer.
        caller(&request)?;
        let message = request.into_inner();
        let mut violations = FieldViolations::new();
        if !valid_topic(&message.topic) {
            violations.add(
                "topic",
                "must be kind:id (lower-case kind; id of letters, digits, -, _, .; at most 100 characters)",
            );
        }
        if !message.id.is_empty() && !inbox::valid_id(&message.id) {
            violations.add("id", "must be 1 to 64 letters, digits, -, _ or .");
        }
        let kind = match &message.payload {
            None => {
                violations.add("payload", "is required");
                String::new()
            }
            Some(any) => {
                if any.value.len() > MAX_PAYLOAD_BYTES {
                    violations.add(
                        "payload",
                        format!("must be at most {MAX_PAYLOAD_BYTES} bytes"),
                    );
                }
                match any.type_url.rsplit_once('/') {
                    Some((_, kind)) if valid_kind(kind) => kind.to_owned(),
                    _ => {
                        violations.add(
                            "payload.type_url",
                            "must end in /<message name>, e.g. type.googleapis.com/acme.v1.Ping",
                        );
                        String::new()
                    }
                }
            }
        };
        if !violations.is_empty() {
            return Err(NotifyError::from(violations).into());
        }
        let id = if message.id.is_empty() {
            Uuid::now_v7().to_string()
        } else {
            message.id
        };
        let payload = message.payload.map(|any| any.value).unwrap_or_default();
        let notification = self
            .publisher
            .publish(&message.topic, &id, &kind, &payload, now_millis())
            .await
            .map_err(NotifyError::from)?;
        Ok(Response::new(pb::PublishResponse {
            notification: Some(to_proto(&notification)),
        }))
    }

    async fn list_inbox(
        &self,
        request: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let user = caller(&request)?.sub;
        let message = request.into_inner();
        let mut violations = FieldViolations::new();
        if message.page_size > 100 {
            violations.add("page_size", "must be at most 100");
        }
        let before = if message.page_token.is_empty() {
            None
        } else {
            let key = ItemKey::decode(&message.page_token);
            if key.is_none() {
                violations.add("page_token", "is not a token ListInbox gave");
            }
            key
        };
        if !violations.is_empty() {
            return Err(NotifyError::from(violations).into());
        }
        let limit = munity_store::page_size(message.page_size, 20, 100);
        // One more than asked says whether there is a next page.
        let mut items = self
            .publisher
            .inbox
            .list(user, before.as_ref(), limit + 1, message.unread_only)
            .await
            .map_err(NotifyError::from)?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next_page_token = match items.last() {
            Some(last) if more => last.key.encode(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListInboxResponse {
            items: items
                .iter()
                .map(|item| pb::InboxItem {
                    id: item.key.encode(),
                    notification: Some(to_proto(&item.notification)),
                    read_at: item.read_at.map(timestamp),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::UnreadCountResponse>, Status> {
        let user = caller(&request)?.sub;
        let message = request.into_inner();
        let mut violations = FieldViolations::new();
        if message.ids.len() > 100 {
            violations.add("ids", "must be at most 100");
        }
        if message.ids.is_empty() && !message.all {
            violations.add("ids", "name items, or set all");
        }
        let mut keys = Vec::with_capacity(message.ids.len());
        for (i, id) in message.ids.iter().enumerate() {
            match ItemKey::decode(id) {
                Some(key) => keys.push(key),
                None => violations.add(format!("ids[{i}]"), "is not an id ListInbox gave"),
            }
        }
        if !violations.is_empty() {
            return Err(NotifyError::from(violations).into());
        }
        let now = now_millis();
        if message.all {
            self.publisher.inbox.mark_all_read(user, now).await
        } else {
            self.publisher.inbox.mark_read(user, &keys, now).await
        }
        .map_err(NotifyError::from)?;
        let unread = self
            .publisher
            .inbox
            .unread(user)
            .await
            .map_err(NotifyError::from)?;
        Ok(Response::new(pb::UnreadCountResponse { unread }))
    }

    async fn unread_count(
        &self,
        request: Request<pb::UnreadCountRequest>,
    ) -> Result<Response<pb::UnreadCountResponse>, Status> {
        let user = caller(&request)?.sub;
        let unread = self
            .publisher
            .inbox
            .unread(user)
            .await
            .map_err(NotifyError::from)?;
        Ok(Response::new(pb::UnreadCountResponse { unread }))
    }
}

/// The largest payload Publish takes.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// A message name: dotted identifiers, at most 200 characters.
fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 200
        && kind.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

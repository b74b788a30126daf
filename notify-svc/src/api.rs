//! The `munity.notify.v1.Notify` gRPC service: Subscribe, Publish (service
//! callers) and the caller's inbox.
//!
//! A stream, once its topics are allowed (`access.rs`), is one task that
//! listens to the hub's live notifications *before* reading each topic's
//! position, then for each topic delivers in offset order: what the client
//! missed (from history), then live ones. A live notification past the next
//! offset (one lost on the way, or a lagging receiver) sends the stream to
//! history for the gap; one at or below the last delivered is a duplicate
//! and skipped. So nothing is skipped or repeated, however live and
//! history interleave.
//!
//! Bounds: topics per stream, streams per user, and a buffer per stream; a
//! client that lets the buffer fill with live notifications is ended with
//! UNAVAILABLE and resumes from its last offsets (nothing grows without
//! bound for a slow reader). Catching up from history goes at the client's
//! pace instead, but a client that takes nothing for `notify.stall_secs`
//! is ended the same way.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use munity_platform::{auth::caller, error::FieldViolations, wire::timestamp};
use munity_proto::notify::v1::{self as pb, notify_server::Notify};
use munity_store::now_millis;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    access::Access,
    config::NotifyConfig,
    error::NotifyError,
    hub::{Hub, Live, Notification, Position, Recovery, to_proto, valid_topic},
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

/// The response stream: what the follower task sends, then the status it
/// ended with, if it ended with one.
pub struct Outbound {
    rx: mpsc::Receiver<pb::SubscribeResponse>,
    end: Arc<Mutex<Option<Status>>>,
    finished: bool,
}

impl tokio_stream::Stream for Outbound {
    type Item = Result<pb::SubscribeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(None) => {
                self.finished = true;
                let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                Poll::Ready(end.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The stream cannot go on (the client is gone, or too slow).
struct Stop;

/// Follows a stream's topics until the client goes away or falls behind.
struct Follower {
    hub: Arc<dyn Hub>,
    tx: mpsc::Sender<pb::SubscribeResponse>,
    end: Arc<Mutex<Option<Status>>>,
    /// Per topic: where the client is (the last offset delivered).
    at: BTreeMap<String, Position>,
    /// How long catching up waits for the client to take a message.
    stall: Duration,
}

impl Follower {
    fn send(&self, message: pb::subscribe_response::Message) -> Result<(), Stop> {
        let message = pb::SubscribeResponse {
            message: Some(message),
        };
        match self.tx.try_send(message) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.finish(Status::unavailable(
                    "notifications came faster than this stream was read; \
                     reconnect and resume from the last offsets seen",
                ));
                Err(Stop)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop),
        }
    }

    fn finish(&self, status: Status) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    fn unavailable(&self, error: impl std::fmt::Display) -> Stop {
        self.finish(Status::unavailable(format!(
            "notification history is unavailable ({error}); reconnect and resume"
        )));
        Stop
    }

    fn deliver(&mut self, notification: &Notification) -> Result<(), Stop> {
        self.send(pb::subscribe_response::Message::Notification(to_proto(
            notification,
        )))?;
        self.delivered(notification);
        Ok(())
    }

    /// Delivers from history at the client's pace: history waits, unlike
    /// live notifications (which pile up meanwhile only as far as the
    /// hub's bounded live buffer; past that this stream catches up again).
    async fn deliver_missed(&mut self, notification: &Notification) -> Result<(), Stop> {
        let message = pb::SubscribeResponse {
            message: Some(pb::subscribe_response::Message::Notification(to_proto(
                notification,
            ))),
        };
        match tokio::time::timeout(self.stall, self.tx.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Stop), // the client is gone
            Err(_) => {
                self.finish(Status::unavailable(
                    "this stream took nothing for too long while catching up; \
                     reconnect and resume from the last offsets seen",
                ));
                return Err(Stop);
            }
        }
        self.delivered(notification);
        Ok(())
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
                        self.deliver_missed(notification).await?;
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
                    ))?;
                    self.at.insert(topic.to_owned(), now);
                    return Ok(());
                }
                Err(error) => return Err(self.unavailable(error)),
            }
        }
    }

    async fn catch_up_all(&mut self) -> Result<(), Stop> {
        let topics: Vec<String> = self.at.keys().cloned().collect();
        for topic in topics {
            self.catch_up(&topic).await?;
        }
        Ok(())
    }

    async fn run(
        mut self,
        topics: BTreeMap<String, Option<Position>>,
        mut live: broadcast::Receiver<Live>,
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
        ))?;
        for topic in resumed {
            self.catch_up(&topic).await?;
        }
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            tokio::select! {
                () = self.tx.closed() => return Err(Stop),
                _ = beat.tick() => {
                    self.send(pb::subscribe_response::Message::Heartbeat(pb::Heartbeat {
                        at: Some(timestamp(now_millis())),
                    }))?;
                }
                heard = live.recv() => match heard {
                    Ok(Live::Notification(notification)) => {
                        let Some(at) = self.at.get(&notification.topic) else {
                            continue;
                        };
                        if notification.epoch == at.epoch && notification.offset <= at.offset {
                            continue; // delivered already
                        }
                        if notification.epoch == at.epoch && notification.offset == at.offset + 1 {
                            self.deliver(&notification)?;
                        } else {
                            // A gap, or another epoch: history decides.
                            let topic = notification.topic.clone();
                            self.catch_up(&topic).await?;
                        }
                    }
                    Ok(Live::CatchUp) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up_all().await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
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

        let live = self.publisher.hub.live();
        let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
        let end = Arc::new(Mutex::new(None));
        let follower = Follower {
            hub: self.publisher.hub.clone(),
            tx,
            end: end.clone(),
            at: BTreeMap::new(),
            stall: Duration::from_secs(self.config.stall_secs.max(1)),
        };
        let heartbeat = Duration::from_secs(self.config.heartbeat_secs.max(1));
        tokio::spawn(async move {
            let _slot = slot;
            let _ = follower.run(topics, live, heartbeat).await;
        });
        Ok(Response::new(Outbound {
            rx,
            end,
            finished: false,
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

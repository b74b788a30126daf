//! Live delivery by topic. Each followed topic has a broadcast channel of
//! its own, made when its first stream follows it and dropped with its
//! last: a notification wakes the streams that follow its topic and no
//! others. (One channel for every topic woke every open stream for every
//! notification, to be filtered by topic in the stream: with 10,000 users
//! each on their own `user:` topic, one notification cost 10,000 wake-ups.)
//!
//! A topic's channel buffers [`TOPIC_BUFFER`] notifications for its
//! slowest stream. A stream that falls further behind hears
//! [`Heard::Behind`] for that topic and reads the rest from history, so the
//! buffer bounds memory, not what a stream gets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::broadcast;
use tokio_stream::{
    StreamExt, StreamMap,
    wrappers::{BroadcastStream, errors::BroadcastStreamRecvError},
};

use super::Notification;

/// How many live notifications a topic buffers for its slowest stream
/// (about 3 KiB per followed topic).
pub const TOPIC_BUFFER: usize = 64;

/// What a topic's channel carries.
#[derive(Debug, Clone)]
enum Live {
    Notification(Arc<Notification>),
    /// Live delivery may have missed some (e.g. the connection to Redis
    /// was lost): every stream should read history after its last offsets.
    CatchUp,
}

/// What a stream hears ([`LiveFeed::next`]).
#[derive(Debug)]
pub enum Heard {
    Notification(Arc<Notification>),
    /// Live delivery of this topic may have missed some (the stream fell
    /// behind the topic's buffer, or the replica's live feed was cut):
    /// read its history.
    Behind(String),
}

/// The followed topics of one replica and their channels.
#[derive(Default)]
pub struct LiveTopics {
    channels: Mutex<HashMap<String, broadcast::Sender<Live>>>,
}

impl LiveTopics {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Live>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hears `topics` from now on.
    pub fn follow(self: &Arc<Self>, topics: impl IntoIterator<Item = String>) -> LiveFeed {
        let mut channels = self.lock();
        let mut streams = StreamMap::new();
        for topic in topics {
            let receiver = channels
                .entry(topic.clone())
                .or_insert_with(|| broadcast::channel(TOPIC_BUFFER).0)
                .subscribe();
            streams.insert(Arc::from(topic), BroadcastStream::new(receiver));
        }
        LiveFeed {
            topics: self.clone(),
            streams,
        }
    }

    /// Delivers `notification` to the streams following its topic, if any.
    pub fn send(&self, notification: Arc<Notification>) {
        // Sent outside the lock: waking a busy topic's streams takes a
        // while, and other topics' sends and follows need not wait for it.
        let channel = self.lock().get(&notification.topic).cloned();
        if let Some(channel) = channel {
            let _ = channel.send(Live::Notification(notification));
        }
    }

    /// Tells every stream to read history (live delivery may have missed
    /// some).
    pub fn catch_up(&self) {
        let channels: Vec<_> = self.lock().values().cloned().collect();
        for channel in channels {
            let _ = channel.send(Live::CatchUp);
        }
    }

    /// How many topics have a stream following them.
    #[cfg(test)]
    fn followed(&self) -> usize {
        self.lock().len()
    }

    /// Drops the channels of `topics` that no stream hears any more.
    fn forget_unheard(&self, topics: impl Iterator<Item = String>) {
        let mut channels = self.lock();
        for topic in topics {
            if channels
                .get(&topic)
                .is_some_and(|channel| channel.receiver_count() == 0)
            {
                channels.remove(&topic);
            }
        }
    }
}

/// One stream's followed topics.
pub struct LiveFeed {
    topics: Arc<LiveTopics>,
    /// Keyed by `Arc<str>`: `StreamMap` hands out a clone of the key with
    /// every item, which for a `String` was an allocation per delivery.
    streams: StreamMap<Arc<str>, BroadcastStream<Live>>,
}

impl LiveFeed {
    /// What the followed topics say next (their turns taken in rotation);
    /// `None` once the hub is gone (the server is stopping).
    pub async fn next(&mut self) -> Option<Heard> {
        let (topic, heard) = self.streams.next().await?;
        Some(match heard {
            Ok(Live::Notification(notification)) => Heard::Notification(notification),
            Ok(Live::CatchUp) | Err(BroadcastStreamRecvError::Lagged(_)) => {
                Heard::Behind(topic.to_string())
            }
        })
    }
}

impl Drop for LiveFeed {
    fn drop(&mut self) {
        let topics: Vec<String> = self.streams.keys().map(|topic| topic.to_string()).collect();
        // The receivers go first, so the counts below no longer hold them.
        self.streams.clear();
        self.topics.forget_unheard(topics.into_iter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(topic: &str, offset: u64) -> Arc<Notification> {
        Arc::new(Notification {
            topic: topic.to_owned(),
            epoch: "e".to_owned(),
            offset,
            at: 0,
            kind: "k".to_owned(),
            id: format!("id-{offset}"),
            payload: Vec::new(),
        })
    }

    async fn heard(feed: &mut LiveFeed) -> Heard {
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
            .await
            .expect("heard in time")
            .expect("not closed")
    }

    #[tokio::test]
    async fn a_stream_hears_its_topics_only_and_channels_go_with_their_last_stream() {
        let topics = Arc::new(LiveTopics::default());
        let mut a = topics.follow(["user:a".to_owned(), "event:x".to_owned()]);
        let mut b = topics.follow(["user:b".to_owned(), "event:x".to_owned()]);
        assert_eq!(topics.followed(), 3);

        topics.send(notification("user:b", 1));
        topics.send(notification("event:x", 1));
        topics.send(notification("user:nobody", 1));
        match heard(&mut a).await {
            Heard::Notification(n) => assert_eq!(n.topic, "event:x"),
            other => panic!("{other:?}"),
        }
        let mut on_b = Vec::new();
        for _ in 0..2 {
            match heard(&mut b).await {
                Heard::Notification(n) => on_b.push(n.topic.clone()),
                other => panic!("{other:?}"),
            }
        }
        on_b.sort();
        assert_eq!(on_b, ["event:x", "user:b"]);
        // Nothing else is waiting for `a` (user:b and user:nobody are not its).
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), a.next())
                .await
                .is_err()
        );

        // A catch-up reaches each stream once per topic it follows.
        topics.catch_up();
        let mut behind = Vec::new();
        for _ in 0..2 {
            match heard(&mut a).await {
                Heard::Behind(topic) => behind.push(topic),
                other => panic!("{other:?}"),
            }
        }
        behind.sort();
        assert_eq!(behind, ["event:x", "user:a"]);

        drop(b);
        assert_eq!(topics.followed(), 2, "user:b went with its last stream");
        drop(a);
        assert_eq!(topics.followed(), 0);
    }

    #[tokio::test]
    async fn a_stream_behind_its_topic_buffer_is_told_which_topic() {
        let topics = Arc::new(LiveTopics::default());
        let mut feed = topics.follow(["user:a".to_owned()]);
        for offset in 1..=(TOPIC_BUFFER as u64 + 10) {
            topics.send(notification("user:a", offset));
        }
        match heard(&mut feed).await {
            Heard::Behind(topic) => assert_eq!(topic, "user:a"),
            other => panic!("{other:?}"),
        }
        // Then the newest it still buffers.
        match heard(&mut feed).await {
            Heard::Notification(n) => assert_eq!(n.offset, 11),
            other => panic!("{other:?}"),
        }
    }
}

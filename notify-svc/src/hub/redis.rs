//! The Redis hub (scale-out): every replica shares one Redis.
//!
//! Per topic, in one hash slot (`munity:notify:{<topic>}:…`):
//! - `:m`, a hash: `e` the epoch, `o` the last offset;
//! - `:s`, a stream of the history, entry ids `<offset>-0`, trimmed to the
//!   retention size (`MAXLEN`);
//! - `:p:<id>`, the offset a source event was published at.
//!
//! All three expire after the retention TTL without publishes: the topic
//! then starts again with a new epoch, and old positions resync.
//!
//! A publish is one Lua script (idempotency check, offset, history, and
//! the live PUBLISH), so offsets are assigned in one place and every replica
//! agrees. A notification stored for an inbox first (`store_many`) is
//! published live by `announce`, after the script. Live delivery: every replica subscribes to one channel and
//! hands what arrives to its local streams of that topic. After a reconnect it
//! announces a catch-up, and streams read history after their last
//! offsets: a message missed while disconnected is found there.

use std::{sync::Arc, time::Duration};

use fred::{
    prelude::{ClientLike, Config, EventInterface, PubsubInterface},
    types::{ClusterHash, CustomCommand, Value},
};
use tokio::sync::broadcast;

use super::{
    Hub, HubError, HubResult, LiveFeed, LiveTopics, Notification, Position, Publication, Recovery,
    Retention, Stored, new_epoch,
};

const PUBLISH: &str = r#"
local function live(epoch, offset)
  return epoch .. '|' .. offset .. '|' .. ARGV[5] .. '|' .. ARGV[6]
    .. '|' .. ARGV[7] .. '|' .. ARGV[8] .. '|' .. ARGV[9]
end
local before = redis.call('GET', KEYS[3])
local epoch = redis.call('HGET', KEYS[1], 'e')
if before and epoch then
  local entry = redis.call('XRANGE', KEYS[2], before .. '-0', before .. '-0')
  if #entry > 0 then
    local fields = entry[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' then return {0, tonumber(before), epoch, fields[i + 1]} end
    end
  end
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], offset .. '-0',
  't', ARGV[5], 'k', ARGV[7], 'i', ARGV[8], 'p', ARGV[9])
redis.call('SET', KEYS[3], offset, 'EX', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[10] == '1' then
  redis.call('PUBLISH', ARGV[4], live(epoch, offset))
end
return {1, offset, epoch, ARGV[5]}
"#;

const POSITION: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'o'))}
"#;

pub struct RedisHub {
    client: fred::prelude::Client,
    prefix: String,
    channel: String,
    retention: Retention,
    timeout: Duration,
    live: Arc<LiveTopics>,
}

fn unavailable(error: impl std::fmt::Display) -> HubError {
    HubError::Unavailable(error.to_string())
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(|s| s.into_owned())
}

fn integer(value: &Value) -> Option<i64> {
    value.as_i64()
}

/// `epoch|offset|at|topic|kind|id|payload`: what the live channel carries.
fn live_message(n: &Notification) -> Vec<u8> {
    let mut message = format!(
        "{}|{}|{}|{}|{}|{}|",
        n.epoch, n.offset, n.at, n.topic, n.kind, n.id
    )
    .into_bytes();
    message.extend_from_slice(&n.payload);
    message
}

/// `epoch|offset|at|topic|kind|id|payload` (the script's PUBLISH).
fn parse_live(bytes: &[u8]) -> Option<Notification> {
    let mut parts = bytes.splitn(7, |&b| b == b'|');
    let mut next_text = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok().map(str::to_owned))
    };
    let epoch = next_text()?;
    let offset = next_text()?.parse().ok()?;
    let at = next_text()?.parse().ok()?;
    let topic = next_text()?;
    let kind = next_text()?;
    let id = next_text()?;
    let payload = parts.next()?.to_vec();
    Some(Notification {
        topic,
        epoch,
        offset,
        at,
        kind,
        id,
        payload,
    })
}

impl RedisHub {
    /// Connects to the Redis at `url` (waiting up to `timeout` for a first
    /// connection, going on without one) and starts hearing live
    /// notifications on `<prefix>:live`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        retention: Retention,
        timeout: Duration,
    ) -> HubResult<Self> {
        let config = Config::from_url(url).map_err(|e| unavailable(format!("{url}: {e}")))?;
        let connect = |config: Config| async move {
            munity_bus::redis::connect(&config, timeout)
                .await
                .map_err(unavailable)
        };
        let client = connect(config.clone()).await?;
        let subscriber = connect(config).await?;
        let channel = format!("{prefix}:live");
        let live: Arc<LiveTopics> = Arc::default();
        // Subscribed before the hub is used, so no stream opened from now on
        // can miss a live notification (later reconnects announce a
        // catch-up instead).
        if subscriber.is_connected()
            && let Err(error) = subscriber.subscribe(channel.as_str()).await
        {
            tracing::warn!(%error, "cannot subscribe to live notifications yet");
        }
        listen(subscriber, channel.clone(), live.clone());
        Ok(RedisHub {
            client,
            prefix: prefix.to_owned(),
            channel,
            retention,
            timeout,
            live,
        })
    }

    fn keys(&self, topic: &str) -> (String, String) {
        (
            format!("{}:{{{topic}}}:m", self.prefix),
            format!("{}:{{{topic}}}:s", self.prefix),
        )
    }

    async fn call(&self, name: &'static str, args: Vec<Value>) -> HubResult<Value> {
        tokio::time::timeout(
            self.timeout,
            self.client.custom(
                CustomCommand::new_static(name, ClusterHash::Random, false),
                args,
            ),
        )
        .await
        .map_err(|_| HubError::Unavailable(format!("Redis {name} timed out")))?
        .map_err(unavailable)
    }

    /// Runs the publish script for `item`, which also publishes it live when
    /// `announce` says so.
    async fn store_one(&self, item: Publication, announce: bool) -> HubResult<Stored> {
        let Publication {
            topic,
            id,
            kind,
            payload,
            at,
        } = item;
        let (meta, stream) = self.keys(&topic);
        let published = format!("{}:{{{topic}}}:p:{id}", self.prefix);
        let reply = self
            .script(
                PUBLISH,
                vec![meta, stream, published],
                vec![
                    new_epoch().into(),
                    Value::Integer(self.retention.size.max(1) as i64),
                    Value::Integer(self.retention.ttl_secs.max(1) as i64),
                    self.channel.as_str().into(),
                    at.to_string().into(),
                    topic.as_str().into(),
                    kind.as_str().into(),
                    id.as_str().into(),
                    Value::Bytes(payload.clone().into()),
                    if announce { "1" } else { "0" }.into(),
                ],
            )
            .await?;
        let bad = || HubError::Internal(format!("unexpected reply to publish: {reply:?}"));
        let new = reply.first().and_then(integer).ok_or_else(bad)? == 1;
        let offset = reply.get(1).and_then(integer).ok_or_else(bad)?;
        let epoch = reply.get(2).and_then(text).ok_or_else(bad)?;
        let at = reply
            .get(3)
            .and_then(text)
            .and_then(|t| t.parse().ok())
            .unwrap_or(at);
        Ok(Stored {
            notification: Notification {
                topic,
                epoch,
                offset: offset as u64,
                at,
                kind,
                id,
                payload,
            },
            new,
        })
    }

    async fn script(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> HubResult<Vec<Value>> {
        let mut all: Vec<Value> = vec![script.into(), Value::Integer(keys.len() as i64)];
        all.extend(keys.into_iter().map(Value::from));
        all.extend(args);
        Ok(self.call("EVAL", all).await?.into_array())
    }
}

/// Hears the live channel until the process ends; after every (re)connect
/// subscribes again and announces a catch-up.
fn listen(subscriber: fred::prelude::Client, channel: String, live: Arc<LiveTopics>) {
    let mut messages = subscriber.message_rx();
    let relay = live.clone();
    tokio::spawn(async move {
        loop {
            match messages.recv().await {
                Ok(message) => {
                    let parsed = message.value.as_bytes().and_then(parse_live);
                    match parsed {
                        Some(notification) => {
                            relay.send(Arc::new(notification));
                        }
                        None => tracing::warn!("unreadable live notification; ignored"),
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => relay.catch_up(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut reconnects = subscriber.reconnect_rx();
    tokio::spawn(async move {
        while reconnects.recv().await.is_ok() {
            match subscriber.subscribe(channel.as_str()).await {
                Ok(()) => live.catch_up(),
                Err(error) => tracing::warn!(%error, "cannot subscribe to live notifications"),
            }
        }
    });
}

#[async_trait::async_trait]
impl Hub for RedisHub {
    async fn publish_many(&self, items: Vec<Publication>) -> HubResult<Vec<Notification>> {
        let mut published = Vec::with_capacity(items.len());
        for item in items {
            published.push(self.store_one(item, true).await?.notification);
        }
        Ok(published)
    }

    async fn store_many(&self, items: Vec<Publication>) -> HubResult<Vec<Stored>> {
        let mut stored = Vec::with_capacity(items.len());
        for item in items {
            stored.push(self.store_one(item, false).await?);
        }
        Ok(stored)
    }

    async fn announce(&self, stored: &[Stored]) {
        for stored in stored.iter().filter(|s| s.new) {
            let message = Value::Bytes(live_message(&stored.notification).into());
            if let Err(error) = self
                .call("PUBLISH", vec![self.channel.as_str().into(), message])
                .await
            {
                // Subscribers find it in history when the next one comes.
                tracing::warn!(%error, topic = %stored.notification.topic, "a live notification was not published");
            }
        }
    }

    async fn position(&self, topic: &str) -> HubResult<Position> {
        let (meta, stream) = self.keys(topic);
        let reply = self
            .script(
                POSITION,
                vec![meta, stream],
                vec![
                    new_epoch().into(),
                    Value::Integer(self.retention.ttl_secs.max(1) as i64),
                ],
            )
            .await?;
        let bad = || HubError::Internal(format!("unexpected reply to position: {reply:?}"));
        Ok(Position {
            epoch: reply.first().and_then(text).ok_or_else(bad)?,
            offset: reply.get(1).and_then(integer).ok_or_else(bad)? as u64,
        })
    }

    async fn since(&self, topic: &str, after: &Position, limit: usize) -> HubResult<Recovery> {
        let now = self.position(topic).await?;
        if let Some(recovery) = Recovery::without_history(&now, after) {
            return Ok(recovery);
        }
        let (_, stream) = self.keys(topic);
        let from = after.offset + 1;
        let reply = self
            .call(
                "XRANGE",
                vec![
                    stream.into(),
                    format!("{from}-0").into(),
                    "+".into(),
                    "COUNT".into(),
                    Value::Integer(limit.max(1) as i64),
                ],
            )
            .await?;
        let mut items = Vec::new();
        for entry in reply.into_array() {
            let mut parts = entry.into_array().into_iter();
            let (Some(entry_id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let offset = text(&entry_id)
                .and_then(|id| id.split('-').next().and_then(|o| o.parse().ok()))
                .unwrap_or(0);
            let fields = fields.into_array();
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair.first().and_then(text).as_deref() == Some(name))
                    .and_then(|pair| pair.get(1))
            };
            items.push(Notification {
                topic: topic.to_owned(),
                epoch: now.epoch.clone(),
                offset,
                at: field("t")
                    .and_then(text)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0),
                kind: field("k").and_then(text).unwrap_or_default(),
                id: field("i").and_then(text).unwrap_or_default(),
                payload: field("p")
                    .and_then(Value::as_bytes)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
            });
        }
        Ok(Recovery::from_history(now, after, items))
    }

    fn follow(&self, topics: Vec<String>) -> LiveFeed {
        self.live.follow(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_live;

    #[test]
    fn live_messages_keep_binary_payloads_whole() {
        let n = parse_live(b"ep|7|1700|event:x|munity.events.v1.VoteCast|id-1|a|b\x00c").unwrap();
        assert_eq!((n.epoch.as_str(), n.offset, n.at), ("ep", 7, 1700));
        assert_eq!((n.topic.as_str(), n.id.as_str()), ("event:x", "id-1"));
        assert_eq!(n.payload, b"a|b\x00c");
        assert!(parse_live(b"ep|x|1|t|k|i|p").is_none());
    }
}

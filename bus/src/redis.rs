//! The log as one Redis stream, through fred, for scale-out.
//!
//! - append: `XADD <key> MAXLEN ~ <max_len> * e <event>` per event, in
//!   order (one pipeline-free call each: a failed append stops there, so
//!   what was stored is a prefix of what was asked).
//! - a group: `XGROUP CREATE <key> <group> 0 MKSTREAM` (from the oldest
//!   entry retained); `XREADGROUP ... BLOCK` to wait, `XACK`, and
//!   `XAUTOCLAIM` for deliveries pending longer than a timeout.
//! - lag: `XINFO GROUPS` (Redis 7: `lag` plus `pending`).
//! - a reader outside groups: `XREAD ... BLOCK` from an entry id, which
//!   Redis makes from the append time in ms, so `read_from(t)` starts at
//!   `t-0`.
//!
//! A blocking read holds its connection, so every consumer has a client of
//! its own; appends and the rest share one.
//!
//! Commands go through fred's `custom` with replies read here, so what is
//! sent is exactly the Redis command documented above.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy},
    types::{ClusterHash, CustomCommand, Value},
};
use prost::Message;

use crate::{BusError, BusResult, Delivery, DomainEvent, EventLog, GroupConsumer, LogReader};

/// The field each stream entry holds its encoded event in.
const FIELD: &str = "e";

/// The event log in a Redis stream.
#[derive(Clone)]
pub struct RedisLog {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    client: Client,
    key: String,
    max_len: u64,
    timeout: Duration,
}

fn command(name: &'static str, blocking: bool) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, blocking)
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

/// A client that reconnects by itself and fails commands fast while Redis
/// is away (the callers retry: the relay, consumers' loops). Shared with
/// other users of Redis (notify-svc's hub).
pub async fn connect(config: &Config, timeout: Duration) -> BusResult<Client> {
    let client = Builder::from_config(config.clone())
        .with_connection_config(|c| {
            c.connection_timeout = timeout;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::ZERO;
            // Pub/sub messages reach us through a broadcast of this size:
            // fred's default (32) drops messages of a burst (a subscriber
            // then sees `Lagged` and every stream must read history).
            p.broadcast_channel_capacity = 4096;
        })
        .set_policy(ReconnectPolicy::new_constant(0, 250))
        .build()
        .map_err(unavailable)?;
    drop(client.connect());
    // Redis away at start-up is not fatal: the client keeps reconnecting,
    // commands fail fast meanwhile, and the relay and consumers retry.
    match tokio::time::timeout(timeout, client.wait_for_connect()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "Redis not reachable yet; reconnecting"),
        Err(_) => tracing::warn!("Redis did not answer in time; reconnecting"),
    }
    Ok(client)
}

impl RedisLog {
    /// The stream at `key` on the Redis at `url`, keeping about `max_len`
    /// entries. Waits up to `timeout` for a first connection, and goes on
    /// without one (commands fail until Redis answers; callers retry, and
    /// keep writing to their outbox meanwhile). Fails only on a bad URL.
    pub async fn connect(url: &str, key: &str, max_len: u64, timeout: Duration) -> BusResult<Self> {
        let config = Config::from_url(url).map_err(|e| unavailable(format!("{url}: {e}")))?;
        let client = connect(&config, timeout).await?;
        Ok(RedisLog {
            shared: Arc::new(Shared {
                config,
                client,
                key: key.to_owned(),
                max_len: max_len.max(1),
                timeout,
            }),
        })
    }

    async fn call(&self, name: &'static str, args: Vec<Value>) -> BusResult<Value> {
        let shared = &self.shared;
        tokio::time::timeout(
            shared.timeout,
            shared.client.custom(command(name, false), args),
        )
        .await
        .map_err(|_| BusError::Unavailable(format!("Redis {name} timed out")))?
        .map_err(unavailable)
    }

    async fn create_group(&self, group: &str) -> BusResult<()> {
        let args = vec![
            "CREATE".into(),
            self.shared.key.as_str().into(),
            group.into(),
            "0".into(),
            "MKSTREAM".into(),
        ];
        match self.call("XGROUP", args).await {
            Ok(_) => Ok(()),
            Err(BusError::Unavailable(message)) if message.contains("BUSYGROUP") => Ok(()),
            Err(error) => Err(error),
        }
    }
}

fn text(value: &Value) -> Option<String> {
    value.as_str().map(|s| s.into_owned())
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) as deliveries;
/// entries deleted by trimming come back as nil and are skipped.
fn entries(value: Value) -> BusResult<Vec<Delivery>> {
    let mut deliveries = Vec::new();
    for entry in value.into_array() {
        let mut parts = entry.into_array().into_iter();
        let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(id) = text(&id) else { continue };
        if fields.is_null() {
            continue;
        }
        let fields = fields.into_array();
        let payload = fields
            .chunks(2)
            .find(|pair| pair.first().and_then(text).as_deref() == Some(FIELD))
            .and_then(|pair| pair.get(1))
            .and_then(Value::as_bytes)
            .ok_or_else(|| BusError::Corrupt {
                id: id.clone(),
                reason: format!("no {FIELD:?} field"),
            })?;
        let event = DomainEvent::decode(payload).map_err(|e| BusError::Corrupt {
            id: id.clone(),
            reason: e.to_string(),
        })?;
        deliveries.push(Delivery { id, event });
    }
    Ok(deliveries)
}

/// A flat RESP2 map (`[name, value, name, value, ...]`) field.
fn field<'a>(map: &'a [Value], name: &str) -> Option<&'a Value> {
    map.chunks(2)
        .find(|pair| pair.first().and_then(text).as_deref() == Some(name))
        .and_then(|pair| pair.get(1))
}

#[async_trait]
impl EventLog for RedisLog {
    async fn append(&self, events: &[DomainEvent]) -> BusResult<()> {
        for event in events {
            let args = vec![
                self.shared.key.as_str().into(),
                "MAXLEN".into(),
                "~".into(),
                Value::Integer(self.shared.max_len as i64),
                "*".into(),
                FIELD.into(),
                Value::Bytes(Bytes::from(event.encode_to_vec())),
            ];
            self.call("XADD", args).await?;
        }
        Ok(())
    }

    async fn join(&self, group: &str, consumer: &str) -> BusResult<Box<dyn GroupConsumer>> {
        self.create_group(group).await?;
        let reader = connect(&self.shared.config, self.shared.timeout).await?;
        Ok(Box::new(RedisConsumer {
            log: self.clone(),
            reader,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
        }))
    }

    async fn read_from(&self, since_ms: i64) -> BusResult<Box<dyn LogReader>> {
        let reader = connect(&self.shared.config, self.shared.timeout).await?;
        Ok(Box::new(RedisReader {
            log: self.clone(),
            reader,
            after: format!("{}-0", since_ms.max(0)),
        }))
    }

    async fn lag(&self, group: &str) -> BusResult<u64> {
        self.create_group(group).await?;
        let groups = self
            .call(
                "XINFO",
                vec!["GROUPS".into(), self.shared.key.as_str().into()],
            )
            .await?;
        for info in groups.into_array() {
            let info = match info {
                Value::Map(map) => map
                    .inner()
                    .into_iter()
                    .flat_map(|(k, v)| [Value::from(k), v])
                    .collect(),
                other => other.into_array(),
            };
            if field(&info, "name").and_then(text).as_deref() != Some(group) {
                continue;
            }
            let count = |name| field(&info, name).and_then(Value::as_u64).unwrap_or(0);
            return Ok(count("lag") + count("pending"));
        }
        Ok(0)
    }
}

/// `XREAD` replies: `[[key, entries]]` (RESP2), or `{key: entries}` (RESP3).
fn stream_entries(reply: Value) -> BusResult<Vec<Delivery>> {
    if reply.is_null() {
        return Ok(Vec::new());
    }
    let streams = match reply {
        Value::Map(map) => map.inner().into_values().collect(),
        other => other
            .into_array()
            .into_iter()
            .filter_map(|s| s.into_array().into_iter().nth(1))
            .collect::<Vec<_>>(),
    };
    let mut deliveries = Vec::new();
    for stream in streams {
        deliveries.extend(entries(stream)?);
    }
    Ok(deliveries)
}

/// A reader of the whole stream, on a connection of its own (a blocking
/// read holds it); its position is the last entry id read.
struct RedisReader {
    log: RedisLog,
    reader: Client,
    after: String,
}

#[async_trait]
impl LogReader for RedisReader {
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>> {
        let mut args: Vec<Value> = vec!["COUNT".into(), Value::Integer(max.max(1) as i64)];
        if !wait.is_zero() {
            args.push("BLOCK".into());
            args.push(Value::Integer(wait.as_millis().max(1) as i64));
        }
        args.push("STREAMS".into());
        args.push(self.log.shared.key.as_str().into());
        args.push(self.after.as_str().into());
        let limit = wait + self.log.shared.timeout;
        let reply: Value = tokio::time::timeout(
            limit,
            self.reader.custom(command("XREAD", !wait.is_zero()), args),
        )
        .await
        .map_err(|_| BusError::Unavailable("Redis XREAD timed out".to_owned()))?
        .map_err(unavailable)?;
        let deliveries = stream_entries(reply)?;
        if let Some(last) = deliveries.last() {
            self.after = last.id.clone();
        }
        Ok(deliveries)
    }
}

struct RedisConsumer {
    log: RedisLog,
    /// This consumer's own connection, for blocking reads.
    reader: Client,
    group: String,
    consumer: String,
}

#[async_trait]
impl GroupConsumer for RedisConsumer {
    async fn next(&mut self, max: usize, wait: Duration) -> BusResult<Vec<Delivery>> {
        let args = vec![
            "GROUP".into(),
            self.group.as_str().into(),
            self.consumer.as_str().into(),
            "COUNT".into(),
            Value::Integer(max.max(1) as i64),
            "BLOCK".into(),
            Value::Integer(wait.as_millis().max(1) as i64),
            "STREAMS".into(),
            self.log.shared.key.as_str().into(),
            ">".into(),
        ];
        let limit = wait + self.log.shared.timeout;
        let reply: Value =
            tokio::time::timeout(limit, self.reader.custom(command("XREADGROUP", true), args))
                .await
                .map_err(|_| BusError::Unavailable("Redis XREADGROUP timed out".to_owned()))?
                .map_err(unavailable)?;
        if reply.is_null() {
            return Ok(Vec::new());
        }
        // [[key, entries]] (RESP2), or {key: entries} (RESP3).
        let streams = match reply {
            Value::Map(map) => map.inner().into_values().collect(),
            other => other
                .into_array()
                .into_iter()
                .filter_map(|s| s.into_array().into_iter().nth(1))
                .collect::<Vec<_>>(),
        };
        let mut deliveries = Vec::new();
        for stream in streams {
            deliveries.extend(entries(stream)?);
        }
        Ok(deliveries)
    }

    async fn ack(&mut self, ids: &[String]) -> BusResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<Value> = vec![
            self.log.shared.key.as_str().into(),
            self.group.as_str().into(),
        ];
        args.extend(ids.iter().map(|id| Value::from(id.as_str())));
        self.log.call("XACK", args).await.map(drop)
    }

    async fn claim_stale(&mut self, idle: Duration, max: usize) -> BusResult<Vec<Delivery>> {
        let args = vec![
            self.log.shared.key.as_str().into(),
            self.group.as_str().into(),
            self.consumer.as_str().into(),
            Value::Integer(idle.as_millis() as i64),
            "0-0".into(),
            "COUNT".into(),
            Value::Integer(max.max(1) as i64),
        ];
        // [next start, entries, deleted ids] (Redis 7).
        let reply = self.log.call("XAUTOCLAIM", args).await?;
        let claimed = reply.into_array().into_iter().nth(1).unwrap_or(Value::Null);
        entries(claimed)
    }
}

//! Rate limits shared by every gateway replica, kept in Redis (through
//! `fred`), without putting Redis on the hot path of high-rate quotas.
//!
//! The budget of each (rule, identity) key is a token bucket in Redis,
//! updated atomically by one Lua script that uses Redis's own clock, so
//! replicas' clocks do not matter.
//!
//! - Low-rate quotas (under `sync_below_per_sec`, e.g. Login 5/min) take one
//!   token per call synchronously: exact, and the round trip is affordable
//!   for rare calls.
//! - High-rate quotas lease tokens in batches (about 50 ms of the rate).
//!   Calls spend the local lease; when it runs low a refill is fetched in
//!   the background. Leases expire after `lease_ttl`, so tokens taken from
//!   Redis are spent soon or not at all: together the replicas admit at most
//!   the quota plus one batch per replica (the stated tolerance), never more.
//! - Redis down or slower than `redis_timeout_ms`: calls get [`Unavailable`]
//!   for one second at a time, and the [`Limiter`](super::Limiter) decides
//!   them with a local limiter holding this replica's share of the budget
//!   (quota divided by `replicas`), counted in
//!   `munity_gateway_rate_limit_decisions_total{mode="fallback"}`; the next
//!   call after that tries Redis again, so recovery is automatic.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use fred::{
    prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy},
    types::scripts::Script,
};
use tokio::sync::OnceCell;

use super::{Decision, QuotaConfig, RateLimitConfig};

/// Takes up to ARGV[3] tokens from the bucket at KEYS[1], refilled at ARGV[1]
/// tokens per millisecond up to ARGV[2]. Returns {granted, ms until one token}.
const TAKE_SCRIPT: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait = 0
if granted < 1 then wait = math.ceil((1 - tokens) / rate) end
return {granted, wait}
"#;

/// Redis is down or too slow: the shared budget cannot decide this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

struct Lease {
    tokens: AtomicI64,
    refilling: AtomicBool,
    /// When the current tokens were taken from Redis (ms since `epoch`).
    taken_at_ms: AtomicU64,
}

pub struct GlobalLimits {
    client: Client,
    key_prefix: String,
    connected: OnceCell<()>,
    script: Script,
    default: QuotaConfig,
    rules: HashMap<String, QuotaConfig>,
    timeout: Duration,
    sync_below_per_sec: f64,
    lease_ttl: Duration,
    leases: DashMap<String, Arc<Lease>>,
    epoch: Instant,
    /// Until when (ms since `epoch`) Redis is considered down.
    degraded_until_ms: AtomicU64,
}

fn per_sec(quota: &QuotaConfig) -> f64 {
    f64::from(quota.requests.max(1)) / quota.per_secs.max(1) as f64
}

impl GlobalLimits {
    pub fn new(config: &RateLimitConfig) -> anyhow::Result<Arc<Self>> {
        let redis_config = Config::from_url(&config.redis_url).map_err(|e| {
            anyhow::anyhow!("gateway.rate_limits.redis_url {:?}: {e}", config.redis_url)
        })?;
        let client = Builder::from_config(redis_config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(500);
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_constant(0, 250))
            .build()?;
        Ok(Arc::new(GlobalLimits {
            client,
            key_prefix: config.redis_key_prefix.clone(),
            connected: OnceCell::new(),
            script: Script::from_lua(TAKE_SCRIPT),
            default: config.default,
            rules: config
                .rules
                .iter()
                .map(|r| (r.method.clone(), r.quota))
                .collect(),
            timeout: Duration::from_millis(config.redis_timeout_ms.max(1)),
            sync_below_per_sec: config.sync_below_per_sec,
            lease_ttl: Duration::from_millis(500),
            leases: DashMap::new(),
            epoch: Instant::now(),
            degraded_until_ms: AtomicU64::new(0),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn degraded(&self) -> bool {
        self.now_ms() < self.degraded_until_ms.load(Ordering::Relaxed)
    }

    fn mark_degraded(&self, error: &str) {
        let until = self.now_ms() + 1_000;
        if self.degraded_until_ms.swap(until, Ordering::Relaxed) < self.now_ms() {
            tracing::warn!(%error, "Redis unavailable for rate limits; using local limits for now");
        }
    }

    /// Takes up to `want` tokens from Redis for `key`.
    async fn take(&self, key: &str, quota: &QuotaConfig, want: i64) -> Result<(i64, u64), String> {
        // The client connects on first use, on the runtime that serves calls,
        // and reconnects by itself after that. The first calls wait for that
        // first connection (bounded), rather than all falling back at once.
        self.connected
            .get_or_init(|| async {
                // The handle is the connection task's JoinHandle; dropping it
                // detaches the task, which keeps running and reconnecting.
                drop(self.client.connect());
                let first = self.client.wait_for_connect();
                if tokio::time::timeout(Duration::from_secs(1), first)
                    .await
                    .is_err()
                {
                    tracing::warn!("Redis not reachable at start-up; limiting locally until it is");
                }
            })
            .await;
        let rate_per_ms = per_sec(quota) / 1000.0;
        let call = self.script.evalsha_with_reload::<(i64, u64), _, _>(
            &self.client,
            vec![format!("{}:{key}", self.key_prefix)],
            vec![
                rate_per_ms.to_string(),
                quota.burst.max(1).to_string(),
                want.to_string(),
            ],
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Decides one call of `method` by `identity` against the shared budget.
    pub async fn check(
        self: &Arc<Self>,
        method: &str,
        identity: &str,
    ) -> Result<Decision, Unavailable> {
        let (rule, quota) = match self.rules.get(method) {
            Some(quota) => (method, *quota),
            None => ("default", self.default),
        };
        if self.degraded() {
            return Err(Unavailable);
        }
        let key = format!("{rule}:{identity}");
        if per_sec(&quota) < self.sync_below_per_sec {
            return match self.take(&key, &quota, 1).await {
                Ok((granted, _)) if granted >= 1 => Ok(Decision::Allowed),
                Ok((_, wait_ms)) => Ok(refused(wait_ms)),
                Err(error) => {
                    self.mark_degraded(&error);
                    Err(Unavailable)
                }
            };
        }
        self.check_leased(key, quota).await
    }

    async fn check_leased(
        self: &Arc<Self>,
        key: String,
        quota: QuotaConfig,
    ) -> Result<Decision, Unavailable> {
        let batch =
            ((per_sec(&quota) * 0.05).ceil() as i64).clamp(1, i64::from(quota.burst.max(1)));
        let lease = self
            .leases
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Lease {
                    tokens: AtomicI64::new(0),
                    refilling: AtomicBool::new(false),
                    taken_at_ms: AtomicU64::new(0),
                })
            })
            .clone();
        let now = self.now_ms();
        if now.saturating_sub(lease.taken_at_ms.load(Ordering::Relaxed))
            > self.lease_ttl.as_millis() as u64
        {
            // Stale tokens would let this replica spend an old budget.
            lease.tokens.store(0, Ordering::Relaxed);
        }
        let spent = lease
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t > 0).then_some(t - 1)
            });
        match spent {
            Ok(left_before) => {
                if left_before - 1 <= batch / 2 && !lease.refilling.swap(true, Ordering::AcqRel) {
                    let limits = Arc::clone(self);
                    let lease = lease.clone();
                    tokio::spawn(async move {
                        match limits.take(&key, &quota, batch).await {
                            Ok((granted, _)) => {
                                lease.tokens.fetch_add(granted, Ordering::AcqRel);
                                lease.taken_at_ms.store(limits.now_ms(), Ordering::Relaxed);
                            }
                            Err(error) => limits.mark_degraded(&error),
                        }
                        lease.refilling.store(false, Ordering::Release);
                    });
                }
                Ok(Decision::Allowed)
            }
            // Lease empty: wait for Redis this once.
            Err(_) => match self.take(&key, &quota, batch).await {
                Ok((granted, _)) if granted >= 1 => {
                    lease.tokens.fetch_add(granted - 1, Ordering::AcqRel);
                    lease.taken_at_ms.store(self.now_ms(), Ordering::Relaxed);
                    Ok(Decision::Allowed)
                }
                Ok((_, wait_ms)) => Ok(refused(wait_ms)),
                Err(error) => {
                    self.mark_degraded(&error);
                    Err(Unavailable)
                }
            },
        }
    }

    /// Drops idle leases.
    pub fn evict_idle(&self) {
        let now = self.now_ms();
        let ttl = self.lease_ttl.as_millis() as u64;
        self.leases.retain(|_, lease| {
            now.saturating_sub(lease.taken_at_ms.load(Ordering::Relaxed)) <= ttl * 4
        });
    }
}

fn refused(wait_ms: u64) -> Decision {
    Decision::Refused {
        retry_after: Duration::from_millis(wait_ms.max(1)),
    }
}

//! Rate limits at the edge, per identity (the verified user id, else the
//! client IP): a default quota, and quotas of their own for some methods.
//!
//! - `local.rs`: each replica limits alone (governor's keyed GCRA).
//! - `global.rs`: the replicas share one budget kept in Redis (fred).
//!
//! [`Limiter`] is the one `gateway.rate_limits` configures (none when it is
//! not `enabled`, whatever the mode). In global mode,
//! while Redis is unavailable, it decides with local limits holding this
//! replica's share of every quota. Each decision is counted in
//! `munity_gateway_rate_limit_decisions_total`, by mode (`local`, `global`,
//! or `fallback` for those shares) and outcome.

mod global;
mod local;

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::metrics;

use self::{
    global::{GlobalLimits, Unavailable},
    local::LocalLimits,
};

/// `[gateway.rate_limits]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// `local`: each replica limits alone. `global`: replicas share one
    /// budget kept in Redis, falling back to local shares when it is down.
    pub mode: Mode,
    /// Redis for `global` mode.
    pub redis_url: String,
    /// Prefix of the Redis keys holding the budgets.
    pub redis_key_prefix: String,
    /// How many gateway replicas share the budget: each one's fallback share
    /// is the quota divided by this.
    pub replicas: u32,
    /// Redis answers slower than this count as Redis being down.
    pub redis_timeout_ms: u64,
    /// Quotas slower than this many calls per second are checked against
    /// Redis on every call; faster ones spend local leases.
    pub sync_below_per_sec: f64,
    /// Applies to every method without a rule of its own, per identity.
    pub default: QuotaConfig,
    /// Per-method quotas, over those the protos declare
    /// (`option (munity.options.v1.method) = { quota: ... }`).
    pub rules: Vec<RateRule>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            mode: Mode::Local,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_key_prefix: "munity:rl".to_owned(),
            replicas: 1,
            redis_timeout_ms: 5,
            sync_below_per_sec: 10.0,
            default: QuotaConfig {
                requests: 100,
                per_secs: 1,
                burst: 200,
            },
            rules: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// These limits with the quotas the protos declare added as rules,
    /// except for methods a configured rule already covers.
    pub fn with_declared(
        &self,
        declared: &std::collections::BTreeMap<String, munity_platform::policy::DeclaredQuota>,
    ) -> RateLimitConfig {
        let mut rules = self.rules.clone();
        for (method, quota) in declared {
            if !rules.iter().any(|r| r.method == *method) {
                rules.push(RateRule {
                    method: method.clone(),
                    quota: QuotaConfig {
                        requests: quota.requests,
                        per_secs: quota.per_secs,
                        burst: quota.burst,
                    },
                });
            }
        }
        RateLimitConfig {
            rules,
            ..self.clone()
        }
    }

    /// The same limits with every quota divided by `replicas`: what one
    /// replica may admit on its own while the shared budget is unavailable.
    fn replica_share(&self) -> RateLimitConfig {
        let replicas = self.replicas.max(1);
        let share = |q: &QuotaConfig| QuotaConfig {
            requests: (q.requests / replicas).max(1),
            per_secs: q.per_secs,
            burst: (q.burst / replicas).max(1),
        };
        RateLimitConfig {
            default: share(&self.default),
            rules: self
                .rules
                .iter()
                .map(|r| RateRule {
                    method: r.method.clone(),
                    quota: share(&r.quota),
                })
                .collect(),
            ..self.clone()
        }
    }
}

/// `gateway.rate_limits.mode`, and the `mode` label of the decisions it
/// makes (global mode's fallback decisions are labelled [`FALLBACK`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Local,
    Global,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Global => "global",
        }
    }
}

/// The `mode` label of decisions made with a replica's share of the limits
/// while Redis is unavailable (global mode).
const FALLBACK: &str = "fallback";

/// `requests` per `per_secs` seconds, with bursts up to `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub requests: u32,
    pub per_secs: u64,
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Full method path, e.g. `/munity.users.v1.Users/Login`.
    pub method: String,
    #[serde(flatten)]
    pub quota: QuotaConfig,
}

/// The verdict for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; the client may retry after this long.
    Refused {
        retry_after: Duration,
    },
}

impl Decision {
    /// The `outcome` label.
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused { .. } => "refused",
        }
    }
}

/// The configured limiter: per replica, or shared through Redis.
#[derive(Clone)]
pub enum Limiter {
    Local(Arc<LocalLimits>),
    Global {
        shared: Arc<GlobalLimits>,
        /// This replica's share, used while Redis is unavailable.
        fallback: Arc<LocalLimits>,
    },
}

impl Limiter {
    /// The configured limiter, or `None` when limits are disabled: then no
    /// call is limited or counted, and global mode makes no Redis client.
    pub fn new(config: &RateLimitConfig) -> anyhow::Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        Ok(Some(match config.mode {
            Mode::Local => Limiter::Local(Arc::new(LocalLimits::new(config))),
            Mode::Global => Limiter::Global {
                shared: GlobalLimits::new(config)?,
                fallback: Arc::new(LocalLimits::new(&config.replica_share())),
            },
        }))
    }

    /// Decides one call of `method` by `identity`, and counts the decision.
    pub async fn check(&self, method: &str, identity: &str) -> Decision {
        let (decision, mode) = match self {
            Limiter::Local(limits) => (limits.check(method, identity), Mode::Local.as_str()),
            Limiter::Global { shared, fallback } => match shared.check(method, identity).await {
                Ok(decision) => (decision, Mode::Global.as_str()),
                Err(Unavailable) => (fallback.check(method, identity), FALLBACK),
            },
        };
        metrics::RATE_LIMIT
            .with_label_values(&[mode, decision.as_str()])
            .inc();
        decision
    }

    /// Forgets keys (and leases) idle long enough to have fully recovered.
    pub fn evict_idle(&self) {
        match self {
            Limiter::Local(limits) => limits.evict_idle(),
            Limiter::Global { shared, fallback } => {
                shared.evict_idle();
                fallback.evict_idle();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_quotas_become_rules_unless_configured() {
        let declared = crate::config::policy().quotas().clone();
        let login = "/munity.users.v1.Users/Login";
        let config = RateLimitConfig::default().with_declared(&declared);
        let rule = config.rules.iter().find(|r| r.method == login).unwrap();
        assert_eq!(rule.quota.requests, 5, "from the proto");
        let mine = RateLimitConfig {
            rules: vec![RateRule {
                method: login.to_owned(),
                quota: QuotaConfig {
                    requests: 50,
                    per_secs: 60,
                    burst: 50,
                },
            }],
            ..RateLimitConfig::default()
        }
        .with_declared(&declared);
        let rules: Vec<_> = mine.rules.iter().filter(|r| r.method == login).collect();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].quota.requests, 50, "the configured rule wins");
    }

    #[test]
    fn replica_shares_divide_every_quota() {
        let config = RateLimitConfig {
            replicas: 2,
            ..RateLimitConfig::default()
        }
        .with_declared(&crate::config::policy().quotas().clone());
        let share = config.replica_share();
        assert_eq!(
            share.default,
            QuotaConfig {
                requests: 50,
                per_secs: 1,
                burst: 100,
            }
        );
        // Never below one call per period (Login: 5 a minute, burst 5).
        let login = "/munity.users.v1.Users/Login";
        let rule = share.rules.iter().find(|r| r.method == login).unwrap();
        assert_eq!(
            rule.quota,
            QuotaConfig {
                requests: 2,
                per_secs: 60,
                burst: 2,
            }
        );
    }
}

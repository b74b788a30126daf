//! Local rate limits: governor's keyed GCRA limiters, one per quota, keyed
//! by the verified user id or, for anonymous calls, the client IP. Idle keys
//! are dropped periodically so memory stays bounded.

use std::{collections::HashMap, num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use super::{Decision, QuotaConfig, RateLimitConfig};

pub struct LocalLimits {
    default: DefaultKeyedRateLimiter<String>,
    per_method: HashMap<String, DefaultKeyedRateLimiter<String>>,
}

fn quota(config: &QuotaConfig) -> Quota {
    let requests = config.requests.max(1);
    let period = Duration::from_secs(config.per_secs.max(1)) / requests;
    let burst = NonZeroU32::new(config.burst.max(1)).expect("max(1) is non-zero");
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("period is non-zero")
        .allow_burst(burst)
}

impl LocalLimits {
    pub fn new(config: &RateLimitConfig) -> Self {
        LocalLimits {
            default: RateLimiter::keyed(quota(&config.default)),
            per_method: config
                .rules
                .iter()
                .map(|rule| (rule.method.clone(), RateLimiter::keyed(quota(&rule.quota))))
                .collect(),
        }
    }

    /// Checks one call of `method` by `identity`.
    pub fn check(&self, method: &str, identity: &str) -> Decision {
        let limiter = self.per_method.get(method).unwrap_or(&self.default);
        // Keys combine method and identity only for per-method rules; the
        // default budget is shared by all of an identity's other calls.
        match limiter.check_key(&identity.to_owned()) {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Refused {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }

    /// Forgets keys whose limits have fully recovered.
    pub fn evict_idle(&self) {
        self.default.retain_recent();
        self.default.shrink_to_fit();
        for limiter in self.per_method.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RateRule;

    #[test]
    fn per_method_rules_and_identities_are_separate() {
        let limits = LocalLimits::new(&RateLimitConfig {
            default: QuotaConfig {
                requests: 1000,
                per_secs: 1,
                burst: 1000,
            },
            rules: vec![RateRule {
                method: "/m.S/Login".to_owned(),
                quota: QuotaConfig {
                    requests: 2,
                    per_secs: 60,
                    burst: 2,
                },
            }],
            ..RateLimitConfig::default()
        });
        assert_eq!(limits.check("/m.S/Login", "1.2.3.4"), Decision::Allowed);
        assert_eq!(limits.check("/m.S/Login", "1.2.3.4"), Decision::Allowed);
        match limits.check("/m.S/Login", "1.2.3.4") {
            Decision::Refused { retry_after } => {
                assert!(
                    retry_after > Duration::from_secs(20) && retry_after <= Duration::from_secs(30)
                )
            }
            Decision::Allowed => panic!("third login within a minute must be refused"),
        }
        assert_eq!(limits.check("/m.S/Login", "5.6.7.8"), Decision::Allowed);
        assert_eq!(limits.check("/m.S/Other", "1.2.3.4"), Decision::Allowed);
        limits.evict_idle();
    }
}

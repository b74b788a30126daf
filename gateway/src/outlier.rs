//! Passive ejection (what Envoy calls outlier detection; Pingora has none):
//! a replica that fails several calls in a row — connection refused or
//! UNAVAILABLE — leaves the rotation at once, without waiting for the next
//! active health check, and is let back after a pause. Active checks still
//! decide health; this only reacts faster to what live traffic shows.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use dashmap::DashMap;
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};

/// Consecutive failures that eject a replica.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected replica stays out.
pub const EJECTION: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Outliers {
    consecutive_failures: Arc<DashMap<SocketAddr, u32>>,
}

impl Outliers {
    pub fn success(&self, address: SocketAddr) {
        if let Some(mut count) = self.consecutive_failures.get_mut(&address) {
            *count = 0;
        }
    }

    /// Counts a failure; ejects the replica when it reaches the threshold.
    pub fn failure(
        &self,
        address: SocketAddr,
        balancer: &Arc<LoadBalancer<RoundRobin>>,
        service: &str,
    ) {
        let failures = {
            let mut count = self.consecutive_failures.entry(address).or_insert(0);
            *count += 1;
            *count
        };
        if failures != EJECT_AFTER {
            return;
        }
        let Some(backend) = balancer
            .backends()
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(&address))
            .cloned()
        else {
            return;
        };
        tracing::warn!(upstream = %address, service, failures, "ejecting upstream after consecutive failures");
        crate::metrics::EJECTIONS
            .with_label_values(&[service])
            .inc();
        balancer.backends().set_enable(&backend, false);
        let balancer = Arc::clone(balancer);
        let service = service.to_owned();
        let outliers_reset = Arc::clone(&self.consecutive_failures);
        tokio::spawn(async move {
            tokio::time::sleep(EJECTION).await;
            outliers_reset.remove(&address);
            balancer.backends().set_enable(&backend, true);
            tracing::info!(upstream = %address, service, "ejected upstream back in rotation");
        });
    }
}

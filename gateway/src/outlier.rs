//! Passive ejection (what Envoy calls outlier detection; Pingora has none):
//! a replica that fails several calls in a row — connection refused or
//! UNAVAILABLE — leaves the rotation at once, without waiting for the next
//! active health check (but never more than half the replicas: a single
//! replica is never ejected), and is let back after a pause, or as soon as the
//! active health check sees it come back (a restarted replica must not sit
//! out the pause: during a rolling restart its peer is next to go). Active
//! checks still decide health; this only reacts faster to what live
//! traffic shows.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use pingora_load_balancing::{Backend, LoadBalancer, selection::RoundRobin};

/// Consecutive failures that eject a replica.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected replica stays out, unless its health check recovers.
pub const EJECTION: Duration = Duration::from_secs(10);

/// The passive-ejection state of one route's replicas; clones share it (the
/// proxy counts failures, the route's health check readmits).
#[derive(Clone, Default)]
pub struct Outliers {
    consecutive_failures: Arc<DashMap<SocketAddr, u32>>,
    ejected: Arc<DashMap<SocketAddr, Ejection>>,
    ejections: Arc<AtomicU64>,
}

struct Ejection {
    /// Tells this ejection's timer from a later ejection's.
    id: u64,
    backend: Backend,
    balancer: Arc<LoadBalancer<RoundRobin>>,
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
        // Past the threshold every failure tries again: an ejection the cap
        // below refused may be allowed once another replica is back.
        if failures < EJECT_AFTER || self.ejected.contains_key(&address) {
            return;
        }
        let replicas = balancer.backends().get_backend();
        let Some(backend) = replicas
            .iter()
            .find(|b| b.addr.as_inet() == Some(&address))
            .cloned()
        else {
            return;
        };
        // At most half the replicas may be out at once (Envoy's
        // max_ejection_percent): when most fail together the cause is
        // rarely the replicas, and ejecting them all would turn a blip
        // into an outage for the whole ejection time.
        if self.ejected.len() >= replicas.len() / 2 {
            tracing::debug!(upstream = %address, service, failures, "not ejecting: half the replicas are out already");
            return;
        }
        tracing::warn!(upstream = %address, service, failures, "ejecting upstream after consecutive failures");
        crate::metrics::EJECTIONS
            .with_label_values(&[service])
            .inc();
        balancer.backends().set_enable(&backend, false);
        let id = self.ejections.fetch_add(1, Ordering::Relaxed);
        self.ejected.insert(
            address,
            Ejection {
                id,
                backend,
                balancer: Arc::clone(balancer),
            },
        );
        let outliers = self.clone();
        let service = service.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(EJECTION).await;
            outliers.readmit_where(address, &service, "ejection over", |e| e.id == id);
        });
    }

    /// The active health check saw `address` turn healthy: an ejection of it
    /// ends now.
    pub fn recovered(&self, address: SocketAddr, service: &str) {
        self.readmit_where(address, service, "health check recovered", |_| true);
    }

    fn readmit_where(
        &self,
        address: SocketAddr,
        service: &str,
        why: &str,
        matches: impl FnOnce(&Ejection) -> bool,
    ) {
        if let Some((_, ejection)) = self.ejected.remove_if(&address, |_, e| matches(e)) {
            self.consecutive_failures.remove(&address);
            ejection
                .balancer
                .backends()
                .set_enable(&ejection.backend, true);
            tracing::info!(upstream = %address, service, why, "ejected upstream back in rotation");
        }
    }
}

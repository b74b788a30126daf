//! Replicas found by DNS: a route's upstream may be a name (in Kubernetes,
//! a headless Service, whose A records are the ready pods) instead of fixed
//! addresses. The name is resolved again every `gateway.dns_refresh_ms`:
//!
//! - an address that appears is health-checked (`grpc.health.v1`) before
//!   it joins, so no call goes to a replica that is still starting;
//! - an address that disappears leaves the balancer: no new calls go there,
//!   calls in flight on it finish (the replica drains);
//! - a failed lookup keeps the replicas known so far: a DNS blip must not
//!   empty a route.
//!
//! Pingora's balancer calls [`ServiceDiscovery::discover`] on its update
//! schedule and runs its own health checks on the set it returns.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};
use pingora_load_balancing::{Backend, discovery::ServiceDiscovery, health_check::HealthCheck};

/// One upstream entry: a fixed address, or a name to resolve (with the
/// port every replica listens on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Fixed(SocketAddr),
    Named { host: String, port: u16 },
}

impl Upstream {
    /// Reads `host:port`; a host that is not an IP address is a DNS name.
    pub fn parse(entry: &str) -> Result<Self, String> {
        if let Ok(address) = entry.parse::<SocketAddr>() {
            return Ok(Upstream::Fixed(address));
        }
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| format!("{entry:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{entry:?}: {port:?} is not a port"))?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid {
            return Err(format!("{entry:?}: {host:?} is not a DNS name"));
        }
        Ok(Upstream::Named {
            host: host.to_owned(),
            port,
        })
    }
}

/// Whether any of `entries` needs DNS.
pub fn any_named(entries: &[String]) -> bool {
    entries
        .iter()
        .any(|e| matches!(Upstream::parse(e), Ok(Upstream::Named { .. })))
}

/// The resolver routes with names use: the system's (`/etc/resolv.conf`),
/// or `servers` (`ip:port`, e.g. a DNS server in a test). No cache: every
/// refresh asks again, so a change shows within one refresh.
pub fn resolver(servers: &[String]) -> anyhow::Result<TokioResolver> {
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.timeout = Duration::from_secs(2);
    options.attempts = 2;
    let builder = if servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| anyhow::anyhow!("gateway: cannot read the system's DNS settings: {e}"))?
    } else {
        let mut name_servers = Vec::new();
        for server in servers {
            let address: SocketAddr = server.parse().or_else(|_| {
                server
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53))
                    .map_err(|_| {
                        anyhow::anyhow!("gateway.dns_servers: {server:?} is not ip[:port]")
                    })
            })?;
            let mut name_server = NameServerConfig::udp_and_tcp(address.ip());
            for connection in &mut name_server.connections {
                connection.port = address.port();
            }
            name_servers.push(name_server);
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder
        .with_options(options)
        .build()
        .map_err(|e| anyhow::anyhow!("gateway: cannot build the DNS resolver: {e}"))
}

/// A route's replicas: its fixed addresses plus what its names resolve to.
pub struct DnsDiscovery {
    route: String,
    fixed: BTreeSet<Backend>,
    named: Vec<(String, u16)>,
    resolver: Arc<TokioResolver>,
    /// Admits an address that appeared (the route's own health check).
    check: Arc<dyn HealthCheck + Send + Sync>,
    /// What each name resolved to last time it resolved: kept through
    /// failed lookups.
    known: Mutex<HashMap<String, BTreeSet<SocketAddr>>>,
    /// Addresses that passed their first check since they appeared.
    admitted: Mutex<HashSet<SocketAddr>>,
}

impl DnsDiscovery {
    pub fn new(
        route: &str,
        entries: &[String],
        resolver: Arc<TokioResolver>,
        check: Arc<dyn HealthCheck + Send + Sync>,
    ) -> Result<Self, String> {
        let mut fixed = BTreeSet::new();
        let mut named = Vec::new();
        for entry in entries {
            match Upstream::parse(entry)? {
                Upstream::Fixed(address) => {
                    fixed.insert(backend(address));
                }
                Upstream::Named { host, port } => named.push((host, port)),
            }
        }
        Ok(DnsDiscovery {
            route: route.to_owned(),
            fixed,
            named,
            resolver,
            check,
            known: Mutex::new(HashMap::new()),
            admitted: Mutex::new(HashSet::new()),
        })
    }

    async fn resolve(&self, host: &str, port: u16) -> Option<BTreeSet<SocketAddr>> {
        // As written: a short name (`users-headless`) goes through the
        // resolver's search domains, as Kubernetes pods rely on.
        match self.resolver.lookup_ip(host).await {
            Ok(found) => Some(found.iter().map(|ip| SocketAddr::new(ip, port)).collect()),
            // No replica ready (or the name is gone): an empty route.
            Err(error) if error.is_no_records_found() || error.is_nx_domain() => {
                Some(BTreeSet::new())
            }
            Err(error) => {
                tracing::warn!(route = %self.route, host, %error, "DNS lookup failed; keeping the replicas known so far");
                None
            }
        }
    }
}

fn backend(address: SocketAddr) -> Backend {
    Backend {
        addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(address),
        weight: 1,
        ext: Default::default(),
    }
}

#[async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora_core::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut resolved = BTreeSet::new();
        for (host, port) in &self.named {
            let addresses = match self.resolve(host, *port).await {
                Some(addresses) => {
                    self.known
                        .lock()
                        .expect("discovery state")
                        .insert(host.clone(), addresses.clone());
                    addresses
                }
                None => self
                    .known
                    .lock()
                    .expect("discovery state")
                    .get(host)
                    .cloned()
                    .unwrap_or_default(),
            };
            resolved.extend(addresses);
        }
        // Forget admissions of addresses that left, so one that comes back
        // (a new pod on a reused IP) is checked again.
        self.admitted
            .lock()
            .expect("discovery state")
            .retain(|address| {
                let stays = resolved.contains(address);
                if !stays {
                    tracing::info!(route = %self.route, upstream = %address, "a replica left DNS; it gets no new calls");
                    let _ = crate::metrics::UPSTREAM_HEALTHY
                        .remove_label_values(&[&self.route, &address.to_string()]);
                }
                stays
            });
        let newcomers: Vec<SocketAddr> = {
            let admitted = self.admitted.lock().expect("discovery state");
            resolved
                .iter()
                .filter(|address| !admitted.contains(address))
                .copied()
                .collect()
        };
        // Checked side by side: each takes up to the check's timeout.
        let mut checks = tokio::task::JoinSet::new();
        for address in newcomers {
            let check = Arc::clone(&self.check);
            checks.spawn(async move { (address, check.check(&backend(address)).await.is_ok()) });
        }
        while let Some(Ok((address, passed))) = checks.join_next().await {
            if passed {
                tracing::info!(route = %self.route, upstream = %address, "a replica appeared in DNS and serves; it joins");
                // Pingora takes a newcomer to be healthy until a check says
                // otherwise, so no status change would list it.
                crate::metrics::UPSTREAM_HEALTHY
                    .with_label_values(&[&self.route, &address.to_string()])
                    .set(1);
                self.admitted
                    .lock()
                    .expect("discovery state")
                    .insert(address);
            } else {
                tracing::debug!(route = %self.route, upstream = %address, "a replica in DNS does not serve yet");
            }
        }
        let admitted = self.admitted.lock().expect("discovery state");
        let mut backends = self.fixed.clone();
        backends.extend(
            resolved
                .iter()
                .filter(|address| admitted.contains(address))
                .map(|address| backend(*address)),
        );
        Ok((backends, HashMap::new()))
    }
}

/// The route's health check, shared by the balancer and the discovery's
/// admission check.
pub struct SharedCheck(pub Arc<dyn HealthCheck + Send + Sync>);

#[async_trait]
impl HealthCheck for SharedCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        self.0.check(target).await
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.0.health_status_change(target, healthy).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.0.health_threshold(success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_addresses_or_names() {
        assert_eq!(
            Upstream::parse("127.0.0.1:50051"),
            Ok(Upstream::Fixed("127.0.0.1:50051".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("[::1]:50051"),
            Ok(Upstream::Fixed("[::1]:50051".parse().unwrap()))
        );
        assert_eq!(
            Upstream::parse("users-svc.munity.svc.cluster.local:50051"),
            Ok(Upstream::Named {
                host: "users-svc.munity.svc.cluster.local".to_owned(),
                port: 50051
            })
        );
        assert!(Upstream::parse("users-svc").is_err());
        assert!(Upstream::parse("users svc:1").is_err());
        assert!(Upstream::parse("users:99999").is_err());
        assert!(any_named(&["1.2.3.4:1".into(), "a.b:2".into()]));
        assert!(!any_named(&["1.2.3.4:1".into()]));
    }
}

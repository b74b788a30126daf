//! Channels to other services that balance over every replica.
//!
//! A peer's URL names a host; in Kubernetes that is a headless Service
//! whose DNS answer lists every ready pod. One HTTP/2 connection to a
//! ClusterIP would pin all of a service's calls to one pod, so the channel
//! here resolves the host again every few seconds and keeps a connection to
//! each address it finds, spreading calls over them (tower's
//! power-of-two-choices balancer, inside tonic's balanced channel):
//! replicas that appear get calls, ones that leave get no new ones. A failed
//! lookup keeps what was known. An IP address in the URL is one replica.

use std::{
    collections::BTreeSet, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use tonic::transport::{Channel, Endpoint, channel::Change};

/// How often a peer's host is resolved again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Finds the addresses of `host:port` (the system resolver, or a test's).
pub type Resolve = Arc<
    dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system resolver (`/etc/resolv.conf`, `/etc/hosts`).
pub fn system_resolver() -> Resolve {
    Arc::new(|host, port| {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    })
}

/// A channel to the service at `url` (`http://host:port`), balanced over
/// every address its host resolves to, each connection set up by
/// `configure` (timeouts); connections are made lazily. Must be called in a
/// tokio runtime: a task keeps the replicas until the channel is dropped.
pub fn balanced_channel(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
) -> anyhow::Result<Channel> {
    balanced_channel_with(url, configure, system_resolver(), REFRESH)
}

/// [`balanced_channel`] with the resolver and refresh interval given.
pub fn balanced_channel_with(
    url: &str,
    configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static,
    resolve: Resolve,
    refresh: Duration,
) -> anyhow::Result<Channel> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{url:?}: only http://host:port is supported");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("{url:?} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(configure(Endpoint::from_shared(url.to_owned())?).connect_lazy());
    }
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    tokio::spawn(async move {
        let mut known: BTreeSet<SocketAddr> = BTreeSet::new();
        loop {
            match resolve(host.clone(), port).await {
                Ok(found) => {
                    let found: BTreeSet<SocketAddr> = found.into_iter().collect();
                    for gone in known.difference(&found) {
                        tracing::info!(peer = %host, replica = %gone, "a peer replica left DNS");
                        if changes.send(Change::Remove(*gone)).await.is_err() {
                            return;
                        }
                    }
                    for new in found.difference(&known) {
                        let Ok(endpoint) = Endpoint::from_shared(format!("http://{new}")) else {
                            continue;
                        };
                        tracing::debug!(peer = %host, replica = %new, "a peer replica joins");
                        if changes
                            .send(Change::Insert(*new, configure(endpoint)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    known = found;
                }
                Err(error) => {
                    tracing::warn!(peer = %host, %error, "cannot resolve a peer; keeping its known replicas");
                }
            }
            // The channel was dropped: nobody needs the replicas any more.
            tokio::select! {
                () = changes.closed() => return,
                () = tokio::time::sleep(refresh) => {}
            }
        }
    });
    Ok(channel)
}

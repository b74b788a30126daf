//! Ends proxied calls still open when the gateway drains, by closing the
//! upstream connections they ride on.
//!
//! At SIGTERM, HTTP/2 clients get GOAWAY and finish their calls, but a
//! server stream proxied to an upstream has no end of its own: Pingora cut
//! it when the grace period ran out, with no status (a gRPC client saw
//! Unknown "h2 protocol error ... broken pipe"), so the client could not
//! tell a shutdown from a broken network. HTTP/1.1 calls are ended at the
//! drain moment by failing their client connection's reads
//! (`connections.rs`); an HTTP/2 client connection carries many calls and
//! its reads cannot be failed for one of them, and Pingora offers no hook
//! into its proxy loop once a response streams. What does end a call in
//! that loop is its upstream stream failing: Pingora then calls
//! `fail_to_proxy`, which ends a response already under way with
//! UNAVAILABLE "the gateway is shutting down; reconnect" in its trailers
//! (or a gRPC-web trailer frame).
//!
//! So each proxied call registers the upstream connection Pingora gave it
//! (`connected_to_upstream`, which hands over its file descriptor), and at
//! the drain moment every registered connection is shut down (`shutdown(2)`,
//! both ways): Pingora's reads on it end at once, the calls on it fail into
//! `fail_to_proxy`, and the upstream sees the connection close and stops
//! its side of the streams. The sockets stay plain TCP sockets owned by
//! Pingora: its connection pool checks idle connections' liveness through
//! the descriptor, which a wrapped ("virtual") socket lacks (tried: a
//! rolling restart then saw a dead pooled connection reused).
//!
//! Every call on a connection shut down ends with it, unary calls too: at
//! the drain moment (half the grace period) every call still open is ended
//! with UNAVAILABLE, as on HTTP/1.1, and its client retries elsewhere.
//! Calls reaching an upstream after the drain are refused the same way.

use std::{
    net::SocketAddr,
    os::fd::RawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use munity_platform::shutdown::ShutdownToken;
use nix::sys::socket::{self, SockaddrStorage};

/// The upstream connections of the calls in flight.
#[derive(Debug)]
pub struct UpstreamConnections {
    /// By registration: several calls share one HTTP/2 connection.
    open: DashMap<u64, Connection>,
    next: AtomicU64,
    drain: ShutdownToken,
}

/// One call's upstream connection: its descriptor, and the addresses that
/// tell it from a later socket given the same descriptor number.
#[derive(Debug, Clone, Copy)]
struct Connection {
    fd: RawFd,
    addresses: (SocketAddr, SocketAddr),
}

/// A call's place in [`UpstreamConnections`]; given back when dropped, with
/// the call's context, however the call ended.
#[derive(Debug)]
pub struct Registration {
    connections: Arc<UpstreamConnections>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.open.remove(&self.id);
    }
}

/// The gateway drained before the call reached its upstream.
#[derive(Debug)]
pub struct Draining;

/// The (local, peer) addresses of the TCP socket `fd`.
fn addresses(fd: RawFd) -> Option<(SocketAddr, SocketAddr)> {
    fn inet(address: SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = address.as_sockaddr_in() {
            return Some(SocketAddr::from(*v4));
        }
        address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
    }
    let local = inet(socket::getsockname::<SockaddrStorage>(fd).ok()?)?;
    let peer = inet(socket::getpeername::<SockaddrStorage>(fd).ok()?)?;
    Some((local, peer))
}

impl UpstreamConnections {
    pub fn new(drain: ShutdownToken) -> Arc<Self> {
        Arc::new(UpstreamConnections {
            open: DashMap::new(),
            next: AtomicU64::new(0),
            drain,
        })
    }

    /// Registers the upstream connection `fd` of a call until the returned
    /// registration is dropped; `Err` if the gateway has drained already
    /// (the call should end with UNAVAILABLE). `Ok(None)` for a socket that
    /// is not a connected TCP socket (nothing to end). `known`: its (local,
    /// peer) addresses if the caller has them (Pingora's connection digest
    /// keeps them), else they are asked of the socket.
    pub fn register(
        self: &Arc<Self>,
        fd: RawFd,
        known: Option<(SocketAddr, SocketAddr)>,
    ) -> Result<Option<Registration>, Draining> {
        if self.drain.is_cancelled() {
            return Err(Draining);
        }
        let Some(addresses) = known.or_else(|| addresses(fd)) else {
            return Ok(None);
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.insert(id, Connection { fd, addresses });
        let registration = Registration {
            connections: self.clone(),
            id,
        };
        // Checked again once inserted: either `end_all`, which runs after
        // the drain is cancelled, sees this connection, or this sees the
        // drain.
        if self.drain.is_cancelled() {
            return Err(Draining);
        }
        Ok(Some(registration))
    }

    /// Shuts down every registered connection. Called at the drain moment.
    pub fn end_all(&self) {
        // Several calls share one HTTP/2 connection: each is shut once.
        let connections: std::collections::HashMap<RawFd, Connection> = self
            .open
            .iter()
            .map(|c| (c.value().fd, *c.value()))
            .collect();
        let mut ended = 0usize;
        for connection in connections.into_values() {
            // The descriptor is Pingora's: the connection may have closed
            // since it was registered (its calls are then ending anyway)
            // and the number been given to another socket, which must not
            // be touched. Its addresses tell.
            if addresses(connection.fd) != Some(connection.addresses) {
                continue;
            }
            if socket::shutdown(connection.fd, socket::Shutdown::Both).is_ok() {
                ended += 1;
            }
        }
        if ended > 0 {
            tracing::info!(
                connections = ended,
                "draining: upstream connections of calls still open closed (they end with UNAVAILABLE)"
            );
        }
    }
}

//! The relay's upstream HTTP/2 connections (`proxy/relay.rs`), by replica.
//!
//! Each connection carries at most [`STREAMS_PER_CONNECTION`] calls, as
//! Pingora's do on the other path. A call takes a place on the first
//! connection with one free; when none has, one call opens the next
//! connection while the others arriving meanwhile wait for it, so a burst
//! of new streams shares few connections (`upstream_streams.rs` tells why
//! that matters). Connections the replica closed (it restarted, or sent
//! GOAWAY) are dropped from the list when next looked at.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::uri::Authority;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use crate::upstream_streams::STREAMS_PER_CONNECTION;

/// Longest a connection to a replica may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings on an upstream connection this often, so a replica that vanished
/// without closing it (a host gone) is found out; as Pingora's are.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Upstream connections for request bodies of type `B`.
pub struct UpstreamPool<B> {
    replicas: Mutex<HashMap<SocketAddr, Arc<Replica<B>>>>,
}

impl<B> Default for UpstreamPool<B> {
    fn default() -> Self {
        UpstreamPool {
            replicas: Mutex::default(),
        }
    }
}

struct Replica<B> {
    authority: Authority,
    connections: Mutex<Vec<Arc<Connection<B>>>>,
    /// Held by the call opening a connection; the others wait on it.
    opening: tokio::sync::Mutex<()>,
}

struct Connection<B> {
    sender: SendRequest<B>,
    calls: AtomicUsize,
}

/// A call's place on an upstream connection: its sender, and the place,
/// given back when this is dropped (the call ended, or its client left).
pub struct CallSlot<B> {
    connection: Arc<Connection<B>>,
    /// The replica, as the upstream request's `:authority`.
    pub authority: Authority,
}

impl<B> CallSlot<B> {
    pub fn sender(&self) -> SendRequest<B> {
        self.connection.sender.clone()
    }
}

impl<B> Drop for CallSlot<B> {
    fn drop(&mut self) {
        self.connection.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> UpstreamPool<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A place on a connection to `address`, opening one if every
    /// connection is full. Fails when the replica cannot be reached.
    pub async fn call_slot(&self, address: SocketAddr) -> io::Result<CallSlot<B>> {
        let replica = self.replica(address);
        if let Some(slot) = replica.free_slot() {
            return Ok(slot);
        }
        let _opening = replica.opening.lock().await;
        if let Some(slot) = replica.free_slot() {
            return Ok(slot);
        }
        let connection = Arc::new(Connection {
            sender: connect(address).await?,
            calls: AtomicUsize::new(1),
        });
        replica
            .connections
            .lock()
            .expect("no panics under the lock")
            .push(connection.clone());
        Ok(CallSlot {
            connection,
            authority: replica.authority.clone(),
        })
    }

    fn replica(&self, address: SocketAddr) -> Arc<Replica<B>> {
        let mut replicas = self.replicas.lock().expect("no panics under the lock");
        replicas
            .entry(address)
            .or_insert_with(|| {
                Arc::new(Replica {
                    authority: address
                        .to_string()
                        .parse()
                        .expect("a socket address is an authority"),
                    connections: Mutex::default(),
                    opening: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }
}

impl<B> Replica<B> {
    fn free_slot(&self) -> Option<CallSlot<B>> {
        let mut connections = self.connections.lock().expect("no panics under the lock");
        connections.retain(|connection| !connection.sender.is_closed());
        let connection = connections
            .iter()
            .find(|connection| connection.calls.load(Ordering::Relaxed) < STREAMS_PER_CONNECTION)?;
        connection.calls.fetch_add(1, Ordering::Relaxed);
        Some(CallSlot {
            connection: connection.clone(),
            authority: self.authority.clone(),
        })
    }
}

/// Opens an HTTP/2 connection to `address` (prior knowledge, as gRPC
/// servers expect), driven by a task of its own.
async fn connect<B>(address: SocketAddr) -> io::Result<SendRequest<B>>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    socket.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .handshake(TokioIo::new(socket))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%address, %error, "upstream connection ended");
        }
    });
    Ok(sender)
}

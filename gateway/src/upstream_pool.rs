//! The relay's upstream HTTP/2 connections (`proxy/relay.rs`), by replica.
//!
//! Each connection carries at most [`STREAMS_PER_CONNECTION`] calls, as
//! Pingora's do on the other path. A call takes a place on the first
//! connection with one free; when none has, one call opens the next
//! connection while the others arriving meanwhile wait for it, so a burst
//! of new streams shares few connections (`upstream_streams.rs` tells why
//! that matters). Connections the replica closed (it restarted, or sent
//! GOAWAY) are dropped from the list when next looked at.
//!
//! At the drain, [`UpstreamPool::end_all`] cuts every connection (its
//! socket's reads fail, so does every call on it): the calls still open
//! see their upstream fail and end with UNAVAILABLE (`proxy/relay.rs`).
//! Cutting the connections, rather than polling a drain future in every
//! call, keeps the drain off the per-message path (that poll was 7% of the
//! gateway's CPU relaying notifications).

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;

use http::uri::Authority;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

pub use crate::upstream_streams::STREAMS_PER_CONNECTION;

/// Longest a connection to a replica may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pings on an upstream connection this often, so a replica that vanished
/// without closing it (a host gone) is found out; as Pingora's are.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Upstream connections for request bodies of type `B`.
pub struct UpstreamPool<B> {
    replicas: Mutex<HashMap<SocketAddr, Arc<Replica<B>>>>,
    /// Set by [`UpstreamPool::end_all`]: one atomic load per call, where
    /// the drain token's `is_cancelled` takes a lock.
    ended: AtomicBool,
}

impl<B> Default for UpstreamPool<B> {
    fn default() -> Self {
        UpstreamPool {
            replicas: Mutex::default(),
            ended: AtomicBool::new(false),
        }
    }
}

impl<B> UpstreamPool<B> {
    /// Whether the drain has cut the connections: no call should start.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
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
    /// Cuts the connection's socket at the drain.
    cut: Arc<Cut>,
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
        let (sender, cut) = connect(address).await?;
        let connection = Arc::new(Connection {
            sender,
            calls: AtomicUsize::new(1),
            cut,
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

    /// Closes every connection (the drain).
    pub fn end_all(&self) {
        self.ended.store(true, Ordering::Release);
        let replicas = self.replicas.lock().expect("no panics under the lock");
        for replica in replicas.values() {
            let connections = replica
                .connections
                .lock()
                .expect("no panics under the lock");
            for connection in connections.iter() {
                connection.cut.sever();
            }
        }
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
async fn connect<B>(address: SocketAddr) -> io::Result<(SendRequest<B>, Arc<Cut>)>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let socket = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
    socket.set_nodelay(true)?;
    let cut = Arc::new(Cut::default());
    let socket = Severable {
        inner: socket,
        cut: cut.clone(),
    };
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
    Ok((sender, cut))
}

/// Whether an upstream socket has been cut, and who to wake when it is.
#[derive(Default)]
struct Cut {
    severed: AtomicBool,
    reader: AtomicWaker,
}

impl Cut {
    fn sever(&self) {
        self.severed.store(true, Ordering::Release);
        self.reader.wake();
    }

    fn error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, "the gateway is draining")
    }
}

/// An upstream socket whose reads fail once it is cut. (hyper drives each
/// HTTP/2 connection in a task of its own, out of the pool's reach, so the
/// socket is where a connection can be ended from outside.)
struct Severable {
    inner: TcpStream,
    cut: Arc<Cut>,
}

impl AsyncRead for Severable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.severed.load(Ordering::Acquire) {
            return Poll::Ready(Err(Cut::error()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                // Registered only while waiting; checked again after, so a
                // cut between the two is not missed.
                this.cut.reader.register(cx.waker());
                if this.cut.severed.load(Ordering::Acquire) {
                    Poll::Ready(Err(Cut::error()))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Severable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

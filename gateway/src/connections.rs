//! The gateway's own accept loop, in front of Pingora's HTTP handling.
//!
//! Pingora's listeners bound neither how many connections a client holds
//! nor how long it may take to send a request: probed from outside, a
//! request header sent one byte every 5 s, a connection that sent nothing,
//! and a bare HTTP/2 preface were all still open after 150 s, each costing
//! memory and a descriptor (a slowloris starves the edge). So the gateway
//! accepts connections itself (Pingora supports this: `http_proxy` +
//! `ServerApp::process_new`) and:
//!
//! - refuses a connection past `max_connections` open in all, or past
//!   `max_connections_per_ip` from one client address, by closing it at
//!   once (`munity_gateway_connections_refused_total{reason}`);
//! - wraps each connection in [`Guarded`], which ends it when no request
//!   arrives in time: a new connection must deliver its first request (an
//!   HTTP/1.1 header, or the HTTP/2 preface, settings and first call's
//!   headers, TLS handshake included) within `request_header_timeout_ms`,
//!   and an idle HTTP/1.1 keep-alive connection its next one within
//!   [`HTTP1_KEEPALIVE`] plus that. An HTTP/2 connection, once it has
//!   carried a call, is Pingora's to time out (`client_idle_timeout_secs`).
//!   Requests reach [`Connections::request_started`] from the proxy's
//!   `early_request_filter`, once their header has been read whole, and
//!   [`Connections::request_finished`] from `logging`.
//! - at shutdown, once half the grace period has passed ([`StreamDrain`]),
//!   ends the call still open on each HTTP/1.1 connection by failing its
//!   reads: the proxy then ends a gRPC-web stream with an UNAVAILABLE
//!   trailer frame (`fail_to_proxy`), where Pingora would otherwise cut it
//!   without one at the end of the grace period. HTTP/2 clients have had
//!   GOAWAY since the shutdown began.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use async_trait::async_trait;
use dashmap::DashMap;
use munity_platform::shutdown::ShutdownToken;
use pingora_core::{
    apps::ServerApp,
    listeners::tls::Acceptor,
    protocols::{
        GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
        TimingDigest, UniqueID, UniqueIDType, l4::stream::Stream as L4Stream,
        raw_connect::ProxyDigest,
    },
    server::ShutdownWatch,
    services::background::BackgroundService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{metrics, proxy::relay::Relay};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One end of an in-process connection to Pingora's app, for requests the
/// relay hands on: a socket pair, whose other end is returned to be served
/// as a client connection from `peer`. Its local address is not the
/// listener's, so the proxy's per-connection bookkeeping leaves it alone
/// (the relay counts the client connection's calls itself).
pub(crate) fn in_process(
    peer: SocketAddr,
) -> io::Result<(tokio::net::UnixStream, pingora_core::protocols::Stream)> {
    let (near, far) = tokio::net::UnixStream::pair()?;
    let mut stream = L4Stream::from(far);
    let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    Ok((near, Box::new(stream)))
}

/// How long Pingora keeps an idle HTTP/1.1 keep-alive connection (it sets
/// 60 s on every HTTP/1.1 session); the next request's header then has
/// `request_header_timeout_ms` more.
pub const HTTP1_KEEPALIVE: Duration = Duration::from_secs(60);

/// The bounds on client connections, from `[gateway]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_total: usize,
    pub max_per_ip: usize,
    pub first_request: Duration,
}

/// Every open client connection, counted in all and per client IP, with the
/// state its [`Guarded`] stream and the proxy share.
pub struct Connections {
    limits: ConnectionLimits,
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// By (client address, local address): what the proxy can look up from
    /// a session.
    open: DashMap<(SocketAddr, SocketAddr), Arc<ConnState>>,
    /// Cancelled when calls still open should end (shutdown, half way
    /// through the grace period).
    drain: ShutdownToken,
}

/// What the proxy tells a connection's [`Guarded`] stream about its
/// requests.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    started: AtomicU64,
    finished: AtomicU64,
    /// HTTP/2: once a call has arrived, idleness is Pingora's to judge.
    multiplexed: AtomicBool,
}

impl ConnState {
    /// A call on an HTTP/2 connection the relay serves has arrived: the
    /// connection is busy until the returned guard is dropped.
    pub(crate) fn call_started(self: &Arc<Self>) -> CallOnConnection {
        self.multiplexed.store(true, Ordering::Release);
        self.started.fetch_add(1, Ordering::AcqRel);
        CallOnConnection(self.clone())
    }

    /// Resolves once the connection has had no call open for `timeout`
    /// (checked every `timeout`, so it closes between one and two of them
    /// after its last call ended).
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let mut seen = self.finished.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(timeout).await;
            let finished = self.finished.load(Ordering::Acquire);
            if finished == seen && self.started.load(Ordering::Acquire) == finished {
                return;
            }
            seen = finished;
        }
    }
}

/// One call on a connection, counted finished when dropped.
#[derive(Debug)]
pub(crate) struct CallOnConnection(Arc<ConnState>);

impl Drop for CallOnConnection {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// Holds one connection's place in the counts; gives it back when dropped,
/// which is when the connection's stream is dropped, however it ended.
#[derive(Debug)]
struct Admission {
    connections: Arc<Connections>,
    key: (SocketAddr, SocketAddr),
}

impl Drop for Admission {
    fn drop(&mut self) {
        let connections = &self.connections;
        connections.open.remove(&self.key);
        connections.total.fetch_sub(1, Ordering::AcqRel);
        let ip = self.key.0.ip();
        if let dashmap::Entry::Occupied(mut entry) = connections.per_ip.entry(ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
        metrics::CONNECTIONS_OPEN.dec();
    }
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("limits", &self.limits)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits, drain: ShutdownToken) -> Arc<Self> {
        // Present from start-up, with zeros.
        metrics::CONNECTIONS_OPEN.set(0);
        for reason in [Refused::MaxConnections, Refused::MaxConnectionsPerIp] {
            metrics::CONNECTIONS_REFUSED.with_label_values(&[reason.label()]);
        }
        metrics::CONNECTIONS_TIMED_OUT.inc_by(0);
        Arc::new(Connections {
            limits,
            total: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            open: DashMap::new(),
            drain,
        })
    }

    /// Takes a place for a connection from `peer`, or says why there is none.
    fn admit(self: &Arc<Self>, peer: SocketAddr, local: SocketAddr) -> Result<Admission, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.limits.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::MaxConnections);
        }
        {
            let mut count = self.per_ip.entry(peer.ip()).or_insert(0);
            if *count >= self.limits.max_per_ip {
                drop(count);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::MaxConnectionsPerIp);
            }
            *count += 1;
        }
        metrics::CONNECTIONS_OPEN.inc();
        Ok(Admission {
            connections: self.clone(),
            key: (peer, local),
        })
    }

    fn state(&self, session: &pingora_proxy::Session) -> Option<Arc<ConnState>> {
        let peer = *session.client_addr()?.as_inet()?;
        let local = *session.server_addr()?.as_inet()?;
        self.open.get(&(peer, local)).map(|s| s.clone())
    }

    /// A request's header has been read whole: its connection is busy.
    pub fn request_started(&self, session: &pingora_proxy::Session) {
        if let Some(state) = self.state(session) {
            if session.is_http2() {
                state.multiplexed.store(true, Ordering::Release);
            }
            state.started.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A request is over: an HTTP/1.1 connection waits for its next one.
    pub fn request_finished(&self, session: &pingora_proxy::Session) {
        if let Some(state) = self.state(session) {
            state.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A client connection that ends itself when no request arrives in time.
#[derive(Debug)]
pub struct Guarded {
    inner: L4Stream,
    state: Arc<ConnState>,
    first_request: Duration,
    /// The `finished` count the current wait began at, and its deadline;
    /// `None` while a request is in progress.
    wait: Option<(u64, Instant)>,
    timer: Pin<Box<Sleep>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    _admission: Admission,
}

impl Guarded {
    /// The deadline of the wait for a request, if the connection is waiting
    /// for one; a new wait starts each time a request finishes.
    fn waiting_deadline(&mut self) -> Option<Instant> {
        if self.state.multiplexed.load(Ordering::Acquire) {
            return None;
        }
        let finished = self.state.finished.load(Ordering::Acquire);
        if self.state.started.load(Ordering::Acquire) != finished {
            self.wait = None;
            return None;
        }
        match self.wait {
            Some((mark, deadline)) if mark == finished => Some(deadline),
            _ => {
                let deadline = Instant::now() + HTTP1_KEEPALIVE + self.first_request;
                self.wait = Some((finished, deadline));
                Some(deadline)
            }
        }
    }

    /// Whether the connection is in the middle of an HTTP/1.1 call.
    fn in_http1_call(&self) -> bool {
        !self.state.multiplexed.load(Ordering::Acquire)
            && self.state.started.load(Ordering::Acquire)
                != self.state.finished.load(Ordering::Acquire)
    }

    fn timed_out() -> io::Error {
        metrics::CONNECTIONS_TIMED_OUT.inc();
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no request arrived within the gateway's request header timeout",
        )
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = this.waiting_deadline() {
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Guarded::timed_out()));
            }
        } else if this.in_http1_call() && this.drain.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the gateway is shutting down",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Writes go straight through. Unlike `GrpcHost`'s sockets, they do not
/// wait a turn (`munity_platform::write_turn`): each Pingora worker is a
/// runtime of one thread, which runs woken tasks in order, so the frames of
/// calls woken together already leave together; a turn only added a poll
/// (`bench/notify` case c: 8.8-10.2 us of gateway CPU per delivery with it,
/// 8.5-9.3 without; `bench/gateway --streams`: 12-20% more per message).
impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    /// Says no, though the socket has vectored writes (they still reach it
    /// through `poll_write_vectored`): h2 asks, and with vectored writes it
    /// sends every DATA frame of 256 bytes or more in a `writev` of its own
    /// before it buffers the next, so each streamed notification (about
    /// 280 bytes) cost the gateway a `writev`. Without, it copies frames up
    /// to 1 KiB into its 16 KiB buffer (gateway CPU per delivery in
    /// `bench/notify` case c: 19-20 us before, 15 after).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut self.inner).await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {}

#[async_trait]
impl Peek for Guarded {
    /// Pingora peeks for the HTTP/2 preface before anything else (reading
    /// 24 bytes, however long they take): bounded by the first request's
    /// deadline like every other read.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let deadline = self.waiting_deadline();
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.inner.try_peek(buf))
                .await
                .unwrap_or_else(|_| Err(Guarded::timed_out())),
            None => self.inner.try_peek(buf).await,
        }
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

/// One listening socket: plaintext (h2c and HTTP/1.1) or TLS.
pub struct Endpoint {
    pub listener: std::net::TcpListener,
    pub tls: Option<Arc<Acceptor>>,
}

/// The accept loops, run as a Pingora background service so they share the
/// server's runtime and shutdown.
pub struct EdgeListeners<A> {
    pub app: Arc<A>,
    /// Serves cleartext HTTP/2 connections when on (`gateway.grpc_relay`).
    pub relay: Option<Arc<Relay<A>>>,
    pub endpoints: Mutex<Vec<Endpoint>>,
    pub connections: Arc<Connections>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> BackgroundService for EdgeListeners<A> {
    async fn start(&self, shutdown: ShutdownWatch) {
        let endpoints = std::mem::take(&mut *self.endpoints.lock().expect("not poisoned"));
        let mut loops = tokio::task::JoinSet::new();
        for endpoint in endpoints {
            loops.spawn(accept_loop(
                endpoint,
                self.app.clone(),
                self.relay.clone(),
                self.connections.clone(),
                shutdown.clone(),
            ));
        }
        while loops.join_next().await.is_some() {}
        // As Pingora's own listening service does once it stops accepting:
        // idle keep-alive connections waiting for a request are let go.
        self.app.cleanup().await;
    }
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    endpoint: Endpoint,
    app: Arc<A>,
    relay: Option<Arc<Relay<A>>>,
    connections: Arc<Connections>,
    mut shutdown: ShutdownWatch,
) {
    let Endpoint { listener, tls } = endpoint;
    let local = listener.local_addr().ok();
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot listen");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break } else { continue }
            }
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: back off rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = local.unwrap_or_else(|| tcp.local_addr().unwrap_or(peer));
        let admission = match connections.admit(peer, local) {
            Ok(admission) => admission,
            Err(reason) => {
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&[reason.label()])
                    .inc();
                tracing::debug!(%peer, ?reason, "connection refused");
                drop(tcp);
                continue;
            }
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        let connections = connections.clone();
        let tls = tls.clone();
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut stream = L4Stream::from(tcp);
            let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&stream));
            let _ = digest.peer_addr.set(Some(peer.into()));
            let _ = digest.local_addr.set(Some(local.into()));
            stream.set_socket_digest(digest);
            let state = Arc::new(ConnState::default());
            connections.open.insert((peer, local), state.clone());
            let first_request = connections.limits.first_request;
            let mut guarded = Guarded {
                inner: stream,
                state: state.clone(),
                first_request,
                wait: Some((0, Instant::now() + first_request)),
                timer: Box::pin(tokio::time::sleep(first_request)),
                drain: Box::pin(connections.drain.clone().cancelled_owned()),
                _admission: admission,
            };
            if let (None, Some(relay)) = (&tls, relay) {
                // Cleartext HTTP/2 with prior knowledge, as gRPC clients
                // connect, goes to the relay. The peeked bytes are read
                // again by whoever serves the connection.
                let mut preface = [0u8; H2_PREFACE.len()];
                match guarded.try_peek(&mut preface).await {
                    Ok(true) if preface == *H2_PREFACE => {
                        // On a worker picked at random, as Pingora places
                        // its HTTP/2 sessions; its calls' tasks stay there.
                        pingora_runtime::current_handle()
                            .spawn(relay.serve(guarded, peer, state, shutdown));
                        return;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%peer, %error, "no request arrived");
                        return;
                    }
                }
            }
            let stream: pingora_core::protocols::Stream = match tls {
                None => Box::new(guarded),
                Some(acceptor) => match acceptor.tls_handshake(guarded).await {
                    Ok(tls) => Box::new(tls),
                    Err(error) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                },
            };
            let mut next = app.process_new(stream, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
    }
}

/// Cancels `drain` once the process has been shutting down for `after`
/// (half its grace period), so that streams still open end with a status
/// before the grace period ends and Pingora drops them; then closes the
/// upstream connections of proxied calls still open, which ends them too
/// (`upstream_drain.rs`: HTTP/2 client connections cannot be failed per
/// call as HTTP/1.1 ones are here).
pub struct StreamDrain {
    pub shutdown: ShutdownToken,
    pub drain: ShutdownToken,
    pub after: Duration,
    pub upstream_connections: Arc<crate::upstream_drain::UpstreamConnections>,
    /// The relay's upstream connections, closed alike.
    pub relay_upstreams: Arc<crate::upstream_pool::UpstreamPool<crate::proxy::relay::RequestBody>>,
}

#[async_trait]
impl BackgroundService for StreamDrain {
    async fn start(&self, _: ShutdownWatch) {
        self.shutdown.cancelled().await;
        tokio::time::sleep(self.after).await;
        self.drain.cancel();
        self.upstream_connections.end_all();
        self.relay_upstreams.end_all();
    }
}

//! bench/gateway's bare hyper relay: the alternative data path for gRPC.
//! hyper's HTTP/2 server takes a call, hyper's HTTP/2 client sends it on an
//! upstream connection carrying at most 128 calls (as the gateway's), and
//! the upstream's response, trailers included, goes back as it came: the
//! client stream's task polls the upstream stream directly, with no channel
//! and no task between them. It checks nothing, like `bare-pingora`.

#![forbid(unsafe_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bench_proxies::{ProxyArgs, Routes, STREAMS_PER_UPSTREAM_CONNECTION};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, Uri, uri::Authority};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http2::SendRequest, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let args = ProxyArgs::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: ProxyArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let relay = Arc::new(Relay::new(&args.routes));
    println!("bare-hyper: listening on grpc://{}", args.listen);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (socket, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
        };
        socket.set_nodelay(true)?;
        let relay = relay.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let relay = relay.clone();
                async move { Ok::<_, Infallible>(relay.call(request).await) }
            });
            // The gateway's limit of streams per client connection.
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(1000)
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

struct Relay {
    routes: Routes,
    upstreams: Vec<Arc<Upstream>>,
}

impl Relay {
    fn new(routes: &Routes) -> Self {
        let mut addresses = vec![routes.upstream];
        addresses.extend(routes.routes.iter().map(|(_, address)| *address));
        addresses.sort();
        addresses.dedup();
        Self {
            routes: routes.clone(),
            upstreams: addresses
                .into_iter()
                .map(Upstream::new)
                .map(Arc::new)
                .collect(),
        }
    }

    async fn call(&self, mut request: Request<Incoming>) -> Response<RelayBody> {
        let address = self.routes.upstream_for(request.uri().path());
        let upstream = self
            .upstreams
            .iter()
            .find(|upstream| upstream.address == address)
            .expect("every route's upstream is in the list");
        let mut uri = Uri::builder()
            .scheme("http")
            .authority(upstream.authority.clone());
        if let Some(path) = request.uri().path_and_query() {
            uri = uri.path_and_query(path.clone());
        }
        *request.uri_mut() = match uri.build() {
            Ok(uri) => uri,
            Err(e) => return unavailable(&format!("bad path: {e}")),
        };
        let (mut sender, slot) = match upstream.sender().await {
            Ok(found) => found,
            Err(e) => return unavailable(&format!("upstream {address}: {e}")),
        };
        match sender.send_request(request).await {
            Ok(response) => response.map(|body| RelayBody::Relayed { body, _slot: slot }),
            Err(e) => unavailable(&format!("upstream {address}: {e}")),
        }
    }
}

/// A trailers-only gRPC answer: UNAVAILABLE with the reason.
fn unavailable(message: &str) -> Response<RelayBody> {
    let message: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .header("grpc-message", message)
        .body(RelayBody::Empty)
        .expect("a response of valid parts")
}

/// One upstream's HTTP/2 connections, each carrying up to
/// `STREAMS_PER_UPSTREAM_CONNECTION` calls; calls that find none free wait
/// while one of them opens the next.
struct Upstream {
    address: SocketAddr,
    authority: Authority,
    connections: Mutex<Vec<Arc<Connection>>>,
    opening: tokio::sync::Mutex<()>,
}

struct Connection {
    sender: SendRequest<Incoming>,
    calls: AtomicUsize,
}

/// A call's place on a connection, given back when its response body is
/// dropped (finished, or the client went away).
struct CallSlot(Arc<Connection>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    fn new(address: SocketAddr) -> Self {
        Self {
            address,
            authority: address
                .to_string()
                .parse()
                .expect("an address is an authority"),
            connections: Mutex::default(),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    async fn sender(&self) -> anyhow::Result<(SendRequest<Incoming>, CallSlot)> {
        if let Some(found) = self.free_slot() {
            return Ok(found);
        }
        let _opening = self.opening.lock().await;
        if let Some(found) = self.free_slot() {
            return Ok(found);
        }
        let socket = TcpStream::connect(self.address).await?;
        socket.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(socket))
            .await?;
        tokio::spawn(connection);
        let connection = Arc::new(Connection {
            sender: sender.clone(),
            calls: AtomicUsize::new(1),
        });
        self.connections
            .lock()
            .expect("no panics under the lock")
            .push(connection.clone());
        Ok((sender, CallSlot(connection)))
    }

    fn free_slot(&self) -> Option<(SendRequest<Incoming>, CallSlot)> {
        let mut connections = self.connections.lock().expect("no panics under the lock");
        connections.retain(|connection| !connection.sender.is_closed());
        let connection = connections.iter().find(|connection| {
            connection.calls.load(Ordering::Relaxed) < STREAMS_PER_UPSTREAM_CONNECTION
        })?;
        connection.calls.fetch_add(1, Ordering::Relaxed);
        Some((connection.sender.clone(), CallSlot(connection.clone())))
    }
}

/// The body sent to the client: the upstream's, frame by frame, or none.
enum RelayBody {
    Relayed { body: Incoming, _slot: CallSlot },
    Empty,
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RelayBody::Relayed { body, .. } => Pin::new(body).poll_frame(cx),
            RelayBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Relayed { body, .. } => body.is_end_stream(),
            RelayBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Relayed { body, .. } => body.size_hint(),
            RelayBody::Empty => SizeHint::with_exact(0),
        }
    }
}

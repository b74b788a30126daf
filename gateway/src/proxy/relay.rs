//! The relay: plain gRPC over cleartext HTTP/2, served by hyper.
//!
//! Pingora's per-call machinery (a task joining both halves of a call, a
//! body channel between them, copies of the session and its headers) cost
//! as much CPU per call as nginx does before the gateway did any work of
//! its own; hyper's HTTP/2 server and client relaying the same calls cost
//! 0.72-0.79x nginx's at -c 4, and carried 5.4-6.9x nginx's streamed
//! messages per CPU-second where Pingora carried 1.8-2.4x (`bench/gateway`,
//! "Reference proxies"). So cleartext HTTP/2 connections (prior knowledge,
//! as gRPC clients connect inside a cluster) are served here:
//!
//! - A plain gRPC call (`application/grpc`, POST, no browser `Origin`) to a
//!   routed service passes the same checks as on Pingora's path
//!   (`Gateway::check_call`: token, method policy, limits, deadline, the
//!   one-message rule), goes to a replica the same balancer picks, on the
//!   relay's own upstream connections (`upstream_pool.rs`), and its answer
//!   comes back frame by frame, polled by the client stream's own task.
//!   It is counted and logged as on the other path (`Gateway::record_call`).
//! - The gateway's own health service (`Check`, `Watch`) is answered here,
//!   from `edge_health.rs` as on Pingora's path: gRPC clients check health
//!   on each of their connections, and a `Watch` lasts.
//! - Every other request on such a connection (gRPC-web, HTTP/JSON, the web
//!   app, unknown services, calls from a browser origin) goes on to
//!   Pingora's app over an in-process connection, so each of those rules
//!   stays in one place. TLS and HTTP/1.1 connections never come here.
//! - At shutdown each connection gets GOAWAY; calls still open at the drain
//!   (half the grace period) end with UNAVAILABLE, as Pingora's do: their
//!   upstream connections are closed (`UpstreamPool::end_all`), and a
//!   response whose upstream fails while the gateway drains ends with the
//!   draining status.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header, uri::Authority};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http2::SendRequest, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use munity_platform::{framing::MessageCounter, telemetry};
use pingora_core::{apps::ServerApp, server::ShutdownWatch};
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::Code;

use super::{
    CallCtx, DRAINING_MESSAGE, Gateway, Refusal, Step, reserved_headers, select_replica, start_span,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{
    connections::{self, CallOnConnection, ConnState},
    edge_health::{self, WatchEvent, Watcher},
    grpc,
    upstream_pool::{CallSlot, UpstreamPool},
};

/// The gateway's own health service, answered by the relay itself.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// How the relay serves client connections (from `[gateway]`).
pub(crate) struct RelaySettings {
    pub max_concurrent_streams: u32,
    /// Header blocks past this are refused by h2 itself; up to it, past
    /// `max_request_header_bytes`, with RESOURCE_EXHAUSTED by the checks.
    pub max_header_list_size: u32,
    /// A connection with no call open this long is closed (GOAWAY).
    pub idle_timeout: Option<Duration>,
}

/// The relay, over the gateway it shares with Pingora's app `A`.
pub(crate) struct Relay<A> {
    gateway: Arc<Gateway>,
    app: Arc<A>,
    upstreams: Arc<UpstreamPool<RequestBody>>,
    server: hyper::server::conn::http2::Builder<TokioExecutor>,
    idle_timeout: Option<Duration>,
}

impl<A: ServerApp + Send + Sync + 'static> Relay<A> {
    pub fn new(
        gateway: Arc<Gateway>,
        app: Arc<A>,
        upstreams: Arc<UpstreamPool<RequestBody>>,
        settings: RelaySettings,
    ) -> Self {
        let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        server
            .timer(TokioTimer::new())
            .max_concurrent_streams(settings.max_concurrent_streams)
            .max_header_list_size(settings.max_header_list_size)
            // gRPC has no use for `date`; formatting it cost every answer.
            .auto_date_header(false);
        Relay {
            gateway,
            app,
            upstreams,
            server,
            idle_timeout: settings.idle_timeout,
        }
    }

    /// Serves one client connection until it closes, GOAWAY first at
    /// shutdown or once it has been idle for the idle timeout.
    pub async fn serve<I>(
        self: Arc<Self>,
        io: I,
        peer: SocketAddr,
        state: Arc<ConnState>,
        mut shutdown: ShutdownWatch,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = Arc::new(ClientConnection {
            peer,
            state: state.clone(),
            shutdown: shutdown.clone(),
            pingora: tokio::sync::Mutex::new(None),
            forwarded: AtomicUsize::new(0),
            forwarded_generation: AtomicU64::new(0),
        });
        let relay = self.clone();
        let service = service_fn(move |request| {
            let relay = relay.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(relay.call(&client, request).await) }
        });
        let connection = self.server.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let idle_timeout = self.idle_timeout;
        let idle = async move {
            match idle_timeout {
                Some(timeout) => state.idle_for(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(idle);
        let mut closing = *shutdown.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        tracing::debug!(%peer, %error, "client connection ended");
                    }
                    return;
                }
                changed = shutdown.changed(), if !closing => {
                    if changed.is_err() || *shutdown.borrow() {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = &mut idle, if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }

    async fn call(
        &self,
        client: &Arc<ClientConnection>,
        request: Request<Incoming>,
    ) -> Response<RelayBody> {
        let on_connection = client.state.call_started();
        if let Some(watch) = health_method(&request) {
            return self
                .serve_health(client, request, watch, on_connection)
                .await;
        }
        if !self.relays(&request) {
            let forwarded = ForwardedCall::start(client);
            return match client.forward(&self.app, request).await {
                Ok(response) => response.map(|body| RelayBody::Forwarded {
                    body,
                    _call: forwarded,
                    _on_connection: on_connection,
                }),
                Err(error) => {
                    tracing::warn!(%error, "could not hand a request on to the proxy");
                    let mut response = status_response(
                        Code::Unavailable,
                        "the gateway could not serve this request",
                        &[],
                    );
                    *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    response
                }
            };
        }
        let (mut parts, body) = request.into_parts();
        let mut ctx = CallCtx::new();
        let client_ip = Some(client.peer.ip());
        if let Err(refusal) = self.admit(&mut parts, &mut ctx, client_ip).await {
            return self.refuse(ctx, client_ip, refusal);
        }
        self.proxy(parts, body, ctx, client_ip, on_connection).await
    }

    /// Whether the relay takes the request itself: a plain gRPC call to a
    /// routed service.
    fn relays(&self, request: &Request<Incoming>) -> bool {
        is_plain_grpc(request)
            && grpc::split_path(request.uri().path()).is_some_and(|(service, _)| {
                service != edge_health::SERVICE && self.gateway.routes.contains_key(service)
            })
    }

    /// Answers a call of the gateway's own health service after the same
    /// checks as any call (it is public, but rate-limited and counted):
    /// `Check` at once, `Watch` as a stream of the route's status.
    async fn serve_health(
        &self,
        client: &ClientConnection,
        request: Request<Incoming>,
        watch: bool,
        on_connection: CallOnConnection,
    ) -> Response<RelayBody> {
        let (mut parts, body) = request.into_parts();
        let mut ctx = CallCtx::new();
        let client_ip = Some(client.peer.ip());
        if let Err(refusal) = self.admit(&mut parts, &mut ctx, client_ip).await {
            return self.refuse(ctx, client_ip, refusal);
        }
        let started = tokio::time::Instant::now();
        let deadline = munity_platform::deadline::requested(&parts.headers);
        let request = match read_health_request(body).await {
            Ok(request) => request,
            Err(refusal) => {
                let refusal = Refusal::new(refusal.code, refusal.message);
                return self.refuse(ctx, client_ip, refusal);
            }
        };
        let body = if watch {
            let watcher = self
                .gateway
                .health
                .watch(request.service, deadline.map(|d| started + d));
            RelayBody::Watch(Box::new(WatchBody {
                watcher,
                done: false,
                call: LocalCall {
                    gateway: self.gateway.clone(),
                    ctx,
                    client: client_ip,
                    _on_connection: on_connection,
                },
            }))
        } else {
            match self.gateway.health.check(&request) {
                Ok(status) => {
                    ctx.local_status = Some(Code::Ok);
                    self.gateway.record_call(&ctx, client_ip, None);
                    let mut trailers = HeaderMap::new();
                    add_status(&mut trailers, Code::Ok, "");
                    RelayBody::Message {
                        frame: Some(edge_health::status_frame(status)),
                        trailers: Some(trailers),
                    }
                }
                Err(refusal) => {
                    let refusal = Refusal::new(refusal.code, refusal.message);
                    return self.refuse(ctx, client_ip, refusal);
                }
            }
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
    }

    /// The checks of `Gateway::admit` that apply to a plain gRPC call.
    async fn admit(
        &self,
        parts: &mut http::request::Parts,
        ctx: &mut CallCtx,
        client: Option<IpAddr>,
    ) -> Step {
        let gateway = &self.gateway;
        gateway.check_header_size(&parts.headers)?;
        let path = parts.uri.path();
        start_span(&parts.headers, ctx, path);
        gateway.route(ctx, path)?;
        for name in reserved_headers(&parts.headers) {
            parts.headers.remove(&name);
        }
        gateway.check_call(&parts.headers, client, ctx, path).await
    }

    /// Answers with the refusal's status, trailers-only, and records it.
    fn refuse(
        &self,
        mut ctx: Box<CallCtx>,
        client: Option<IpAddr>,
        refusal: Refusal,
    ) -> Response<RelayBody> {
        ctx.local_status = Some(refusal.code);
        self.gateway.record_call(&ctx, client, None);
        status_response(refusal.code, &refusal.message, &refusal.headers)
    }

    /// Sends the admitted call to a replica of its route and answers with
    /// the replica's response, relayed.
    async fn proxy(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        mut ctx: Box<CallCtx>,
        client: Option<IpAddr>,
        on_connection: CallOnConnection,
    ) -> Response<RelayBody> {
        let Some(route) = ctx.route.clone() else {
            return self.refuse(ctx, client, Refusal::new(Code::Internal, "no route"));
        };
        // The upstream's spans join this call's trace.
        if !ctx.span.is_disabled() {
            ctx.span
                .in_scope(|| telemetry::inject_trace_context(&mut parts.headers));
        }
        if let Some(deadline) = ctx.deadline
            && let Ok(value) =
                HeaderValue::from_str(&munity_platform::deadline::format_timeout(deadline))
        {
            parts.headers.insert("grpc-timeout", value);
        }
        let path = parts.uri.path_and_query().cloned();
        let second_message = ctx
            .request_messages
            .take()
            .map(|counter| (counter, Arc::new(AtomicBool::new(false))));
        let refused_second = second_message.as_ref().map(|(_, seen)| seen.clone());
        let mut request = Some(Request::from_parts(
            parts,
            RequestBody {
                inner: body,
                one_message: second_message,
            },
        ));
        let replicas = route.config.upstreams.len();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some(address) = select_replica(&route, &ctx.tried) else {
                let message = format!("no healthy upstream for {}", ctx.service);
                return self.refuse(ctx, client, Refusal::new(Code::Unavailable, message));
            };
            ctx.peer = Some(address);
            let slot = match self.upstreams.call_slot(address).await {
                Ok(slot) => slot,
                Err(error) => {
                    // Nothing reached the replica: another one may take it.
                    tracing::debug!(%address, %error, "upstream unreachable");
                    ctx.peer = None;
                    ctx.tried.push(address);
                    route
                        .outliers
                        .failure(address, &route.balancer, &route.name);
                    if ctx.tried.len() < replicas {
                        continue;
                    }
                    let refusal = Refusal::new(Code::Unavailable, "upstream unreachable");
                    return self.refuse(ctx, client, refusal);
                }
            };
            let Some(mut upstream_request) = request.take() else {
                return self.refuse(ctx, client, Refusal::new(Code::Internal, "request lost"));
            };
            *upstream_request.uri_mut() = upstream_uri(&slot.authority, path.as_ref());
            if self.upstreams.ended() {
                ctx.drained = true;
                let refusal = Refusal::new(Code::Unavailable, DRAINING_MESSAGE);
                return self.refuse(ctx, client, refusal);
            }
            match slot.sender().try_send_request(upstream_request).await {
                Ok(response) => {
                    return self.relay_response(
                        response,
                        ctx,
                        client,
                        slot,
                        on_connection,
                        refused_second,
                    );
                }
                Err(mut error) => {
                    if let Some(unsent) = error.take_message()
                        && attempts <= replicas + 2
                    {
                        // The connection closed before the call left on it
                        // (its replica is restarting, say): it goes on
                        // another one.
                        request = Some(unsent);
                        continue;
                    }
                    let refusal = if refused_second.is_some_and(|seen| seen.load(Ordering::Acquire))
                    {
                        second_message_refusal(&ctx)
                    } else if self.gateway.drain.is_cancelled() {
                        ctx.drained = true;
                        Refusal::new(Code::Unavailable, DRAINING_MESSAGE)
                    } else {
                        Refusal::new(
                            Code::Unavailable,
                            format!("upstream failed: {}", error.error()),
                        )
                    };
                    return self.refuse(ctx, client, refusal);
                }
            }
        }
    }

    fn relay_response(
        &self,
        response: Response<Incoming>,
        mut ctx: Box<CallCtx>,
        client: Option<IpAddr>,
        slot: CallSlot<RequestBody>,
        on_connection: CallOnConnection,
        refused_second: Option<Arc<AtomicBool>>,
    ) -> Response<RelayBody> {
        if let Some(status) = response.headers().get("grpc-status") {
            ctx.upstream_status = status.to_str().ok().map(str::to_owned);
        }
        response.map(|upstream| {
            RelayBody::Relayed(Box::new(Relayed {
                upstream,
                call: RelayedCall {
                    gateway: self.gateway.clone(),
                    ctx,
                    client,
                    ended: false,
                    refused_second,
                    _slot: slot,
                    _on_connection: on_connection,
                },
            }))
        })
    }
}

/// The client connection the relay serves, as its calls see it.
struct ClientConnection {
    peer: SocketAddr,
    state: Arc<ConnState>,
    shutdown: ShutdownWatch,
    /// The in-process connection to Pingora's app, opened when the first
    /// request that is not the relay's arrives, and let go once none has
    /// been open for [`IN_PROCESS_LINGER`].
    pingora: tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
    /// Requests handed on and not answered yet.
    forwarded: AtomicUsize,
    /// Counts the times `forwarded` went from or to zero: a linger that
    /// finds it moved on leaves the connection open.
    forwarded_generation: AtomicU64,
}

/// How long the in-process connection outlives the last request handed on
/// over it. A Pingora connection and its socket pair hold about 45 KiB: a
/// client that once asked the gateway's Health over each of its
/// connections would otherwise keep one per connection for good.
const IN_PROCESS_LINGER: Duration = Duration::from_secs(10);

/// A request handed on to Pingora, until its answer is done.
struct ForwardedCall(Arc<ClientConnection>);

impl ForwardedCall {
    fn start(client: &Arc<ClientConnection>) -> Self {
        if client.forwarded.fetch_add(1, Ordering::AcqRel) == 0 {
            client.forwarded_generation.fetch_add(1, Ordering::AcqRel);
        }
        ForwardedCall(client.clone())
    }
}

impl Drop for ForwardedCall {
    fn drop(&mut self) {
        let client = &self.0;
        if client.forwarded.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let generation = client.forwarded_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = client.clone();
        runtime.spawn(async move {
            tokio::time::sleep(IN_PROCESS_LINGER).await;
            let mut held = client.pingora.lock().await;
            if client.forwarded_generation.load(Ordering::Acquire) == generation {
                // Dropping the last sender closes the connection.
                held.take();
            }
        });
    }
}

impl ClientConnection {
    /// Hands the request on to Pingora's app and returns its answer.
    async fn forward<A: ServerApp + Send + Sync + 'static>(
        &self,
        app: &Arc<A>,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let mut sender = {
            let mut held = self.pingora.lock().await;
            match held.as_ref().filter(|sender| !sender.is_closed()) {
                Some(sender) => sender.clone(),
                None => held.insert(self.open_pingora(app).await?).clone(),
            }
        };
        if request.uri().scheme().is_none() {
            // HTTP/2 requests name their scheme; hyper's client needs one.
            let path = request.uri().path_and_query().cloned();
            *request.uri_mut() = upstream_uri(&Authority::from_static("localhost"), path.as_ref());
        }
        sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())
    }

    async fn open_pingora<A: ServerApp + Send + Sync + 'static>(
        &self,
        app: &Arc<A>,
    ) -> Result<SendRequest<Incoming>, String> {
        let (near, far) = connections::in_process(self.peer).map_err(|e| e.to_string())?;
        let (app, shutdown) = (app.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut next = app.process_new(far, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(near))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "in-process connection ended");
            }
        });
        Ok(sender)
    }
}

/// For a plain gRPC call of the gateway's own health service: whether it
/// is `Watch` (else `Check`).
fn health_method(request: &Request<Incoming>) -> Option<bool> {
    let watch = match request.uri().path() {
        HEALTH_CHECK => false,
        HEALTH_WATCH => true,
        _ => return None,
    };
    is_plain_grpc(request).then_some(watch)
}

/// A gRPC call (POST, `application/grpc`), not gRPC-web, and not from a
/// browser: those go to Pingora, which owns CORS and the web protocols.
fn is_plain_grpc(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    request.method() == http::Method::POST
        && !headers.contains_key(header::ORIGIN)
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| {
                c.starts_with("application/grpc") && !c.starts_with("application/grpc-web")
            })
}

/// A health call's one request message, bounded in size and time.
async fn read_health_request(
    body: Incoming,
) -> Result<tonic_health::pb::HealthCheckRequest, edge_health::Refusal> {
    let limited = Limited::new(body, edge_health::MAX_REQUEST_BYTES);
    match tokio::time::timeout(edge_health::REQUEST_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(edge_health::Refusal::too_slow()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(edge_health::Refusal::too_large()),
        Ok(Err(error)) => Err(edge_health::Refusal::new(
            Code::InvalidArgument,
            format!("reading the request: {error}"),
        )),
        Ok(Ok(body)) => edge_health::parse_request(&body.to_bytes()),
    }
}

/// `http://<replica><path>`: the upstream request's URI.
fn upstream_uri(authority: &Authority, path: Option<&http::uri::PathAndQuery>) -> Uri {
    let mut uri = Uri::builder().scheme("http").authority(authority.clone());
    if let Some(path) = path {
        uri = uri.path_and_query(path.clone());
    }
    uri.build().unwrap_or_default()
}

/// A trailers-only gRPC answer: the status in the one header block.
fn status_response(
    code: Code,
    message: &str,
    extra_headers: &[(&'static str, String)],
) -> Response<RelayBody> {
    let mut response = Response::new(RelayBody::Empty);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    add_status(headers, code, message);
    for (name, value) in extra_headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

fn add_status(headers: &mut HeaderMap, code: Code, message: &str) {
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(&grpc::encode_message(message)) {
        headers.insert("grpc-message", message);
    }
}

fn second_message_refusal(ctx: &CallCtx) -> Refusal {
    let path = format!("/{}/{}", ctx.service, ctx.method);
    Refusal::new(
        Code::InvalidArgument,
        munity_platform::framing::second_message_error(&path),
    )
}

/// The client's request body on its way upstream; for methods that take
/// one request message, a second one fails it (the upstream stream is
/// reset, and the client told INVALID_ARGUMENT), as on Pingora's path.
pub struct RequestBody {
    inner: Incoming,
    one_message: Option<(MessageCounter, Arc<AtomicBool>)>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some((counter, refused)), Some(data)) =
                    (this.one_message.as_mut(), frame.data_ref())
                    && counter.feed(data) > 1
                {
                    refused.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err("a second request message".into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the relay answers a client with.
enum RelayBody {
    /// A replica's response, relayed.
    Relayed(Box<Relayed>),
    /// Pingora's answer to a request handed on.
    Forwarded {
        body: Incoming,
        _call: ForwardedCall,
        _on_connection: CallOnConnection,
    },
    /// A trailers-only answer.
    Empty,
    /// One message, then trailers: the gateway's own answer.
    Message {
        frame: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// A health `Watch`, answered by the gateway.
    Watch(Box<WatchBody>),
}

/// A health `Watch` on its way to the client.
struct WatchBody {
    watcher: Watcher,
    /// Ended with a status (drain, deadline).
    done: bool,
    call: LocalCall,
}

/// A call the gateway answers itself, recorded when its answer is done or
/// its client has gone (a `Watch` ends that way: OK, as on Pingora's path).
struct LocalCall {
    gateway: Arc<Gateway>,
    ctx: Box<CallCtx>,
    client: Option<IpAddr>,
    _on_connection: CallOnConnection,
}

impl Drop for LocalCall {
    fn drop(&mut self) {
        self.ctx.local_status.get_or_insert(Code::Ok);
        self.gateway.record_call(&self.ctx, self.client, None);
    }
}

/// A replica's response on its way to the client, with the call's record.
struct Relayed {
    upstream: Incoming,
    call: RelayedCall,
}

/// A relayed call, recorded (metrics, access log, outliers) when its
/// response is done or its client has gone: then dropped.
struct RelayedCall {
    gateway: Arc<Gateway>,
    ctx: Box<CallCtx>,
    client: Option<IpAddr>,
    /// The response ended (its last frame went out, or it was cut short
    /// with a status).
    ended: bool,
    refused_second: Option<Arc<AtomicBool>>,
    _slot: CallSlot<RequestBody>,
    _on_connection: CallOnConnection,
}

impl Drop for RelayedCall {
    fn drop(&mut self) {
        if !self.ended && self.ctx.local_status.is_none() && self.ctx.upstream_status.is_none() {
            // Its client went away: counted CANCELLED, as on Pingora's path.
            self.ctx.local_status = Some(Code::Cancelled);
        }
        self.gateway.record_call(&self.ctx, self.client, None);
    }
}

impl Relayed {
    /// Ends the response with `code` in its trailers.
    fn end_with(&mut self, code: Code, message: &str) -> Frame<Bytes> {
        self.call.ended = true;
        self.call.ctx.local_status = Some(code);
        let mut trailers = HeaderMap::new();
        add_status(&mut trailers, code, message);
        Frame::trailers(trailers)
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let relayed = match self.get_mut() {
            RelayBody::Relayed(relayed) => relayed,
            RelayBody::Forwarded { body, .. } => return Pin::new(body).poll_frame(cx),
            RelayBody::Empty => return Poll::Ready(None),
            RelayBody::Message { frame, trailers } => {
                return Poll::Ready(match frame.take() {
                    Some(frame) => Some(Ok(Frame::data(frame))),
                    None => trailers.take().map(|t| Ok(Frame::trailers(t))),
                });
            }
            RelayBody::Watch(watch) => {
                if watch.done {
                    return Poll::Ready(None);
                }
                let (code, trailers) = match ready!(watch.watcher.poll_next(cx)) {
                    WatchEvent::Status(status) => {
                        return Poll::Ready(Some(Ok(Frame::data(edge_health::status_frame(
                            status,
                        )))));
                    }
                    WatchEvent::Drained => {
                        watch.call.ctx.drained = true;
                        (
                            Code::Unavailable,
                            munity_platform::deadline::draining_trailers(),
                        )
                    }
                    WatchEvent::DeadlineExceeded => (
                        Code::DeadlineExceeded,
                        munity_platform::deadline::exceeded_trailers(),
                    ),
                };
                watch.done = true;
                watch.call.ctx.local_status = Some(code);
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        };
        if relayed.call.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut relayed.upstream).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    relayed.call.ctx.upstream_status = status.to_str().ok().map(str::to_owned);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "the upstream's response broke off");
                let second = relayed
                    .call
                    .refused_second
                    .as_ref()
                    .is_some_and(|seen| seen.load(Ordering::Acquire));
                let frame = if second {
                    let refusal = second_message_refusal(&relayed.call.ctx);
                    relayed.end_with(refusal.code, &refusal.message)
                } else if relayed.call.gateway.drain.is_cancelled() {
                    relayed.call.ctx.drained = true;
                    relayed.end_with(Code::Unavailable, DRAINING_MESSAGE)
                } else {
                    relayed.end_with(Code::Unavailable, "the upstream's response broke off")
                };
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                relayed.call.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Relayed(relayed) => relayed.call.ended || relayed.upstream.is_end_stream(),
            RelayBody::Forwarded { body, .. } => body.is_end_stream(),
            RelayBody::Empty => true,
            RelayBody::Message { frame, trailers } => frame.is_none() && trailers.is_none(),
            RelayBody::Watch(watch) => watch.done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Relayed(relayed) if !relayed.call.ended => relayed.upstream.size_hint(),
            RelayBody::Forwarded { body, .. } => body.size_hint(),
            RelayBody::Message { .. } | RelayBody::Watch(_) => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }
}

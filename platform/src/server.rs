//! Serving gRPC the same way in every service.
//!
//! [`GrpcHost`] puts a service's gRPC handlers behind the platform's layers
//! (a span and RED metrics per call, then authentication by the protos'
//! method policy), adds `grpc.health.v1`, server reflection (the service's
//! descriptors and the `google.rpc` error details, so reflection clients
//! decode `BadRequest`), `GET /metrics`, accepts plain HTTP routes on the
//! same port (e.g. the JWKS document), and serves on a listener the caller
//! bound, so a binary and a test on port 0 start it alike. Shutdown marks every service NOT_SERVING,
//! stops accepting, and lets in-flight calls finish for a grace period;
//! then it returns even if some are still open (a server stream, such as a
//! health Watch, never finishes by itself).
//!
//! A server stream lives at most as long as the access token it was opened
//! with (its `exp`, plus the verifier's leeway): then it ends with
//! UNAUTHENTICATED, and the client reconnects with a fresh token and
//! resumes. It also ends (UNAUTHENTICATED) as soon as that token is
//! revoked, when the verifier follows revocations. Streams of public
//! methods (no token) are not bounded so.

use std::{
    convert::Infallible,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::response::IntoResponse;
use futures::{StreamExt, future::BoxFuture};
use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    auth::{AuthLayer, TokenVerifier},
    deadline::Deadline,
    metrics::{CallRecord, MeteredBody},
    policy::MethodPolicy,
    telemetry,
    write_turn::WriteTurn,
};

/// One gRPC server: handlers, health, reflection and the platform layers.
pub struct GrpcHost {
    routes: RoutesBuilder,
    http: axum::Router,
    http_paths: Vec<String>,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    policy: Arc<MethodPolicy>,
    verifier: Option<Arc<TokenVerifier>>,
    shutdown_grace: Duration,
}

/// How long calls in flight may run on after shutdown begins, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl GrpcHost {
    /// A host for services described by `descriptor_set` (an encoded
    /// `FileDescriptorSet`, e.g. `munity_proto::FILE_DESCRIPTOR_SET`): it is
    /// what reflection serves and where the method policy is read from.
    pub fn new(descriptor_set: &'static [u8]) -> anyhow::Result<Self> {
        let sets = [descriptor_set, tonic_health::pb::FILE_DESCRIPTOR_SET];
        let policy = Arc::new(MethodPolicy::from_descriptor_sets(&sets)?);
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(descriptor_set)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.Status and its details (BadRequest, ...): what
                // reflection clients need to decode grpc-status-details-bin.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        routes.add_service(reflection().build_v1()?);
        routes.add_service(reflection().build_v1alpha()?);
        let host = GrpcHost {
            routes,
            http: axum::Router::new(),
            http_paths: Vec::new(),
            health,
            service_names: Vec::new(),
            policy,
            verifier: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        };
        Ok(host.add_http_route(
            "/metrics",
            axum::routing::get(|| async { crate::metrics::render() }),
        ))
    }

    /// How long calls in flight may run on after shutdown begins, before
    /// [`serve`](Self::serve) returns and drops what is still open.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Adds a generated tonic server; its health is reported under its full
    /// name (e.g. `munity.users.v1.Users`).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves plain HTTP on the same port, e.g. `GET /.well-known/jwks.json`.
    /// Such routes are public documents: no token is asked for.
    pub fn add_http_route(mut self, path: &str, route: axum::routing::MethodRouter) -> Self {
        self.http = self.http.route(path, route);
        self.http_paths.push(path.to_owned());
        self
    }

    /// Refuses methods the protos do not mark `public` unless they carry an
    /// access token `verifier` accepts.
    pub fn with_auth(mut self, verifier: Arc<TokenVerifier>) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let health = self.health.clone();
        for name in &self.service_names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;

        let names = self.service_names.clone();
        let stopping = crate::shutdown::ShutdownToken::new();
        let stopping_signal = stopping.clone();
        // Server streams never end by themselves: halfway through the grace
        // period (once watchers have heard NOT_SERVING), they end with
        // UNAVAILABLE, which tells clients to reconnect to another replica,
        // instead of being cut without a status when the period is over.
        let drain_streams = crate::shutdown::ShutdownToken::new();
        let drain_signal = drain_streams.clone();
        let grace = self.shutdown_grace;
        let shutdown = async move {
            shutdown.await;
            stopping_signal.cancel();
            tokio::spawn(async move {
                tokio::time::sleep(grace / 2).await;
                drain_signal.cancel();
            });
            // Tell health checkers first, so balancers stop sending new calls.
            for name in names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
        };

        let routes = Routes::from(self.routes.routes().into_axum_router().merge(self.http));
        // Nagle off on every accepted socket: without it a small unary answer
        // waits for the client's delayed ACK (~40 ms per call). The builder's
        // `tcp_nodelay` does not apply to a listener we pass in.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|accepted| accepted.map(BatchedWrites::new));
        let auth = self.verifier.map(|verifier| {
            AuthLayer::new(verifier, self.policy.clone()).with_http_paths(self.http_paths)
        });
        let serve = Server::builder()
            .accept_http1(true)
            .layer(ObserveLayer {
                policy: self.policy.clone(),
                drain_streams,
            })
            .layer(OptionalAuthLayer(auth))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown);
        // tonic's graceful shutdown waits for every open call, and a server
        // stream may never end: past the grace period, stop waiting.
        tokio::select! {
            served = serve => served?,
            () = async {
                stopping.cancelled().await;
                tokio::time::sleep(grace).await;
            } => tracing::warn!(?grace, "calls still open after the shutdown grace period; closing"),
        }
        Ok(())
    }
}

/// [`AuthLayer`] when configured, a pass-through otherwise.
#[derive(Clone)]
struct OptionalAuthLayer(Option<AuthLayer>);

impl<S> Layer<S> for OptionalAuthLayer {
    type Service = tower::util::Either<crate::auth::AuthService<S>, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(auth) => tower::util::Either::Left(auth.layer(inner)),
            None => tower::util::Either::Right(inner),
        }
    }
}

/// Opens a span per call, continuing the caller's trace when the request
/// carries W3C trace context, records the call's RED metrics, ends the call
/// at its deadline (streams included), and logs how it ended.
#[derive(Clone)]
struct ObserveLayer {
    policy: Arc<MethodPolicy>,
    /// Cancelled when open server streams should end (shutdown).
    drain_streams: crate::shutdown::ShutdownToken,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            policy: self.policy.clone(),
            drain_streams: self.drain_streams.clone(),
        }
    }
}

#[derive(Clone)]
struct ObserveService<S> {
    inner: S,
    policy: Arc<MethodPolicy>,
    drain_streams: crate::shutdown::ShutdownToken,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for ObserveService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<MeteredBody<Deadline<ResBody>>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::set_parent_from_headers(&span, request.headers());
        // Plain HTTP routes (the JWKS, /metrics) are documents, not calls.
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut record = is_grpc.then(|| CallRecord::start(path, &self.policy));
        // The client's deadline covers the whole call: a server stream still
        // open then ends with DEADLINE_EXCEEDED.
        let deadline = crate::deadline::requested(request.headers()).filter(|_| is_grpc);
        let drain =
            (is_grpc && self.policy.is_server_streaming(path)).then(|| self.drain_streams.clone());
        // A second request message for a method that takes one is refused
        // (tonic would read the first and ignore the rest).
        let request = if is_grpc && self.policy.takes_one_request(path) {
            let path = path.to_owned();
            request.map(|body| tonic::body::Body::new(crate::framing::OneRequest::new(body, &path)))
        } else {
            request
        };
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = future.await;
                let elapsed_us = started.elapsed().as_micros() as u64;
                match result {
                    Ok(response) => {
                        // A handler error comes back "trailers-only": its
                        // grpc-status is in the headers. Streams report it in
                        // trailers, which the metered body sees.
                        if let Some(record) = &mut record {
                            record.observe(response.headers());
                        }
                        let code = response
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0");
                        tracing::Span::current().record("rpc.grpc.status_code", code);
                        tracing::debug!(grpc_status = code, elapsed_us, "call answered");
                        let expiry = response
                            .extensions()
                            .get::<crate::auth::TokenExpiry>()
                            .copied();
                        let revocation = response
                            .extensions()
                            .get::<crate::auth::RevocationWatch>()
                            .cloned();
                        Ok(response.map(|body| {
                            let mut body = Deadline::new(body, deadline);
                            if let Some(drain) = &drain {
                                body = body.draining_on(drain);
                            }
                            if let Some(expiry) = expiry {
                                body = body.expiring_after(expiry.left());
                            }
                            if let Some(revocation) = revocation {
                                body = body.ending_when_revoked(revocation.revoked());
                            }
                            MeteredBody::new(body, record)
                        }))
                    }
                    Err(error) => {
                        tracing::warn!(%error, elapsed_us, "call failed");
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// Prints a status line (where a service listens, that it is ready) on
/// stdout for the person, script or test that started the process. A closed
/// stdout must not crash a server that is otherwise fine, so errors are
/// ignored.
pub fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// An accepted socket whose writes leave together.
///
/// It tells h2 it has no vectored writes (it has, and `poll_write_vectored`
/// still reaches them). With vectored writes h2 sends every DATA frame of
/// 256 bytes or more in a `writev` of its own before it buffers the next,
/// so a server stream's messages of that size (notify's notifications,
/// about 280 bytes) each cost a system call. Without, h2 copies frames up
/// to 1 KiB into its 16 KiB buffer.
///
/// And its writes wait their turn ([`WriteTurn`]): h2 was still woken to
/// write after each stream's message, and wrote one frame per `sendto`
/// (0.8 per delivery in notify's 10,000-stream fan-out). The gateway
/// tells h2 the same about vectored writes; its runtimes of one thread
/// batch without the turn.
struct BatchedWrites {
    socket: tokio::net::TcpStream,
    turn: WriteTurn,
}

impl BatchedWrites {
    fn new(socket: tokio::net::TcpStream) -> Self {
        Self {
            socket,
            turn: WriteTurn::default(),
        }
    }
}

impl tokio::io::AsyncRead for BatchedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BatchedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.turn.poll_turn(cx));
        std::pin::Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.turn.poll_turn(cx));
        std::pin::Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.socket).poll_flush(cx);
        if flushed.is_ready() {
            self.turn.flushed();
        }
        flushed
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for BatchedWrites {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.socket.connect_info()
    }
}

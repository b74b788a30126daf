//! The gateway as one Pingora `ProxyHttp`: each call gets a [`CallCtx`];
//! `request_filter` routes, authenticates and rate-limits before any
//! upstream is touched; `upstream_peer` picks a healthy replica of the
//! route; `fail_to_proxy` turns transport failures into gRPC statuses;
//! `logging` records metrics and the access log.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use munity_platform::{
    auth::{Claims, TokenVerifier, bearer_token},
    policy::MethodPolicy,
    telemetry,
};
use pingora_core::{Error, ErrorType, upstreams::peer::HttpPeer};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tonic::Code;

use crate::{
    config::RouteConfig,
    cors::{self, Cors},
    edge_health::{self, EdgeHealth},
    grpc,
    grpc_web::{Encoding, WebCall},
    http_json::{self, JsonCall, Transcoder, Upstreams},
    limits::{Decision, Limiter},
    metrics,
    outlier::Outliers,
};

/// Header names reserved for Munity's own use between its processes. The
/// gateway forwards no identity (services verify the bearer token
/// themselves), and removes any such header a client sends, so that no
/// upstream ever reads one a client made up.
const RESERVED_HEADER_PREFIX: &str = "x-munity-";

mod json_call;
pub mod relay;

/// One upstream (route) and its replicas.
pub struct Route {
    /// The upstream name, e.g. `users`.
    pub name: String,
    pub config: RouteConfig,
    pub balancer: Arc<LoadBalancer<RoundRobin>>,
    pub outliers: Outliers,
}

pub struct Gateway {
    /// gRPC service name → its route.
    pub routes: HashMap<String, Arc<Route>>,
    /// Verifies bearer tokens (with its verified-token cache).
    pub auth: Arc<TokenVerifier>,
    /// What the protos declare: public methods, streaming methods.
    pub policy: Arc<MethodPolicy>,
    /// `None` when rate limits are disabled.
    pub limits: Option<Limiter>,
    pub cors: Cors,
    /// `grpc.health.v1`, answered here.
    pub health: EdgeHealth,
    /// Every open client connection: told when each request starts and
    /// ends, so idle and slow connections can be timed out.
    pub connections: Arc<crate::connections::Connections>,
    /// Request headers larger than this (HTTP/2's count: name + value + 32
    /// each) are refused.
    pub max_header_bytes: usize,
    /// Cancelled half way through the shutdown grace period, when calls
    /// still open are ended with UNAVAILABLE.
    pub drain: munity_platform::shutdown::ShutdownToken,
    /// The upstream connections of proxied calls in flight, closed at the
    /// drain so those calls end with UNAVAILABLE (`upstream_drain.rs`).
    pub upstream_connections: Arc<crate::upstream_drain::UpstreamConnections>,
    /// Calls opening at once share upstream connections
    /// (`upstream_streams.rs`).
    pub upstream_streams: Arc<crate::upstream_streams::UpstreamStreams>,
    /// HTTP/JSON bindings of every method (`google.api.http`).
    pub http: Arc<Transcoder>,
    /// Channels the gateway makes HTTP/JSON calls on.
    pub upstreams: Upstreams,
    /// Largest JSON request body, and how long it may take to arrive.
    pub max_json_body_bytes: usize,
    pub json_body_timeout: Duration,
    /// `/openapi.json` and `/docs`, made once at start-up.
    pub docs: http_json::openapi::Docs,
    /// The web app at `/` (`web.rs`).
    pub web: crate::web::Web,
}

/// The gateway as Pingora's app sees it; the relay (`relay.rs`) shares the
/// same [`Gateway`].
pub struct EdgeProxy(pub Arc<Gateway>);

impl std::ops::Deref for EdgeProxy {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// Where an admitted call goes.
enum Destination {
    /// A replica of the call's route.
    Upstream,
    /// The gateway's own health service.
    Health,
}

/// What the gateway knows about one call.
pub struct CallCtx {
    started: Instant,
    service: String,
    method: String,
    route: Option<Arc<Route>>,
    claims: Option<Arc<Claims>>,
    deadline: Option<Duration>,
    /// Status the gateway answered with itself, if it did.
    local_status: Option<Code>,
    /// `grpc-status` seen from the upstream (headers or trailers).
    upstream_status: Option<String>,
    /// Replicas already tried for this call (connect failures retry elsewhere).
    tried: Vec<SocketAddr>,
    peer: Option<SocketAddr>,
    /// Set for gRPC-web calls: how to translate bodies.
    web: Option<WebCall>,
    /// Set for plain HTTP requests (JSON): the binding they matched, if
    /// any. Refusals are then answered in JSON with an HTTP status.
    json: Option<JsonCall>,
    /// The caller's allowed browser origin, echoed in CORS headers.
    origin: Option<String>,
    /// Why the request body could not be decoded (bad base64), in words
    /// for the client (Pingora's error adds the upstream's address).
    bad_request_body: Option<String>,
    /// For methods that take one request message: counts the messages, so
    /// a second is refused (upstream, tonic would silently ignore it).
    request_messages: Option<munity_platform::framing::MessageCounter>,
    /// Counts the call in `munity_gateway_calls_in_flight` once routed.
    in_flight: Option<metrics::InFlight>,
    /// The upstream connection the call rides on, registered to be closed
    /// if the call is still open when the gateway drains.
    upstream_connection: Option<crate::upstream_drain::Registration>,
    /// The call's place among the streams of its replica's connections
    /// (`upstream_streams.rs`).
    upstream_admission: Option<crate::upstream_streams::Admission>,
    /// The call failed while the gateway drains: ended with UNAVAILABLE
    /// "reconnect" by the gateway itself.
    drained: bool,
    /// The call's span: a child of the client's trace when it sent
    /// `traceparent`, and the parent of the upstream call.
    span: tracing::Span,
}

impl CallCtx {
    fn new() -> Box<Self> {
        Box::new(CallCtx {
            started: Instant::now(),
            service: String::new(),
            method: String::new(),
            route: None,
            claims: None,
            deadline: None,
            local_status: None,
            upstream_status: None,
            tried: Vec::new(),
            peer: None,
            web: None,
            json: None,
            origin: None,
            bad_request_body: None,
            request_messages: None,
            in_flight: None,
            upstream_connection: None,
            upstream_admission: None,
            drained: false,
            span: tracing::Span::none(),
        })
    }
}

/// The answer that ends a call in `request_filter`, instead of proxying it.
struct Refusal {
    code: Code,
    /// For HTTP/JSON calls, a status other than the code's (404 and 405
    /// for paths no binding serves, 414).
    http_status: Option<u16>,
    message: String,
    /// Headers besides the CORS ones (e.g. `retry-after`).
    headers: Vec<(&'static str, String)>,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            http_status: None,
            message: message.into(),
            headers: Vec::new(),
        }
    }
}

/// One step of `request_filter`: `Ok` to go on, or the refusal.
type Step<T = ()> = Result<T, Refusal>;

impl Gateway {
    /// `request_filter`'s steps, in order, before any upstream is touched.
    /// The first refusal ends the call; past them all, it goes to a replica
    /// of its route, or to the gateway's own health service.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
        origin: Option<String>,
    ) -> Step<Destination> {
        self.check_header_size(&session.req_header().headers)?;
        self.check_origin(ctx, origin)?;
        let path = match &ctx.json {
            Some(call) => json_grpc_path(session, call)?,
            None => {
                check_is_grpc(session, ctx)?;
                session.req_header().uri.path().to_owned()
            }
        };
        start_span(&session.req_header().headers, ctx, &path);
        let destination = self.route(ctx, &path)?;
        if ctx.json.is_some() && ctx.route.as_ref().is_some_and(|r| !r.config.http_json) {
            let message = format!("{} is not served over HTTP/JSON here", ctx.service);
            return Err(Refusal::new(Code::NotFound, message));
        }
        for name in reserved_headers(&session.req_header().headers) {
            session.req_header_mut().remove_header(&name);
        }
        let client = client_ip(session);
        self.check_call(&session.req_header().headers, client, ctx, &path)
            .await?;
        Ok(destination)
    }

    /// What every routed call passes once its reserved headers are gone, on
    /// Pingora's path and on the relay's alike: the bearer token and method
    /// policy, the rate limits, the one-message rule and the deadline.
    async fn check_call(
        &self,
        headers: &http::HeaderMap,
        client: Option<IpAddr>,
        ctx: &mut CallCtx,
        path: &str,
    ) -> Step {
        self.authenticate(headers, ctx, path).await?;
        self.rate_limit(client, ctx, path).await?;
        // Streams in either direction get no default deadline (a producer's
        // IngestStream lasts as long as it produces).
        let streaming = self.policy.is_long_lived(path);
        if self.policy.takes_one_request(path) {
            ctx.request_messages = Some(Default::default());
        }
        if let Some(route) = ctx.route.clone() {
            set_deadline(headers, ctx, &route, streaming);
        }
        ctx.in_flight = Some(metrics::InFlight::start(&ctx.service, streaming));
        Ok(())
    }

    /// Headers beyond what the edge accepts are refused here, over HTTP/1.1
    /// and HTTP/2 alike: passed on, they made the upstream end the whole
    /// shared HTTP/2 connection (GOAWAY), and every other client's calls and
    /// streams on it with them.
    fn check_header_size(&self, headers: &http::HeaderMap) -> Step {
        let size = header_list_size(headers);
        if size > self.max_header_bytes {
            return Err(Refusal::new(
                Code::ResourceExhausted,
                format!(
                    "request headers are {size} bytes; the gateway accepts at most {}",
                    self.max_header_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Browsers' calls come from an allowed origin, echoed in CORS headers.
    fn check_origin(&self, ctx: &mut CallCtx, origin: Option<String>) -> Step {
        if let Some(origin) = origin {
            if !self.cors.allows(&origin) {
                let message = format!("origin {origin} is not allowed");
                return Err(Refusal::new(Code::PermissionDenied, message));
            }
            ctx.origin = Some(origin);
        }
        Ok(())
    }

    /// The gRPC service of the path, and where it goes: its route, or the
    /// gateway's health service.
    fn route(&self, ctx: &mut CallCtx, path: &str) -> Step<Destination> {
        let Some((service, method)) = grpc::split_path(path) else {
            return Err(Refusal::new(Code::Unimplemented, "not a gRPC method path"));
        };
        ctx.service = service.to_owned();
        ctx.method = method.to_owned();
        if service == edge_health::SERVICE {
            return Ok(Destination::Health);
        }
        ctx.route = Some(self.routes.get(service).cloned().ok_or_else(|| {
            Refusal::new(Code::Unimplemented, format!("unknown service {service}"))
        })?);
        Ok(Destination::Upstream)
    }

    /// Verifies the caller's bearer token unless the proto marks the method
    /// public.
    async fn authenticate(&self, headers: &http::HeaderMap, ctx: &mut CallCtx, path: &str) -> Step {
        if self.policy.is_public(path) {
            return Ok(());
        }
        let verified = match bearer_token(headers) {
            Ok(token) => {
                let token = token.to_owned();
                self.auth.verify(&token).await
            }
            Err(error) => Err(error),
        };
        match verified {
            Ok(claims) => {
                // The same rule every service's AuthLayer applies, read from
                // the same descriptors: refused here, it costs no upstream.
                if let Err(message) = self
                    .policy
                    .callers(path)
                    .admits(&claims, munity_platform::auth::method_name(path))
                {
                    return Err(Refusal::new(Code::PermissionDenied, message));
                }
                ctx.claims = Some(claims);
                Ok(())
            }
            Err(error) => {
                tracing::debug!(?error, "refused a token");
                Err(Refusal::new(error.code(), error.to_string()))
            }
        }
    }

    /// Checks the call against the rate limits (if enabled), per user, or
    /// per client IP for anonymous calls.
    async fn rate_limit(&self, client: Option<IpAddr>, ctx: &CallCtx, path: &str) -> Step {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let identity = match (&ctx.claims, client) {
            (Some(claims), _) => format!("user:{}", claims.sub),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "ip:unknown".to_owned(),
        };
        match limits.check(path, &identity).await {
            Decision::Allowed => Ok(()),
            Decision::Refused { retry_after } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let message = format!("rate limit exceeded for {path}; retry in {seconds} s");
                Err(Refusal {
                    headers: vec![("retry-after", seconds.to_string())],
                    ..Refusal::new(Code::ResourceExhausted, message)
                })
            }
        }
    }
}

impl Gateway {
    /// Counts the call in the metrics, tells its replica's outlier count how
    /// it went, and writes the access log line.
    fn record_call(&self, ctx: &CallCtx, client: Option<IpAddr>, error: Option<String>) {
        let code = match (ctx.local_status, &ctx.upstream_status) {
            (Some(code), _) => (code as i32).to_string(),
            (None, Some(status)) => status.clone(),
            (None, None) if error.is_some() => (Code::Unavailable as i32).to_string(),
            (None, None) => "unknown".to_owned(),
        };
        let (service, method) =
            if ctx.route.is_some() || ctx.local_status.is_some() && !ctx.service.is_empty() {
                (ctx.service.as_str(), ctx.method.as_str())
            } else {
                ("unrouted", "unrouted")
            };
        if let (Some(route), Some(peer)) = (&ctx.route, ctx.peer) {
            // UNAVAILABLE from the replica itself counts against it.
            if ctx.upstream_status.as_deref() == Some("14") {
                route.outliers.failure(peer, &route.balancer, &route.name);
            } else if ctx.upstream_status.is_some() {
                route.outliers.success(peer);
            }
        }
        ctx.span.record("rpc.grpc.status_code", code.as_str());
        let elapsed = ctx.started.elapsed();
        metrics::REQUESTS
            .with_label_values(&[service, method, &code])
            .inc();
        metrics::LATENCY
            .with_label_values(&[service, method])
            .observe(elapsed.as_secs_f64());
        let _in_call = ctx.span.enter();
        tracing::info!(
            target: "access",
            client = %DisplayIp(client),
            service,
            method,
            grpc_status = %code,
            upstream = ?ctx.peer,
            user = ctx.claims.as_ref().map(|c| c.sub.to_string()).as_deref().unwrap_or("-"),
            elapsed_us = elapsed.as_micros() as u64,
            error,
            "call"
        );
    }
}

/// A client address in the access log, `unknown` when there is none.
struct DisplayIp(Option<IpAddr>);

impl std::fmt::Display for DisplayIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// Answers the call with the refusal's status (trailers-only), or for an
/// HTTP/JSON call with its HTTP status and a JSON error.
async fn refuse(
    session: &mut Session,
    ctx: &mut CallCtx,
    refusal: Refusal,
) -> pingora_core::Result<()> {
    ctx.local_status = Some(refusal.code);
    let mut headers = refusal.headers;
    headers.extend(cors::response_headers(ctx.origin.as_deref()));
    if ctx.json.is_some() {
        let mut error = http_json::JsonError::new(refusal.code, refusal.message);
        if let Some(status) = refusal.http_status {
            error.http_status = status;
        }
        return http_json::respond_error(session, &error, &headers).await;
    }
    grpc::respond_status(session, refusal.code, &refusal.message, &headers).await
}

/// Whether `error` is the client leaving its call: its HTTP/2 stream reset
/// with CANCEL (a client cancelling a stream, the usual way a Subscribe
/// ends), or its connection closed under the call. Normal, not a failure.
fn client_left(error: &Error) -> bool {
    fn connection_gone(error: &std::io::Error) -> bool {
        // Not ConnectionAborted: that is the gateway's own drain
        // (connections.rs) failing reads at shutdown.
        matches!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        )
    }
    if *error.esource() != pingora_core::ErrorSource::Downstream {
        return false;
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        // Pingora's errors nest as `Error` or, with more context, `Box<Error>`.
        let nested = cause
            .downcast_ref::<Error>()
            .or_else(|| cause.downcast_ref::<Box<Error>>().map(|e| &**e));
        if let Some(error) = nested {
            if *error.etype() == ErrorType::ConnectionClosed {
                return true;
            }
            current = error.cause.as_deref().map(|c| c as _);
        } else if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return (h2.is_remote() && h2.reason() == Some(h2::Reason::CANCEL))
                || h2.get_io().is_some_and(connection_gone);
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return connection_gone(io);
        } else {
            current = cause.source();
        }
    }
    false
}

/// Ends an HTTP/1.1 exchange whose request body could not be read (a bad
/// chunk size, say). Where that request ends is then unknown: what follows
/// on the connection could be taken for a request of its own (request
/// smuggling), so, as HTTP servers do, HTTP 400 with `Connection: close`
/// (Pingora writes it once keep-alive is off), and the connection is shut
/// once the answer is out.
async fn refuse_unframed(session: &mut Session, ctx: &mut CallCtx) -> pingora_core::Result<()> {
    ctx.local_status = Some(Code::InvalidArgument);
    let headers = cors::response_headers(ctx.origin.as_deref());
    let mut response = ResponseHeader::build(400, Some(1 + headers.len()))?;
    response.insert_header(http::header::CONTENT_LENGTH, "0")?;
    for (name, value) in headers {
        response.insert_header(name, value)?;
    }
    let downstream = session.as_downstream_mut();
    downstream.set_keepalive(None);
    downstream
        .write_error_response(response, Bytes::new())
        .await
}

/// The gRPC method an HTTP/JSON request's binding names: 404 for a path
/// no binding has, 405 for one bound to other verbs only.
fn json_grpc_path(session: &Session, call: &JsonCall) -> Step<String> {
    let request = session.req_header();
    let length = request.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if length > http_json::MAX_PATH_BYTES {
        return Err(Refusal {
            http_status: Some(414),
            ..Refusal::new(
                Code::InvalidArgument,
                format!(
                    "the path is longer than {} bytes",
                    http_json::MAX_PATH_BYTES
                ),
            )
        });
    }
    match &call.route {
        Some(route) => Ok(route.grpc_path.clone()),
        None if !call.allowed.is_empty() => {
            let allowed: Vec<&str> = call.allowed.iter().map(http::Method::as_str).collect();
            Err(Refusal {
                http_status: Some(405),
                headers: vec![("allow", allowed.join(", "))],
                ..Refusal::new(
                    Code::Unimplemented,
                    format!("{} {} is not allowed", request.method, request.uri.path()),
                )
            })
        }
        None => Err(Refusal::new(
            Code::NotFound,
            format!(
                "no HTTP route for {} {}",
                request.method,
                request.uri.path()
            ),
        )),
    }
}

/// Whether a request is plain HTTP for the JSON bindings rather than gRPC:
/// not a gRPC content type, and either a path some binding has, or one
/// that is not shaped like a gRPC method (`/package.Service/Method` keeps
/// its gRPC answers, e.g. "gRPC calls are POST requests").
fn classify_http(transcoder: &Transcoder, session: &Session) -> Option<JsonCall> {
    let request = session.req_header();
    let grpc_content = request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"));
    if grpc_content {
        return None;
    }
    let path = request.uri.path();
    match transcoder.find(&request.method, path) {
        Ok((route, variables)) => Some(JsonCall {
            route: Some(route),
            variables,
            allowed: Vec::new(),
        }),
        Err(allowed) => {
            let grpc_shaped =
                grpc::split_path(path).is_some_and(|(service, _)| service.contains('.'));
            (!grpc_shaped || !allowed.is_empty()).then(|| JsonCall {
                route: None,
                variables: Vec::new(),
                allowed,
            })
        }
    }
}

/// Not gRPC at all: say so here rather than let the service fail to decode
/// it (tonic answers INTERNAL "Missing request message"). Notes gRPC-web
/// calls, whose bodies are translated.
fn check_is_grpc(session: &Session, ctx: &mut CallCtx) -> Step {
    let request = session.req_header();
    if request.method != http::Method::POST {
        let message = format!("gRPC calls are POST requests, not {}", request.method);
        return Err(Refusal::new(Code::Unimplemented, message));
    }
    let content_type = header_str(session, "content-type");
    if !content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/grpc"))
    {
        let message = format!(
            "content-type {} is not gRPC: send application/grpc or application/grpc-web",
            content_type.as_deref().unwrap_or("(none)")
        );
        return Err(Refusal::new(Code::InvalidArgument, message));
    }
    ctx.web = content_type
        .as_deref()
        .and_then(Encoding::from_content_type)
        .map(WebCall::new);
    Ok(())
}

/// The reserved headers a client sent (`x-munity-*`), to be removed.
fn reserved_headers(headers: &http::HeaderMap) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|name| name.as_str().starts_with(RESERVED_HEADER_PREFIX))
        .cloned()
        .collect()
}

/// The call's span, a child of the client's trace when it sent one.
fn start_span(headers: &http::HeaderMap, ctx: &mut CallCtx, path: &str) {
    ctx.span = tracing::info_span!(
        "grpc.gateway",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.grpc.status_code = tracing::field::Empty,
    );
    // With no subscriber interested (no exporter, quiet logs) the span is
    // disabled: skip the trace-context work on this hot path.
    if !ctx.span.is_disabled() {
        telemetry::set_parent_from_headers(&ctx.span, headers);
    }
}

/// Deadline: the client's, capped by the route; a default otherwise,
/// except for server streams, which may rightly live for hours.
fn set_deadline(headers: &http::HeaderMap, ctx: &mut CallCtx, route: &Route, streaming: bool) {
    let requested = munity_platform::deadline::requested(headers);
    let max = Duration::from_millis(route.config.max_timeout_ms);
    ctx.deadline = match requested {
        Some(requested) => Some(requested.min(max)),
        None if streaming => None,
        None => Some(Duration::from_millis(route.config.default_timeout_ms).min(max)),
    };
}

/// The client's request body cannot be translated. Marked as the
/// downstream's error: Pingora then ends the call at once (resetting the
/// upstream stream) and `fail_to_proxy` answers INVALID_ARGUMENT. Any other
/// error source is taken for an upstream write failure, after which the
/// call waited for the upstream's answer to a body it never got, until the
/// deadline.
fn bad_body(ctx: &mut CallCtx, message: String) -> Box<Error> {
    ctx.bad_request_body = Some(message.clone());
    Error::explain(ErrorType::InvalidHTTPHeader, message).into_down()
}

/// Said to clients whose calls the gateway ends because it is stopping.
const DRAINING_MESSAGE: &str = "the gateway is shutting down; reconnect";

/// Ends a response already under way with UNAVAILABLE: in the trailer
/// frame of a gRPC-web body, or in HTTP/2 trailers.
async fn end_started_response(session: &mut Session, ctx: &mut CallCtx, draining: bool) {
    let message = if draining {
        DRAINING_MESSAGE
    } else {
        "the upstream's response broke off"
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
    trailers.insert("grpc-message", http::HeaderValue::from_static(message));
    ctx.local_status = Some(Code::Unavailable);
    let written = match &ctx.web {
        Some(web) => {
            let frame = web.trailers_frame(&trailers);
            session
                .as_downstream_mut()
                .write_response_body(frame, true)
                .await
        }
        None => {
            session
                .as_downstream_mut()
                .write_response_trailers(trailers)
                .await
        }
    };
    if let Err(error) = written.and(session.as_downstream_mut().finish_body().await) {
        tracing::debug!(%error, "could not end the response with a status");
    }
}

/// A healthy replica of the route, round robin, other than those the call
/// has tried already.
fn select_replica(route: &Route, tried: &[SocketAddr]) -> Option<SocketAddr> {
    let backend = route.balancer.select_with(b"", 256, |backend, healthy| {
        healthy && backend.addr.as_inet().is_none_or(|a| !tried.contains(a))
    })?;
    backend.addr.as_inet().copied()
}

/// Request header bytes as HTTP/2 counts them (name + value + 32 each).
fn header_list_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 32)
        .sum()
}

fn header_str(session: &Session, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr()?.as_inet().map(|a| a.ip())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    /// Boxed: Pingora's future for a call holds its context in three
    /// places (heaptrack: 2 KiB more context made each open stream 6 KiB
    /// larger), so inline it cost three times its 472 bytes for as long as
    /// the call lasts; boxed, it is held once.
    type CTX = Box<CallCtx>;

    /// No downstream modules: Pingora's default is a response compression
    /// module at level 0, which compresses nothing (gRPC compresses per
    /// message, and the web app's files come precompressed) yet runs its
    /// filters on every header and every body chunk: 3-4% of the proxy's
    /// CPU while it relayed streamed messages.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        CallCtx::new()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        self.connections.request_started(session);
        // A client may send its next HTTP/1.1 request before reading this
        // answer (RFC 9112 pipelining): Pingora then dropped it, after an
        // answer that promised keep-alive. Answer it in turn instead.
        session.as_downstream_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<bool> {
        let origin = header_str(session, "origin");
        if session.req_header().method == http::Method::OPTIONS {
            self.cors.preflight(session, origin).await?;
            return Ok(true);
        }
        if self.docs.serve(session).await? || self.web.serve(session, &self.http).await? {
            ctx.local_status = Some(Code::Ok);
            return Ok(true);
        }
        ctx.json = classify_http(&self.http, session);
        let origin = self.web.cross_origin(session, origin);
        match self.admit(session, ctx, origin).await {
            Ok(Destination::Upstream) if ctx.json.is_some() => {
                self.serve_json(session, ctx).await?;
                Ok(true)
            }
            Ok(Destination::Upstream) => Ok(false),
            Ok(Destination::Health) => {
                let headers = cors::response_headers(ctx.origin.as_deref());
                let method = ctx.method.clone();
                let deadline = munity_platform::deadline::requested(&session.req_header().headers);
                match self
                    .health
                    .serve(session, &method, ctx.web.as_mut(), &headers, deadline)
                    .await
                {
                    Ok(()) => ctx.local_status = Some(Code::Ok),
                    Err(refusal) if refusal.unframed && !session.as_downstream().is_http2() => {
                        refuse_unframed(session, ctx).await?
                    }
                    Err(refusal) => {
                        refuse(session, ctx, Refusal::new(refusal.code, refusal.message)).await?
                    }
                }
                Ok(true)
            }
            Err(refusal) => {
                refuse(session, ctx, refusal).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let address = select_replica(route, &ctx.tried).ok_or_else(|| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("no healthy upstream for {}", ctx.service),
            )
        })?;
        ctx.peer = Some(address);
        // An earlier attempt's place is given back before this one waits.
        ctx.upstream_admission = None;
        ctx.upstream_admission = Some(self.upstream_streams.admit(address).await);
        let mut peer = HttpPeer::new(address, false, String::new());
        // gRPC is HTTP/2; many calls share one upstream connection.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = crate::upstream_streams::STREAMS_PER_CONNECTION;
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.h2_ping_interval = Some(Duration::from_secs(30));
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::fd::RawFd,
        digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        if let Some(admission) = ctx.upstream_admission.as_mut() {
            admission.connected(fd);
        }
        // Replaces the registration of an earlier attempt, if any.
        ctx.upstream_connection = None;
        // Kept once per connection by Pingora: no system call per call.
        let known = digest
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| Some((*s.local_addr()?.as_inet()?, *s.peer_addr()?.as_inet()?)));
        match self.upstream_connections.register(fd, known) {
            Ok(registration) => {
                ctx.upstream_connection = registration;
                Ok(())
            }
            // Not retried (an error's default): `fail_to_proxy` answers
            // UNAVAILABLE "shutting down; reconnect".
            Err(crate::upstream_drain::Draining) => Err(Error::explain(
                ErrorType::InternalError,
                "the gateway drained before the call reached its upstream",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        // The upstream's spans join this call's trace. Without an exporter
        // the span has no context of its own, and the client's traceparent
        // passes through unchanged.
        if !ctx.span.is_disabled() {
            let mut trace_headers = http::HeaderMap::new();
            ctx.span
                .in_scope(|| telemetry::inject_trace_context(&mut trace_headers));
            for (name, value) in &trace_headers {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(deadline) = ctx.deadline {
            // Removed first: inserting reserves room for one more header
            // even when it replaces one, and a map at its load limit then
            // doubles (1.2 KiB held for as long as a stream stays open).
            upstream_request.remove_header("grpc-timeout");
            upstream_request.insert_header(
                "grpc-timeout",
                munity_platform::deadline::format_timeout(deadline),
            )?;
        }
        if ctx.web.is_some() {
            // Upstream, it is plain gRPC over HTTP/2.
            upstream_request.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
            upstream_request.insert_header(http::header::TE, "trailers")?;
            upstream_request.remove_header(&http::header::CONTENT_LENGTH);
            upstream_request.remove_header("x-grpc-web");
            upstream_request.remove_header(&http::header::ORIGIN);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        if let Some(web) = ctx.web.as_mut().filter(|w| w.encoding == Encoding::Text) {
            if let Some(chunk) = body.take() {
                match web.decode_request(&chunk) {
                    Ok(decoded) => *body = Some(decoded),
                    Err(error) => return Err(bad_body(ctx, error.to_string())),
                }
            }
            if end_of_stream && web.request_incomplete() {
                let message = "grpc-web-text request body ends mid base64 group";
                return Err(bad_body(ctx, message.to_owned()));
            }
        }
        if let (Some(counter), Some(chunk)) = (ctx.request_messages.as_mut(), body.as_ref())
            && counter.feed(chunk) > 1
        {
            let path = format!("/{}/{}", ctx.service, ctx.method);
            let message = munity_platform::framing::second_message_error(&path);
            return Err(bad_body(ctx, message));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        if let Some(web) = &ctx.web {
            response.insert_header(
                http::header::CONTENT_TYPE,
                web.encoding.response_content_type(),
            )?;
            response.remove_header(&http::header::CONTENT_LENGTH);
        }
        for (name, value) in cors::response_headers(ctx.origin.as_deref()) {
            response.insert_header(name, value)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Option<Duration>> {
        if let Some(web) = ctx.web.as_ref().filter(|w| w.encoding == Encoding::Text)
            && let Some(chunk) = body.take()
        {
            *body = Some(web.encode_response(&chunk));
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Option<Bytes>> {
        // Browsers cannot read HTTP trailers: gRPC-web carries them as the
        // last frame of the body.
        Ok(ctx.web.as_ref().map(|web| web.trailers_frame(trailers)))
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        if let Some(status) = upstream_response.headers.get("grpc-status") {
            ctx.upstream_status = status.to_str().ok().map(str::to_owned);
        }
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> pingora_core::Result<()> {
        if let Some(status) = trailers.get("grpc-status") {
            ctx.upstream_status = status.to_str().ok().map(str::to_owned);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut error: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the replica, so another one may take the call
        // (and a call waiting for this one's connection opens its own).
        ctx.upstream_admission = None;
        if let Some(address) = ctx.peer.take() {
            ctx.tried.push(address);
            if let Some(route) = &ctx.route {
                route
                    .outliers
                    .failure(address, &route.balancer, &route.name);
            }
        }
        let replicas = ctx.route.as_ref().map_or(0, |r| r.config.upstreams.len());
        if ctx.tried.len() < replicas {
            error.set_retry(true);
        }
        error
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let draining = self.drain.is_cancelled();
        ctx.drained = draining;
        if !draining && client_left(error) {
            // Nobody is left to answer; counted CANCELLED, and
            // `suppress_error_log` keeps it out of the error log.
            tracing::debug!(%error, "the client cancelled the call");
            ctx.local_status = Some(Code::Cancelled);
            session.as_downstream_mut().set_keepalive(None);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        // The client's own HTTP/1.1 request could not be read (a bad chunk
        // size, say): the connection's framing is lost.
        let unframed = *error.esource() == pingora_core::ErrorSource::Downstream
            && !session.as_downstream().is_http2()
            && ctx.bad_request_body.is_none();
        if unframed {
            session.as_downstream_mut().set_keepalive(None);
        }
        if unframed && !draining && session.response_written().is_none() {
            if let Err(write_error) = refuse_unframed(session, ctx).await {
                tracing::debug!(%write_error, "could not send the 400 to the client");
            }
        } else if session.response_written().is_some() {
            // The upstream's response has started: end it with a status
            // rather than cut it, so clients know to reconnect.
            end_started_response(session, ctx, draining).await;
        } else {
            let (code, message) = match error.etype() {
                _ if draining => (Code::Unavailable, DRAINING_MESSAGE.to_owned()),
                _ if ctx.bad_request_body.is_some() => (
                    Code::InvalidArgument,
                    ctx.bad_request_body.clone().unwrap_or_default(),
                ),
                // The client's own HTTP/2 request could not be read: its
                // fault, not a reason to retry.
                _ if *error.esource() == pingora_core::ErrorSource::Downstream => (
                    Code::InvalidArgument,
                    format!("the request could not be read: {}", error.etype().as_str()),
                ),
                ErrorType::ConnectNoRoute => (
                    Code::Unavailable,
                    error
                        .context
                        .as_ref()
                        .map_or("no healthy upstream", |c| c.as_str())
                        .to_owned(),
                ),
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectError => (Code::Unavailable, "upstream unreachable".to_owned()),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    (Code::DeadlineExceeded, "upstream timed out".to_owned())
                }
                _ => (
                    Code::Unavailable,
                    format!("upstream failed: {}", error.etype().as_str()),
                ),
            };
            ctx.local_status = Some(code);
            let headers = cors::response_headers(ctx.origin.as_deref());
            if let Err(write_error) = grpc::respond_status(session, code, &message, &headers).await
            {
                tracing::debug!(%write_error, "could not send the error to the client");
            }
        }
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, _error: &Error) -> bool {
        // A client's cancel (`fail_to_proxy` has seen it) is no error, nor
        // is the gateway's own drain ending a call (each call still open
        // at shutdown was logged "Fail to proxy" at ERROR); the access log
        // still has the call, its status 14 and the error.
        ctx.local_status == Some(Code::Cancelled) || ctx.drained
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Self::CTX) {
        self.connections.request_finished(session);
        self.record_call(ctx, client_ip(session), error.map(|e| e.to_string()));
    }
}

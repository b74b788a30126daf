//! The gateway as one Pingora `ProxyHttp`: each call gets a [`CallCtx`];
//! `request_filter` routes, authenticates and rate-limits before any
//! upstream is touched; `upstream_peer` picks a healthy replica of the
//! route; `fail_to_proxy` turns transport failures into gRPC statuses;
//! `logging` records metrics and the access log.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use munity_platform::auth::{Claims, bearer_token};
use pingora_core::{Error, ErrorType, upstreams::peer::HttpPeer};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use tonic::Code;

use crate::{
    config::RouteConfig,
    edge_auth::EdgeAuth,
    grpc, metrics,
    rate_limit::{Decision, RateLimits},
};

/// Identity headers the gateway sets for upstreams. Whatever a client sent
/// under these names is removed first, so nobody can claim an identity.
pub const USER_ID_HEADER: &str = "x-munity-user-id";
pub const ROLES_HEADER: &str = "x-munity-roles";

/// Paths that never need a token.
const ALWAYS_PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// One routed service and its replicas.
pub struct Route {
    pub config: RouteConfig,
    pub balancer: Arc<LoadBalancer<RoundRobin>>,
}

pub struct Gateway {
    pub routes: HashMap<String, Arc<Route>>,
    pub auth: EdgeAuth,
    pub public_methods: Vec<String>,
    pub limits: Arc<RateLimits>,
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
}

impl Gateway {
    fn is_public(&self, service: &str, path: &str) -> bool {
        ALWAYS_PUBLIC_SERVICES.contains(&service) || self.public_methods.iter().any(|m| m == path)
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
        code: Code,
        message: &str,
        extra: &[(&'static str, String)],
    ) -> pingora_core::Result<bool> {
        ctx.local_status = Some(code);
        grpc::respond_status(session, code, message, extra).await?;
        Ok(true)
    }
}

fn client_ip(session: &Session) -> String {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = CallCtx;

    fn new_ctx(&self) -> Self::CTX {
        CallCtx {
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
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
    ) -> pingora_core::Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        let Some((service, method)) = grpc::split_path(&path) else {
            return self
                .refuse(
                    session,
                    ctx,
                    Code::Unimplemented,
                    "not a gRPC method path",
                    &[],
                )
                .await;
        };
        ctx.service = service.to_owned();
        ctx.method = method.to_owned();
        let Some(route) = self.routes.get(service).cloned() else {
            let message = format!("unknown service {service}");
            return self
                .refuse(session, ctx, Code::Unimplemented, &message, &[])
                .await;
        };

        // Nobody but the gateway speaks for an identity.
        let headers = &mut session.req_header_mut();
        headers.remove_header(USER_ID_HEADER);
        headers.remove_header(ROLES_HEADER);

        if !self.is_public(service, &path) {
            let verified = match bearer_token(&session.req_header().headers) {
                Ok(token) => {
                    let token = token.to_owned();
                    self.auth.verify(&token).await
                }
                Err(error) => Err(error),
            };
            match verified {
                Ok(claims) => ctx.claims = Some(claims),
                Err(error) => {
                    let code = match error {
                        munity_platform::auth::AuthError::KeysUnavailable(_) => Code::Unavailable,
                        _ => Code::Unauthenticated,
                    };
                    return self
                        .refuse(session, ctx, code, &error.to_string(), &[])
                        .await;
                }
            }
        }

        let identity = match &ctx.claims {
            Some(claims) => format!("user:{}", claims.sub),
            None => format!("ip:{}", client_ip(session)),
        };
        if let Decision::Refused { retry_after } = self.limits.check(&path, &identity) {
            metrics::RATE_LIMIT
                .with_label_values(&["local", "refused"])
                .inc();
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let message = format!("rate limit exceeded for {path}; retry in {seconds} s");
            return self
                .refuse(
                    session,
                    ctx,
                    Code::ResourceExhausted,
                    &message,
                    &[("retry-after", seconds.to_string())],
                )
                .await;
        }
        metrics::RATE_LIMIT
            .with_label_values(&["local", "allowed"])
            .inc();

        // Deadline: the client's, capped by the route; a default otherwise.
        let requested = session
            .req_header()
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc::parse_timeout);
        let max = Duration::from_millis(route.config.max_timeout_ms);
        ctx.deadline = Some(
            requested
                .unwrap_or(Duration::from_millis(route.config.default_timeout_ms))
                .min(max),
        );
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut CallCtx,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let tried = &ctx.tried;
        let backend = route
            .balancer
            .select_with(b"", 256, |backend, healthy| {
                healthy && backend.addr.as_inet().is_none_or(|a| !tried.contains(a))
            })
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::ConnectNoRoute,
                    format!("no healthy upstream for {}", route.config.service),
                )
            })?;
        let address = *backend
            .addr
            .as_inet()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "not an inet upstream"))?;
        ctx.peer = Some(address);
        let mut peer = HttpPeer::new(address, false, String::new());
        // gRPC is HTTP/2; many calls share one upstream connection.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = 128;
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.h2_ping_interval = Some(Duration::from_secs(30));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut CallCtx,
    ) -> pingora_core::Result<()> {
        if let Some(claims) = &ctx.claims {
            upstream_request.insert_header(USER_ID_HEADER, claims.sub.as_str())?;
            upstream_request.insert_header(ROLES_HEADER, claims.roles.join(","))?;
        }
        if let Some(deadline) = ctx.deadline {
            upstream_request.insert_header("grpc-timeout", grpc::format_timeout(deadline))?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut CallCtx,
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
        ctx: &mut CallCtx,
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
        ctx: &mut CallCtx,
        mut error: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the replica, so another one may take the call.
        if let Some(address) = ctx.peer.take() {
            ctx.tried.push(address);
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
        ctx: &mut CallCtx,
    ) -> FailToProxy {
        // Once the upstream's response has started, the stream just ends.
        if session.response_written().is_none() {
            let (code, message) = match error.etype() {
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
            if let Err(write_error) = grpc::respond_status(session, code, &message, &[]).await {
                tracing::debug!(%write_error, "could not send the error to the client");
            }
        }
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut CallCtx) {
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
        let elapsed = ctx.started.elapsed();
        metrics::REQUESTS
            .with_label_values(&[service, method, &code])
            .inc();
        metrics::LATENCY
            .with_label_values(&[service, method])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            client = %client_ip(session),
            service,
            method,
            grpc_status = %code,
            upstream = ?ctx.peer,
            user = ctx.claims.as_ref().map(|c| c.sub.as_str()).unwrap_or("-"),
            elapsed_us = elapsed.as_micros() as u64,
            error = error.map(|e| e.to_string()),
            "call"
        );
    }
}

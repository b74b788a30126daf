//! The Munity edge gateway, on Pingora.
//!
//! - `config.rs`: the `[gateway]` section (routes, limits, listeners).
//! - `proxy.rs`: one `ProxyHttp`: route by gRPC service, verify the JWT,
//!   rate-limit, pick a healthy replica, proxy over HTTP/2, map failures to
//!   gRPC statuses, log and count.
//! - `limits/`: rate limits, per replica (governor) or one budget for all
//!   replicas in Redis (fred), with leased tokens and a local fallback.
//! - `health.rs`: active `grpc.health.v1` checks for the load balancers.
//! - `discovery.rs`: replicas of upstreams named by DNS (headless
//!   Services), resolved again and admitted once healthy.
//! - `edge_health.rs`: `grpc.health.v1` for clients, answered here from
//!   the balancers' view.
//! - `outlier.rs`: passive ejection of replicas that fail calls in a row.
//! - `upstream_streams.rs`: calls opening at once share upstream HTTP/2
//!   connections (one call opens a connection, the others wait for it).
//! - `upstream_drain.rs`: the upstream connections of calls in flight,
//!   shut down at the drain so those calls end with UNAVAILABLE.
//! - `grpc.rs`: paths, trailers-only statuses, `grpc-timeout`.
//! - `grpc_web.rs`: gRPC-web (binary and text) to gRPC.
//! - `http_json/`: HTTP/JSON transcoding from `google.api.http` bindings,
//!   NDJSON and Server-Sent Event streams, the OpenAPI document and `/docs`.
//! - `cors.rs`: CORS for browsers: preflights, allowed origins.
//! - `proxy/relay.rs`: cleartext HTTP/2 connections served by hyper; their
//!   plain gRPC calls relayed with the same checks, everything else handed
//!   on to the proxy.
//! - `upstream_pool.rs`: the relay's upstream HTTP/2 connections.
//! - `connections.rs`: the accept loop: connection caps, and a deadline for
//!   each connection's next request (slow and idle clients).
//! - `metrics.rs` and `admin.rs`: Prometheus metrics on the admin port.
//!
//! [`run`] blocks the calling thread: Pingora builds its own runtimes, so
//! `munity dev` starts it on a thread of its own.

#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod connections;
mod cors;
mod discovery;
mod edge_health;
mod grpc;
mod grpc_web;
mod health;
pub mod http_json;
mod limits;
mod metrics;
mod outlier;
mod proxy;
mod upstream_drain;
mod upstream_pool;
mod upstream_streams;
pub mod web;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use munity_platform::{
    auth::{AuthConfig, RemoteJwks, TokenVerifier, VerifierSettings},
    shutdown::ShutdownToken,
};
use pingora_core::{
    apps::HttpServerOptions,
    server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, configuration::ServerConf},
    services::background::background_service,
};
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};

pub use config::GatewayConfig;

/// What the fuzz targets in `fuzz/` drive: the parsers that read what a
/// client sends. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::{
        edge_health::single_message,
        grpc_web::{Encoding, WebCall, trailer_frame},
    };
}

/// Served by every Munity server alike, so the gateway sends them to the
/// `reflection_upstream` route.
const REFLECTION_SERVICES: &[&str] = &[
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Runs the gateway until `shutdown` is cancelled. Blocks.
pub fn run(config: GatewayConfig, auth: AuthConfig, shutdown: ShutdownToken) -> anyhow::Result<()> {
    let server_conf = ServerConf {
        threads: config.threads.max(1),
        work_stealing: config.work_stealing,
        // Pingora's grace period is the drain: listeners are closed and
        // GOAWAY sent when it starts, calls in flight run on until it ends.
        // After it the runtimes are shut down, which drops every task left
        // at once (the timeout below only bounds blocking threads).
        grace_period_seconds: Some(config.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let check_interval = Duration::from_millis(config.health_check_interval_ms.max(50));
    let policy = config::policy();
    let upstreams = policy.upstreams();
    let mut routes = HashMap::new();
    // One resolver for every route with DNS names, made when one has.
    let mut resolver = None;
    for (name, route) in &config.routes {
        let key = format!("gateway.routes.{name}");
        let mut services = if route.services.is_empty() {
            upstreams
                .get(name)
                .map(|(_, services)| services.clone())
                .unwrap_or_default()
        } else {
            route.services.clone()
        };
        if services.is_empty() {
            anyhow::bail!(
                "{key}: no proto declares upstream {name:?}; list its gRPC services in {key}.services"
            );
        }
        let health_service = route
            .health_service
            .clone()
            .unwrap_or_else(|| services[0].clone());
        if *name == config.reflection_upstream {
            services.extend(REFLECTION_SERVICES.iter().map(|s| (*s).to_owned()));
        }
        let outliers = outlier::Outliers::default();
        let check: Arc<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync> =
            Arc::new(health::GrpcHealthCheck::new(
                name,
                &route.upstreams,
                &health_service,
                Duration::from_millis(500),
                outliers.clone(),
            ));
        let mut balancer = if discovery::any_named(&route.upstreams) {
            let resolver = match &resolver {
                Some(resolver) => Arc::clone(resolver),
                None => resolver
                    .insert(Arc::new(discovery::resolver(&config.dns_servers)?))
                    .clone(),
            };
            let found =
                discovery::DnsDiscovery::new(name, &route.upstreams, resolver, check.clone())
                    .map_err(|e| anyhow::anyhow!("{key}.upstreams: {e}"))?;
            let mut balancer = LoadBalancer::<RoundRobin>::from_backends(
                pingora_load_balancing::Backends::new(Box::new(found)),
            );
            balancer.update_frequency = Some(Duration::from_millis(config.dns_refresh_ms.max(100)));
            balancer
        } else {
            LoadBalancer::<RoundRobin>::try_from_iter(route.upstreams.iter().map(String::as_str))
                .map_err(|e| anyhow::anyhow!("{key}.upstreams: bad address: {e}"))?
        };
        balancer.set_health_check(Box::new(discovery::SharedCheck(check)));
        balancer.health_check_frequency = Some(check_interval);
        balancer.parallel_health_check = true;
        let checker = background_service(&format!("health {name}"), balancer);
        let balancer = checker.task();
        server.add_service(checker);
        let shared = Arc::new(proxy::Route {
            name: name.clone(),
            config: route.clone(),
            balancer,
            outliers,
        });
        for service in services {
            if let Some(other) = routes.insert(service.clone(), shared.clone()) {
                anyhow::bail!(
                    "{service} is routed twice: by gateway.routes.{} and {key}",
                    other.name
                );
            }
        }
    }

    // The JWKS comes from the users route's replicas unless one is named.
    let jwks_endpoints: Vec<String> = if config.jwks_endpoint.is_empty() {
        config
            .routes
            .get("users")
            .map(|r| r.upstreams.iter().map(|u| format!("http://{u}")).collect())
            .unwrap_or_default()
    } else {
        vec![config.jwks_endpoint.clone()]
    };
    let verifier = TokenVerifier::new(
        Arc::new(RemoteJwks::new(&jwks_endpoints).map_err(|e| {
            anyhow::anyhow!("gateway.jwks_endpoint (or gateway.routes.users): {e}")
        })?),
        VerifierSettings {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: Duration::from_secs(auth.leeway_secs),
            min_refetch_interval: Duration::from_secs(1),
            // The edge sees every user's tokens: its own, larger bound.
            cache_capacity: config.token_cache_capacity,
        },
    );
    let verifier = Arc::new(match &config.bus {
        Some(bus) => verifier.with_revocations(follow_revocations(bus, &auth, &shutdown)?),
        None => {
            tracing::warn!(
                "no [bus] to follow revocations on: revoked tokens pass the edge until they expire (services still refuse them)"
            );
            verifier
        }
    });
    let limits = limits::Limiter::new(&config.rate_limits.with_declared(policy.quotas()))?;
    // Half way through the grace period, streams still open end with
    // UNAVAILABLE (their clients reconnect elsewhere) rather than be cut
    // without a status when it ends.
    let drain_streams = ShutdownToken::new();
    let upstream_connections = upstream_drain::UpstreamConnections::new(drain_streams.clone());
    let relay_upstreams = Arc::new(upstream_pool::UpstreamPool::default());
    server.add_service(background_service(
        "stream drain",
        connections::StreamDrain {
            shutdown: shutdown.clone(),
            drain: drain_streams.clone(),
            after: Duration::from_secs(config.shutdown_grace_secs) / 2,
            upstream_connections: upstream_connections.clone(),
            relay_upstreams: relay_upstreams.clone(),
        },
    ));
    let health = edge_health::EdgeHealth::new(
        routes
            .iter()
            .map(|(service, route)| (service.clone(), route.balancer.clone()))
            .collect(),
        check_interval,
        shutdown.clone(),
        drain_streams.clone(),
    );
    let connections = connections::Connections::new(
        connections::ConnectionLimits {
            max_total: config.max_connections.max(1),
            max_per_ip: config.max_connections_per_ip.max(1),
            first_request: Duration::from_millis(config.request_header_timeout_ms.max(1)),
        },
        drain_streams.clone(),
    );
    let transcoder = Arc::new(
        http_json::Transcoder::new(&policy)
            .map_err(|e| anyhow::anyhow!("an HTTP binding in the protos cannot be served: {e}"))?,
    );
    let docs = http_json::openapi::Docs::new(&transcoder);
    let gateway = Arc::new(proxy::Gateway {
        http: transcoder,
        upstreams: http_json::Upstreams::default(),
        max_json_body_bytes: config.max_json_body_bytes,
        json_body_timeout: Duration::from_millis(config.request_header_timeout_ms.max(1)),
        docs,
        web: web::Web::new(&config.web),
        connections: connections.clone(),
        routes,
        auth: verifier,
        policy,
        limits: limits.clone(),
        cors: cors::Cors::new(&config.cors_allowed_origins),
        health,
        max_header_bytes: config.max_request_header_bytes,
        upstream_connections,
        upstream_streams: Default::default(),
        drain: drain_streams,
    });

    // The gateway accepts connections itself (connections.rs) and hands
    // each to Pingora's HTTP handling.
    // A header block far past the limit is refused by h2 itself, before it
    // is buffered (HEADERS + CONTINUATION floods); up to twice the limit
    // reaches the checks, which answer with a gRPC status. On both paths.
    let h2_max_header_list_size =
        u32::try_from(config.max_request_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
    let mut app =
        pingora_proxy::http_proxy(&server.configuration, proxy::EdgeProxy(gateway.clone()));
    {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        // Pingora keeps an idle HTTP/2 client connection forever by default.
        options.h2_idle_timeout = (config.client_idle_timeout_secs > 0)
            .then(|| Duration::from_secs(config.client_idle_timeout_secs));
        app.server_options = Some(options);
        // Pingora's default allows 100 streams per connection.
        let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
        h2.max_concurrent_streams(config.h2_max_concurrent_streams.max(1));
        h2.max_header_list_size(h2_max_header_list_size);
        // Every gRPC call carries at least one small DATA frame; hundreds of
        // calls opened at once on one connection (a client multiplexing
        // subscriptions) exceed h2's default framing budget of ~25 KB, and it
        // answers with GOAWAY (ENHANCE_YOUR_CALM), failing every call on the
        // connection. 4 MiB keeps the protection, sized for gRPC.
        h2.data_frame_budget(4 << 20);
        app.h2_options = Some(h2);
    }
    let app = Arc::new(app);
    let relay = config.grpc_relay.then(|| {
        Arc::new(proxy::relay::Relay::new(
            gateway,
            app.clone(),
            relay_upstreams,
            proxy::relay::RelaySettings {
                max_concurrent_streams: config.h2_max_concurrent_streams.max(1),
                max_header_list_size: h2_max_header_list_size,
                idle_timeout: (config.client_idle_timeout_secs > 0)
                    .then(|| Duration::from_secs(config.client_idle_timeout_secs)),
            },
        ))
    });
    let mut endpoints = vec![connections::Endpoint {
        listener: bind(&config.listen, "gateway.listen")?,
        tls: None,
    }];
    if let Some(tls) = &config.tls {
        let mut settings =
            pingora_core::listeners::tls::TlsSettings::intermediate(&tls.cert_path, &tls.key_path)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "gateway.tls: cannot load {} / {}: {e}",
                        tls.cert_path,
                        tls.key_path
                    )
                })?;
        settings.enable_h2();
        endpoints.push(connections::Endpoint {
            listener: bind(&tls.listen, "gateway.tls.listen")?,
            tls: Some(Arc::new(settings.build())),
        });
    }
    let mut listeners = background_service(
        "munity-gateway",
        connections::EdgeListeners {
            app,
            relay,
            endpoints: std::sync::Mutex::new(endpoints),
            connections,
        },
    );
    listeners.threads = Some(config.threads.max(1));
    server.add_service(listeners);
    server.add_service(background_service(
        "admin",
        admin::AdminServer::new(&config.admin_listen)?,
    ));
    if let Some(limits) = limits {
        server.add_service(background_service(
            "rate-limit janitor",
            admin::LimitsJanitor(limits),
        ));
    }

    server.run(RunArgs {
        shutdown_signal: Box::new(TokenSignal(shutdown)),
    });
    Ok(())
}

/// The OpenAPI document of every HTTP/JSON binding in the compiled protos,
/// as `/openapi.json` serves it (`munity-gateway openapi` writes it).
pub fn openapi_document() -> anyhow::Result<String> {
    let transcoder = http_json::Transcoder::new(&config::policy())
        .map_err(|e| anyhow::anyhow!("an HTTP binding in the protos cannot be served: {e}"))?;
    Ok(http_json::openapi::document_text(&transcoder))
}

/// Follows the revocations on `bus` on a thread of its own (Pingora builds
/// its runtimes later, and owns them), until `shutdown`; returns once the
/// log's revocations have been read, so a restarted gateway never serves
/// a token revoked before it started.
fn follow_revocations(
    bus: &munity_platform::config::BusConfig,
    auth: &AuthConfig,
    shutdown: &ShutdownToken,
) -> anyhow::Result<Arc<munity_platform::revocation::Revocations>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (bus, auth, shutdown) = (bus.clone(), auth.clone(), shutdown.clone());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("revocations".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let revocations =
                    munity_bus::revocations::follow(&bus, &auth, "gateway", &shutdown).await;
                // The gateway stops waiting only if start-up failed later.
                let _ = sender.send(revocations);
                shutdown.cancelled().await;
            });
        })?;
    receiver
        .recv()
        .map_err(|_| anyhow::anyhow!("the revocation follower stopped before starting"))
}

/// Binds a listener now, so that a taken address fails start-up by name.
fn bind(address: &str, key: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).map_err(|e| anyhow::anyhow!("{key} = {address:?}: {e}"))
}

/// Turns the process's shutdown token into Pingora's graceful terminate.
struct TokenSignal(ShutdownToken);

#[async_trait]
impl ShutdownSignalWatch for TokenSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.cancelled().await;
        ShutdownSignal::GracefulTerminate
    }
}

//! The Munity edge gateway, on Pingora.
//!
//! - `config.rs`: the `[gateway]` section (routes, limits, listeners).
//! - `proxy.rs`: one `ProxyHttp`: route by gRPC service, verify the JWT,
//!   rate-limit, pick a healthy replica, proxy over HTTP/2, map failures to
//!   gRPC statuses, log and count.
//! - `limits/`: rate limits, per replica (governor) or one budget for all
//!   replicas in Redis (fred), with leased tokens and a local fallback.
//! - `health.rs`: active `grpc.health.v1` checks for the load balancers.
//! - `outlier.rs`: passive ejection of replicas that fail calls in a row.
//! - `grpc.rs`: paths, trailers-only statuses, `grpc-timeout`.
//! - `grpc_web.rs`: gRPC-web (binary and text) to gRPC.
//! - `cors.rs`: CORS for browsers: preflights, allowed origins.
//! - `metrics.rs` and `admin.rs`: Prometheus metrics on the admin port.
//!
//! [`run`] blocks the calling thread: Pingora builds its own runtimes, so
//! `munity dev` starts it on a thread of its own.

#![forbid(unsafe_code)]

mod admin;
pub mod config;
mod cors;
mod grpc;
mod grpc_web;
mod health;
mod limits;
mod metrics;
mod outlier;
mod proxy;

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
    let mut routes = HashMap::new();
    for route in &config.routes {
        let mut balancer =
            LoadBalancer::<RoundRobin>::try_from_iter(route.upstreams.iter().map(String::as_str))
                .map_err(|e| {
                anyhow::anyhow!(
                    "gateway.routes {}: bad upstream address: {e}",
                    route.service
                )
            })?;
        // Infrastructure services ask about the server as a whole ("").
        let health_service = route.health_service.clone().unwrap_or_else(|| {
            if route.service.starts_with("grpc.") {
                String::new()
            } else {
                route.service.clone()
            }
        });
        let outliers = outlier::Outliers::default();
        balancer.set_health_check(Box::new(health::GrpcHealthCheck::new(
            &health_service,
            Duration::from_millis(500),
            outliers.clone(),
        )));
        balancer.health_check_frequency = Some(check_interval);
        balancer.parallel_health_check = true;
        let checker = background_service(&format!("health {}", route.service), balancer);
        let balancer = checker.task();
        server.add_service(checker);
        routes.insert(
            route.service.clone(),
            Arc::new(proxy::Route {
                config: route.clone(),
                balancer,
                outliers,
            }),
        );
    }

    let verifier = Arc::new(TokenVerifier::new(
        Arc::new(RemoteJwks::new(&[&config.jwks_endpoint])?),
        VerifierSettings {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            leeway: Duration::from_secs(auth.leeway_secs),
            min_refetch_interval: Duration::from_secs(1),
            // The edge sees every user's tokens: its own, larger bound.
            cache_capacity: config.token_cache_capacity,
        },
    ));
    let limits = limits::Limiter::new(&config.rate_limits)?;
    let gateway = proxy::Gateway {
        routes,
        auth: verifier,
        public_methods: config.public_methods.clone(),
        limits: limits.clone(),
        cors: cors::Cors::new(&config.cors_allowed_origins),
        streaming_methods: grpc::server_streaming_methods(),
    };

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "munity-gateway",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        // Pingora keeps an idle HTTP/2 client connection forever by default.
        options.h2_idle_timeout = (config.client_idle_timeout_secs > 0)
            .then(|| Duration::from_secs(config.client_idle_timeout_secs));
        app.server_options = Some(options);
        // Pingora's default allows 100 streams per connection.
        let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
        h2.max_concurrent_streams(config.h2_max_concurrent_streams.max(1));
        // Every gRPC call carries at least one small DATA frame; hundreds of
        // calls opened at once on one connection (a client multiplexing
        // subscriptions) exceed h2's default framing budget of ~25 KB, and it
        // answers with GOAWAY (ENHANCE_YOUR_CALM), failing every call on the
        // connection. 4 MiB keeps the protection, sized for gRPC.
        h2.data_frame_budget(4 << 20);
        app.h2_options = Some(h2);
    }
    proxy.add_tcp(&config.listen);
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
        proxy.add_tls_with_settings(&tls.listen, None, settings);
    }
    server.add_service(proxy);
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

/// Turns the process's shutdown token into Pingora's graceful terminate.
struct TokenSignal(ShutdownToken);

#[async_trait]
impl ShutdownSignalWatch for TokenSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.cancelled().await;
        ShutdownSignal::GracefulTerminate
    }
}

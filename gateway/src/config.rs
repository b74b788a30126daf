//! `[gateway]`: listeners, routes to upstream replicas, edge auth and rate
//! limits.

use serde::{Deserialize, Serialize};

// `[gateway.rate_limits]` is defined with the limiter.
pub use crate::limits::{Mode, QuotaConfig, RateLimitConfig, RateRule};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Plaintext listener, `host:port`: h2c and HTTP/1.1, for gRPC and
    /// gRPC-web.
    pub listen: String,
    /// Admin listener: Prometheus `/metrics` and `/healthz`.
    pub admin_listen: String,
    /// A TLS listener (HTTP/2 via ALPN, and HTTP/1.1), served when a
    /// certificate and key are configured.
    pub tls: Option<TlsConfig>,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// Concurrent HTTP/2 streams a client may open on one connection (gRPC
    /// clients multiplex calls and long-lived streams on few connections).
    pub h2_max_concurrent_streams: u32,
    /// Let idle worker threads steal tasks from busy ones (one shared tokio
    /// scheduler), instead of one single-threaded scheduler per thread.
    pub work_stealing: bool,
    /// users-svc address the JWKS is fetched from (gRPC `GetJwks`).
    pub jwks_endpoint: String,
    /// Full method paths callable without a token, besides health and
    /// reflection.
    pub public_methods: Vec<String>,
    /// How many verified tokens to remember, so a signature is checked once
    /// per token rather than once per call.
    pub token_cache_capacity: usize,
    /// Active gRPC health checks of every upstream, in milliseconds.
    pub health_check_interval_ms: u64,
    /// Which service goes where.
    pub routes: Vec<RouteConfig>,
    pub rate_limits: RateLimitConfig,
    /// Browser origins allowed to call over gRPC-web (`*` for any).
    pub cors_allowed_origins: Vec<String>,
    /// On SIGTERM the listeners close and HTTP/2 clients get GOAWAY at
    /// once; calls in flight then have this many seconds to finish before
    /// the proxy stops (and cuts the server streams still open, whose
    /// clients reconnect elsewhere). Pingora waits the whole period.
    pub shutdown_grace_secs: u64,
    /// An HTTP/2 client connection with no call or stream open for this
    /// long is closed (GOAWAY; clients reconnect on their next call). 0
    /// keeps idle connections forever.
    pub client_idle_timeout_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".to_owned(),
            admin_listen: "127.0.0.1:9090".to_owned(),
            tls: None,
            threads: 1,
            work_stealing: false,
            h2_max_concurrent_streams: 1000,
            jwks_endpoint: "http://127.0.0.1:50051".to_owned(),
            public_methods: ["Register", "Login", "Refresh", "Logout", "GetJwks"]
                .iter()
                .map(|m| format!("/munity.users.v1.Users/{m}"))
                .collect(),
            token_cache_capacity: 100_000,
            health_check_interval_ms: 1_000,
            // Health and reflection go to users-svc: every service serves
            // the descriptors of all Munity protos.
            routes: vec![
                RouteConfig::new("munity.users.v1.Users", ["127.0.0.1:50051"]),
                RouteConfig::new("grpc.health.v1.Health", ["127.0.0.1:50051"]),
                RouteConfig::new("grpc.reflection.v1.ServerReflection", ["127.0.0.1:50051"]),
                RouteConfig::new(
                    "grpc.reflection.v1alpha.ServerReflection",
                    ["127.0.0.1:50051"],
                ),
            ],
            rate_limits: RateLimitConfig::default(),
            cors_allowed_origins: ["http://localhost:3000", "http://localhost:5173"]
                .iter()
                .map(|o| (*o).to_owned())
                .collect(),
            shutdown_grace_secs: 5,
            client_idle_timeout_secs: 3600,
        }
    }
}

/// TLS with rustls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    /// PEM certificate chain.
    pub cert_path: String,
    /// PEM private key.
    pub key_path: String,
}

impl GatewayConfig {
    /// Checks that every listen address is free, and turns a `:0` port into
    /// a concrete free one. Pingora binds its listeners itself, retrying an
    /// address in use forever; checking first turns a port clash into a
    /// clear start-up error. (Another process could take the port in the
    /// moment between this check and Pingora's bind; that is the only gap.)
    pub fn claim_listen_addresses(&mut self) -> anyhow::Result<()> {
        self.listen = claim(&self.listen, "gateway.listen")?;
        self.admin_listen = claim(&self.admin_listen, "gateway.admin_listen")?;
        if let Some(tls) = &mut self.tls {
            tls.listen = claim(&tls.listen, "gateway.tls.listen")?;
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Sends upstream `name`'s services (e.g. `users`: `munity.users.*`,
    /// and for now health and reflection) to the single replica `address`,
    /// as `munity dev` does for its in-process services.
    pub fn point_upstream(&mut self, name: &str, address: std::net::SocketAddr) {
        let prefix = format!("munity.{name}.");
        for route in &mut self.routes {
            if route.service.starts_with(&prefix) || route.service.starts_with("grpc.") {
                route.upstreams = vec![address.to_string()];
            }
        }
    }
}

fn claim(address: &str, key: &str) -> anyhow::Result<String> {
    let probe = std::net::TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {key} {address}: {e}"))?;
    Ok(probe.local_addr()?.to_string())
}

/// One gRPC service (package.Service) and the replicas that serve it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Full service name, e.g. `munity.users.v1.Users`.
    pub service: String,
    /// Replica addresses, `host:port`.
    pub upstreams: Vec<String>,
    /// Deadline applied when the client sends no `grpc-timeout`, in ms.
    pub default_timeout_ms: u64,
    /// Upper bound on a client's `grpc-timeout`, in ms.
    pub max_timeout_ms: u64,
    /// The service name health checks ask about (default: `service`).
    pub health_service: Option<String>,
}

impl RouteConfig {
    pub fn new<const N: usize>(service: &str, upstreams: [&str; N]) -> Self {
        RouteConfig {
            service: service.to_owned(),
            upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
            ..RouteConfig::default()
        }
    }
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            service: String::new(),
            upstreams: Vec::new(),
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            health_service: None,
        }
    }
}

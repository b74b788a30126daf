//! `[gateway]`: listeners, routes to upstream replicas, edge auth and rate
//! limits.
//!
//! Routes are a table keyed by upstream name (`[gateway.routes.users]`), and
//! the defaults come from the protos: one route per upstream a service
//! declares (`option (munity.options.v1.service)`), on 127.0.0.1 at its
//! default port. [`GatewayConfig::load`] lays the defaults under the file and
//! environment key by key, so a file that sets one route's upstreams keeps
//! every other route.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
};

use munity_platform::{
    config::{ConfigError, ConfigSource},
    policy::MethodPolicy,
};
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
    /// Largest request header list accepted, in bytes, counted as HTTP/2
    /// does (name + value + 32 per header), over HTTP/1.1 and HTTP/2 alike.
    /// Below what upstreams accept (tonic/hyper: 16 KiB), so that one
    /// request can never make an upstream drop the connection every client
    /// shares.
    pub max_request_header_bytes: usize,
    /// Let idle worker threads steal tasks from busy ones (one shared tokio
    /// scheduler), instead of one single-threaded scheduler per thread.
    pub work_stealing: bool,
    /// Serve cleartext HTTP/2 (h2c) connections with hyper and relay their
    /// plain gRPC calls on the gateway's own upstream connections
    /// (`proxy/relay.rs`); every other request goes on to Pingora. `false`:
    /// Pingora serves every connection.
    pub grpc_relay: bool,
    /// users-svc, where the JWKS comes from (`GET /.well-known/jwks.json`),
    /// e.g. `http://users:50051`. Empty: the replicas of the `users` route,
    /// tried in turn.
    pub jwks_endpoint: String,
    /// How many verified tokens to remember, so a signature is checked once
    /// per token rather than once per call.
    pub token_cache_capacity: usize,
    /// Active gRPC health checks of every upstream, in milliseconds.
    pub health_check_interval_ms: u64,
    /// How often upstream names (`host:port` with a DNS name, e.g. a
    /// Kubernetes headless Service) are resolved again, in milliseconds.
    pub dns_refresh_ms: u64,
    /// DNS servers for upstream names (`ip` or `ip:port`); empty: the
    /// system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<String>,
    /// Upstream name (e.g. `users`) → its replicas and the gRPC services
    /// they serve.
    pub routes: BTreeMap<String, RouteConfig>,
    /// The route that answers server reflection: every Munity service
    /// serves the descriptors of all Munity protos, so one is enough.
    pub reflection_upstream: String,
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
    /// Client connections open at once; past it, new ones are closed at
    /// accept.
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// A new connection must deliver its first request (HTTP/1.1 header, or
    /// HTTP/2 preface and first call; TLS handshake included) within this,
    /// or is closed; so must an idle HTTP/1.1 keep-alive connection its
    /// next one, within 60 s plus this. Bounds slow and idle clients.
    pub request_header_timeout_ms: u64,
    /// Largest JSON request body accepted over HTTP/JSON (413 beyond); it
    /// must arrive within `request_header_timeout_ms`.
    pub max_json_body_bytes: usize,
    /// `[gateway.web]`: the web app at `/`.
    pub web: crate::web::WebConfig,
    /// The event log whose revocations the gateway follows (tokens of
    /// ended sessions refused within a second): the top-level `[bus]` when
    /// it is Redis, or `munity dev`'s embedded log. A gateway process of
    /// its own cannot read an embedded log (one process holds it), so
    /// with one it follows none and revoked tokens pass the edge until
    /// they expire (the services behind it still refuse them).
    #[serde(skip)]
    pub bus: Option<munity_platform::config::BusConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".to_owned(),
            admin_listen: "127.0.0.1:9090".to_owned(),
            tls: None,
            threads: 1,
            work_stealing: false,
            grpc_relay: true,
            h2_max_concurrent_streams: 1000,
            max_request_header_bytes: 8 * 1024,
            jwks_endpoint: String::new(),
            token_cache_capacity: 100_000,
            health_check_interval_ms: 1_000,
            dns_refresh_ms: 5_000,
            dns_servers: Vec::new(),
            routes: default_routes(),
            reflection_upstream: "users".to_owned(),
            rate_limits: RateLimitConfig::default(),
            cors_allowed_origins: ["http://localhost:3000", "http://localhost:5173"]
                .iter()
                .map(|o| (*o).to_owned())
                .collect(),
            shutdown_grace_secs: 5,
            client_idle_timeout_secs: 3600,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            request_header_timeout_ms: 10_000,
            max_json_body_bytes: 1 << 20,
            web: crate::web::WebConfig::default(),
            bus: None,
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
    /// `[gateway]` from `source`, with the defaults (routes included) laid
    /// under it key by key.
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        let mut config: GatewayConfig =
            source.section_over_defaults("gateway", &GatewayConfig::default())?;
        let bus = munity_platform::config::BusConfig::load(source)?;
        if bus.backend == munity_platform::config::BusBackend::Redis {
            config.bus = Some(bus);
        }
        Ok(config)
    }

    /// Sends upstream `name`'s services to the single replica `address`, as
    /// `munity dev` does for its in-process services.
    pub fn point_upstream(&mut self, name: &str, address: std::net::SocketAddr) {
        self.routes.entry(name.to_owned()).or_default().upstreams = vec![address.to_string()];
    }
}

fn claim(address: &str, key: &str) -> anyhow::Result<String> {
    let probe = std::net::TcpListener::bind(address)
        .map_err(|e| anyhow::anyhow!("cannot listen on {key} {address}: {e}"))?;
    Ok(probe.local_addr()?.to_string())
}

/// One upstream: its replicas and the gRPC services they serve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Replicas, `ip:port`, or `name:port` for a DNS name whose addresses
    /// are the replicas (resolved again every `gateway.dns_refresh_ms`;
    /// newcomers are health-checked before they get calls).
    pub upstreams: Vec<String>,
    /// Full gRPC service names routed here (e.g. `munity.users.v1.Users`).
    /// Empty: the services the protos say this upstream serves.
    pub services: Vec<String>,
    /// Deadline applied when the client sends no `grpc-timeout`, in ms.
    pub default_timeout_ms: u64,
    /// Upper bound on a client's `grpc-timeout`, in ms.
    pub max_timeout_ms: u64,
    /// The service name active health checks ask about (default: the
    /// route's first service).
    pub health_service: Option<String>,
    /// Serve the route's methods that have `google.api.http` bindings as
    /// HTTP/JSON too (404 when off).
    pub http_json: bool,
}

impl RouteConfig {
    pub fn new<const N: usize>(upstreams: [&str; N]) -> Self {
        RouteConfig {
            upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
            ..RouteConfig::default()
        }
    }
}

/// The compiled protos' policy (and the health and reflection services'),
/// decoded once per process: defaults, start-up and the proxy share it.
pub fn policy() -> Arc<MethodPolicy> {
    static POLICY: LazyLock<Arc<MethodPolicy>> = LazyLock::new(|| {
        Arc::new(
            MethodPolicy::from_descriptor_sets(&[
                munity_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ])
            .expect("the compiled descriptor sets decode"),
        )
    });
    POLICY.clone()
}

/// One route per upstream the protos declare, on 127.0.0.1 at its default
/// port (the one-machine layout).
fn default_routes() -> BTreeMap<String, RouteConfig> {
    policy()
        .upstreams()
        .into_iter()
        .map(|(name, (port, _))| {
            let address = format!("127.0.0.1:{port}");
            (name, RouteConfig::new([address.as_str()]))
        })
        .collect()
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            upstreams: Vec::new(),
            services: Vec::new(),
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            health_service: None,
            http_json: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_follows_revocations_only_on_a_redis_bus() {
        let embedded = GatewayConfig::load(&ConfigSource::from_toml_str("")).unwrap();
        assert_eq!(embedded.bus, None, "an embedded log is another process's");
        let redis = GatewayConfig::load(&ConfigSource::from_toml_str(
            "[bus]\nbackend = \"redis\"\nredis_url = \"redis://10.0.0.1:6379\"\n",
        ))
        .unwrap();
        assert_eq!(
            redis.bus.map(|bus| bus.redis_url),
            Some("redis://10.0.0.1:6379".to_owned())
        );
    }
}

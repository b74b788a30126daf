//! `[users]`: users-svc's own configuration. Shared sections (`[auth]`,
//! `[telemetry]`) are read by the platform crate.

use std::net::SocketAddr;

use munity_platform::config::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    /// Where the gRPC server listens (also serves `/.well-known/jwks.json`).
    pub listen: SocketAddr,
    /// Embedded store (default) or ScyllaDB.
    pub storage: StorageConfig,
    /// Token lifetimes.
    pub tokens: TokenConfig,
    /// Accounts registered with these emails get the admin role. This is how
    /// the first administrator comes to exist.
    pub admin_emails: Vec<String>,
    /// On shutdown, calls in flight get this many seconds to finish; then
    /// the server stops and cuts what is still open (server streams).
    pub shutdown_grace_secs: u64,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            storage: StorageConfig::default(),
            tokens: TokenConfig::default(),
            admin_emails: Vec::new(),
            shutdown_grace_secs: munity_platform::server::DEFAULT_SHUTDOWN_GRACE.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Lifetime of access tokens (JWTs), in seconds.
    pub access_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds; each refresh starts a new one.
    pub refresh_ttl_secs: u64,
    /// How often each replica reloads the signing keys from storage, so a
    /// rotation made on one replica reaches the others, in seconds.
    pub key_reload_secs: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 60 * 60,
            key_reload_secs: 30,
        }
    }
}

//! `[users]`: users-svc's own keys. The keys every service has (`listen`,
//! `shutdown_grace_secs`, `storage`) are the platform's
//! (`munity_platform::service::ServiceConfig`); shared sections (`[auth]`,
//! `[telemetry]`) are read by the platform too.

use serde::{Deserialize, Serialize};

/// Unknown keys are refused by the platform (which sees the whole section),
/// so no `deny_unknown_fields` at this level.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsersConfig {
    /// Token lifetimes.
    pub tokens: TokenConfig,
    /// Accounts registered with these emails get the admin role. This is how
    /// the first administrator comes to exist.
    pub admin_emails: Vec<String>,
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

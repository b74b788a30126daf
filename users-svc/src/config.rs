//! `[users]`: users-svc's own keys. The keys every service has (`listen`,
//! `shutdown_grace_secs`, `storage`) are the platform's
//! (`munity_platform::service::ServiceConfig`); shared sections (`[auth]`,
//! `[telemetry]`) are read by the platform too.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

/// Unknown keys are refused by the platform (which sees the whole section),
/// so no `deny_unknown_fields` at this level.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UsersConfig {
    /// Token lifetimes.
    pub tokens: TokenConfig,
    /// Accounts registered with these emails get the admin role. This is how
    /// the first administrator comes to exist.
    pub admin_emails: Vec<String>,
    /// How many password hashes may run at once (`[users.passwords]`).
    pub passwords: PasswordsConfig,
    /// Lifetime of a service account's access token (IssueServiceToken), in
    /// seconds. Short: a service asks again with its secret, and a disabled
    /// account or a rotated secret shuts it out within this time.
    pub service_token_ttl_secs: u64,
    /// Service accounts made at start-up when no account has their id yet
    /// (`munity dev` sets this for the Telegram bot's, so no admin has to
    /// make it). An account already there is left as it is: an admin may
    /// have disabled it or rotated its secret since.
    pub provisioned_service_accounts: Vec<ProvisionedServiceAccount>,
}

/// A service account to make at start-up (only the secret's hash is given).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ProvisionedServiceAccount {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the client secret, as users-svc stores it
    /// ([`crate::api::service_secret`]).
    pub secret_hash: String,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            tokens: TokenConfig::default(),
            admin_emails: Vec::new(),
            passwords: PasswordsConfig::default(),
            service_token_ttl_secs: 10 * 60,
            provisioned_service_accounts: Vec::new(),
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

/// `[users.passwords]`: the bound on password hashing. Every Argon2id hash
/// (Register; Login, including the dummy hash for unknown emails) takes
/// 19 MiB and tens of milliseconds of CPU, so without a bound a burst of
/// logins takes as much memory as it has calls (200 at once: 3.9 GB). At
/// most `max_concurrent_hashes` run at once; up to `max_queued_hashes` more
/// wait, each for at most `queue_timeout_ms`; any other call is refused at
/// once with RESOURCE_EXHAUSTED ("too many password checks in progress;
/// retry shortly"), without hashing. Memory for hashing: about
/// `max_concurrent_hashes` x 19 MiB, kept once used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordsConfig {
    /// Hashes running at once (each on a thread of its own), at least 1.
    /// Default (unset): the number of CPU cores
    /// (`std::thread::available_parallelism`): more would not hash faster.
    pub max_concurrent_hashes: Option<NonZeroUsize>,
    /// Calls that may wait for a hash slot; 0: none wait. Default (unset): 4
    /// times the hashes running at once.
    pub max_queued_hashes: Option<usize>,
    /// How long a waiting call waits for a slot before it is refused, in
    /// milliseconds.
    pub queue_timeout_ms: u64,
}

impl Default for PasswordsConfig {
    fn default() -> Self {
        PasswordsConfig {
            max_concurrent_hashes: None,
            max_queued_hashes: None,
            queue_timeout_ms: 2000,
        }
    }
}

impl PasswordsConfig {
    /// `max_concurrent_hashes`, its default filled in.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent_hashes
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }

    /// `max_queued_hashes`, its default filled in.
    pub fn max_queued(&self) -> usize {
        self.max_queued_hashes
            .unwrap_or_else(|| self.max_concurrent().saturating_mul(4))
    }
}

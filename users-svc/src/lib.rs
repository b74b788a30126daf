//! users-svc: accounts, sessions, signing keys, roles and communities
//! (`munity.users.v1`).
//!
//! Layout, one layer per file:
//! - `config.rs`: users-svc's own keys of the `[users]` section.
//! - `domain.rs`: stored records and input rules.
//! - `store/`: the repository trait and its two backends (embedded redb,
//!   ScyllaDB), held to one contract by `tests/repository_contract.rs`.
//! - `passwords.rs`: Argon2id hashing, bounded (`[users.passwords]`).
//! - `keys.rs`: Ed25519 signing keys, rotation, the JWKS.
//! - `api/`: the gRPC service, a file per concern (sessions, accounts,
//!   communities, service accounts) plus conversions to protobuf.
//! - `error.rs`: domain errors and their gRPC status codes.
//! - `events.rs`: the domain events it publishes (communities,
//!   memberships, profiles, revocations), staged with each change and
//!   relayed to the event log.
//! - `migrations.rs`: one-time data migrations, run in the background at
//!   start-up (the `ProfileChanged` backfill).
//!
//! [`UsersService`] is its platform shape: `main.rs` is the platform's
//! generic `main`, `munity dev` starts it from its registry, and tests call
//! [`run`] on a listener they bound, until the shutdown token fires.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod keys;
pub mod migrations;
pub mod passwords;
pub mod store;

use std::{sync::Arc, time::Duration};

use axum::{Json, routing::get};
use munity_platform::{
    auth::{AuthConfig, TokenVerifier, VerifierSettings},
    server::GrpcHost,
    service::{Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use munity_proto::users::v1::users_server::UsersServer;
use tokio::net::TcpListener;

pub use config::UsersConfig;

/// Largest request users-svc accepts. Its messages are a few short strings;
/// anything near this is abuse.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// users-svc as a platform service: `[users]`, `munity.users.v1`.
pub struct UsersService;

impl Service for UsersService {
    const NAME: &'static str = "users-svc";
    const SECTION: &'static str = "users";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = UsersConfig;
    const ISSUES_TOKENS: bool = true;

    async fn run(
        config: ServiceConfig<UsersConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// Serves users-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ServiceConfig<UsersConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let hashing = passwords::Hashing::new(&config.own.passwords)?;
    run_with_hashing(config, auth, listener, shutdown, hashing).await
}

/// [`run`] with its password-hashing bound made by the caller (from
/// `config.own.passwords`), who can then watch it
/// ([`passwords::Hashing::stats`]): for tests.
#[doc(hidden)]
pub async fn run_with_hashing(
    config: ServiceConfig<UsersConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
    hashing: passwords::Hashing,
) -> anyhow::Result<()> {
    let store::Opened { repo, publishing } = store::open(&config.storage).await?;
    api::provision_service_accounts(repo.as_ref(), &config.own.provisioned_service_accounts)
        .await?;
    // Community and membership changes go out on the event log.
    publishing
        .start(&config.bus, UsersService::NAME, &shutdown)
        .await;
    // Accounts from before ProfileChanged announce their names, once per
    // store, while the service serves.
    migrations::spawn_profile_backfill(repo.clone(), shutdown.clone());
    let tokens = &config.own.tokens;
    // The longest any token lives: users' or service accounts'.
    let token_ttl = Duration::from_secs(
        tokens
            .access_ttl_secs
            .max(config.own.service_token_ttl_secs),
    );
    // A restarting process reads revocations back this far: a token living
    // longer could outlive a revocation forgotten across a restart.
    if token_ttl + Duration::from_secs(auth.leeway_secs)
        > Duration::from_secs(auth.revocation_replay_secs)
    {
        anyhow::bail!(
            "auth.revocation_replay_secs ({}) must cover the longest token lifetime \
             (users.tokens.access_ttl_secs or users.service_token_ttl_secs: {} s) \
             plus auth.leeway_secs ({})",
            auth.revocation_replay_secs,
            token_ttl.as_secs(),
            auth.leeway_secs
        );
    }
    // Keep retired keys published for as long as tokens they signed live.
    let publish_grace = token_ttl + Duration::from_secs(auth.leeway_secs) + Duration::from_secs(60);
    let keys = keys::KeyManager::load(repo.clone(), publish_grace).await?;
    keys.spawn_reloader(
        Duration::from_secs(tokens.key_reload_secs.max(1)),
        shutdown.clone(),
    );

    let verifier = Arc::new(
        TokenVerifier::new(
            keys.clone(),
            VerifierSettings {
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                leeway: Duration::from_secs(auth.leeway_secs),
                min_refetch_interval: Duration::from_millis(200),
                cache_capacity: auth.token_cache_capacity,
            },
        )
        .with_revocations(
            munity_bus::revocations::follow(&config.bus, &auth, UsersService::NAME, &shutdown)
                .await,
        ),
    );

    let api = api::UsersApi::new(repo, keys.clone(), hashing, &config.own, &auth);
    let jwks_keys = keys.clone();
    GrpcHost::new(UsersService::DESCRIPTOR_SET)?
        .add_service(UsersServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_http_route(
            "/.well-known/jwks.json",
            get(move || {
                let keys = jwks_keys.clone();
                async move { Json(keys.current_jwks().await) }
            }),
        )
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(verifier)
        .serve(listener, shutdown.cancelled_owned())
        .await
}

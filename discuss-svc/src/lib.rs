//! discuss-svc: discussions in communities (`munity.discuss.v1`): posts
//! in a small, safe markdown subset, threaded comments, reactions,
//! moderation (approval, reports), and feeds.
//!
//! Layout, one layer per file:
//! - `config.rs`: its own keys of the `[discuss]` section.
//! - `domain.rs`: records as stored, what each change does to a post, the
//!   rules for valid input and the markdown renderer.
//! - `store/`: the repository trait and its two backends (embedded redb,
//!   CQL), held to one contract by `tests/repository_contract.rs`.
//! - who may read a community's posts, and who moderates, is the shared
//!   membership view (`munity_bus::membership`), kept in its own store.
//! - `events.rs`: the domain events it publishes; `mentions.rs`: whom a
//!   text's `@display-name` or `@<user id>` names (told by an event staged
//!   with the post or comment); `convert.rs`: records to protobuf.
//! - `search.rs`: the replica's full-text index of published posts, kept
//!   from the event log (rebuilt at start, never stored).
//! - `api.rs`: the gRPC service; `error.rs`: errors to gRPC statuses.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod events;
pub mod mentions;
pub mod search;
pub mod store;

use munity_platform::{
    auth::AuthConfig,
    server::GrpcHost,
    service::{Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use munity_proto::discuss::v1::discuss_server::DiscussServer;
use tokio::net::TcpListener;

pub use config::DiscussConfig;

/// Largest request discuss-svc accepts: a post of 10,000 characters (up
/// to 4 bytes each) and its envelope.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// discuss-svc as a platform service: `[discuss]`, `munity.discuss.v1`.
pub struct DiscussService;

impl Service for DiscussService {
    const NAME: &'static str = "discuss-svc";
    const SECTION: &'static str = "discuss";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = DiscussConfig;

    async fn run(
        config: ServiceConfig<DiscussConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// Serves discuss-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ServiceConfig<DiscussConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let store::Opened {
        repo,
        members,
        publishing,
    } = store::open(&config.storage).await?;
    let (index, index_feed) = search::open()?;
    // Its changes go out on the event log, and users-svc's membership
    // changes come in (the membership view); every replica reads the whole
    // log into its search index.
    if let Some(log) = publishing
        .start(&config.bus, DiscussService::NAME, &shutdown)
        .await
    {
        tokio::spawn(search::follow(log.clone(), index_feed, shutdown.clone()));
        tokio::spawn(munity_bus::membership::follow(
            log,
            members.clone(),
            config.own.members_group.clone(),
            DiscussService::NAME,
            shutdown.clone(),
        ));
    }

    // Tokens refused the moment their session is revoked, as everywhere.
    let verifier = munity_bus::revocations::remote_verifier(
        &config.bus,
        &auth,
        DiscussService::NAME,
        &shutdown,
    )
    .await?;
    GrpcHost::new(DiscussService::DESCRIPTOR_SET)?
        .add_service(
            DiscussServer::new(api::DiscussApi::new(
                repo,
                members,
                config.own.reports_to_hide,
                index,
            ))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(verifier)
        .serve(listener, shutdown.cancelled_owned())
        .await
}

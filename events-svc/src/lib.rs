//! events-svc: meetings in communities (`munity.events.v1`): proposed
//! times, votes, the chosen time, participants. Design: `docs/events-svc.md`.
//!
//! Layout, one layer per file:
//! - `config.rs`: its own keys of the `[events]` section.
//! - `domain.rs`: records as stored, and the rules for valid input.
//! - `store/`: the repository trait and its two backends (embedded redb,
//!   CQL), held to one contract by `tests/repository_contract.rs`.
//! - `events.rs`: the domain events it publishes; `convert.rs`: records to
//!   protobuf.
//! - its view of community memberships is the shared
//!   `munity_bus::membership`, kept in its own store.
//! - `scheduler.rs`: closes voting at each event's deadline and sends
//!   reminders before scheduled events start.
//! - `stats.rs`: counts its own domain events into hourly statistics.
//! - `api.rs`: the gRPC service; `error.rs`: errors to gRPC statuses.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod events;
pub mod scheduler;
pub mod stats;
pub mod store;

use std::time::Duration;

use munity_platform::{
    auth::AuthConfig,
    server::GrpcHost,
    service::{Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use munity_proto::events::v1::events_server::EventsServer;
use tokio::net::TcpListener;

pub use config::EventsConfig;

/// Largest request events-svc accepts (ten options and some text).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// events-svc as a platform service: `[events]`, `munity.events.v1`.
pub struct EventsService;

impl Service for EventsService {
    const NAME: &'static str = "events-svc";
    const SECTION: &'static str = "events";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = EventsConfig;

    async fn run(
        config: ServiceConfig<EventsConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// Serves events-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ServiceConfig<EventsConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let store::Opened {
        repo,
        publishing,
        memberships,
    } = store::open(&config.storage, &config.own.reminders_before_secs).await?;
    // Its changes go out on the event log, and users-svc's membership
    // changes come in (the membership view).
    if let Some(log) = publishing
        .start(&config.bus, EventsService::NAME, &shutdown)
        .await
    {
        tokio::spawn(munity_bus::membership::follow(
            log.clone(),
            memberships.clone(),
            config.own.members_group.clone(),
            EventsService::NAME,
            shutdown.clone(),
        ));
        tokio::spawn(stats::follow(
            log,
            repo.clone(),
            config.own.stats_group.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(scheduler::run(
        repo.clone(),
        Duration::from_millis(config.own.sweep_interval_ms.max(10)),
        shutdown.clone(),
    ));

    let verifier = munity_bus::revocations::remote_verifier(
        &config.bus,
        &auth,
        EventsService::NAME,
        &shutdown,
    )
    .await?;
    GrpcHost::new(EventsService::DESCRIPTOR_SET)?
        .add_service(
            EventsServer::new(api::EventsApi::new(repo, memberships))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(verifier)
        .serve(listener, shutdown.cancelled_owned())
        .await
}

//! notify-svc: live notifications (`munity.notify.v1`). Clients follow
//! topics on a server stream; every notification is kept in per-topic
//! history, so a client that reconnects with its last (epoch, offset) gets
//! exactly what it missed, then live ones.
//!
//! Layout, one layer per file:
//! - `config.rs`: its own keys of the `[notify]` section.
//! - `hub/`: history, offsets and live delivery by topic (`live.rs`: a
//!   notification wakes only its topic's streams); embedded (redb) and Redis (a stream per topic, one Lua script
//!   per publish, pub/sub across replicas), held to one contract by
//!   `tests/hub_contract.rs`.
//! - `inbox/`: what `user:` topics got, kept per user with read marks;
//!   redb or CQL, held to one contract by `tests/inbox_contract.rs`.
//! - `publish.rs`: a publish on the hub, then into the inbox.
//! - `sources.rs`: domain events from the event log, published on the
//!   topics they concern.
//! - `access.rs`: who may follow which topic.
//! - `api.rs`: the gRPC service (Subscribe, Publish, the inbox); `error.rs`:
//!   its errors to gRPC statuses, in one place.

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod config;
pub mod error;
pub mod hub;
pub mod inbox;
pub mod publish;
pub mod sources;

use std::{sync::Arc, time::Duration};

use munity_platform::{
    auth::AuthConfig,
    config::StorageConfig,
    server::GrpcHost,
    service::{Peer, Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use munity_proto::notify::v1::notify_server::NotifyServer;
use tokio::net::TcpListener;

pub use config::{HubBackend, NotifyConfig};

use crate::hub::{Hub, Retention, embedded::EmbeddedHub, redis::RedisHub};

/// Largest request notify-svc accepts (a Publish of the largest payload,
/// or 32 topics with positions).
const MAX_REQUEST_BYTES: usize = api::MAX_PAYLOAD_BYTES + 4 * 1024;

/// notify-svc as a platform service: `[notify]`, `munity.notify.v1`.
pub struct NotifyService;

impl Service for NotifyService {
    const NAME: &'static str = "notify-svc";
    const SECTION: &'static str = "notify";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = NotifyConfig;
    /// It asks events-svc who may follow an event's topics, and
    /// discuss-svc who may follow a post's.
    const PEERS: &'static [Peer] = &[
        Peer {
            key: "events_url",
            upstream: "events",
        },
        Peer {
            key: "discuss_url",
            upstream: "discuss",
        },
    ];

    async fn run(
        config: ServiceConfig<NotifyConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// Opens the configured hub.
pub async fn open_hub(config: &ServiceConfig<NotifyConfig>) -> anyhow::Result<Arc<dyn Hub>> {
    let own = &config.own;
    let retention = Retention {
        size: own.history_size.max(1),
        ttl_secs: own.history_ttl_secs.max(1),
    };
    Ok(match own.hub {
        HubBackend::Embedded => match &config.storage {
            StorageConfig::Embedded { path } => Arc::new(EmbeddedHub::open(path, retention)?),
            StorageConfig::Cql(_) => anyhow::bail!(
                "notify.hub = \"embedded\" keeps history under an embedded storage path; \
                 with several replicas use notify.hub = \"redis\""
            ),
        },
        HubBackend::Redis => Arc::new(
            RedisHub::connect(
                &own.redis_url,
                &own.redis_prefix,
                retention,
                Duration::from_millis(own.redis_timeout_ms.max(1)),
            )
            .await?,
        ),
    })
}

/// Serves notify-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ServiceConfig<NotifyConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let hub = open_hub(&config).await?;
    let inbox = inbox::open(
        &config.storage,
        inbox::InboxLimits {
            ttl_secs: config.own.inbox_ttl_secs.max(1),
            count_cap: config.own.inbox_unread_cap.max(1),
        },
    )
    .await?;
    let publisher = publish::Publisher { hub, inbox };
    match munity_bus::open(&config.bus).await {
        Ok(log) => {
            tokio::spawn(sources::follow(
                log,
                publisher.clone(),
                config.own.sources_group.clone(),
                shutdown.clone(),
            ));
        }
        Err(error) => {
            tracing::error!(%error, "the event log cannot be opened; no notifications from domain events")
        }
    }
    let access = access::Access::new(&config.own.events_url, &config.own.discuss_url)
        .map_err(|e| anyhow::anyhow!("notify.events_url or notify.discuss_url: {e}"))?;
    GrpcHost::new(NotifyService::DESCRIPTOR_SET)?
        .add_service(
            NotifyServer::new(api::NotifyApi::new(publisher, access, config.own.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(
            munity_bus::revocations::remote_verifier(
                &config.bus,
                &auth,
                NotifyService::NAME,
                &shutdown,
            )
            .await?,
        )
        .serve(listener, shutdown.cancelled_owned())
        .await
}

//! warehouse-svc: the warehouse (`munity.warehouse.v1`). Apps, devices and
//! services write records to named sources; the warehouse keeps them
//! durably and serves them back by event-time range (stable page tokens),
//! as per-bucket aggregates, as exports, and as a live tail that resumes
//! from a cursor. Every domain event of the platform is kept too, as
//! activity.
//!
//! Layout, one layer per file:
//! - `config.rs`: its own keys of the `[warehouse]` section.
//! - `domain.rs`: records, keys, cursors, page tokens, input rules.
//! - `store/`: one trait, embedded (redb) and CQL backends, held to one
//!   contract by `tests/repository_contract.rs`.
//! - `ingest.rs`: the one way records are stored (rules, store, wake tails).
//! - `activity.rs`: domain events from the event log, stored as records.
//! - `api.rs`: the gRPC service; `error.rs` maps errors to statuses.
//! - `wire.rs`: IngestStream's records read from the wire, kept as sent
//!   when they need no change (the generated server serves the rest).

#![forbid(unsafe_code)]

pub mod activity;
pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod store;
pub mod wire;

use munity_platform::{
    auth::AuthConfig,
    server::GrpcHost,
    service::{Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use tokio::net::TcpListener;

pub use config::WarehouseConfig;

/// Largest message warehouse-svc accepts: a batch of the most records of
/// typical size (a record's own payload is limited separately).
const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// warehouse-svc as a platform service: `[warehouse]`, `munity.warehouse.v1`.
pub struct WarehouseService;

impl Service for WarehouseService {
    const NAME: &'static str = "warehouse-svc";
    const SECTION: &'static str = "warehouse";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = WarehouseConfig;

    async fn run(
        config: ServiceConfig<WarehouseConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// Serves warehouse-svc on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ServiceConfig<WarehouseConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let store = store::open(&config.storage, &config.own).await?;
    let ingestor = ingest::Ingestor::new(store, &config.own);
    let limits = ingestor.limits();
    match munity_bus::open(&config.bus).await {
        Ok(log) => {
            tokio::spawn(activity::follow(
                log,
                ingestor.clone(),
                config.own.activity_group.clone(),
                shutdown.clone(),
            ));
        }
        Err(error) => {
            tracing::error!(%error, "the event log cannot be opened; no activity records")
        }
    }
    GrpcHost::new(WarehouseService::DESCRIPTOR_SET)?
        .add_service(wire::WarehouseRoutes::new(
            api::WarehouseApi::new(ingestor, config.own.clone()),
            limits,
            MAX_REQUEST_BYTES,
        ))
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(
            munity_bus::revocations::remote_verifier(
                &config.bus,
                &auth,
                WarehouseService::NAME,
                &shutdown,
            )
            .await?,
        )
        .serve(listener, shutdown.cancelled_owned())
        .await
}

//! The admin port (Prometheus `/metrics`, `/healthz`) and housekeeping,
//! as Pingora background services so they start and stop with the proxy.

use std::{net::SocketAddr, time::Duration};

use async_trait::async_trait;
use axum::{Router, routing::get};
use pingora_core::{server::ShutdownWatch, services::background::BackgroundService};

use crate::{limits::Limiter, metrics};

pub struct AdminServer {
    address: SocketAddr,
}

impl AdminServer {
    pub fn new(address: &str) -> anyhow::Result<Self> {
        Ok(AdminServer {
            address: address
                .parse()
                .map_err(|e| anyhow::anyhow!("gateway.admin_listen {address:?}: {e}"))?,
        })
    }
}

#[async_trait]
impl BackgroundService for AdminServer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match tokio::net::TcpListener::bind(self.address).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(address = %self.address, %error, "admin port unavailable; no /metrics");
                return;
            }
        };
        let app = Router::new()
            .route("/metrics", get(|| async { metrics::render() }))
            .route("/healthz", get(|| async { "ok" }));
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "admin server failed");
        }
    }
}

/// Drops rate-limit keys that have fully recovered, so a stream of one-off
/// client IPs cannot grow memory without bound.
pub struct LimitsJanitor(pub Limiter);

#[async_trait]
impl BackgroundService for LimitsJanitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = ticker.tick() => self.0.evict_idle(),
                _ = shutdown.changed() => break,
            }
        }
    }
}

//! Active health checks that speak `grpc.health.v1.Health/Check`: Pingora
//! ships TCP and HTTP checks only, and an HTTP check cannot see a
//! `grpc-status` sent in trailers. A replica is healthy when it answers
//! SERVING for the route's service within the timeout.

use std::{net::SocketAddr, time::Duration};

use async_trait::async_trait;
use dashmap::DashMap;
use pingora_core::{Error, ErrorType};
use pingora_load_balancing::{Backend, health_check::HealthCheck};
use tonic::transport::{Channel, Endpoint};

use crate::outlier::Outliers;

pub struct GrpcHealthCheck {
    /// The route (upstream name) the checked replicas belong to.
    route: String,
    /// The service name the checks ask about.
    service: String,
    timeout: Duration,
    /// One channel per replica, reused across checks.
    channels: DashMap<SocketAddr, Channel>,
    /// The route's passive ejections, ended when a replica recovers.
    outliers: Outliers,
}

impl GrpcHealthCheck {
    /// Checks of `route`'s replicas, asking about `service`. The route's
    /// `upstreams` are listed in the health metric from the start (healthy,
    /// as Pingora assumes until a check says otherwise).
    pub fn new(
        route: &str,
        upstreams: &[String],
        service: &str,
        timeout: Duration,
        outliers: Outliers,
    ) -> Self {
        for upstream in upstreams {
            crate::metrics::UPSTREAM_HEALTHY
                .with_label_values(&[route, upstream])
                .set(1);
        }
        crate::metrics::EJECTIONS
            .with_label_values(&[route])
            .inc_by(0);
        GrpcHealthCheck {
            route: route.to_owned(),
            service: service.to_owned(),
            timeout,
            channels: DashMap::new(),
            outliers,
        }
    }

    fn channel(&self, address: SocketAddr) -> Result<Channel, Box<Error>> {
        if let Some(channel) = self.channels.get(&address) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect_lazy();
        self.channels.insert(address, channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> pingora_core::Result<()> {
        let Some(address) = target.addr.as_inet().copied() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "not an inet address",
            ));
        };
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel(address)?);
        let request = tonic_health::pb::HealthCheckRequest {
            service: self.service.clone(),
        };
        match tokio::time::timeout(self.timeout, client.check(request)).await {
            Ok(Ok(response))
                if response.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                Ok(())
            }
            Ok(Ok(response)) => Err(Error::explain(
                ErrorType::Custom("grpc health"),
                format!("{address} reports status {}", response.get_ref().status),
            )),
            Ok(Err(status)) => {
                // A broken connection is not reused for the next check.
                self.channels.remove(&address);
                Err(Error::explain(
                    ErrorType::Custom("grpc health"),
                    format!("{address}: {}", status.message()),
                ))
            }
            Err(_) => Err(Error::explain(
                ErrorType::Custom("grpc health"),
                format!("{address}: no answer in {:?}", self.timeout),
            )),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        tracing::warn!(upstream = %target.addr, route = %self.route, healthy, "upstream health changed");
        crate::metrics::UPSTREAM_HEALTHY
            .with_label_values(&[&self.route, &target.addr.to_string()])
            .set(i64::from(healthy));
        if healthy && let Some(address) = target.addr.as_inet() {
            self.outliers.recovered(*address, &self.route);
        }
    }

    /// One failed check takes a replica out, one good one brings it back:
    /// the interval is short, and a wrong "healthy" costs failed calls.
    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

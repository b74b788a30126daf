//! Passive ejection's limit: when every replica fails at once (a shared
//! dependency down, say), at most half of them leave the rotation, so the
//! service is back as soon as they are, instead of answering "no healthy
//! upstream" for the whole ejection time.
//!
//! The upstreams are real tonic servers with real health checks (always
//! SERVING, so only passive ejection acts) whose Users calls answer
//! UNAVAILABLE while a switch is on, and UNKNOWN naming the replica after.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use munity_proto::users::v1 as pb;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

mod common;

use common::{Gateway, replica, users_routes};

async fn flaky_upstream(failing: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "munity.users.v1.Users",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let answer = move || {
        let failing = failing.load(Ordering::SeqCst);
        async move {
            let (status, message) = if failing {
                ("14", "dependency down".to_owned())
            } else {
                ("2", format!("answered by {address}"))
            };
            [
                ("content-type", "application/grpc".to_owned()),
                ("grpc-status", status.to_owned()),
                ("grpc-message", message),
            ]
        }
    };
    let router = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .fallback(answer);
    tokio::spawn(async move {
        let _keep_reporting = health;
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_replica_fails_at_most_half_are_ejected() {
    let users = replica().await; // issues nothing here; serves the JWKS
    let failing = Arc::new(AtomicBool::new(true));
    let replicas = [
        flaky_upstream(failing.clone()).await,
        flaky_upstream(failing.clone()).await,
    ];
    let gateway = Gateway::start(
        users.address,
        "health_check_interval_ms = 200",
        &users_routes(&replicas, ""),
    );
    let mut client = gateway.client().await;
    // Until the first health checks pass, the gateway itself answers
    // "no healthy upstream"; those calls reach no replica.
    let started = std::time::Instant::now();
    loop {
        let status = client.get_jwks(pb::GetJwksRequest {}).await.unwrap_err();
        if status.message() == "dependency down" {
            break;
        }
        assert!(started.elapsed().as_secs() < 10, "never routed: {status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for _ in 0..20 {
        let status = client.get_jwks(pb::GetJwksRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert_eq!(
        gateway
            .metric("munity_gateway_upstream_ejections_total{service=\"munity.users.v1.Users\"}")
            .await,
        1,
        "exactly one of the two replicas is ejected"
    );

    // The dependency is back: calls reach the replica still in rotation at
    // once, rather than "no healthy upstream" until the ejection ends.
    failing.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        let status = client.get_jwks(pb::GetJwksRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert!(
            status.message().starts_with("answered by"),
            "{}",
            status.message()
        );
    }
    users.shutdown.cancel();
}

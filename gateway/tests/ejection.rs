//! Passive ejection's limit: when every replica fails at once (a shared
//! dependency down, say), at most half of them leave the rotation, so the
//! service is back as soon as they are, instead of answering "no healthy
//! upstream" for the whole ejection time.
//!
//! The upstreams are real tonic servers with real health checks (always
//! SERVING, so only passive ejection acts) whose Users calls answer
//! UNAVAILABLE while a switch is on, and UNKNOWN after.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use munity_proto::users::v1 as pb;
use tonic::Code;

mod common;

use common::{Gateway, replica, users_routes};

/// Answers UNAVAILABLE while `failing`, else UNKNOWN ("answered by a
/// replica": the call reached one).
async fn flaky_upstream(failing: Arc<AtomicBool>) -> SocketAddr {
    common::scripted_upstream(move || {
        let status = if failing.load(Ordering::SeqCst) {
            ("14", "dependency down")
        } else {
            ("2", "answered by a replica")
        };
        async move {
            [
                ("content-type", "application/grpc"),
                ("grpc-status", status.0),
                ("grpc-message", status.1),
            ]
        }
    })
    .await
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
            .metric("munity_gateway_upstream_ejections_total{route=\"users\"}")
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

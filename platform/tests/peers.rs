//! A peer channel balances over every replica its host resolves to, and
//! follows the answer as replicas come and go (real tonic servers; the
//! resolver is the test's, standing in for a headless Service's DNS).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use munity_platform::peers::{Resolve, balanced_channel_with};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A gRPC server answering health checks, counting the calls it gets.
async fn replica() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(tower::ServiceBuilder::new().map_request(
                move |request: http::Request<tonic::body::Body>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    request
                },
            ))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (address, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_the_replicas_dns_lists_as_it_changes() {
    let (a, a_calls) = replica().await;
    let (b, b_calls) = replica().await;
    let listed = Arc::new(Mutex::new(vec![a]));
    let answer = listed.clone();
    let resolve: Resolve = Arc::new(move |host, _port| {
        assert_eq!(host, "events.munity.test");
        let found = answer.lock().unwrap().clone();
        Box::pin(async move { Ok(found) })
    });
    let channel = balanced_channel_with(
        "http://events.munity.test:50052",
        |endpoint| endpoint.timeout(Duration::from_secs(2)),
        resolve,
        Duration::from_millis(100),
    )
    .unwrap();
    let mut client = HealthClient::new(channel);
    let call = |client: &mut HealthClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest::default())
                .await
                .expect("every call succeeds");
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        call(&mut client).await;
    }
    assert_eq!(a_calls.load(Ordering::Relaxed), 20);

    // b appears: both get calls.
    listed.lock().unwrap().push(b);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..200 {
        call(&mut client).await;
    }
    let (on_a, on_b) = (
        a_calls.load(Ordering::Relaxed),
        b_calls.load(Ordering::Relaxed),
    );
    println!("peers: after b joined, a had {on_a} calls, b {on_b}");
    assert!(on_b > 20, "b gets its share: {on_b}");
    assert!(on_a > 40, "a keeps its share: {on_a}");

    // a leaves: no new calls go there.
    listed.lock().unwrap().retain(|r| *r != a);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = a_calls.load(Ordering::Relaxed);
    for _ in 0..50 {
        call(&mut client).await;
    }
    assert_eq!(a_calls.load(Ordering::Relaxed), before, "a gets none");
}

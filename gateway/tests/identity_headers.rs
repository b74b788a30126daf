//! Identity at the edge: whatever `x-munity-*` headers a client sends are
//! dropped, and the gateway forwards no identity of its own (services verify
//! the bearer token themselves), so no upstream ever reads an identity a
//! client made up. The upstream here is a probe, not a Munity service: a
//! real gRPC server (tonic, with real health checks) whose every other
//! method answers with the identity headers it received, in `grpc-message`.

use std::net::SocketAddr;

use axum::{http::HeaderMap, response::IntoResponse};
use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tonic::{Code, Request, transport::Channel};

mod common;

use common::{Gateway, replica, users_routes};
use munity_platform::auth::with_bearer;

/// Answers every call with status UNKNOWN and a message listing the
/// identity headers the call arrived with.
async fn echo_identity(headers: HeaderMap) -> impl IntoResponse {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let message = format!(
        "user={} roles={}",
        get("x-munity-user-id"),
        get("x-munity-roles")
    );
    (
        [
            ("content-type", "application/grpc".to_owned()),
            ("grpc-status", "2".to_owned()),
            ("grpc-message", message),
        ],
        "",
    )
}

async fn probe_upstream() -> SocketAddr {
    common::scripted_upstream(echo_identity).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_upstreams() {
    // A real users-svc issues the token and serves the JWKS; calls routed
    // through the gateway land on the probe.
    let users = replica().await;
    let session = UsersClient::connect(format!("http://{}", users.address))
        .await
        .unwrap()
        .register(pb::RegisterRequest {
            email: "who@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Who".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let probe = probe_upstream().await;
    let gateway = Gateway::start(
        users.address,
        "health_check_interval_ms = 200",
        &users_routes(&[probe], ""),
    );
    let channel: Channel = gateway.channel().await;
    let mut client = UsersClient::new(channel);

    let spoof = |mut request: Request<pb::GetMeRequest>| {
        let metadata = request.metadata_mut();
        metadata.insert("x-munity-user-id", "someone-else".parse().unwrap());
        metadata.insert("x-munity-roles", "admin".parse().unwrap());
        request
    };

    // Authenticated: the spoofed headers are gone, and the gateway adds
    // none (the upstream reads the caller from the bearer token).
    let started = std::time::Instant::now();
    let status = loop {
        let status = client
            .get_me(spoof(with_bearer(
                pb::GetMeRequest {},
                &session.access_token,
            )))
            .await
            .unwrap_err();
        // The first calls may race the first health check.
        if status.code() != Code::Unavailable || started.elapsed().as_secs() > 10 {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.message(), "user=- roles=-");

    // Anonymous (a public method): the spoofed headers are simply gone.
    let mut anonymous = Request::new(pb::LoginRequest::default());
    anonymous
        .metadata_mut()
        .insert("x-munity-user-id", "someone-else".parse().unwrap());
    anonymous
        .metadata_mut()
        .insert("x-munity-roles", "admin".parse().unwrap());
    let status = client.login(anonymous).await.unwrap_err();
    assert_eq!(status.message(), "user=- roles=-");
    users.shutdown.cancel();
}

//! A stream opened with an access token kept delivering for as long as the
//! client held it open, long after the token had expired. Now a server
//! stream lives at most until its token's `exp` plus the verifier's leeway
//! (`GrpcHost`): it then ends UNAUTHENTICATED, and the client reconnects
//! with a fresh token. Streams of public methods are not affected.

use std::time::{Duration, Instant, SystemTime};

use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::BusConfig,
};
use munity_proto::{
    notify::v1::{self as pb, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::{self as users_pb, users_client::UsersClient},
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How the stream ended (skipping what it delivered), or `None` if it was
/// still open after `limit`.
async fn ended_with(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    limit: Duration,
) -> Option<tonic::Status> {
    tokio::time::timeout(limit, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("ended"),
                Err(status) => return status,
            }
        }
    })
    .await
    .ok()
}

async fn subscribe(
    notify: &str,
    topic: &str,
    token: &str,
) -> tonic::Streaming<pb::SubscribeResponse> {
    let mut stream = NotifyClient::connect(notify.to_owned())
        .await
        .unwrap()
        .subscribe(with_bearer(
            pb::SubscribeRequest {
                topics: vec![topic.to_owned()],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().message;
    assert!(matches!(first, Some(Message::Subscribed(_))), "{first:?}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_unauthenticated_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    // Access tokens live 2 s; notify-svc tolerates 1 s of clock skew.
    let (users, _users) = munity_testkit::serve_in_process::<users_svc::UsersService>(
        users_svc::UsersConfig {
            tokens: users_svc::config::TokenConfig {
                access_ttl_secs: 2,
                ..Default::default()
            },
            ..Default::default()
        },
        &dir.path().join("users"),
        BusConfig {
            path: dir.path().join("users-bus"),
            ..Default::default()
        },
        AuthConfig::default(),
    )
    .await;
    let (notify, _notify) = munity_testkit::serve_in_process::<notify_svc::NotifyService>(
        notify_svc::NotifyConfig::default(),
        &dir.path().join("notify"),
        BusConfig {
            path: dir.path().join("notify-bus"),
            ..Default::default()
        },
        AuthConfig {
            jwks_url: users.clone(),
            leeway_secs: 1,
            ..Default::default()
        },
    )
    .await;

    let mut users_client = UsersClient::connect(users.clone()).await.unwrap();
    let carol = users_client
        .register(users_pb::RegisterRequest {
            email: "carol@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Carol".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let topic = format!("user:{}", carol.user.as_ref().unwrap().id);
    let expires_at = carol.access_token_expires_at.unwrap();
    let expires_at =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(expires_at.seconds).unwrap());

    let mut stream = subscribe(&notify, &topic, &carol.access_token).await;
    // A public stream (health Watch, no token) beside it.
    let channel = tonic::transport::Channel::from_shared(notify.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    let started = Instant::now();
    let status = ended_with(&mut stream, Duration::from_secs(10))
        .await
        .expect("the stream was still open 10 s after subscribing with a 2 s token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        "access token expired; reconnect with a fresh token"
    );
    // Not before the token expired (plus the leeway, less a clock tick).
    assert!(
        SystemTime::now() >= expires_at,
        "ended {:?} after subscribing, before the token's exp",
        started.elapsed()
    );
    // The public stream goes on.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.message())
            .await
            .is_err(),
        "the health Watch ended too"
    );

    // The client refreshes its token and subscribes again.
    let fresh = users_client
        .refresh(users_pb::RefreshRequest {
            refresh_token: carol.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut again = subscribe(&notify, &topic, &fresh.access_token).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), again.message())
            .await
            .map_or(true, |m| m.is_ok()),
        "the fresh stream failed at once"
    );
}

//! Fan-out across replicas, for real: two `notify-svc` processes sharing a
//! Redis (history and live channel) and the Redis event log, beside
//! users-svc and events-svc (in this process). A subscriber on each replica
//! follows one meeting; whichever replica's consumer turns a vote into a
//! notification, both subscribers get it, with the same offset.

use std::{process::Command, time::Duration};

use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::{BusBackend, BusConfig},
};
use munity_proto::{
    events::v1::{self as events_pb, events_client::EventsClient},
    notify::v1::{self as pb, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::{self as users_pb, users_client::UsersClient},
};
use uuid::Uuid;

fn replica(
    redis: &str,
    prefix: &str,
    stream: &str,
    users: &str,
    events: &str,
    dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_notify-svc"));
    command
        .env("MUNITY_NOTIFY__LISTEN", "127.0.0.1:0")
        .env("MUNITY_NOTIFY__STORAGE__PATH", dir)
        .env("MUNITY_NOTIFY__HUB", "redis")
        .env("MUNITY_NOTIFY__REDIS_URL", redis)
        .env("MUNITY_NOTIFY__REDIS_PREFIX", prefix)
        .env("MUNITY_NOTIFY__EVENTS_URL", events)
        .env("MUNITY_BUS__BACKEND", "redis")
        .env("MUNITY_BUS__REDIS_URL", redis)
        .env("MUNITY_BUS__REDIS_KEY", stream)
        .env("MUNITY_AUTH__JWKS_URL", users)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    command
}

/// The next notification on `stream` (heartbeats skipped).
async fn next(stream: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::Notification {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .expect("the stream goes on");
        match message.message {
            Some(Message::Notification(n)) => return n,
            Some(Message::Heartbeat(_) | Message::Subscribed(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reaches_subscribers_on_every_replica() {
    let Some(redis) = std::env::var("MUNITY_TEST_REDIS")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !munity_testkit::in_ci(),
            "MUNITY_TEST_REDIS is required under CI=true"
        );
        return;
    };
    let run = Uuid::now_v7().simple().to_string();
    let stream = format!("munity:test:notify-scale:{run}:log");
    let prefix = format!("munity:test:notify-scale:{run}");
    let dir = tempfile::tempdir().unwrap();
    let redis_bus = BusConfig {
        backend: BusBackend::Redis,
        redis_url: redis.clone(),
        redis_key: stream.clone(),
        ..Default::default()
    };
    let (users, _users) = munity_testkit::serve_in_process::<users_svc::UsersService>(
        Default::default(),
        &dir.path().join("users"),
        BusConfig {
            path: dir.path().join("users-bus"),
            ..Default::default()
        },
        AuthConfig::default(),
    )
    .await;
    let (events_url, _events) = munity_testkit::serve_in_process::<events_svc::EventsService>(
        Default::default(),
        &dir.path().join("events"),
        redis_bus,
        AuthConfig {
            jwks_url: users.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let command = replica(
            &redis,
            &prefix,
            &stream,
            &users,
            &events_url,
            &dir.path().join(name),
        );
        replicas.push(munity_testkit::spawn_ready(command, Duration::from_secs(60)).await);
    }

    let session = UsersClient::connect(users.clone())
        .await
        .unwrap()
        .register(users_pb::RegisterRequest {
            email: "alice@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Alice".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = session.access_token;
    let mut events = EventsClient::connect(events_url.clone()).await.unwrap();
    let event = events
        .create_event(with_bearer(
            munity_testkit::meeting_request("Across replicas"),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("event:{}", event.id);
    let mut subscribers = Vec::new();
    for replica in &replicas {
        let mut client = NotifyClient::connect(format!("http://{}", replica.address("notify")))
            .await
            .unwrap();
        let stream = client
            .subscribe(with_bearer(
                pb::SubscribeRequest {
                    topics: vec![topic.clone()],
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        subscribers.push(stream);
    }
    for option in 0..3 {
        events
            .vote(with_bearer(
                events_pb::VoteRequest {
                    event_id: event.id.clone(),
                    option_id: option,
                },
                &token,
            ))
            .await
            .unwrap();
    }
    let mut heard = Vec::new();
    for subscriber in &mut subscribers {
        let mut votes = Vec::new();
        while votes.len() < 3 {
            let n = next(subscriber).await;
            if n.kind == "munity.events.v1.VoteCast" {
                votes.push((n.offset, n.event_id));
            }
        }
        heard.push(votes);
    }
    assert_eq!(
        heard[0], heard[1],
        "the same notifications, same offsets, on both replicas"
    );
    let offsets: Vec<u64> = heard[0].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets[1], offsets[0] + 1);
    assert_eq!(offsets[2], offsets[0] + 2);
}

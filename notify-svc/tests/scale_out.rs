//! Fan-out across replicas, for real: two `notify-svc` processes sharing a
//! Redis (history and live channel), the Redis event log and a Cassandra
//! keyspace (the inbox), beside users-svc and events-svc (in this process).
//! A subscriber on each replica follows one meeting; whichever replica's
//! consumer turns a vote into a notification, both subscribers get it, with
//! the same offset. A service publishes on one replica into an inbox read on
//! the other. One replica is stopped (its streams end UNAVAILABLE, telling
//! clients to reconnect) and started again; its subscriber resumes there
//! with exactly what it missed.

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
    cql: &munity_platform::config::CqlConfig,
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
        .env("MUNITY_NOTIFY__STORAGE__BACKEND", "cql")
        .env(
            "MUNITY_NOTIFY__STORAGE__NODES",
            format!("[{}]", cql.nodes.join(",")),
        )
        .env("MUNITY_NOTIFY__STORAGE__KEYSPACE", &cql.keyspace)
        .env("MUNITY_NOTIFY__STORAGE__REQUEST_TIMEOUT_MS", "20000")
        .current_dir(dir)
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
async fn notifications_reach_every_replica_and_resume_after_one_restarts() {
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
    let Some(cql) = munity_testkit::cql_config("notify_scale") else {
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
        users_svc::UsersConfig {
            admin_emails: vec!["ops@example.com".to_owned()],
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
    let command = |name: &str| {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        replica(&cql, &redis, &prefix, &stream, &users, &events_url, &dir)
    };
    let mut replicas = Vec::new();
    {
        let _schema = munity_testkit::schema_lock().await;
        for name in ["a", "b"] {
            replicas
                .push(munity_testkit::spawn_ready(command(name), Duration::from_secs(60)).await);
        }
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
    let mut epoch = String::new();
    for subscriber in &mut subscribers {
        let mut votes = Vec::new();
        while votes.len() < 3 {
            let n = next(subscriber).await;
            if n.kind == "munity.events.v1.VoteCast" {
                epoch = n.epoch.clone();
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

    // A service publishes to Alice on replica b; her inbox on replica a
    // has it (one inbox in Cassandra for every replica).
    let mut users_client = UsersClient::connect(users.clone()).await.unwrap();
    let ops = users_client
        .register(users_pb::RegisterRequest {
            email: "ops@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Ops".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let users_channel = tonic::transport::Channel::from_shared(users.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bot = munity_testkit::service_token(&users_channel, &ops, "bot", &["notify.publish"]).await;
    let client = |replica: &munity_testkit::Ready| {
        NotifyClient::connect(format!("http://{}", replica.address("notify")))
    };
    let alice_topic = format!("user:{}", session.user.unwrap().id);
    client(&replicas[1])
        .await
        .unwrap()
        .publish(with_bearer(
            pb::PublishRequest {
                topic: alice_topic,
                id: "welcome".to_owned(),
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/acme.v1.Welcome".to_owned(),
                    value: b"hi".to_vec(),
                }),
            },
            &bot,
        ))
        .await
        .unwrap();
    let inbox = client(&replicas[0])
        .await
        .unwrap()
        .list_inbox(with_bearer(pb::ListInboxRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].notification.as_ref().unwrap().event_id, "welcome");

    // Replica a stops: its stream ends with UNAVAILABLE (reconnect), not
    // silently. Two votes meanwhile; a again; the subscriber resumes there.
    let last = heard[0][2].0;
    {
        let mut a = replicas.remove(0);
        a.process.terminate();
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(15), subscribers[0].message())
                .await
                .expect("the stream ends within 15 s of SIGTERM")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        a.process
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("a exits");
    }
    for option in [0, 1] {
        events
            .unvote(with_bearer(
                events_pb::VoteRequest {
                    event_id: event.id.clone(),
                    option_id: option,
                },
                &token,
            ))
            .await
            .unwrap();
    }
    let a = {
        let _schema = munity_testkit::schema_lock().await;
        munity_testkit::spawn_ready(command("a"), Duration::from_secs(60)).await
    };
    let first = {
        let mut client = client(&a).await.unwrap();
        let mut stream = client
            .subscribe(with_bearer(
                pb::SubscribeRequest {
                    topics: vec![],
                    resume: vec![pb::TopicPosition {
                        topic: topic.clone(),
                        epoch: epoch.clone(),
                        offset: last,
                    }],
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let missed = [next(&mut stream).await, next(&mut stream).await];
        assert_eq!(
            missed
                .iter()
                .map(|n| (n.offset, n.kind.as_str()))
                .collect::<Vec<_>>(),
            [
                (last + 1, "munity.events.v1.VoteWithdrawn"),
                (last + 2, "munity.events.v1.VoteWithdrawn"),
            ]
        );
        events
            .vote(with_bearer(
                events_pb::VoteRequest {
                    event_id: event.id.clone(),
                    option_id: 0,
                },
                &token,
            ))
            .await
            .unwrap();
        next(&mut stream).await
    };
    assert_eq!(
        (first.offset, first.kind.as_str()),
        (last + 3, "munity.events.v1.VoteCast")
    );
}

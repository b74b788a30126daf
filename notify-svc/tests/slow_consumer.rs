//! A subscriber that stops reading cannot make notify-svc hold more and
//! more for it: its stream is not read ahead of the client, so it falls
//! behind its topic's bounded live buffer, and once the client reads again
//! the stream catches up from history with nothing lost. The server's
//! resident memory (a real `notify-svc` process; users-svc in this process
//! issues the tokens) is measured over two equal floods: one nobody follows
//! (what storing them costs) and one the slow subscriber follows; the
//! second may not grow by much more than the first.

use std::{process::Command, time::Duration};

use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::BusConfig,
};
use munity_proto::{
    notify::v1::{self as pb, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::{self as users_pb, users_client::UsersClient},
};

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Far more than a topic's live buffer (`hub::live::TOPIC_BUFFER`): the
/// slow stream falls behind it and must catch up from history.
const PUBLISHED: u64 = 5_000;
const PAYLOAD: usize = 1_024;

/// Publishes `PUBLISHED` notifications on `topic` from 8 tasks at once.
async fn flood(publisher: &NotifyClient<tonic::transport::Channel>, topic: &str, bot: &str) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u64 {
        let (mut publisher, topic, bot) = (publisher.clone(), topic.to_owned(), bot.to_owned());
        tasks.spawn(async move {
            for n in (worker..PUBLISHED).step_by(8) {
                publisher
                    .publish(with_bearer(
                        pb::PublishRequest {
                            topic: topic.clone(),
                            id: format!("n{n}"),
                            payload: Some(prost_types::Any {
                                type_url: "type.googleapis.com/acme.v1.Blob".to_owned(),
                                value: vec![b'x'; PAYLOAD],
                            }),
                        },
                        &bot,
                    ))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_costs_no_memory_and_catches_up_without_loss() {
    let dir = tempfile::tempdir().unwrap();
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_notify-svc"));
    command
        .env("MUNITY_NOTIFY__LISTEN", "127.0.0.1:0")
        .env("MUNITY_NOTIFY__STORAGE__PATH", dir.path().join("notify"))
        .env("MUNITY_NOTIFY__HISTORY_SIZE", "10000")
        .env("MUNITY_BUS__PATH", dir.path().join("notify-bus"))
        .env("MUNITY_AUTH__JWKS_URL", &users)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let mut notify = munity_testkit::spawn_ready(command, Duration::from_secs(60)).await;
    let pid = notify.process.child_mut().id();
    let url = format!("http://{}", notify.address("notify"));

    let users_client = UsersClient::connect(users.clone()).await.unwrap();
    let register = |email: &str| {
        let request = users_pb::RegisterRequest {
            email: email.to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Someone".to_owned(),
        };
        let mut users_client = users_client.clone();
        async move { users_client.register(request).await.unwrap().into_inner() }
    };
    let ops = register("ops@example.com").await;
    let (ops, ops_id) = (ops.access_token, ops.user.unwrap().id);
    let carol = register("carol@example.com").await;
    let topic = format!("user:{}", carol.user.unwrap().id);
    let users_channel = tonic::transport::Channel::from_shared(users.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bot =
        munity_testkit::service_token(&users_channel, &ops, "flood", &["notify.publish"]).await;

    // Carol subscribes on a connection of her own, then stops reading.
    let mut slow = NotifyClient::connect(url.clone())
        .await
        .unwrap()
        .subscribe(with_bearer(
            pb::SubscribeRequest {
                topics: vec![topic.clone()],
                ..Default::default()
            },
            &carol.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(Message::Subscribed(_)) = slow.message().await.unwrap().unwrap().message else {
        panic!("subscribed first");
    };
    let publisher = NotifyClient::connect(url.clone()).await.unwrap();
    let before = rss_kib(pid);
    flood(&publisher, &format!("user:{ops_id}"), &bot).await;

    let before_second = rss_kib(pid);
    flood(&publisher, &topic, &bot).await;
    let after = rss_kib(pid);
    let (stored, followed) = (
        before_second.saturating_sub(before),
        after.saturating_sub(before_second),
    );
    println!(
        "notify-svc RSS: {before} KiB; +{stored} KiB over {PUBLISHED} notifications of \
         {PAYLOAD} B nobody follows; +{followed} KiB over as many the slow stream did \
         not read"
    );
    // All of them is 5 MB: a server holding them for Carol would grow by
    // that much more than storing them does.
    assert!(
        followed < stored + 2 * 1024,
        "RSS grew by {followed} KiB with the slow stream, {stored} KiB without"
    );

    // Carol reads again: what was on its way, then the rest from history,
    // each once, in order, on the same stream.
    let mut last = 0;
    while last < PUBLISHED {
        let message = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("the rest, at once")
            .expect("the stream goes on")
            .expect("the stream goes on");
        match message.message {
            Some(Message::Notification(n)) => {
                assert_eq!(n.offset, last + 1, "each once, in order");
                last = n.offset;
            }
            Some(Message::Heartbeat(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    println!("the slow stream got all {PUBLISHED} once it read again");
}

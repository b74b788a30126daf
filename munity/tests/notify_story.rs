//! notify-svc's service side through `munity dev`'s gateway: an admin makes
//! a service account, the service publishes to a user, who gets it live and
//! in the inbox, and after a restart of the whole process resumes with
//! nothing lost; the forbidden calls are refused.

use std::time::Duration;

use munity_platform::auth::with_bearer;
use munity_proto::{
    notify::v1::{self as notify, notify_client::NotifyClient, subscribe_response::Message},
    users::v1::{self as users, users_client::UsersClient},
};
use munity_testkit::{ADMIN_EMAIL, register, register_as, start_dev};
use tonic::{Code, transport::Channel};

fn ping(topic: &str, id: &str, text: &str) -> notify::PublishRequest {
    notify::PublishRequest {
        topic: topic.to_owned(),
        id: id.to_owned(),
        payload: Some(prost_types::Any {
            type_url: "type.googleapis.com/acme.v1.Ping".to_owned(),
            value: text.as_bytes().to_vec(),
        }),
    }
}

async fn next_notification(
    stream: &mut tonic::Streaming<notify::SubscribeResponse>,
) -> notify::Notification {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .expect("the stream goes on");
        match message.message {
            Some(Message::Notification(n)) => return n,
            Some(Message::Heartbeat(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

async fn subscribe(
    channel: &Channel,
    token: &str,
    topic: &str,
    resume: Option<notify::TopicPosition>,
) -> tonic::Streaming<notify::SubscribeResponse> {
    let mut stream = NotifyClient::new(channel.clone())
        .subscribe(with_bearer(
            notify::SubscribeRequest {
                topics: vec![topic.to_owned()],
                resume: resume.into_iter().collect(),
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

async fn service_token(channel: &Channel, client_id: &str, secret: &str) -> Result<String, Code> {
    UsersClient::new(channel.clone())
        .issue_service_token(users::IssueServiceTokenRequest {
            client_id: client_id.to_owned(),
            client_secret: secret.to_owned(),
        })
        .await
        .map(|r| r.into_inner().access_token)
        .map_err(|s| s.code())
}

async fn unread(channel: &Channel, token: &str) -> u64 {
    NotifyClient::new(channel.clone())
        .unread_count(with_bearer(notify::UnreadCountRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .unread
}

async fn inbox(channel: &Channel, token: &str) -> Vec<notify::InboxItem> {
    NotifyClient::new(channel.clone())
        .list_inbox(with_bearer(notify::ListInboxRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishes_to_a_user_live_into_the_inbox_and_across_a_restart() {
    let munity = env!("CARGO_BIN_EXE_munity");
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start_dev(munity, data.path()).await;
    let (ops, _) = register_as(&channel, "ops", ADMIN_EMAIL).await;
    let (bob, bob_id) = register(&channel, "bob").await;
    let topic = format!("user:{bob_id}");
    let mut users = UsersClient::new(channel.clone());
    let mut notifications = NotifyClient::new(channel.clone());

    let account = |name: &str, scope: &str| {
        let request = with_bearer(
            users::CreateServiceAccountRequest {
                name: name.to_owned(),
                scopes: vec![scope.to_owned()],
            },
            &ops,
        );
        let mut users = users.clone();
        async move {
            let made = users
                .create_service_account(request)
                .await
                .unwrap()
                .into_inner();
            (made.account.unwrap().id, made.client_secret)
        }
    };
    let (bot_id, bot_secret) = account("reminder-bot", "notify.publish").await;
    let (reader_id, reader_secret) = account("reader", "notify.read").await;
    let bot = service_token(&channel, &bot_id, &bot_secret).await.unwrap();
    let reader = service_token(&channel, &reader_id, &reader_secret)
        .await
        .unwrap();

    // Refused: a user's token, a service without the scope, bad input; a
    // wrong secret or an unknown client gets no token at all.
    for (token, expected) in [
        (&bob, Code::PermissionDenied),
        (&reader, Code::PermissionDenied),
    ] {
        let status = notifications
            .publish(with_bearer(ping(&topic, "x", "no"), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), expected, "{status:?}");
    }
    for bad in [
        ping("user", "x", "no"),
        ping(&topic, "a b", "no"),
        notify::PublishRequest {
            payload: None,
            ..ping(&topic, "x", "")
        },
    ] {
        let status = notifications
            .publish(with_bearer(bad, &bot))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    assert_eq!(
        service_token(&channel, &bot_id, "mss_wrong").await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        service_token(&channel, &uuid::Uuid::now_v7().to_string(), &bot_secret).await,
        Err(Code::Unauthenticated)
    );

    // Live, and once however often it is published.
    let mut stream = subscribe(&channel, &bob, &topic, None).await;
    let publisher = notifications.clone();
    let publish = |id: &'static str, text: &'static str| {
        let request = with_bearer(ping(&topic, id, text), &bot);
        let mut notifications = publisher.clone();
        async move {
            notifications
                .publish(request)
                .await
                .unwrap()
                .into_inner()
                .notification
                .unwrap()
        }
    };
    let first = publish("p1", "hello").await;
    assert_eq!(
        publish("p1", "hello").await.offset,
        first.offset,
        "idempotent by id"
    );
    let heard = next_notification(&mut stream).await;
    assert_eq!(
        (heard.offset, heard.kind.as_str()),
        (first.offset, "acme.v1.Ping")
    );
    assert_eq!(heard.payload.unwrap().value, b"hello");

    // The inbox has it once; reading it clears the count.
    let items = inbox(&channel, &bob).await;
    assert_eq!(items.len(), 1);
    assert_eq!(unread(&channel, &bob).await, 1);
    let left = notifications
        .mark_read(with_bearer(
            notify::MarkReadRequest {
                ids: vec![items[0].id.clone()],
                all: false,
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner()
        .unread;
    assert_eq!(left, 0);

    // Bob drops off; two more; the account is disabled (its token is
    // revoked at once, and no new one is issued).
    drop(stream);
    publish("p2", "two").await;
    publish("p3", "three").await;
    users
        .set_service_account_disabled(with_bearer(
            users::SetServiceAccountDisabledRequest {
                id: bot_id.clone(),
                disabled: true,
            },
            &ops,
        ))
        .await
        .unwrap();
    assert_eq!(
        service_token(&channel, &bot_id, &bot_secret).await,
        Err(Code::Unauthenticated)
    );

    // The whole process restarts on the same data.
    ready.process.terminate();
    let mut ready = ready;
    ready
        .process
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("munity exits after SIGTERM");
    let (_ready, channel) = start_dev(munity, data.path()).await;

    // Resumed from the last offset seen: exactly the two missed, then live.
    let mut stream = subscribe(
        &channel,
        &bob,
        &topic,
        Some(notify::TopicPosition {
            topic: topic.clone(),
            epoch: heard.epoch.clone(),
            offset: heard.offset,
        }),
    )
    .await;
    let missed = [
        next_notification(&mut stream).await,
        next_notification(&mut stream).await,
    ];
    assert_eq!(
        missed.iter().map(|n| n.offset).collect::<Vec<_>>(),
        [first.offset + 1, first.offset + 2]
    );
    assert_eq!(missed[1].payload.as_ref().unwrap().value, b"three");
    let mut users = UsersClient::new(channel.clone());
    users
        .set_service_account_disabled(with_bearer(
            users::SetServiceAccountDisabledRequest {
                id: bot_id.clone(),
                disabled: false,
            },
            &ops,
        ))
        .await
        .unwrap();
    let bot = service_token(&channel, &bot_id, &bot_secret).await.unwrap();
    NotifyClient::new(channel.clone())
        .publish(with_bearer(ping(&topic, "p4", "four"), &bot))
        .await
        .unwrap();
    assert_eq!(
        next_notification(&mut stream).await.offset,
        first.offset + 3
    );

    // The inbox kept everything, and the read mark, across the restart.
    let items = inbox(&channel, &bob).await;
    let texts: Vec<Vec<u8>> = items
        .iter()
        .map(|i| {
            i.notification
                .as_ref()
                .unwrap()
                .payload
                .as_ref()
                .unwrap()
                .value
                .clone()
        })
        .collect();
    assert_eq!(
        texts,
        [
            b"four".to_vec(),
            b"three".to_vec(),
            b"two".to_vec(),
            b"hello".to_vec()
        ]
    );
    assert!(items[3].read_at.is_some());
    assert_eq!(unread(&channel, &bob).await, 3);
}

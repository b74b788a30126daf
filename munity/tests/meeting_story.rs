//! The meeting story end to end, through `munity dev`'s gateway (a real
//! process): people register, make a community, propose a meeting with
//! three times, vote, close, join; and the forbidden calls are refused
//! (someone outside the community, someone else's event, a full event).

use std::{path::Path, time::Duration};

use munity_platform::auth::with_bearer;
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    users::v1::{self as users, users_client::UsersClient},
};
use munity_testkit::{ADMIN_EMAIL, Ready, in_hours as at, register, register_as};
use prost::Message as _;
use tonic::{Code, transport::Channel};

async fn start(data_dir: &Path) -> (Ready, Channel) {
    munity_testkit::start_dev(env!("CARGO_BIN_EXE_munity"), data_dir).await
}

async fn get_event(client: &EventsClient<Channel>, id: &str, token: &str) -> events::Event {
    client
        .clone()
        .get_event(with_bearer(
            events::GetEventRequest {
                event_id: id.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_is_proposed_voted_closed_and_joined_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start(data.path()).await;
    let mut events = EventsClient::new(channel.clone());
    let (alice, _) = register(&channel, "alice").await;
    let (bob, bob_id) = register(&channel, "bob").await;
    let (carol, _) = register(&channel, "carol").await;

    let mut users_client = UsersClient::new(channel.clone());
    let community = users_client
        .create_community(with_bearer(
            users::CreateCommunityRequest {
                name: "Hikers".to_owned(),
                description: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    users_client
        .join_community(with_bearer(
            users::JoinCommunityRequest {
                community_id: community.id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap();

    let proposal = || events::CreateEventRequest {
        title: "Ridge walk".to_owned(),
        description: "Bring water".to_owned(),
        location: "North gate".to_owned(),
        community_id: community.id.clone(),
        options: [30, 50, 40]
            .into_iter()
            .map(|h| events::TimeOptionInput {
                start: Some(at(h)),
                end: Some(at(h + 3)),
            })
            .collect(),
        voting_deadline: Some(at(20)),
        capacity: 1,
    };
    // events-svc learns memberships from users-svc's events: the owner may
    // propose once the view has caught up (moments).
    let started = std::time::Instant::now();
    let event = loop {
        match events.create_event(with_bearer(proposal(), &alice)).await {
            Ok(created) => break created.into_inner(),
            Err(status) if status.code() == Code::PermissionDenied => {
                assert!(started.elapsed() < Duration::from_secs(15), "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    println!("the membership view caught up in {:?}", started.elapsed());
    assert_eq!(event.options.len(), 3);
    assert_eq!(event.status, events::EventStatus::Voting as i32);

    // Carol is not a member: she cannot see, vote on, or add to it.
    let get = |token: &str| {
        let mut events = events.clone();
        let request = with_bearer(
            events::GetEventRequest {
                event_id: event.id.clone(),
            },
            token,
        );
        async move { events.get_event(request).await }
    };
    assert_eq!(code(get(&carol).await), Code::NotFound);
    let vote = |token: &str, option: u32| {
        let mut events = events.clone();
        let request = with_bearer(
            events::VoteRequest {
                event_id: event.id.clone(),
                option_id: option,
            },
            token,
        );
        async move { events.vote(request).await }
    };
    assert_eq!(code(vote(&carol, 0).await), Code::NotFound);
    // Every other call on it from outside the community: NOT_FOUND too, as
    // if it did not exist (no probing for ids).
    let id = || event.id.clone();
    let mut e = events.clone();
    let outsider = [
        code(
            e.unvote(with_bearer(
                events::VoteRequest {
                    event_id: id(),
                    option_id: 0,
                },
                &carol,
            ))
            .await,
        ),
        code(
            e.join(with_bearer(events::JoinRequest { event_id: id() }, &carol))
                .await,
        ),
        code(
            e.leave(with_bearer(events::LeaveRequest { event_id: id() }, &carol))
                .await,
        ),
        code(
            e.list_participants(with_bearer(
                events::ListParticipantsRequest {
                    event_id: id(),
                    ..Default::default()
                },
                &carol,
            ))
            .await,
        ),
        code(
            e.close_voting(with_bearer(
                events::CloseVotingRequest { event_id: id() },
                &carol,
            ))
            .await,
        ),
        code(
            e.cancel_event(with_bearer(
                events::CancelEventRequest { event_id: id() },
                &carol,
            ))
            .await,
        ),
        code(
            e.update_event(with_bearer(
                events::UpdateEventRequest {
                    event_id: id(),
                    title: Some("Mine now".to_owned()),
                    ..Default::default()
                },
                &carol,
            ))
            .await,
        ),
    ];
    assert_eq!(outsider, [Code::NotFound; 7]);
    assert_eq!(
        code(
            events
                .clone()
                .create_event(with_bearer(proposal(), &carol))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            events
                .clone()
                .list_events(with_bearer(
                    events::ListEventsRequest {
                        filter: events::EventFilter::Community as i32,
                        community_id: community.id.clone(),
                        ..Default::default()
                    },
                    &carol,
                ))
                .await
        ),
        Code::PermissionDenied
    );

    // Votes: bob for option 2, alice for 2 and 0 (twice: counted once).
    vote(&bob, 2).await.unwrap();
    vote(&alice, 2).await.unwrap();
    vote(&alice, 0).await.unwrap();
    let seen = vote(&alice, 0).await.unwrap().into_inner();
    let counts: Vec<u32> = seen.options.iter().map(|o| o.votes).collect();
    assert_eq!(counts, vec![1, 0, 2]);
    assert_eq!(seen.my_votes, vec![0, 2]);
    assert_eq!(code(vote(&bob, 7).await), Code::InvalidArgument);

    // Only the owner closes it; bob cannot cancel someone else's event.
    let close = |token: &str| {
        let mut events = events.clone();
        let request = with_bearer(
            events::CloseVotingRequest {
                event_id: event.id.clone(),
            },
            token,
        );
        async move { events.close_voting(request).await }
    };
    assert_eq!(code(close(&bob).await), Code::PermissionDenied);
    assert_eq!(
        code(
            events
                .clone()
                .cancel_event(with_bearer(
                    events::CancelEventRequest {
                        event_id: event.id.clone(),
                    },
                    &bob,
                ))
                .await
        ),
        Code::PermissionDenied
    );
    let closed = close(&alice).await.unwrap().into_inner();
    assert_eq!(closed.status, events::EventStatus::Scheduled as i32);
    assert_eq!(closed.chosen_option_id, Some(2), "the most votes");
    assert_eq!(code(vote(&bob, 1).await), Code::FailedPrecondition);

    // One place: bob takes it, alice finds it full.
    let join = |token: &str| {
        let mut events = events.clone();
        let request = with_bearer(
            events::JoinRequest {
                event_id: event.id.clone(),
            },
            token,
        );
        async move { events.join(request).await }
    };
    join(&bob).await.unwrap();
    let full = join(&alice).await.unwrap_err();
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(full.message().contains("capacity 1"), "{}", full.message());

    let participants = events
        .clone()
        .list_participants(with_bearer(
            events::ListParticipantsRequest {
                event_id: event.id.clone(),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = participants
        .participants
        .iter()
        .map(|p| p.user_id.as_str())
        .collect();
    assert_eq!(ids, [bob_id.as_str()]);

    // The owner hears of it in her inbox (a moment later: notify-svc's
    // consumer group turns the domain event into the notification).
    let mut inbox = munity_proto::notify::v1::notify_client::NotifyClient::new(channel.clone());
    let heard = async {
        loop {
            let items = inbox
                .list_inbox(with_bearer(
                    munity_proto::notify::v1::ListInboxRequest::default(),
                    &alice,
                ))
                .await
                .unwrap()
                .into_inner()
                .items;
            // She also hears that voting closed (she owns it): look for
            // the join among what she has.
            if let Some(item) = items.iter().find(|item| {
                item.notification
                    .as_ref()
                    .is_some_and(|n| n.kind == "munity.events.v1.ParticipantJoined")
            }) {
                break item.notification.clone().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let heard = tokio::time::timeout(Duration::from_secs(10), heard)
        .await
        .expect("in the owner's inbox within 10 s");
    assert_eq!(heard.kind, "munity.events.v1.ParticipantJoined");
    let joined =
        events::ParticipantJoined::decode(heard.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(joined.user_id, bob_id);
    let list = |token: &str, filter: events::EventFilter| {
        let mut events = events.clone();
        let request = with_bearer(
            events::ListEventsRequest {
                filter: filter as i32,
                community_id: community.id.clone(),
                ..Default::default()
            },
            token,
        );
        async move {
            events
                .list_events(request)
                .await
                .unwrap()
                .into_inner()
                .events
                .len()
        }
    };
    assert_eq!(list(&alice, events::EventFilter::Mine).await, 1);
    assert_eq!(list(&bob, events::EventFilter::Joined).await, 1);
    assert_eq!(list(&bob, events::EventFilter::Community).await, 1);
    assert_eq!(list(&carol, events::EventFilter::Mine).await, 0);

    // Upcoming: carol's public meeting for everyone, soonest first; the
    // community's only for its members.
    let mut public = proposal();
    public.community_id = String::new();
    public.title = "Open picnic".to_owned();
    public.options = vec![events::TimeOptionInput {
        start: Some(at(25)),
        end: Some(at(26)),
    }];
    let public = events
        .clone()
        .create_event(with_bearer(public, &carol))
        .await
        .unwrap()
        .into_inner();
    let upcoming = |token: &str| {
        let events = events.clone();
        let token = token.to_owned();
        async move {
            let mut ids = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = events
                    .clone()
                    .list_events(with_bearer(
                        events::ListEventsRequest {
                            filter: events::EventFilter::Upcoming as i32,
                            page_size: 1,
                            page_token,
                            ..Default::default()
                        },
                        &token,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                ids.extend(page.events.into_iter().map(|e| e.id));
                if page.next_page_token.is_empty() {
                    return ids;
                }
                page_token = page.next_page_token;
            }
        }
    };
    assert_eq!(upcoming(&bob).await, [public.id.clone(), event.id.clone()]);
    assert_eq!(upcoming(&carol).await, [public.id.as_str()]);

    // The owner edits it: a new title, and room for everyone. Bob (a member,
    // not a moderator) may not; nor may anyone lower it below who is in.
    let update = |token: &str, request: events::UpdateEventRequest| {
        let mut events = events.clone();
        let request = with_bearer(
            events::UpdateEventRequest {
                event_id: event.id.clone(),
                ..request
            },
            token,
        );
        async move { events.update_event(request).await }
    };
    let bigger = events::UpdateEventRequest {
        title: Some("Ridge walk (long)".to_owned()),
        capacity: Some(0),
        ..Default::default()
    };
    assert_eq!(
        code(update(&bob, bigger.clone()).await),
        Code::PermissionDenied
    );
    assert_eq!(code(update(&carol, bigger.clone()).await), Code::NotFound);
    // The community's topic: members follow it, others may not.
    let community_topic = format!("community:{}", community.id);
    let follow = |token: &str| {
        let mut notify =
            munity_proto::notify::v1::notify_client::NotifyClient::new(channel.clone());
        let request = with_bearer(
            munity_proto::notify::v1::SubscribeRequest {
                topics: vec![community_topic.clone()],
                ..Default::default()
            },
            token,
        );
        async move { notify.subscribe(request).await }
    };
    assert_eq!(code(follow(&carol).await), Code::PermissionDenied);
    let mut community_stream = follow(&bob).await.unwrap().into_inner();
    community_stream.message().await.unwrap().unwrap(); // subscribed
    let updated = update(&alice, bigger).await.unwrap().into_inner();
    let heard = loop {
        use munity_proto::notify::v1::subscribe_response::Message;
        let message = tokio::time::timeout(Duration::from_secs(10), community_stream.message())
            .await
            .expect("the update reaches the community within 10 s")
            .unwrap()
            .unwrap();
        match message.message {
            Some(Message::Notification(n)) if n.kind == "munity.events.v1.EventUpdated" => break n,
            _ => continue,
        }
    };
    let told = events::EventUpdated::decode(heard.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(told.event.unwrap().title, "Ridge walk (long)");
    assert_eq!(
        (
            updated.title.as_str(),
            updated.capacity,
            updated.location.as_str()
        ),
        ("Ridge walk (long)", 0, "North gate")
    );
    join(&alice).await.unwrap();
    let smaller = update(
        &alice,
        events::UpdateEventRequest {
            capacity: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(smaller.code(), Code::FailedPrecondition);
    assert!(
        smaller.message().contains("2 participants"),
        "{}",
        smaller.message()
    );
    assert_eq!(
        code(update(&alice, events::UpdateEventRequest::default()).await),
        Code::InvalidArgument,
        "nothing to change"
    );

    // Statistics are for admins, counted from the domain events.
    let (ops, _) = register_as(&channel, "ops", ADMIN_EMAIL).await;
    let stats = |token: &str| {
        let mut events = events.clone();
        let request = with_bearer(
            events::GetStatsRequest {
                window: events::StatsWindow::LastHour as i32,
                ..Default::default()
            },
            token,
        );
        async move { events.get_stats(request).await }
    };
    assert_eq!(code(stats(&alice).await), Code::PermissionDenied);
    let started = std::time::Instant::now();
    let counted = loop {
        let counted = stats(&ops).await.unwrap().into_inner();
        if counted.joins == 2 || started.elapsed() > Duration::from_secs(10) {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            counted.events_created,
            counted.votes_cast,
            counted.joins,
            counted.active_users
        ),
        (2, 3, 2, 3),
        "alice's and carol's events; alice, bob and carol active: {counted:?}"
    );
    assert_eq!(counted.top_events.len(), 1);
    assert_eq!(counted.top_events[0].event_id, event.id);
    assert_eq!(counted.top_events[0].participant_count, 2);

    // Voting also closes by itself at the deadline (the scheduler).
    let mut soon = proposal();
    soon.voting_deadline = Some(prost_types::Timestamp {
        seconds: at(0).seconds + 2,
        nanos: 0,
    });
    let soon = events
        .clone()
        .create_event(with_bearer(soon, &alice))
        .await
        .unwrap()
        .into_inner();
    let started = std::time::Instant::now();
    loop {
        let seen = get_event(&events, &soon.id, &bob).await;
        if seen.status == events::EventStatus::Scheduled as i32 {
            println!(
                "closed by the scheduler {:?} after creation",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still {:?}",
            seen.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut ready = ready;
    ready.process.terminate();
    let exit = ready
        .process
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("munity exits after SIGTERM");
    assert!(exit.success(), "munity exited with {exit}");
}

/// `munity dev` keeps its domain events across a restart: changes made just
/// before SIGTERM (their events perhaps not yet relayed or counted) are
/// counted once after it starts again: none lost, none counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_events_survive_a_restart_of_munity_dev() {
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start(data.path()).await;
    let (ops, _) = register_as(&channel, "ops", ADMIN_EMAIL).await;
    let (alice, _) = register(&channel, "alice").await;
    let mut events = EventsClient::new(channel.clone());
    let mut created = Vec::new();
    for i in 0..3 {
        let event = events
            .create_event(with_bearer(
                munity_testkit::meeting_request(&format!("Meeting {i}")),
                &alice,
            ))
            .await
            .unwrap()
            .into_inner();
        for option in 0..3 {
            events
                .vote(with_bearer(
                    events::VoteRequest {
                        event_id: event.id.clone(),
                        option_id: option,
                    },
                    &alice,
                ))
                .await
                .unwrap();
        }
        created.push(event.id);
    }
    // Stopped at once, whatever the relay and the counters had done.
    let mut ready = ready;
    ready.process.terminate();
    let exit = ready
        .process
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("munity exits after SIGTERM");
    assert!(exit.success(), "munity exited with {exit}");

    let (_ready, channel) = start(data.path()).await;
    let mut events = EventsClient::new(channel.clone());
    let stats = || {
        let mut events = events.clone();
        let request = with_bearer(
            events::GetStatsRequest {
                window: events::StatsWindow::LastHour as i32,
                ..Default::default()
            },
            &ops,
        );
        async move { events.get_stats(request).await.unwrap().into_inner() }
    };
    let started = std::time::Instant::now();
    let counted = loop {
        let counted = stats().await;
        if counted.votes_cast >= 9 || started.elapsed() > Duration::from_secs(10) {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A moment more: a replayed event would show up as a double count.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = stats().await;
    assert_eq!(
        (counted.events_created, counted.votes_cast),
        (3, 9),
        "{counted:?}"
    );
    assert_eq!(again, counted, "nothing counted twice");
    let listed = events
        .list_events(with_bearer(
            events::ListEventsRequest {
                filter: events::EventFilter::Mine as i32,
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed.events.into_iter().map(|e| e.id).collect();
    assert_eq!(ids, created);
}

/// notify-svc through the gateway: a member follows a meeting and sees
/// votes live; outsiders and other people's topics are refused; a client
/// that drops off resumes from its last (epoch, offset) and gets exactly
/// what it missed, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_reach_subscribers_live_and_after_a_reconnect() {
    use munity_proto::notify::v1::{
        self as notify, notify_client::NotifyClient, subscribe_response::Message,
    };

    let data = tempfile::tempdir().unwrap();
    let (_ready, channel) = start(data.path()).await;
    let (alice, _) = register(&channel, "alice").await;
    let (bob, bob_id) = register(&channel, "bob").await;
    let mut events = EventsClient::new(channel.clone());
    let mut notifications = NotifyClient::new(channel.clone());
    let event = events
        .create_event(with_bearer(
            munity_testkit::meeting_request("Open call"),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let topic = format!("event:{}", event.id);
    let vote = |option: u32| {
        let mut events = events.clone();
        let request = with_bearer(
            events::VoteRequest {
                event_id: event.id.clone(),
                option_id: option,
            },
            &alice,
        );
        async move { events.vote(request).await.unwrap() }
    };

    // Someone else's user topic, an unknown event: refused before streaming.
    for refused in [
        format!("user:{}", uuid::Uuid::now_v7()),
        format!("event:{}", uuid::Uuid::now_v7()),
    ] {
        let status = notifications
            .subscribe(with_bearer(
                notify::SubscribeRequest {
                    topics: vec![refused.clone()],
                    ..Default::default()
                },
                &bob,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{refused}");
    }

    let subscribe = |resume: Option<notify::TopicPosition>| {
        let mut notifications = notifications.clone();
        let request = with_bearer(
            notify::SubscribeRequest {
                topics: vec![topic.clone(), format!("user:{bob_id}")],
                resume: resume.into_iter().collect(),
            },
            &bob,
        );
        async move { notifications.subscribe(request).await.unwrap().into_inner() }
    };
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
                // The meeting's creation is published a moment after
                // CreateEvent answers: it may come after subscribing.
                Some(Message::Notification(n)) if n.kind == "munity.events.v1.EventCreated" => {
                    continue;
                }
                Some(Message::Notification(n)) => return n,
                Some(Message::Heartbeat(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    }

    let mut stream = subscribe(None).await;
    let Some(Message::Subscribed(subscribed)) = stream.message().await.unwrap().unwrap().message
    else {
        panic!("subscribed first");
    };
    assert_eq!(subscribed.positions.len(), 2);
    vote(0).await;
    let first = next_notification(&mut stream).await;
    assert_eq!(
        (first.topic.as_str(), first.kind.as_str()),
        (topic.as_str(), "munity.events.v1.VoteCast")
    );
    let cast = events::VoteCast::decode(first.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(cast.option_id, 0);

    // Dropped; two votes meanwhile; resumed: exactly those two, then live.
    drop(stream);
    vote(1).await;
    vote(2).await;
    let mut stream = subscribe(Some(notify::TopicPosition {
        topic: topic.clone(),
        epoch: first.epoch.clone(),
        offset: first.offset,
    }))
    .await;
    stream.message().await.unwrap().unwrap(); // subscribed
    let missed: Vec<u64> = vec![
        next_notification(&mut stream).await.offset,
        next_notification(&mut stream).await.offset,
    ];
    assert_eq!(missed, [first.offset + 1, first.offset + 2]);
    vote(1).await; // no change: no event, no notification
    events
        .unvote(with_bearer(
            events::VoteRequest {
                event_id: event.id.clone(),
                option_id: 0,
            },
            &alice,
        ))
        .await
        .unwrap();
    let live = next_notification(&mut stream).await;
    assert_eq!(
        (live.offset, live.kind.as_str()),
        (first.offset + 3, "munity.events.v1.VoteWithdrawn")
    );

    // A position from another epoch: told to resync, then live.
    let mut stream = subscribe(Some(notify::TopicPosition {
        topic: topic.clone(),
        epoch: "elsewhere".to_owned(),
        offset: 1,
    }))
    .await;
    stream.message().await.unwrap().unwrap(); // subscribed
    let Some(Message::Resync(resync)) = stream.message().await.unwrap().unwrap().message else {
        panic!("a resync");
    };
    assert_eq!(resync.position.unwrap().offset, first.offset + 3);
}

/// The same stream to a gRPC-web client (Connect's gRPC-web transport from
/// node, over HTTP/1.1 as a browser would), through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_client_follows_a_meeting() {
    munity_testkit::grpc_web_clients();
    let data = tempfile::tempdir().unwrap();
    let (ready, _channel) = start(data.path()).await;
    let descriptors = data.path().join("munity.fds.bin");
    std::fs::write(&descriptors, munity_proto::FILE_DESCRIPTOR_SET).unwrap();
    munity_testkit::node(
        "notify.mjs",
        vec![
            "--base-url".to_owned(),
            format!("http://{}", ready.address("gateway")),
            "--descriptors".to_owned(),
            descriptors.to_str().unwrap().to_owned(),
            "--email".to_owned(),
            "web-subscriber@example.com".to_owned(),
        ],
        &[],
    )
    .await;
}

/// The kinds in `token`'s inbox (newest first), without the package.
async fn inbox_kinds(channel: &Channel, token: &str) -> Vec<String> {
    use munity_proto::notify::v1 as notify;
    notify::notify_client::NotifyClient::new(channel.clone())
        .list_inbox(with_bearer(
            notify::ListInboxRequest {
                page_size: 100,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .filter_map(|item| item.notification)
        .map(|n| n.kind.trim_start_matches("munity.events.v1.").to_owned())
        .collect()
}

/// Waits (60 s at most, then fails) until `token`'s inbox holds `kind`.
async fn wait_for_kind(channel: &Channel, token: &str, who: &str, kind: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let kinds = inbox_kinds(channel, token).await;
        if kinds.iter().any(|k| k == kind) {
            return kinds;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{who} never got {kind}: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// notify-svc tells people personally (their `user:` topic, so their
/// inbox): a new meeting to its community's members, voting closed (with
/// the chosen time) and the reminder to the owner, voters and
/// participants, a cancellation to the voters and participants; each
/// once. Someone outside hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_voters_and_participants_hear_of_their_meetings_in_their_inboxes() {
    let data = tempfile::tempdir().unwrap();
    // A reminder 60 s before the start: the meeting below starts 75 s after
    // it is made, and voting is closed at once, so it falls due in ~15 s.
    let (_ready, channel) = munity_testkit::start_dev_configured(
        env!("CARGO_BIN_EXE_munity"),
        data.path(),
        None,
        "[events]\nreminders_before_secs = [60]\n",
    )
    .await;
    let mut events = EventsClient::new(channel.clone());
    let mut users_client = UsersClient::new(channel.clone());
    let (alice, _) = register(&channel, "alice").await;
    let (bob, _) = register(&channel, "bob").await;
    let (carol, _) = register(&channel, "carol").await;
    let (dave, _) = register(&channel, "dave").await;
    let community = users_client
        .create_community(with_bearer(
            users::CreateCommunityRequest {
                name: "Climbers".to_owned(),
                description: String::new(),
            },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    for token in [&bob, &carol] {
        users_client
            .join_community(with_bearer(
                users::JoinCommunityRequest {
                    community_id: community.id.clone(),
                },
                token,
            ))
            .await
            .unwrap();
    }
    // events-svc learns the memberships from the log; the meeting is made
    // once it knows all three (a member it does not know yet would not be
    // told).
    let started = std::time::Instant::now();
    let meeting = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ts = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        let request = events::CreateEventRequest {
            title: "Bouldering".to_owned(),
            community_id: community.id.clone(),
            options: vec![events::TimeOptionInput {
                start: Some(ts(now + 75)),
                end: Some(ts(now + 3600)),
            }],
            voting_deadline: Some(ts(now + 70)),
            ..Default::default()
        };
        let carol_known = events
            .list_events(with_bearer(
                events::ListEventsRequest {
                    filter: events::EventFilter::Community as i32,
                    community_id: community.id.clone(),
                    ..Default::default()
                },
                &carol,
            ))
            .await
            .is_ok();
        if carol_known {
            match events.create_event(with_bearer(request, &alice)).await {
                Ok(created) => break created.into_inner(),
                Err(status) if status.code() == Code::PermissionDenied => {}
                Err(status) => panic!("{status:?}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(15), "memberships");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A new meeting in my community: the members but its owner.
    wait_for_kind(&channel, &bob, "bob", "EventCreated").await;
    wait_for_kind(&channel, &carol, "carol", "EventCreated").await;

    // Bob votes, Carol joins; Alice closes the voting.
    events
        .vote(with_bearer(
            events::VoteRequest {
                event_id: meeting.id.clone(),
                option_id: 0,
            },
            &bob,
        ))
        .await
        .unwrap();
    events
        .join(with_bearer(
            events::JoinRequest {
                event_id: meeting.id.clone(),
            },
            &carol,
        ))
        .await
        .unwrap();
    events
        .close_voting(with_bearer(
            events::CloseVotingRequest {
                event_id: meeting.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap();
    for (token, who) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        wait_for_kind(&channel, token, who, "VotingClosed").await;
    }
    // The chosen time is in it.
    let closed = munity_proto::notify::v1::notify_client::NotifyClient::new(channel.clone())
        .list_inbox(with_bearer(
            munity_proto::notify::v1::ListInboxRequest {
                page_size: 100,
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .filter_map(|item| item.notification)
        .find(|n| n.kind == "munity.events.v1.VotingClosed")
        .unwrap();
    let closed = events::VotingClosed::decode(closed.payload.unwrap().value.as_slice()).unwrap();
    assert_eq!(closed.start, meeting.options[0].start);

    // The reminder, to the owner, the voter and the participant.
    for (token, who) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        wait_for_kind(&channel, token, who, "ReminderDue").await;
    }
    // Alice cancels: the voter and the participant hear it.
    events
        .cancel_event(with_bearer(
            events::CancelEventRequest {
                event_id: meeting.id.clone(),
            },
            &alice,
        ))
        .await
        .unwrap();
    let bobs = wait_for_kind(&channel, &bob, "bob", "EventCancelled").await;
    let carols = wait_for_kind(&channel, &carol, "carol", "EventCancelled").await;
    let alices = inbox_kinds(&channel, &alice).await;
    let daves = inbox_kinds(&channel, &dave).await;
    println!("alice {alices:?}\nbob {bobs:?}\ncarol {carols:?}\ndave {daves:?}");
    for (kinds, who) in [(&bobs, "bob"), (&carols, "carol")] {
        for kind in [
            "EventCreated",
            "VotingClosed",
            "ReminderDue",
            "EventCancelled",
        ] {
            assert_eq!(count(kinds, kind), 1, "{who}: {kind} in {kinds:?}");
        }
    }
    // Alice made and cancelled it; she hears of the close, the reminder and
    // Carol joining, once each.
    assert_eq!(count(&alices, "EventCreated"), 0, "{alices:?}");
    assert_eq!(count(&alices, "EventCancelled"), 0, "{alices:?}");
    for kind in ["VotingClosed", "ReminderDue", "ParticipantJoined"] {
        assert_eq!(count(&alices, kind), 1, "alice: {kind} in {alices:?}");
    }
    assert!(daves.is_empty(), "{daves:?}");
}

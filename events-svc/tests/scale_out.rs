//! The scheduler in scale-out mode, for real: two `events-svc` processes
//! configured only through `MUNITY_*` variables, sharing one keyspace on a
//! real CQL server (Cassandra 5.0 here, for ScyllaDB) and one event log on
//! a real Redis. Deadlines that passed while no replica ran are closed at
//! start-up; one replica is SIGKILLed while both sweep; every close and
//! every reminder still happens exactly once (one VotingClosed and one
//! ReminderDue event id per meeting on the log).

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};

use events_svc::{
    domain::{EventRecord, Status, TimeOption, now_millis},
    store::{EventsRepository, cql::CqlStore},
};
use munity_bus::{EventLog, redis::RedisLog};
use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::BusConfig,
    shutdown::ShutdownToken,
};
use munity_proto::{
    events::v1::{self as events_pb, events_client::EventsClient},
    users::v1::{self as users_pb, users_client::UsersClient},
};
use uuid::Uuid;

/// A reminder this long before the start (seconds).
const REMIND_BEFORE_SECS: u32 = 3;

fn replica(nodes: &str, keyspace: &str, redis: &str, stream: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_events-svc"));
    command
        .env("MUNITY_EVENTS__LISTEN", "127.0.0.1:0")
        .env("MUNITY_EVENTS__STORAGE__BACKEND", "cql")
        .env("MUNITY_EVENTS__STORAGE__NODES", format!("[{nodes}]"))
        .env("MUNITY_EVENTS__STORAGE__KEYSPACE", keyspace)
        .env("MUNITY_EVENTS__STORAGE__REQUEST_TIMEOUT_MS", "20000")
        .env("MUNITY_EVENTS__SWEEP_INTERVAL_MS", "200")
        .env(
            "MUNITY_EVENTS__REMINDERS_BEFORE_SECS",
            format!("[{REMIND_BEFORE_SECS}]"),
        )
        .env("MUNITY_BUS__BACKEND", "redis")
        .env("MUNITY_BUS__REDIS_URL", redis)
        .env("MUNITY_BUS__REDIS_KEY", stream)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    command
}

/// A meeting whose voting ends at `deadline` and whose one option starts
/// at `start` (both ms).
fn meeting(deadline: i64, start: i64) -> EventRecord {
    EventRecord {
        id: Uuid::now_v7(),
        owner_id: Uuid::now_v7(),
        community_id: None,
        title: "Standup".to_owned(),
        description: String::new(),
        location: String::new(),
        options: vec![TimeOption {
            start,
            end: start + 600_000,
        }],
        voting_deadline: deadline,
        capacity: None,
        status: Status::Voting,
        participant_count: 0,
        created_at: now_millis(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_and_reminders_happen_once_across_replicas_one_killed() {
    let Some(cql) = munity_testkit::cql_config("events_scale") else {
        return;
    };
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
    let stream = format!("munity:test:events-scale:{}", Uuid::now_v7().simple());
    let nodes = cql.nodes.join(",");
    let store = {
        let _schema = munity_testkit::schema_lock().await;
        CqlStore::connect(&cql).await.expect("the CQL test server")
    };

    // Fell due while no replica ran: closed at start-up.
    let now = now_millis();
    let mut meetings = Vec::new();
    for _ in 0..3 {
        let event = meeting(now - 60_000, now + 20_000);
        store.create_event(&event).await.unwrap();
        meetings.push(event);
    }
    let mut a = munity_testkit::spawn_ready(
        replica(&nodes, &cql.keyspace, &redis, &stream),
        Duration::from_secs(60),
    )
    .await;
    let b = munity_testkit::spawn_ready(
        replica(&nodes, &cql.keyspace, &redis, &stream),
        Duration::from_secs(60),
    )
    .await;

    // Falling due while both sweep, and after one is killed.
    let now = now_millis();
    for i in 0..6 {
        let event = meeting(now + 1_000 + i * 700, now + 20_000);
        store.create_event(&event).await.unwrap();
        meetings.push(event);
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    a.process.child_mut().kill().expect("SIGKILL replica a");
    println!("replica a killed");

    // Every meeting is scheduled, and (3 s before its start) reminded.
    let log = RedisLog::connect(&redis, &stream, 100_000, Duration::from_secs(2))
        .await
        .unwrap();
    let mut reader = log.join("test-reader", "reader").await.unwrap();
    let mut closed: HashMap<String, HashSet<String>> = HashMap::new();
    let mut reminded: HashMap<String, HashSet<String>> = HashMap::new();
    let mut deliveries = 0;
    let started = Instant::now();
    while reminded.len() < meetings.len() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "closed {} and reminded {} of {} meetings",
            closed.len(),
            reminded.len(),
            meetings.len()
        );
        for delivery in reader.next(100, Duration::from_millis(500)).await.unwrap() {
            deliveries += 1;
            let event = delivery.event;
            let seen = match event.r#type.as_str() {
                "munity.events.v1.VotingClosed" => &mut closed,
                "munity.events.v1.ReminderDue" => &mut reminded,
                _ => continue,
            };
            seen.entry(event.aggregate_id).or_default().insert(event.id);
        }
    }
    // A moment for any second (wrong) effect to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for delivery in reader.next(1000, Duration::from_millis(500)).await.unwrap() {
        deliveries += 1;
        let event = delivery.event;
        match event.r#type.as_str() {
            "munity.events.v1.VotingClosed" => &mut closed,
            "munity.events.v1.ReminderDue" => &mut reminded,
            _ => continue,
        }
        .entry(event.aggregate_id)
        .or_default()
        .insert(event.id);
    }
    println!(
        "{} meetings closed and reminded after {:?}; {deliveries} deliveries read",
        meetings.len(),
        started.elapsed()
    );
    for event in &meetings {
        let id = event.id.to_string();
        assert_eq!(closed.get(&id).map(HashSet::len), Some(1), "closes of {id}");
        assert_eq!(
            reminded.get(&id).map(HashSet::len),
            Some(1),
            "reminders of {id}"
        );
        let stored = store.get_event(event.id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Scheduled { option: 0 });
    }
    drop(b);
}

/// A Redis of this test's own on `port`, persisting to `dir` (a restart
/// keeps the stream, as a production Redis with AOF does).
fn own_redis(port: u16, dir: &std::path::Path) -> Option<munity_testkit::Process> {
    let mut args: Vec<&std::ffi::OsStr> = ["--save", "", "--appendonly", "yes", "--dir"]
        .iter()
        .map(|a| a.as_ref())
        .collect();
    args.push(dir.as_os_str());
    munity_testkit::redis_server(port, &args).ok()
}

/// Reads the stream from the start until `want` events of `aggregate` came
/// (or 30 s): their types and acting users, in stream order.
async fn events_of(log: &RedisLog, aggregate: &str, want: usize) -> Vec<(String, String)> {
    let mut reader = log
        .join(&format!("reader-{}", Uuid::now_v7().simple()), "reader")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    let started = Instant::now();
    while seen.len() < want && started.elapsed() < Duration::from_secs(30) {
        for delivery in reader.next(100, Duration::from_millis(300)).await.unwrap() {
            let event = delivery.event;
            if event.aggregate_id == aggregate && ids.insert(event.id.clone()) {
                let user = event.subject_ids.last().cloned().unwrap_or_default();
                seen.push((event.r#type, user));
            }
        }
    }
    seen
}

/// users-svc in this process (embedded storage under `dir`): where the
/// replica fetches its keys, and where the test signs people up.
async fn users_service(dir: &std::path::Path) -> (String, ShutdownToken) {
    let bus = BusConfig {
        path: dir.join("bus"),
        ..Default::default()
    };
    munity_testkit::serve_in_process::<users_svc::UsersService>(
        Default::default(),
        dir,
        bus,
        AuthConfig::default(),
    )
    .await
}

async fn sign_up(users: &str) -> (String, String) {
    let session = UsersClient::connect(users.to_owned())
        .await
        .unwrap()
        .register(users_pb::RegisterRequest {
            email: format!("{}@example.com", Uuid::now_v7().simple()),
            password: "correct horse".to_owned(),
            display_name: "Voter".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    (session.access_token, session.user.unwrap().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_while_redis_is_down_and_events_follow_in_order() {
    let Some(cql) = munity_testkit::cql_config("events_redis_down") else {
        return;
    };
    let redis_dir = tempfile::tempdir().unwrap();
    let port = munity_testkit::free_port();
    let Some(redis) = own_redis(port, redis_dir.path()) else {
        assert!(!munity_testkit::in_ci(), "no redis-server in CI");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let stream = "munity:test:events-redis-down";
    let users_dir = tempfile::tempdir().unwrap();
    let (users, _users_shutdown) = users_service(users_dir.path()).await;
    let replica = {
        let _schema = munity_testkit::schema_lock().await;
        let mut command = replica(&cql.nodes.join(","), &cql.keyspace, &url, stream);
        command.env("MUNITY_AUTH__JWKS_URL", &users);
        munity_testkit::spawn_ready(command, Duration::from_secs(60)).await
    };
    let mut events = EventsClient::connect(format!("http://{}", replica.address("events")))
        .await
        .unwrap();
    let (owner, owner_id) = sign_up(&users).await;
    let create = |title: &str| events_pb::CreateEventRequest {
        title: title.to_owned(),
        options: vec![events_pb::TimeOptionInput {
            start: Some(munity_testkit::in_hours(10)),
            end: Some(munity_testkit::in_hours(11)),
        }],
        voting_deadline: Some(munity_testkit::in_hours(5)),
        ..Default::default()
    };
    let event = events
        .create_event(with_bearer(create("Before"), &owner))
        .await
        .unwrap()
        .into_inner();
    let log = RedisLog::connect(&url, stream, 100_000, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(events_of(&log, &event.id, 1).await.len(), 1, "created");

    // Redis goes away: CreateEvent and Vote still succeed; events wait.
    drop(redis);
    let mut voters = Vec::new();
    for _ in 0..5 {
        let (token, id) = sign_up(&users).await;
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
        voters.push((token, id));
    }
    events
        .unvote(with_bearer(
            events_pb::VoteRequest {
                event_id: event.id.clone(),
                option_id: 0,
            },
            &voters[0].0,
        ))
        .await
        .unwrap();
    let during = events
        .create_event(with_bearer(create("During"), &owner))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // It comes back with its data: the relay catches up, in order.
    let _redis = own_redis(port, redis_dir.path()).unwrap();
    let started = Instant::now();
    let seen = events_of(&log, &event.id, 7).await;
    println!("caught up {:?} after Redis came back", started.elapsed());
    let mut expected = vec![("munity.events.v1.EventCreated".to_owned(), owner_id)];
    expected.extend(
        voters
            .iter()
            .map(|(_, id)| ("munity.events.v1.VoteCast".to_owned(), id.clone())),
    );
    expected.push((
        "munity.events.v1.VoteWithdrawn".to_owned(),
        voters[0].1.clone(),
    ));
    assert_eq!(
        seen, expected,
        "every event once, in the order they happened"
    );
    assert_eq!(
        events_of(&log, &during.id, 1).await.len(),
        1,
        "created while down"
    );
}

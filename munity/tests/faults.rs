//! The fault suite's fast part (issue 25): the scale-out product under
//! steady load through the gateway while parts of it fail, one at a time.
//!
//! Two replicas each of users-svc, events-svc and notify-svc, as their own
//! processes, on the real CQL server (`MUNITY_TEST_CQL`) and a Redis of the
//! test's own (AOF on, so it can be stopped and started again), behind a
//! real `munity-gateway`. Load: CreateEvent then Vote (two writers),
//! Publish on a user's topic (idempotent by id, retried until
//! acknowledged), and Subscribe streams that resume by (epoch, offset).
//! Faults, in turn: SIGKILL one replica of each service (then start it
//! again), stop Redis for 10 s, SIGKILL the gateway and start it again.
//! (Stopping the CQL server is left to the by-hand suite: it is shared by
//! the whole test run and takes half a minute to start.) Afterwards: every acknowledged write is
//! stored, every acknowledged notification reached every stream exactly
//! once, and clients saw only UNAVAILABLE or DEADLINE_EXCEEDED meanwhile.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use munity_platform::{auth::with_bearer, shutdown::ShutdownToken};
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    notify::v1::{self as notify, notify_client::NotifyClient, subscribe_response::Message},
};
use munity_testkit::{Process, free_port};
use tonic::{Code, transport::Channel};

/// A binary of another workspace package, built beside this test.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's binaries first (cargo build --bins)",
        bin.display()
    );
    bin
}

/// Where the servers the replicas share are.
struct Shared {
    cql_nodes: String,
    keyspace_prefix: String,
    redis_url: String,
    bus_key: String,
    users_url: String,
}

/// A replica of `section` (`users`, `events`, `notify`) on `address`.
fn replica_command(section: &str, address: SocketAddr, shared: &Shared) -> Command {
    let upper = section.to_uppercase();
    let mut command = Command::new(workspace_bin(&format!("{section}-svc")));
    let key = |k: &str| format!("MUNITY_{upper}__{k}");
    command
        .env(key("LISTEN"), address.to_string())
        .env(key("SHUTDOWN_GRACE_SECS"), "2")
        .env(key("STORAGE__BACKEND"), "cql")
        .env(key("STORAGE__NODES"), format!("[{}]", shared.cql_nodes))
        .env(
            key("STORAGE__KEYSPACE"),
            format!("{}_{section}", shared.keyspace_prefix),
        )
        .env(key("STORAGE__REQUEST_TIMEOUT_MS"), "5000")
        .env("MUNITY_BUS__BACKEND", "redis")
        .env("MUNITY_BUS__REDIS_URL", &shared.redis_url)
        .env("MUNITY_BUS__REDIS_KEY", &shared.bus_key)
        .env("MUNITY_AUTH__JWKS_URL", &shared.users_url)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    match section {
        "users" => {
            command.env(
                "MUNITY_USERS__ADMIN_EMAILS",
                format!("[\"{}\"]", munity_testkit::ADMIN_EMAIL),
            );
        }
        "notify" => {
            command
                .env("MUNITY_NOTIFY__HUB", "redis")
                .env("MUNITY_NOTIFY__REDIS_URL", &shared.redis_url)
                .env(
                    "MUNITY_NOTIFY__REDIS_PREFIX",
                    format!("{}:notify", shared.bus_key),
                )
                .env("MUNITY_NOTIFY__MAX_STREAMS_PER_USER", "50");
        }
        _ => {}
    }
    command
}

/// Starts a replica and waits until it serves: a replica is ready (bound)
/// before it has opened its store, and this test starts replicas one at a
/// time so that each creates its keyspace's schema alone.
async fn start_replica(section: &str, address: SocketAddr, shared: &Shared) -> Process {
    let limit = Duration::from_secs(90);
    let process = munity_testkit::spawn_ready(replica_command(section, address, shared), limit)
        .await
        .process;
    let service = format!("munity.{section}.v1.{}", capitalized(section));
    munity::wait_until_serving(&address.to_string(), &[service], limit)
        .await
        .unwrap_or_else(|e| panic!("{section}-svc at {address} never served: {e}"));
    process
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn redis(port: u16, dir: &Path) -> Process {
    let dir = dir.as_os_str();
    munity_testkit::redis_server(
        port,
        &[
            "--appendonly".as_ref(),
            "yes".as_ref(),
            "--appendfsync".as_ref(),
            "always".as_ref(),
            "--save".as_ref(),
            "".as_ref(),
            "--dir".as_ref(),
            dir,
        ],
    )
    .expect("redis-server")
}

/// What clients saw: acknowledged writes, and the codes of failed calls.
#[derive(Default)]
struct Seen {
    /// Event id → the token of a user who voted option 0 (acknowledged).
    events: Vec<(String, Option<String>)>,
    published: Vec<String>,
    /// The fault under way (or "steady").
    phase: String,
    /// (phase, code) → failed calls.
    codes: BTreeMap<(String, String), u32>,
}

/// A call that lost its connection mid-way: the client's own report
/// (tonic says Unknown, or Cancelled when hyper dropped the request), not
/// a status any server sent.
fn connection_lost(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unknown => {
            status.message().contains("transport error")
                || status.message().contains("h2 protocol error")
        }
        Code::Cancelled => status.message().contains("operation was canceled"),
        _ => false,
    }
}

impl Seen {
    fn failed(&mut self, status: &tonic::Status) {
        let code = if connection_lost(status) {
            "connection lost".to_owned()
        } else {
            format!("{:?}", status.code())
        };
        if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
            && !connection_lost(status)
        {
            eprintln!("unexpected: {:?} {}", status.code(), status.message());
        }
        *self.codes.entry((self.phase.clone(), code)).or_default() += 1;
    }
}

fn deadline<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = with_bearer(message, token);
    request.set_timeout(Duration::from_secs(5));
    request
}

/// Follows `topic`, resuming after each break; the notification ids it
/// got, in order, duplicates included.
async fn subscriber(
    channel: Channel,
    token: String,
    topic: String,
    stop: ShutdownToken,
    seen: Arc<Mutex<Seen>>,
    received: Arc<Mutex<usize>>,
) -> Vec<String> {
    let mut client = NotifyClient::new(channel);
    let mut got = Vec::new();
    let mut position: Option<(String, u64)> = None;
    while !stop.is_cancelled() {
        let request = notify::SubscribeRequest {
            topics: vec![topic.clone()],
            resume: position
                .iter()
                .map(|(epoch, offset)| notify::TopicPosition {
                    topic: topic.clone(),
                    epoch: epoch.clone(),
                    offset: *offset,
                })
                .collect(),
        };
        let mut stream = match client.subscribe(with_bearer(request, &token)).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                seen.lock().unwrap().failed(&status);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return got,
                next = stream.message() => next,
            };
            match next {
                Ok(Some(response)) => match response.message {
                    Some(Message::Subscribed(subscribed)) => {
                        if position.is_none()
                            && let Some(at) = subscribed.positions.first()
                        {
                            position = Some((at.epoch.clone(), at.offset));
                        }
                    }
                    Some(Message::Notification(n)) => {
                        got.push(n.event_id.clone());
                        *received.lock().unwrap() = got.len();
                        position = Some((n.epoch, n.offset));
                    }
                    Some(Message::Resync(_)) => panic!("history lost: a resync was asked for"),
                    _ => {}
                },
                Ok(None) => break,
                Err(status) => {
                    seen.lock().unwrap().failed(&status);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_notifications_survive_killed_replicas_and_a_redis_outage() {
    let Some(cql) = munity_testkit::cql_config("faults") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis_server = Some(redis(redis_port, dir.path()));

    let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let users = [address(free_port()), address(free_port())];
    let events = [address(free_port()), address(free_port())];
    let notifies = [address(free_port()), address(free_port())];
    let shared = Shared {
        cql_nodes: cql.nodes.join(","),
        keyspace_prefix: cql.keyspace.clone(),
        redis_url: format!("redis://127.0.0.1:{redis_port}"),
        bus_key: "munity:faults".to_owned(),
        // The replica never killed: the others fetch signing keys there.
        users_url: format!("http://{}", users[1]),
    };
    // One at a time: each creates its keyspace's schema on first start.
    let mut replicas: HashMap<(&str, usize), Process> = HashMap::new();
    for (section, addresses) in [("users", users), ("events", events), ("notify", notifies)] {
        for (i, address) in addresses.into_iter().enumerate() {
            let _schema = munity_testkit::schema_lock().await;
            replicas.insert((section, i), start_replica(section, address, &shared).await);
        }
    }

    // The gateway in front of them all.
    let (port, admin) = (free_port(), free_port());
    let list = |a: [SocketAddr; 2]| format!("[\"{}\", \"{}\"]", a[0], a[1]);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             health_check_interval_ms = 200\nshutdown_grace_secs = 1\n\
             [gateway.routes.users]\nupstreams = {}\n\
             [gateway.routes.events]\nupstreams = {}\n\
             [gateway.routes.notify]\nupstreams = {}\n\
             [gateway.routes.warehouse]\nupstreams = [\"127.0.0.1:1\"]\n\
             [gateway.rate_limits.default]\nrequests = 1000000\nper_secs = 1\nburst = 1000000\n{}",
            list(users),
            list(events),
            list(notifies),
            // The protos' own quotas are not what this test is about.
            ["Events/CreateEvent", "Events/Vote", "Notify/Publish", "Notify/Subscribe"]
                .iter()
                .map(|m| {
                    let (service, method) = m.split_once('/').unwrap();
                    format!(
                        "[[gateway.rate_limits.rules]]\nmethod = \"/munity.{}.v1.{m}\"\nrequests = 1000000\nper_secs = 1\nburst = 1000000\n",
                        service.to_lowercase(),
                    )
                    .replace("{method}", method)
                })
                .collect::<String>(),
        ),
    )
    .unwrap();
    let start_gateway = || {
        Process::new(
            Command::new(workspace_bin("munity-gateway"))
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("start munity-gateway"),
        )
    };
    let mut gateway = start_gateway();
    let started = Instant::now();
    let channel = loop {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            break channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let routed = [
        "munity.users.v1.Users",
        "munity.events.v1.Events",
        "munity.notify.v1.Notify",
    ]
    .map(str::to_owned);
    munity::wait_until_serving(
        &format!("127.0.0.1:{port}"),
        &routed,
        Duration::from_secs(30),
    )
    .await
    .expect("every route serving through the gateway");

    let (admin_token, _) =
        munity_testkit::register_as(&channel, "ops", munity_testkit::ADMIN_EMAIL).await;
    let publisher =
        munity_testkit::service_token(&channel, &admin_token, "faults", &["notify.publish"]).await;
    let (owner, _) = munity_testkit::register(&channel, "owner").await;
    let (voter, _) = munity_testkit::register(&channel, "voter").await;
    let (reader, reader_id) = munity_testkit::register(&channel, "reader").await;
    let topic = format!("user:{reader_id}");

    let seen = Arc::new(Mutex::new(Seen {
        phase: "steady".to_owned(),
        ..Seen::default()
    }));
    let phase = |name: &str| seen.lock().unwrap().phase = name.to_owned();
    let stop = ShutdownToken::new();
    // The streams stop after the load, once they have caught up.
    let streams_stop = ShutdownToken::new();
    let mut subscribers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..5 {
        let received = Arc::new(Mutex::new(0));
        progress.push(received.clone());
        subscribers.push(tokio::spawn(subscriber(
            channel.clone(),
            reader.clone(),
            topic.clone(),
            streams_stop.clone(),
            seen.clone(),
            received,
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut load = Vec::new();
    for _ in 0..2 {
        let (channel, owner, voter, stop, seen) = (
            channel.clone(),
            owner.clone(),
            voter.clone(),
            stop.clone(),
            seen.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut client = EventsClient::new(channel);
            while !stop.is_cancelled() {
                let created = client
                    .create_event(deadline(munity_testkit::meeting_request("Standup"), &owner))
                    .await;
                let event = match created {
                    Ok(event) => event.into_inner(),
                    Err(status) => {
                        seen.lock().unwrap().failed(&status);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let vote = events::VoteRequest {
                    event_id: event.id.clone(),
                    option_id: 0,
                };
                let voted = match client.vote(deadline(vote, &voter)).await {
                    Ok(_) => Some(voter.clone()),
                    Err(status) => {
                        seen.lock().unwrap().failed(&status);
                        None
                    }
                };
                seen.lock().unwrap().events.push((event.id, voted));
            }
        }));
    }
    {
        let (channel, publisher, topic, stop, seen) = (
            channel.clone(),
            publisher.clone(),
            topic.clone(),
            stop.clone(),
            seen.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut client = NotifyClient::new(channel);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let id = format!("n-{n}");
                let request = notify::PublishRequest {
                    topic: topic.clone(),
                    id: id.clone(),
                    payload: Some(prost_types::Any {
                        type_url: "type.googleapis.com/munity.test.v1.Ping".to_owned(),
                        value: n.to_be_bytes().to_vec(),
                    }),
                };
                match client.publish(deadline(request, &publisher)).await {
                    Ok(published) => {
                        let event_id = published
                            .into_inner()
                            .notification
                            .map(|n| n.event_id)
                            .unwrap_or_default();
                        seen.lock().unwrap().published.push(event_id);
                        n += 1;
                    }
                    // Retried with the same id until acknowledged.
                    Err(status) => seen.lock().unwrap().failed(&status),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // The faults, one after another, each with the time to recover after.
    let mut timeline = Vec::new();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (section, addresses) in [("events", events), ("notify", notifies), ("users", users)] {
        phase(&format!("{section}-svc replica killed"));
        let mut killed = replicas.remove(&(section, 0)).unwrap();
        killed.child_mut().kill().expect("SIGKILL");
        let _ = killed.child_mut().wait();
        timeline.push(format!(
            "{:>5.1} s  SIGKILL {section}-svc replica 0",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        replicas.insert(
            (section, 0),
            start_replica(section, addresses[0], &shared).await,
        );
        timeline.push(format!(
            "{:>5.1} s  {section}-svc replica 0 serving again",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    phase("Redis stopped");
    drop(redis_server.take());
    timeline.push(format!(
        "{:>5.1} s  Redis stopped",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis_server = Some(redis(redis_port, dir.path()));
    timeline.push(format!(
        "{:>5.1} s  Redis started again",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The gateway restarts (SIGKILL, as a crash; then on the same port):
    // clients reconnect, streams resume by their offsets.
    phase("gateway killed");
    gateway.child_mut().kill().expect("SIGKILL the gateway");
    let _ = gateway.child_mut().wait();
    timeline.push(format!(
        "{:>5.1} s  SIGKILL the gateway",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway = start_gateway();
    timeline.push(format!(
        "{:>5.1} s  the gateway started again",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    phase("after");
    stop.cancel();
    for task in load {
        task.await.unwrap();
    }
    // The streams catch up with everything acknowledged, then stop.
    let published = seen.lock().unwrap().published.clone();
    let caught_up = Instant::now();
    while progress
        .iter()
        .any(|received| *received.lock().unwrap() < published.len())
        && caught_up.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "streams caught up {:.1} s after the load stopped",
        caught_up.elapsed().as_secs_f64()
    );
    streams_stop.cancel();
    let mut streams = Vec::new();
    for task in subscribers {
        streams.push(task.await.unwrap());
    }

    // Acknowledged writes are stored.
    let events_seen = seen.lock().unwrap().events.clone();
    let mut client = EventsClient::new(channel.clone());
    let (mut missing_events, mut missing_votes, mut votes) = (0, 0, 0);
    for (id, voted) in &events_seen {
        let token = voted.as_deref().unwrap_or(&owner);
        match client
            .get_event(deadline(
                events::GetEventRequest {
                    event_id: id.clone(),
                },
                token,
            ))
            .await
        {
            Ok(event) => {
                if voted.is_some() {
                    votes += 1;
                    if !event.into_inner().my_votes.contains(&0) {
                        missing_votes += 1;
                    }
                }
            }
            Err(status) => {
                eprintln!(
                    "acknowledged event {id}: {:?} {}",
                    status.code(),
                    status.message()
                );
                missing_events += 1;
            }
        }
    }
    // Acknowledged notifications reached every stream once.
    let mut rows = Vec::new();
    let (mut missing_total, mut doubled_total) = (0, 0);
    for (i, got) in streams.iter().enumerate() {
        let mut times: HashMap<&str, u32> = HashMap::new();
        for id in got {
            *times.entry(id.as_str()).or_default() += 1;
        }
        let lost: Vec<&String> = published
            .iter()
            .filter(|id| !times.contains_key(id.as_str()))
            .collect();
        if !lost.is_empty() {
            let at: Vec<usize> = lost
                .iter()
                .take(5)
                .filter_map(|id| published.iter().position(|p| p == *id))
                .collect();
            println!(
                "stream {i} misses {} (published as number {at:?}, ...)",
                lost.len()
            );
        }
        let missing = lost.len();
        let doubled = times.values().filter(|&&n| n > 1).count();
        missing_total += missing;
        doubled_total += doubled;
        rows.push(format!(
            "stream {i}: {} received, {missing} missing, {doubled} doubled",
            got.len()
        ));
    }
    let codes = seen.lock().unwrap().codes.clone();
    println!("fault timeline:\n  {}", timeline.join("\n  "));
    println!(
        "writes: {} events acknowledged, {missing_events} missing; {votes} votes acknowledged, {missing_votes} missing",
        events_seen.len()
    );
    println!(
        "notifications: {} acknowledged; {}",
        published.len(),
        rows.join("; ")
    );
    println!("failed calls by fault and code:");
    for ((phase, code), n) in &codes {
        println!("  {phase:<28} {code:<16} {n}");
    }

    assert!(
        events_seen.len() > 20,
        "the load ran: {} events",
        events_seen.len()
    );
    assert!(
        published.len() > 20,
        "the load ran: {} published",
        published.len()
    );
    assert_eq!(
        (missing_events, missing_votes),
        (0, 0),
        "acknowledged writes are stored"
    );
    assert_eq!(missing_total, 0, "no acknowledged notification missing");
    assert_eq!(doubled_total, 0, "no notification delivered twice");
    // A crashed gateway cannot send a status: its clients see their
    // connection drop. Everywhere else the product answers for itself.
    let unexpected: Vec<_> = codes
        .keys()
        .filter(|(phase, code)| match code.as_str() {
            "Unavailable" | "DeadlineExceeded" => false,
            "connection lost" => phase != "gateway killed",
            _ => true,
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "clients saw only UNAVAILABLE or DEADLINE_EXCEEDED during faults: {codes:?}"
    );
    drop(redis_server);
    drop(gateway);
}

//! The fault suite's fast part (issue 25): the scale-out product under
//! steady load through the gateway while parts of it fail, one at a time.
//!
//! Two replicas each of users-svc, events-svc, notify-svc and
//! warehouse-svc, as their own processes, on the real CQL server
//! (`MUNITY_TEST_CQL`) and a Redis of the test's own (AOF on, so it can be
//! stopped and started again), behind a real `munity-gateway`. Load:
//! CreateEvent then Vote (two gRPC writers), CreateEvent over HTTP/JSON and
//! over gRPC-web (HTTP/1.1), warehouse Ingest (idempotent record ids,
//! retried until acknowledged), Publish on a user's topic (idempotent by
//! id, retried until acknowledged), and 200 Subscribe streams that resume
//! by (epoch, offset).
//! Faults, in turn: SIGKILL one replica of each service (then start it
//! again), stop Redis for 30 s, SIGKILL the gateway and start it again.
//!
//! With `MUNITY_FAULTS_SOAK_SECS=N` (by hand, `scripts/soak-cluster.sh`) the
//! same cluster and load run N seconds with no faults instead, and every
//! process's RSS, open descriptors and threads are sampled every 10 s (a
//! CSV to `MUNITY_FAULTS_SOAK_CSV`); the same checks follow.
//! With `MUNITY_FAULTS_CQL_OUTAGE=1` (by hand, or alone at the end of the
//! test command: it stops the CQL server every other test shares) also a
//! 20 s outage of the CQL server. Afterwards: every acknowledged write is
//! stored, every acknowledged notification reached every stream exactly
//! once, and clients saw only UNAVAILABLE or DEADLINE_EXCEEDED meanwhile.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use munity_platform::{auth::with_bearer, shutdown::ShutdownToken};
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    notify::v1::{self as notify, notify_client::NotifyClient, subscribe_response::Message},
    warehouse::v1::{self as warehouse, warehouse_client::WarehouseClient},
};
use munity_testkit::{Process, free_port};
use prost::Message as _;
use tonic::{Code, transport::Channel};

/// Where the servers the replicas share are.
struct Shared {
    cql_nodes: String,
    keyspace_prefix: String,
    redis_url: String,
    bus_key: String,
    users_url: String,
}

/// A replica of `section` (`users`, `events`, `notify`, `warehouse`) on
/// `address`.
fn replica_command(section: &str, address: SocketAddr, shared: &Shared) -> Command {
    let upper = section.to_uppercase();
    let mut command = Command::new(munity_testkit::workspace_bin(&format!("{section}-svc")));
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
    // A soak outlasts the tokens' usual lifetimes: its clients hold theirs.
    if let Some(seconds) = std::env::var("MUNITY_FAULTS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        // Checking every acknowledged write afterwards takes minutes too
        // (one read each; a 30-minute soak writes ~180,000): an hour more.
        let ttl = (seconds + 3600).to_string();
        command
            .env("MUNITY_USERS__TOKENS__ACCESS_TTL_SECS", &ttl)
            .env("MUNITY_USERS__SERVICE_TOKEN_TTL_SECS", &ttl)
            .env(
                "MUNITY_AUTH__REVOCATION_REPLAY_SECS",
                (seconds + 4200).to_string(),
            );
    }
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
                .env("MUNITY_NOTIFY__MAX_STREAMS_PER_USER", STREAMS.to_string());
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
    /// Warehouse record ids acknowledged.
    records: Vec<String>,
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

/// A call whose own deadline passed before an answer came: tonic's timer
/// on the client (`Request::set_timeout`) reports CANCELLED "Timeout
/// expired", where the server, had its timer fired first, would have said
/// DEADLINE_EXCEEDED.
fn client_deadline(status: &tonic::Status) -> bool {
    status.code() == Code::Cancelled && status.message() == "Timeout expired"
}

impl Seen {
    fn failed(&mut self, status: &tonic::Status) {
        if connection_lost(status) {
            self.failed_as("connection lost", "");
        } else if client_deadline(status) {
            // The same deadline the server enforces (grpc-timeout), on the
            // client's clock: whichever fires first reports it.
            self.failed_as("DeadlineExceeded", status.message());
        } else {
            self.failed_as(&format!("{:?}", status.code()), status.message());
        }
    }

    /// A failed call, by what the client saw: a gRPC code's name, `HTTP
    /// <status>` (HTTP/JSON) or `connection lost`.
    fn failed_as(&mut self, code: &str, detail: &str) {
        if !expected(code, "") {
            eprintln!("unexpected: {code} {detail}");
        }
        *self
            .codes
            .entry((self.phase.clone(), code.to_owned()))
            .or_default() += 1;
    }
}

/// What a client may see while a part fails: UNAVAILABLE or
/// DEADLINE_EXCEEDED (HTTP 503 or 504), and a dropped connection only when
/// the gateway itself crashed (it cannot answer then).
fn expected(code: &str, phase: &str) -> bool {
    match code {
        "Unavailable" | "DeadlineExceeded" | "HTTP 503" | "HTTP 504" => true,
        "connection lost" => phase.is_empty() || phase == "gateway killed",
        _ => false,
    }
}

/// Runs `scripts/cassandra.sh <command>` (stop, or start: it returns once
/// the server answers CQL again, with its data).
async fn cassandra(command: &'static str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cassandra.sh");
    let status = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .arg(command)
            // The same node again, with its data: an outage, not a new server.
            .env("CASSANDRA_KEEP_DATA", "1")
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .unwrap()
    .expect("run scripts/cassandra.sh");
    assert!(status.success(), "scripts/cassandra.sh {command}: {status}");
}

/// Subscribe streams held open by the reader through the whole run.
const STREAMS: usize = 200;
/// Streams per client connection to the gateway.
const STREAMS_PER_CONNECTION: usize = 50;

/// One HTTP/1.1 request on a connection of its own, as a browser's fetch
/// or curl makes it: (status, headers, body), or why it failed.
async fn http1(
    port: u16,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), String> {
    use http_body_util::BodyExt;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = hyper::Request::post(path).header("host", format!("127.0.0.1:{port}"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status.as_u16(), parts.headers, body.to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()))
}

/// What [`http1`]'s failure is to the client: its own deadline, or the
/// connection gone.
fn http1_failure(error: &str) -> String {
    if error == "timed out" {
        "DeadlineExceeded".to_owned()
    } else {
        "connection lost".to_owned()
    }
}

/// CreateEvent's body in the proto3 JSON mapping.
fn meeting_json(title: &str) -> Vec<u8> {
    let at = |hours| munity_testkit::in_hours(hours).to_string();
    serde_json::json!({
        "title": title,
        "options": [{ "start": at(10), "end": at(11) }],
        "votingDeadline": at(5),
    })
    .to_string()
    .into_bytes()
}

/// A gRPC-web call's outcome: the message, or the gRPC code's name. The
/// status is in the headers (a trailers-only answer) or in the body's
/// trailer frame.
fn grpc_web_outcome(headers: &hyper::HeaderMap, body: &[u8]) -> Result<Vec<u8>, String> {
    let code_name = |status: &str| {
        let code = Code::from_i32(status.trim().parse().unwrap_or(2));
        format!("{code:?}")
    };
    if let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        return match status.trim() {
            "0" => Ok(Vec::new()),
            other => Err(code_name(other)),
        };
    }
    let (mut message, mut rest) = (None, body);
    while rest.len() >= 5 {
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(frame) = rest.get(5..5 + len) else {
            break;
        };
        if flags & 0x80 == 0 {
            message = Some(frame.to_vec());
        } else {
            let trailers = String::from_utf8_lossy(frame);
            let status = trailers
                .lines()
                .find_map(|line| line.strip_prefix("grpc-status:"))
                .unwrap_or("2");
            return match status.trim() {
                "0" => message.ok_or_else(|| "no message".to_owned()),
                other => Err(code_name(other)),
            };
        }
        rest = &rest[5 + len..];
    }
    Err("connection lost".to_owned())
}

/// One sample of a process: (RSS KiB, open descriptors, threads).
fn sample(pid: u32) -> Option<(u64, usize, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((field("VmRSS:")?, fds, field("Threads:")?))
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
    open: Arc<AtomicUsize>,
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
        open.fetch_add(1, Ordering::Relaxed);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return got;
                }
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
        open.fetch_sub(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_and_notifications_survive_killed_replicas_and_a_redis_outage() {
    let Some(cql) = munity_testkit::cql_config("faults") else {
        return;
    };
    // By hand: a soak of that many seconds instead of the faults.
    let soak = std::env::var("MUNITY_FAULTS_SOAK_SECS")
        .ok()
        .map(|v| v.parse::<u64>().expect("MUNITY_FAULTS_SOAK_SECS: seconds"));
    // The soak runs at a steady rate, the fault run as fast as it goes.
    let pace = Duration::from_millis(if soak.is_some() { 50 } else { 0 });
    let publish_pace = Duration::from_millis(if soak.is_some() { 100 } else { 20 });
    // By hand (it stops the CQL server every other test shares):
    // MUNITY_FAULTS_CQL_OUTAGE=1 adds a 20 s outage of it, through
    // scripts/cassandra.sh.
    let cql_outage = std::env::var("MUNITY_FAULTS_CQL_OUTAGE").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis_server = Some(redis(redis_port, dir.path()));

    let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let users = [address(free_port()), address(free_port())];
    let events = [address(free_port()), address(free_port())];
    let notifies = [address(free_port()), address(free_port())];
    let warehouses = [address(free_port()), address(free_port())];
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
    for (section, addresses) in [
        ("users", users),
        ("events", events),
        ("notify", notifies),
        ("warehouse", warehouses),
    ] {
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
             [gateway.routes.warehouse]\nupstreams = {}\n\
             [gateway.rate_limits.default]\nrequests = 1000000\nper_secs = 1\nburst = 1000000\n{}",
            list(users),
            list(events),
            list(notifies),
            list(warehouses),
            // The protos' own quotas are not what this test is about.
            [
                "Events/CreateEvent",
                "Events/Vote",
                "Notify/Publish",
                "Notify/Subscribe",
                "Warehouse/Ingest",
            ]
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
            Command::new(munity_testkit::workspace_bin("munity-gateway"))
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
        "munity.warehouse.v1.Warehouse",
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
    let producer = munity_testkit::service_token(
        &channel,
        &admin_token,
        "faults-warehouse",
        &["warehouse.produce", "warehouse.read"],
    )
    .await;
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
    let open_streams = Arc::new(AtomicUsize::new(0));
    let mut stream_channel = channel.clone();
    for i in 0..STREAMS {
        if i % STREAMS_PER_CONNECTION == 0 {
            stream_channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .expect("a connection for streams");
        }
        let received = Arc::new(Mutex::new(0));
        progress.push(received.clone());
        subscribers.push(tokio::spawn(subscriber(
            stream_channel.clone(),
            reader.clone(),
            topic.clone(),
            streams_stop.clone(),
            seen.clone(),
            received,
            open_streams.clone(),
        )));
    }
    let opening = Instant::now();
    while open_streams.load(Ordering::Relaxed) < STREAMS {
        assert!(
            opening.elapsed() < Duration::from_secs(30),
            "only {} of {STREAMS} streams opened",
            open_streams.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
                tokio::time::sleep(pace).await;
            }
        }));
    }
    // CreateEvent over HTTP/JSON, each call on a new HTTP/1.1 connection.
    {
        let (owner, stop, seen) = (owner.clone(), stop.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            let headers = [
                ("authorization", format!("Bearer {owner}")),
                ("content-type", "application/json".to_owned()),
            ];
            while !stop.is_cancelled() {
                match http1(port, "/v1/events", &headers, meeting_json("JSON")).await {
                    Ok((200, _, body)) => {
                        let event: serde_json::Value =
                            serde_json::from_slice(&body).expect("an Event as JSON");
                        let id = event["id"].as_str().expect("the event's id").to_owned();
                        seen.lock().unwrap().events.push((id, None));
                    }
                    Ok((status, _, body)) => seen
                        .lock()
                        .unwrap()
                        .failed_as(&format!("HTTP {status}"), &String::from_utf8_lossy(&body)),
                    Err(error) => seen.lock().unwrap().failed_as(&http1_failure(&error), ""),
                }
                tokio::time::sleep(pace.max(Duration::from_millis(20))).await;
            }
        }));
    }
    // CreateEvent over gRPC-web (binary, HTTP/1.1), as a browser sends it.
    {
        let (owner, stop, seen) = (owner.clone(), stop.clone(), seen.clone());
        load.push(tokio::spawn(async move {
            let headers = [
                ("authorization", format!("Bearer {owner}")),
                ("content-type", "application/grpc-web+proto".to_owned()),
                ("x-grpc-web", "1".to_owned()),
            ];
            while !stop.is_cancelled() {
                let message = munity_testkit::meeting_request("gRPC-web").encode_to_vec();
                let mut framed = vec![0];
                framed.extend((message.len() as u32).to_be_bytes());
                framed.extend(message);
                let path = "/munity.events.v1.Events/CreateEvent";
                let outcome = match http1(port, path, &headers, framed).await {
                    Ok((200, headers, body)) => grpc_web_outcome(&headers, &body),
                    Ok((other, _, _)) => Err(format!("HTTP {other}")),
                    Err(error) => Err(http1_failure(&error)),
                };
                match outcome {
                    Ok(message) => {
                        let event = events::Event::decode(message.as_slice())
                            .expect("an Event from gRPC-web");
                        seen.lock().unwrap().events.push((event.id, None));
                    }
                    Err(code) => seen.lock().unwrap().failed_as(&code, "gRPC-web"),
                }
                tokio::time::sleep(pace.max(Duration::from_millis(20))).await;
            }
        }));
    }
    // warehouse Ingest: five records a call, their ids and times fixed so
    // that a retry after a failure stores nothing twice (a record is keyed
    // by its time and id; one sent without a time takes its arrival time,
    // so a retry of it would be a second record: the CQL outage showed it).
    let ingest_start = munity_testkit::in_hours(0);
    {
        let (channel, producer, stop, seen) = (
            channel.clone(),
            producer.clone(),
            stop.clone(),
            seen.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut client = WarehouseClient::new(channel);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let ids: Vec<String> = (0..5).map(|i| format!("w-{n}-{i}")).collect();
                let request = warehouse::IngestRequest {
                    records: ids
                        .iter()
                        .map(|id| warehouse::Record {
                            id: id.clone(),
                            source: "faults".to_owned(),
                            payload: Some(warehouse::record::Payload::Data(
                                n.to_be_bytes().to_vec(),
                            )),
                            content_type: "application/octet-stream".to_owned(),
                            time: Some(prost_types::Timestamp {
                                seconds: ingest_start.seconds,
                                nanos: i32::try_from(n % 1_000_000_000).unwrap_or(0),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                };
                match client.ingest(deadline(request, &producer)).await {
                    Ok(_) => {
                        seen.lock().unwrap().records.extend(ids);
                        n += 1;
                    }
                    Err(status) => seen.lock().unwrap().failed(&status),
                }
                tokio::time::sleep(pace.max(Duration::from_millis(20))).await;
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
                tokio::time::sleep(publish_pace).await;
            }
        }));
    }

    // The faults, one after another, each with the time to recover after;
    // or, by hand, a soak: the load alone, every process sampled.
    let mut timeline = Vec::new();
    let started = Instant::now();
    if let Some(seconds) = soak {
        let csv_path = std::env::var("MUNITY_FAULTS_SOAK_CSV")
            .unwrap_or_else(|_| dir.path().join("soak.csv").display().to_string());
        let mut csv = String::from("seconds,process,rss_kib,fds,threads,open_streams\n");
        while started.elapsed() < Duration::from_secs(seconds) {
            let mut processes: Vec<(String, u32)> = replicas
                .iter_mut()
                .map(|((section, i), p)| (format!("{section}-{i}"), p.child_mut().id()))
                .collect();
            processes.push(("gateway".to_owned(), gateway.child_mut().id()));
            if let Some(redis) = redis_server.as_mut() {
                processes.push(("redis".to_owned(), redis.child_mut().id()));
            }
            processes.sort();
            let at = started.elapsed().as_secs();
            let open = open_streams.load(Ordering::Relaxed);
            let mut line = format!("{at:>5} s  streams {open:>3}");
            for (name, pid) in processes {
                if let Some((rss, fds, threads)) = sample(pid) {
                    csv.push_str(&format!("{at},{name},{rss},{fds},{threads},{open}\n"));
                    line.push_str(&format!("  {name} {}M/{fds}fd/{threads}t", rss / 1024));
                }
            }
            println!("{line}");
            std::fs::write(&csv_path, &csv).expect("write the soak CSV");
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        timeline.push(format!("{seconds} s of load, no faults (CSV: {csv_path})"));
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (section, addresses) in [
            ("events", events),
            ("notify", notifies),
            ("warehouse", warehouses),
            ("users", users),
        ] {
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
        if cql_outage {
            phase("Cassandra stopped");
            cassandra("stop").await;
            timeline.push(format!(
                "{:>5.1} s  Cassandra stopped",
                started.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_secs(20)).await;
            cassandra("start").await;
            timeline.push(format!(
                "{:>5.1} s  Cassandra answering again",
                started.elapsed().as_secs_f64()
            ));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        phase("Redis stopped");
        drop(redis_server.take());
        timeline.push(format!(
            "{:>5.1} s  Redis stopped",
            started.elapsed().as_secs_f64()
        ));
        // As long as the issue asks: long enough for the outbox backlog to
        // grow well past a relay batch and for limits to run locally.
        tokio::time::sleep(Duration::from_secs(30)).await;
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
    }
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
    // Acknowledged records are stored, each once.
    let records = seen.lock().unwrap().records.clone();
    let mut stored: HashMap<String, u32> = HashMap::new();
    let mut client = WarehouseClient::new(channel.clone());
    // A page token is bound to its query's range, so the range is fixed once, not per page.
    let (from, to) = (munity_testkit::in_hours(-2), munity_testkit::in_hours(2));
    let mut page_token = String::new();
    loop {
        let page = client
            .query(deadline(
                warehouse::QueryRequest {
                    source: "faults".to_owned(),
                    from: Some(from),
                    to: Some(to),
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &producer,
            ))
            .await
            .expect("query the warehouse")
            .into_inner();
        for record in page.records {
            *stored.entry(record.id).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let missing_records = records
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .count();
    let doubled_records = stored.values().filter(|&&n| n > 1).count();
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
        "records: {} acknowledged, {missing_records} missing, {doubled_records} stored twice",
        records.len()
    );
    let received: Vec<usize> = streams.iter().map(Vec::len).collect();
    println!(
        "notifications: {} acknowledged; {} streams received {}..{} each; {missing_total} missing, {doubled_total} doubled in all",
        published.len(),
        streams.len(),
        received.iter().min().unwrap_or(&0),
        received.iter().max().unwrap_or(&0),
    );
    for row in rows
        .iter()
        .filter(|row| !row.ends_with("0 missing, 0 doubled"))
    {
        println!("  {row}");
    }
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
    assert!(
        records.len() > 20,
        "the load ran: {} records",
        records.len()
    );
    assert_eq!(
        (missing_events, missing_votes),
        (0, 0),
        "acknowledged writes are stored"
    );
    assert_eq!(
        (missing_records, doubled_records),
        (0, 0),
        "acknowledged records are stored once"
    );
    assert_eq!(missing_total, 0, "no acknowledged notification missing");
    assert_eq!(doubled_total, 0, "no notification delivered twice");
    // A crashed gateway cannot send a status: its clients see their
    // connection drop. Everywhere else the product answers for itself.
    let unexpected: Vec<_> = codes
        .keys()
        .filter(|(phase, code)| !expected(code, phase))
        .collect();
    assert!(
        unexpected.is_empty(),
        "clients saw only UNAVAILABLE or DEADLINE_EXCEEDED during faults: {codes:?}"
    );
    drop(redis_server);
    drop(gateway);
}

//! What Munity's tests share, so a new service's tests start from here
//! rather than from a copy of another service's:
//!
//! - [`Process`]: a child process that is killed when the test ends
//!   (a failed assertion must not leave servers running);
//! - [`spawn_ready`]: starts a Munity binary and waits for its readiness
//!   file (`MUNITY_READY_FILE`): the addresses it bound, as JSON;
//! - [`grpcurl`]: the grpcurl binary (required under `CI=true`);
//! - [`cql_config`]: the CQL test server (`MUNITY_TEST_CQL`), one keyspace
//!   per test process (required under `CI=true`);
//! - [`contract_suite!`]: one repository contract, instantiated for every
//!   backend;
//! - [`start_dev`], [`register`]: `munity dev` in a data directory, and
//!   accounts made through its gateway;
//! - [`raw_grpc`]: calls by path with raw bytes, for tests that walk every
//!   method in the descriptors.

#![forbid(unsafe_code)]

pub mod raw_grpc;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::OnceLock,
    time::{Duration, Instant},
};

use munity_platform::config::CqlConfig;

/// Whether this run is CI (`CI=true`), where missing tools and servers fail
/// tests instead of skipping them.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (returns `None`) or, under CI, panics: for tests that need `what`.
fn missing<T>(what: &str, hint: &str) -> Option<T> {
    assert!(!in_ci(), "{what} is missing in CI: {hint}");
    eprintln!("skipping: {what} is missing ({hint})");
    None
}

/// A port that was free a moment ago (for servers that bind themselves).
///
/// Taken below Linux's ephemeral range (32768 up): a port the kernel hands
/// out for `:0` could be handed again, to another test's listener, before
/// the server binds it (a CI run lost the telegram webhook test to
/// "Address already in use" so). Tried at random, then `:0` as a last
/// resort.
pub fn free_port() -> u16 {
    for _ in 0..64 {
        // A v7 UUID's low bits are random.
        let port = 20_000 + (uuid::Uuid::now_v7().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// A Redis of a test's own on 127.0.0.1:`port` (for tests that stop and
/// restart it), with `extra` arguments (persistence, say), once it accepts
/// connections; `Err` when `redis-server` cannot be run here.
pub fn redis_server(port: u16, extra: &[&std::ffi::OsStr]) -> std::io::Result<Process> {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let process = Process::new(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// A real DNS server for tests (dnsmasq, Debian's `dnsmasq-base`) on
/// 127.0.0.1:`port`, answering only from `hosts` (a hosts file the test
/// rewrites, then calls [`Process::reload`]): names resolve to what the
/// test says, with a TTL of 0. `None` (or a panic under CI) without
/// dnsmasq.
pub fn dns_server(port: u16, hosts: &Path) -> Option<Process> {
    // Started as root, dnsmasq reads its files as `nobody`: the hosts
    // file's directory (a test's temporary one) must let it in.
    if let Some(dir) = hosts.parent() {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    let spawned = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local-ttl=0",
        ])
        .arg(format!("--pid-file={}.pid", hosts.display()))
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(_) => return missing("dnsmasq", "apt-get install dnsmasq-base"),
    };
    let process = Process::new(child);
    // Ready once it answers on UDP (any answer will do).
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("a timeout");
    let query = [
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
    ];
    let started = Instant::now();
    loop {
        socket
            .send_to(&query, ("127.0.0.1", port))
            .expect("send a DNS query");
        if socket.recv(&mut [0u8; 512]).is_ok() {
            return Some(process);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "dnsmasq did not answer on port {port}"
        );
    }
}

/// A binary of another workspace package, built beside the running test
/// (`cargo build --bins` first).
pub fn workspace_bin(name: &str) -> PathBuf {
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

/// A child process killed (and reaped) when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn new(child: Child) -> Self {
        Process { child }
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGHUP: reload (dnsmasq rereads its hosts files).
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP {} failed", self.child.id());
    }

    /// Sends SIGTERM, as an orchestrator stopping a pod would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `limit` for the process to exit; its status, or `None`
    /// if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A started binary and the addresses it reported ready on.
pub struct Ready {
    pub process: Process,
    /// Section (`users`, `gateway`, ...) to `host:port`.
    pub addresses: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Ready {
    /// The address reported for `key`.
    pub fn address(&self, key: &str) -> &str {
        self.addresses
            .get(key)
            .unwrap_or_else(|| panic!("no address {key:?} in {:?}", self.addresses))
    }
}

/// Starts `command` with `MUNITY_READY_FILE` set and waits (up to `limit`)
/// for the file: the addresses the process bound. Panics if the process
/// exits first or never gets ready.
pub async fn spawn_ready(mut command: Command, limit: Duration) -> Ready {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ready_file = dir.path().join("ready.json");
    let child = command
        .env(munity_platform::service::READY_FILE_ENV, &ready_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut process = Process::new(child);
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready_file) {
            let addresses = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("readiness file is not JSON ({e}): {text}"));
            return Ready {
                process,
                addresses,
                _dir: dir,
            };
        }
        if let Some(status) = process.child_mut().try_wait().expect("try_wait") {
            panic!("{command:?} exited with {status} before it was ready");
        }
        assert!(
            started.elapsed() < limit,
            "{command:?} not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// grpcurl from `$GRPCURL`, `~/go/bin` (where `go install` puts it) or
/// PATH; `None` (a skip) when absent, which CI never allows.
pub fn grpcurl() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("GRPCURL").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join("go/bin/grpcurl")),
        Some(PathBuf::from("grpcurl")),
    ];
    for candidate in candidates.into_iter().flatten() {
        if Command::new(&candidate).arg("-version").output().is_ok() {
            return Some(candidate);
        }
    }
    missing("grpcurl", "scripts/test.sh installs it with `go install`")
}

/// The Python of the test virtualenv (`MUNITY_TEST_PYTHON`, which
/// `scripts/test.sh` makes with pinned `requests`, `sseclient-py` and
/// `schemathesis`). `None` (a skip) when unset, which CI never allows.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("MUNITY_TEST_PYTHON").map(PathBuf::from) {
        Some(python) if python.exists() => Some(python),
        _ => missing(
            "the test virtualenv (MUNITY_TEST_PYTHON)",
            "scripts/test.sh makes it and exports MUNITY_TEST_PYTHON",
        ),
    }
}

/// Runs `python <script> <args>` from the gateway's HTTP/JSON test clients
/// (`gateway/tests/http-json/`) and asserts it succeeds, showing what it
/// printed either way.
pub async fn python_script(python: &Path, script: &str, args: Vec<String>) {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("gateway/tests/http-json");
    let python = python.to_owned();
    let name = script.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(&name)
            .args(&args)
            .current_dir(&scripts)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()))
    })
    .await
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
}

/// A config for the CQL test server (`MUNITY_TEST_CQL`, comma-separated
/// `host:port`s; `scripts/cassandra.sh start` prints it) with a keyspace
/// named `<prefix>_<start time>`, the same for every call in this test
/// process. `None` (a skip) when no server is configured, which CI never
/// allows.
pub fn cql_config(prefix: &str) -> Option<CqlConfig> {
    static STARTED: OnceLock<u128> = OnceLock::new();
    let Some(nodes) = std::env::var("MUNITY_TEST_CQL")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return missing(
            "MUNITY_TEST_CQL (a CQL server)",
            "start one with scripts/cassandra.sh start",
        );
    };
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    });
    Some(CqlConfig {
        nodes: nodes.split(',').map(str::to_owned).collect(),
        keyspace: format!("{prefix}_{started}"),
        // A test server on a busy 2-core machine answers slowly at times.
        request_timeout_ms: 20_000,
        ..CqlConfig::default()
    })
}

/// Serializes schema changes within a test process: concurrent ones are
/// slow and racy on Cassandra.
pub async fn schema_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Instantiates a repository contract for every backend: one test per
/// (backend, case). Each `open` expression evaluates to a future of
/// `Option<(repo, guard)>`, where `None` means the backend is not available
/// here (a skip; never under CI) and `guard` lives as long as the test (a
/// temporary directory, say); each case is `async fn(repo)` in `$cases`.
///
/// ```text
/// munity_testkit::contract_suite! {
///     cases: cases,
///     backends: { embedded_store => embedded(), cql_store => cql() },
///     tests: [users_round_trip, email_is_unique_even_under_races],
/// }
/// ```
#[macro_export]
macro_rules! contract_suite {
    (
        cases: $cases:ident,
        backends: { $($backend:ident => $open:expr),+ $(,)? },
        tests: $tests:tt $(,)?
    ) => {
        $(
            mod $backend {
                #[allow(unused_imports)]
                use super::*;
                $crate::contract_suite!(@cases $cases, $open, $tests);
            }
        )+
    };
    (@cases $cases:ident, $open:expr, [$($case:ident),+ $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((repo, _guard)) = $open.await else { return };
                super::$cases::$case(repo).await;
            }
        )+
    };
}

/// A service served in this test process on 127.0.0.1 (port 0), with
/// embedded storage under `dir` and `bus` as its event log; its URL and the
/// token that stops it. For tests that need a real peer (users-svc to sign
/// people up, events-svc to ask) beside the processes they spawn.
pub async fn serve_in_process<S: munity_platform::service::Service>(
    own: S::Config,
    dir: &std::path::Path,
    bus: munity_platform::config::BusConfig,
    auth: munity_platform::auth::AuthConfig,
) -> (String, munity_platform::shutdown::ShutdownToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port on 127.0.0.1");
    let address = listener.local_addr().expect("a bound address");
    let config = munity_platform::service::ServiceConfig {
        listen: address,
        shutdown_grace_secs: 1,
        storage: munity_platform::config::StorageConfig::Embedded {
            path: dir.to_path_buf(),
        },
        bus,
        own,
    };
    let shutdown = munity_platform::shutdown::ShutdownToken::new();
    let serving = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = S::run(config, auth, listener, serving).await {
            panic!("{} failed: {error:#}", S::NAME);
        }
    });
    (format!("http://{address}"), shutdown)
}

/// Debian's Chromium (or `$CHROMIUM`); `None` when absent, which CI never
/// allows.
pub fn chromium() -> Option<String> {
    let found = std::env::var("CHROMIUM")
        .ok()
        .into_iter()
        .chain([
            "/usr/lib/chromium/chromium".to_owned(),
            "/usr/bin/chromium".to_owned(),
        ])
        .find(|path| Path::new(path).exists());
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "chromium missing in CI (apt-get install chromium)"
        );
    }
    found
}

/// The npm project of gRPC-web clients (`gateway/tests/grpc-web`), with its
/// `node_modules` (`scripts/test.sh` runs `npm ci` there).
pub fn grpc_web_clients() -> PathBuf {
    let project = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("gateway/tests/grpc-web");
    assert!(
        project.join("node_modules").is_dir(),
        "{}/node_modules is missing: run `npm ci --prefix gateway/tests/grpc-web` \
         (scripts/test.sh does) so the gRPC-web client tests can run",
        project.display()
    );
    project
}

/// Runs `node <script> <args>` (with `env`) in the gRPC-web clients'
/// project and asserts it succeeds, showing what it printed either way.
pub async fn node(script: &str, args: Vec<String>, env: &[(&str, &str)]) {
    let project = grpc_web_clients();
    let name = script.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&name)
            .args(&args)
            .envs(env)
            .current_dir(&project)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run node ({e}); node 20+ must be on PATH"))
    })
    .await
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node {script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    print!("{stdout}");
}

/// `hours` from now, as a protobuf timestamp (whole seconds).
pub fn in_hours(hours: i64) -> prost_types::Timestamp {
    in_secs(hours * 3600)
}

/// `secs` from now, as a protobuf timestamp (whole seconds).
pub fn in_secs(secs: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    prost_types::Timestamp {
        seconds: now + secs,
        nanos: 0,
    }
}

/// A valid CreateEvent request open to everyone: three one-hour options,
/// 10, 20 and 30 hours from now, voting until 5 hours from now.
pub fn meeting_request(title: &str) -> munity_proto::events::v1::CreateEventRequest {
    munity_proto::events::v1::CreateEventRequest {
        title: title.to_owned(),
        options: (1..=3)
            .map(|h| munity_proto::events::v1::TimeOptionInput {
                start: Some(in_hours(10 * h)),
                end: Some(in_hours(10 * h + 1)),
            })
            .collect(),
        voting_deadline: Some(in_hours(5)),
        ..Default::default()
    }
}

/// Whoever registers with this email is an admin of [`start_dev`]'s Munity.
pub const ADMIN_EMAIL: &str = "ops@example.com";

/// Starts `munity dev` (the binary at `munity`, i.e. the test's
/// `env!("CARGO_BIN_EXE_munity")`) on any free ports with its data in
/// `data_dir`, and connects to its gateway.
pub async fn start_dev(munity: &str, data_dir: &Path) -> (Ready, tonic::transport::Channel) {
    start_dev_logging(munity, data_dir, None).await
}

/// [`start_dev`], with everything the process writes (stdout and stderr)
/// going to `log` as `(path, RUST_LOG level)`: for tests that read what
/// Munity logs.
pub async fn start_dev_logging(
    munity: &str,
    data_dir: &Path,
    log: Option<(&Path, &str)>,
) -> (Ready, tonic::transport::Channel) {
    start_dev_configured(munity, data_dir, log, "").await
}

/// [`start_dev_logging`] with `extra` TOML appended to the config (after
/// `[users]`, so it starts with its own section header).
pub async fn start_dev_configured(
    munity: &str,
    data_dir: &Path,
    log: Option<(&Path, &str)>,
    extra: &str,
) -> (Ready, tonic::transport::Channel) {
    let config = data_dir.join("munity.toml");
    std::fs::write(
        &config,
        format!("[users]\nadmin_emails = [\"{ADMIN_EMAIL}\"]\n{extra}"),
    )
    .unwrap();
    let mut command = Command::new(munity);
    command
        .arg("--config")
        .arg(&config)
        .args(["dev", "--data-dir"])
        .arg(data_dir)
        .env("MUNITY_DEV__ANY_PORT", "true");
    match log {
        Some((path, level)) => {
            let file = std::fs::File::create(path).expect("the log file");
            command
                .env("RUST_LOG", level)
                .stderr(file.try_clone().expect("the log file"))
                .stdout(file);
        }
        None => {
            command
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null());
        }
    }
    let ready = spawn_ready(command, Duration::from_secs(60)).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", ready.address("gateway")))
            .unwrap()
            .connect()
            .await
            .unwrap();
    (ready, channel)
}

/// Registers `name` with a fresh email: (access token, user id).
pub async fn register(channel: &tonic::transport::Channel, name: &str) -> (String, String) {
    register_as(
        channel,
        name,
        &format!("{name}-{}@example.com", uuid::Uuid::now_v7().simple()),
    )
    .await
}

/// Registers `name` with `email`: (access token, user id).
pub async fn register_as(
    channel: &tonic::transport::Channel,
    name: &str,
    email: &str,
) -> (String, String) {
    use munity_proto::users::v1 as users;
    let session = users::users_client::UsersClient::new(channel.clone())
        .register(users::RegisterRequest {
            email: email.to_owned(),
            password: "correct horse".to_owned(),
            display_name: name.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    (session.access_token, session.user.unwrap().id)
}

/// As the admin `admin_token`: makes a service account `name` with
/// `scopes` and returns a token issued for it.
pub async fn service_token(
    channel: &tonic::transport::Channel,
    admin_token: &str,
    name: &str,
    scopes: &[&str],
) -> String {
    use munity_proto::users::v1 as users;
    let mut client = users::users_client::UsersClient::new(channel.clone());
    let made = client
        .create_service_account(munity_platform::auth::with_bearer(
            users::CreateServiceAccountRequest {
                name: name.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
            admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .issue_service_token(users::IssueServiceTokenRequest {
            client_id: made.account.unwrap().id,
            client_secret: made.client_secret,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
}

/// `curl -sS <args>` (a plain HTTP client nobody here wrote): (HTTP status,
/// body). Fails the test if curl itself fails (no connection, time out).
pub async fn curl(args: &[&str]) -> (u16, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .expect("curl runs")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

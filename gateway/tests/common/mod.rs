//! What the gateway's integration tests share: users-svc replicas served in
//! the test process on port 0, and real `munity-gateway` processes started
//! from a generated config file.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::{
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use munity_platform::{auth::AuthConfig, config::StorageConfig, shutdown::ShutdownToken};
use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tonic::transport::Channel;

/// A users-svc server with its own embedded store.
pub struct Replica {
    pub address: SocketAddr,
    pub shutdown: ShutdownToken,
    _data: tempfile::TempDir,
}

pub async fn replica() -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    replica_on(listener).await
}

/// A replica on `address` again (a restart), once the port is free.
pub async fn replica_at(address: SocketAddr) -> Replica {
    let started = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return replica_on(listener).await,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot listen on {address} again: {error}"),
        }
    }
}

async fn replica_on(listener: tokio::net::TcpListener) -> Replica {
    let data = tempfile::tempdir().unwrap();
    let address = listener.local_addr().unwrap();
    let config = munity_platform::service::ServiceConfig {
        listen: address,
        shutdown_grace_secs: 5,
        storage: StorageConfig::Embedded {
            path: data.path().to_path_buf(),
        },
        bus: munity_platform::config::BusConfig {
            path: data.path().join("bus"),
            ..Default::default()
        },
        own: users_svc::UsersConfig::default(),
    };
    let shutdown = ShutdownToken::new();
    tokio::spawn(users_svc::run(
        config,
        AuthConfig::default(),
        listener,
        shutdown.clone(),
    ));
    Replica {
        address,
        shutdown,
        _data: data,
    }
}

/// A real gRPC server (tonic, with health checks answering SERVING for
/// `munity.users.v1.Users`) that answers every other call with `fallback`:
/// an upstream whose behaviour a test scripts.
pub async fn scripted_upstream<H, T>(fallback: H) -> SocketAddr
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(
            "munity.users.v1.Users",
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let router = tonic::service::Routes::new(health_service)
        .into_axum_router()
        .fallback(fallback);
    tokio::spawn(async move {
        let _keep_reporting = health;
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    address
}

/// A port that was free a moment ago (Pingora binds its listeners itself).
pub use munity_testkit::free_port;

/// The `[gateway.routes.users]` table sending users-svc's calls (and
/// reflection) to `upstreams`, with `route_keys` added (e.g.
/// `default_timeout_ms = 300`).
pub fn users_routes(upstreams: &[SocketAddr], route_keys: &str) -> String {
    let upstreams: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[gateway.routes.users]\nupstreams = [{}]\n{route_keys}\n",
        upstreams.join(", ")
    )
}

/// What a steady load of GetJwks calls saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u32,
    /// "code: message" of each failed call.
    pub failed: Vec<String>,
    /// The distinct key sets answered: each users-svc replica signs with a
    /// key of its own, so this says which replicas answered.
    pub key_sets: std::collections::HashSet<String>,
}

/// `clients` loops calling GetJwks through `gateway` until `stop`; the
/// tally once they are done.
pub async fn jwks_load(
    gateway: &Gateway,
    clients: usize,
    stop: ShutdownToken,
) -> impl std::future::Future<Output = Tally> + use<> {
    let mut load = Vec::new();
    for _ in 0..clients {
        let mut client = gateway.client().await;
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.is_cancelled() {
                match client.get_jwks(pb::GetJwksRequest {}).await {
                    Ok(response) => {
                        tally.ok += 1;
                        tally.key_sets.insert(response.into_inner().jwks_json);
                    }
                    Err(status) => {
                        tally
                            .failed
                            .push(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
            tally
        }));
    }
    async move {
        let mut all = Tally::default();
        for task in load {
            let tally = task.await.expect("a load client");
            all.ok += tally.ok;
            all.failed.extend(tally.failed);
            all.key_sets.extend(tally.key_sets);
        }
        all
    }
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    pub process: munity_testkit::Process,
    pub address: String,
    pub admin: String,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    /// Sends SIGTERM, as an orchestrator stopping the pod would.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits up to `limit` for the process to exit; its status, or `None`
    /// if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(limit).await
    }

    /// Starts a gateway on free ports that fetches its JWKS from `jwks`.
    /// `gateway_keys` go in the `[gateway]` table; `tables` (routes, rate
    /// limits, TLS) follow it.
    pub fn start(jwks: SocketAddr, gateway_keys: &str, tables: &str) -> Gateway {
        Self::start_logging(jwks, gateway_keys, tables, None)
    }

    /// As [`Gateway::start`], with the gateway's log written to `log`, at
    /// the level RUST_LOG gives or `info`.
    pub fn start_logging(
        jwks: SocketAddr,
        gateway_keys: &str,
        tables: &str,
        log: Option<&std::path::Path>,
    ) -> Gateway {
        let (port, admin) = (free_port(), free_port());
        let mut config = tempfile::NamedTempFile::new().unwrap();
        write!(
            config,
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             jwks_endpoint = \"http://{jwks}\"\n{gateway_keys}\n\n{tables}"
        )
        .unwrap();
        // MUNITY_TEST_GATEWAY_LOG=<dir> keeps each gateway's log there, at
        // the level RUST_LOG gives, for debugging a failing test.
        let mut stderr = Stdio::inherit();
        let (stdout, level) = match (log, std::env::var_os("MUNITY_TEST_GATEWAY_LOG")) {
            (Some(path), _) => {
                let file = std::fs::File::create(path).unwrap();
                stderr = Stdio::from(file.try_clone().unwrap());
                let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
                (Stdio::from(file), level)
            }
            (None, Some(dir)) => {
                let path = std::path::Path::new(&dir).join(format!("gateway-{port}.log"));
                let file = std::fs::File::create(path).unwrap();
                let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".to_owned());
                (Stdio::from(file), level)
            }
            (None, None) => (Stdio::null(), "error".to_owned()),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_munity-gateway"))
            .arg("--config")
            .arg(config.path())
            .env("RUST_LOG", level)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Gateway {
            process: munity_testkit::Process::new(child),
            address: format!("127.0.0.1:{port}"),
            admin: format!("127.0.0.1:{admin}"),
            _config: config,
        }
    }

    /// A channel to the gateway, once it accepts connections.
    pub async fn channel(&self) -> Channel {
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.address))
                .unwrap()
                .connect()
                .await
            {
                return channel;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a call through the gateway reaches users-svc.
    pub async fn serving(self) -> Self {
        let started = Instant::now();
        let mut client = UsersClient::new(self.channel().await);
        while client.get_jwks(pb::GetJwksRequest {}).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway never served"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self
    }

    pub async fn client(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel().await)
    }

    /// The Prometheus text from the admin port.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    /// The value of the first metric line starting with `prefix`, or 0.
    pub async fn metric(&self, prefix: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// One raw HTTP/1.1 request (`Connection: close`); returns the status code
/// and the headers (lower-case names) of the response.
pub async fn http1(address: &str, request: Vec<u8>) -> (u16, Vec<(String, String)>) {
    let address = address.to_owned();
    let head = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break String::from_utf8(received[..end].to_vec()).unwrap();
            }
            let read = stream.read(&mut buffer).expect("response head within 10 s");
            assert!(read > 0, "connection closed before the response head");
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers)
}

//! What Munity's load clients (`bench/notify-load`, `bench/warehouse-load`)
//! share: connecting, bearer tokens, the set-up at users-svc (an admin, a
//! service account's token), waiting for a replica to be SERVING, a
//! process's CPU time from /proc, latency histograms, and the line a bench
//! appends per target to `--summary FILE` (`bench/summary.py`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use munity_proto::users::v1::{self as users, users_client::UsersClient};
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// `message` with `authorization: Bearer <token>`.
pub fn with_bearer<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    Ok(request)
}

/// One HTTP/2 connection to `url`.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// User + system CPU seconds of process `pid` so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces: count from after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux everywhere this runs.
    Some(ticks as f64 / 100.0)
}

/// Latencies in microseconds: 1 µs .. 10 min, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Appends one target's line to the summary file `bench/all.sh` reads:
/// `figure <TAB> goal <TAB> measured <TAB> met`, met being `yes` or `no`
/// (the format `bench/summary.py` owns; the Python reports write it there).
pub fn summary_row(
    path: &std::path::Path,
    figure: &str,
    goal: &str,
    measured: &str,
    met: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let cell = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        cell(figure),
        cell(goal),
        cell(measured),
        if met { "yes" } else { "no" }
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// A name part no earlier run used.
pub fn unique() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{micros:x}{:x}", std::process::id())
}

/// Registers `email`, or logs in if it exists (a re-run on the same data).
pub async fn register_or_login(
    users: &mut UsersClient<Channel>,
    email: &str,
    password: &str,
    name: &str,
) -> anyhow::Result<users::AuthResponse> {
    let registered = users
        .register(users::RegisterRequest {
            email: email.to_owned(),
            password: password.to_owned(),
            display_name: name.to_owned(),
        })
        .await;
    match registered {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if status.code() == Code::AlreadyExists => Ok(users
            .login(users::LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .with_context(|| format!("Login {email}"))?
            .into_inner()),
        Err(status) => Err(status).with_context(|| format!("Register {email}")),
    }
}

/// As the admin `admin_token`, makes a service account `name` with
/// `scopes`: its (client id, client secret).
pub async fn service_account(
    users: &mut UsersClient<Channel>,
    admin_token: &str,
    name: String,
    scopes: &[&str],
) -> anyhow::Result<(String, String)> {
    let made = users
        .create_service_account(with_bearer(
            users::CreateServiceAccountRequest {
                name,
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
            admin_token,
        )?)
        .await
        .context("CreateServiceAccount")?
        .into_inner();
    let id = made.account.context("an account in the answer")?.id;
    Ok((id, made.client_secret))
}

/// `service-token`: a fresh token of a service account, printed.
#[derive(Debug, clap::Args)]
pub struct ServiceTokenArgs {
    #[arg(long)]
    pub users: String,
    #[arg(long)]
    pub client_id: String,
    #[arg(long, env = "BENCH_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
}

pub async fn service_token(args: ServiceTokenArgs) -> anyhow::Result<()> {
    let mut users = UsersClient::new(connect(&args.users).await?);
    let token = users
        .issue_service_token(users::IssueServiceTokenRequest {
            client_id: args.client_id,
            client_secret: args.client_secret,
        })
        .await
        .context("IssueServiceToken")?
        .into_inner();
    println!("{}", token.access_token);
    Ok(())
}

/// `health`: waits until a server answers SERVING.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[arg(long)]
    pub target: String,
    /// The service asked about ("" for the server as a whole).
    #[arg(long, default_value = "")]
    pub service: String,
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(channel) = connect(&args.target).await {
            let mut health = HealthClient::new(channel);
            match health
                .check(HealthCheckRequest {
                    service: args.service.clone(),
                })
                .await
            {
                Ok(answer) if answer.get_ref().status == 1 => return Ok(()),
                Ok(answer) => last = format!("status {}", answer.get_ref().status),
                Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{} is not SERVING {:?} after {} s ({last})",
        args.target,
        args.service,
        args.timeout_secs
    )
}

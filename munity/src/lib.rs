//! The all-in-one `munity dev` mode: every built service in one process, with
//! the embedded store under one data directory.

use std::{path::PathBuf, time::Duration};

use munity_platform::{
    auth::AuthConfig,
    config::{ConfigSource, StorageConfig},
    server::announce,
    shutdown::ShutdownToken,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// `munity dev` flags.
#[derive(Debug, Default, clap::Args)]
pub struct DevArgs {
    /// Where the embedded stores live (default: `dev.data_dir`, else
    /// `./munity-data`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `[dev]`: settings of the all-in-one mode only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Root directory for every service's embedded store.
    pub data_dir: PathBuf,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: PathBuf::from("munity-data"),
        }
    }
}

/// Starts every service, prints where each listens, and runs until
/// `shutdown` is cancelled or a service fails (which stops the others).
pub async fn dev(
    source: ConfigSource,
    args: DevArgs,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let dev: DevConfig = source.section("dev")?;
    let data_dir = args.data_dir.unwrap_or(dev.data_dir);
    let auth: AuthConfig = source.section("auth")?;
    let gateway_auth = auth.clone();

    let mut users: users_svc::UsersConfig = source.section("users")?;
    // One process, one data directory: the embedded store, whatever the
    // file says for scale-out.
    users.storage = StorageConfig::Embedded {
        path: data_dir.join("users"),
    };

    // Bind everything before serving anything, so a port clash fails fast
    // and the printed addresses are real (port 0 resolves here).
    let users_listener = TcpListener::bind(users.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on users.listen {}: {e}", users.listen))?;
    let users_address = users_listener.local_addr()?;

    // The gateway fronts the in-process services: routes point at them.
    let mut gateway: munity_gateway::GatewayConfig = source.section("gateway")?;
    gateway.claim_listen_addresses()?;
    gateway.jwks_endpoint = format!("http://{users_address}");
    // One process: the services behind the gateway stop at the same moment,
    // so there is nothing to drain for; Ctrl-C should be instant.
    gateway.shutdown_grace_secs = 0;
    for route in &mut gateway.routes {
        if route.service.starts_with("munity.users.") || route.service.starts_with("grpc.") {
            route.upstreams = vec![users_address.to_string()];
        }
    }

    announce(&format!("munity: data in {}", data_dir.display()));
    announce(&format!(
        "munity: gateway     grpc://{}   (the front door: auth, rate limits; metrics on http://{}/metrics)",
        gateway.listen, gateway.admin_listen
    ));
    announce(&format!(
        "munity: users-svc   grpc://{users_address}   (munity.users.v1, health, reflection; GET /.well-known/jwks.json)"
    ));

    let mut services = tokio::task::JoinSet::new();
    services.spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = users_svc::run(users, auth, users_listener, shutdown).await;
            ("users-svc", result)
        }
    });
    let gateway_address = gateway.listen.clone();
    services.spawn_blocking({
        let shutdown = shutdown.clone();
        move || {
            (
                "gateway",
                munity_gateway::run(gateway, gateway_auth, shutdown),
            )
        }
    });
    // Pingora binds inside its own start-up; "ready" means a client can
    // connect now, so wait for the gateway's port to accept.
    if let Err(error) = wait_until_listening(&gateway_address, Duration::from_secs(15)).await {
        shutdown.cancel();
        return Err(error);
    }
    announce("munity: ready (Ctrl-C to stop)");

    let mut first_error = None;
    while let Some(joined) = services.join_next().await {
        let (name, result) = joined?;
        if let Err(error) = result {
            tracing::error!(service = name, %error, "service failed; stopping the others");
            shutdown.cancel();
            first_error.get_or_insert(error.context(format!("{name} failed")));
        }
    }
    announce("munity: stopped");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn wait_until_listening(address: &str, limit: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > limit {
            anyhow::bail!("the gateway did not start listening on {address} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

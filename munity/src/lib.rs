//! The all-in-one `munity dev` mode: every built service in one process, with
//! the embedded store under one data directory.

use std::path::PathBuf;

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

    announce(&format!("munity: data in {}", data_dir.display()));
    announce(&format!(
        "munity: users-svc   grpc://{}   (munity.users.v1, health, reflection; GET /.well-known/jwks.json)",
        users_listener.local_addr()?
    ));

    let mut services = tokio::task::JoinSet::new();
    services.spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = users_svc::run(users, auth, users_listener, shutdown).await;
            ("users-svc", result)
        }
    });
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

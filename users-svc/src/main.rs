//! `users-svc`: users-svc alone, for scale-out deployments (typically with
//! `[users.storage] backend = "cql"`). Configuration: `--config FILE` or
//! `$MUNITY_CONFIG`, then `MUNITY_*` environment variables.

use std::path::PathBuf;

use clap::Parser;
use munity_platform::{
    auth::AuthConfig, config::ConfigSource, server::announce, shutdown, telemetry,
};
use users_svc::UsersConfig;

#[derive(Parser)]
#[command(version, about = "Munity users service (munity.users.v1)")]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = ConfigSource::load(args.config.as_deref())?;
    let config: UsersConfig = source.section("users")?;
    let auth: AuthConfig = source.section("auth")?;
    let _telemetry = telemetry::init("users-svc", &source.section("telemetry")?)?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on users.listen {}: {e}", config.listen))?;
    announce(&format!(
        "users-svc: listening on grpc://{}",
        listener.local_addr()?
    ));
    users_svc::run(config, auth, listener, shutdown::on_signal()).await
}

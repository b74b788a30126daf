//! `munity-gateway`: the edge alone, for scale-out deployments.
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables (`[gateway]`, `[auth]`, `[telemetry]`).

use std::path::PathBuf;

use clap::Parser;
use munity_gateway::GatewayConfig;
use munity_platform::{
    auth::AuthConfig, config::ConfigSource, server::announce, shutdown, telemetry,
};

#[derive(Parser)]
#[command(version, about = "Munity edge gateway (gRPC, on Pingora)")]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = ConfigSource::load(args.config.as_deref())?;
    let mut config = GatewayConfig::load(&source)?;
    config.claim_listen_addresses()?;
    let auth: AuthConfig = source.section("auth")?;
    // Pingora runs its own runtimes; this small one only watches signals.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _telemetry = signals
        .block_on(async { telemetry::init("munity-gateway", &source.section("telemetry")?) })?;
    let token = shutdown::ShutdownToken::new();
    let trigger = token.clone();
    std::thread::spawn(move || {
        signals.block_on(shutdown::signal());
        trigger.cancel();
    });
    announce(&format!(
        "munity-gateway: listening on grpc://{} (admin http://{})",
        config.listen, config.admin_listen
    ));
    munity_gateway::run(config, auth, token)
}

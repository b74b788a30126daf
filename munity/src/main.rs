//! `munity`: the whole platform in one process, for a first run and for
//! development. Every service runs in-process with the embedded on-disk store
//! under one data directory (default `./munity-data`); nothing else needs to
//! be installed. For scale-out, run each service's own binary instead.
//!
//! ```text
//! munity            # same as `munity dev`
//! munity dev --data-dir /tmp/munity --config munity.toml
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use munity_platform::{config::ConfigSource, shutdown, telemetry};

#[derive(Parser)]
#[command(version, about = "Munity: realtime community and scheduling platform")]
struct Cli {
    /// TOML configuration file (default: $MUNITY_CONFIG, else none).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every service in this process with embedded storage (the default).
    Dev(munity::DevArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Dev(args)) => args,
        None => munity::DevArgs::default(),
    };
    let source = ConfigSource::load(cli.config.as_deref())?;
    let _telemetry = telemetry::init("munity", &source.section("telemetry")?)?;
    munity::dev(source, args, shutdown::on_signal()).await
}

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Writes the OpenAPI 3.1 document of the HTTP/JSON API (what
    /// `/openapi.json` serves), to publish it; `docs/openapi.json` in the
    /// repository is this output.
    Openapi {
        /// The file to write; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// glibc gives every thread that allocates an arena of its own (up to 8
/// per core), and the proxy's worker then allocates from an arena of its
/// own rather than the main one: 27-28 KiB of resident memory per open
/// stream against 22-23 KiB with one arena per worker (measured with
/// `bench/gateway/run.sh --streams`, where nginx costs 22 KiB; the
/// other threads, health checks and the like, allocate little). glibc
/// reads `MALLOC_ARENA_MAX` once, as the process starts, so the gateway
/// starts itself again with it set (an exec: same process id), unless the
/// operator set it. Before anything is bound or spawned.
fn restart_with_an_arena_per_worker(workers: usize) {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let error = command
        .args(args)
        .env("MALLOC_ARENA_MAX", workers.to_string())
        .exec();
    eprintln!(
        "munity-gateway: could not restart with MALLOC_ARENA_MAX={workers} ({error}); \
         going on with glibc's default arenas"
    );
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Openapi { out }) = &args.command {
        let document = munity_gateway::openapi_document()?;
        match out {
            Some(path) => std::fs::write(path, document)?,
            None => print!("{document}"),
        }
        return Ok(());
    }
    let source = ConfigSource::load(args.config.as_deref())?;
    let mut config = GatewayConfig::load(&source)?;
    restart_with_an_arena_per_worker(config.threads.max(1));
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

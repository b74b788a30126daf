//! `notify-svc`: notify-svc alone, for scale-out deployments (with
//! `[notify] hub = "redis"` and `[bus] backend = "redis"`).
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<notify_svc::NotifyService>()
}

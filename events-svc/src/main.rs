//! `events-svc`: events-svc alone, for scale-out deployments (typically
//! with `[events.storage] backend = "cql"` and `[bus] backend = "redis"`).
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<events_svc::EventsService>()
}

//! `discuss-svc`: discuss-svc alone, for scale-out deployments (typically
//! with `[discuss.storage] backend = "cql"` and `[bus] backend = "redis"`).
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<discuss_svc::DiscussService>()
}

//! `notify-svc`: notify-svc alone, for scale-out deployments (typically
//! with `[notify] hub = "redis"` and `[bus] backend = "redis"`).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}

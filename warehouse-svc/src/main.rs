//! `warehouse-svc`: the warehouse alone, for scale-out deployments (with
//! `storage.backend = "cql"` and `[bus] backend = "redis"`).
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<warehouse_svc::WarehouseService>()
}

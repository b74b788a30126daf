//! `users-svc`: users-svc alone, for scale-out deployments (typically with
//! `[users.storage] backend = "cql"`). Configuration: `--config FILE` or
//! `$MUNITY_CONFIG`, then `MUNITY_*` environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<users_svc::UsersService>()
}

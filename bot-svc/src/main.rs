//! `bot-svc`: the Telegram bot alone, for scale-out deployments.
//! Configuration: `--config FILE` or `$MUNITY_CONFIG`, then `MUNITY_*`
//! environment variables.

fn main() -> anyhow::Result<()> {
    munity_platform::service::main::<bot_svc::BotService>()
}

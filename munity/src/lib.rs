//! The all-in-one `munity dev` mode: every registered service in one
//! process, their embedded stores and the event log in one file of the data
//! directory (`DevStorage`), and the gateway in front of them.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use munity_platform::{
    auth::AuthConfig,
    config::ConfigSource,
    server::announce,
    service::{DevEntry, DevStorage, bind, dev_entry, write_ready_file},
    shutdown::ShutdownToken,
};
use serde::{Deserialize, Serialize};

/// `munity dev` flags.
#[derive(Debug, Default, clap::Args)]
pub struct DevArgs {
    /// Where the embedded stores live (default: `dev.data_dir`, else
    /// `./munity-data`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// `[dev]`: settings of the all-in-one mode only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DevConfig {
    /// Where the embedded stores and the event log live.
    pub data_dir: PathBuf,
    /// Every store and the event log in one file (`munity.redb`), whose
    /// writes share transactions and fsyncs; false: a file per store under
    /// a directory per service. A data directory that has data keeps the
    /// layout it has.
    pub one_file: bool,
    /// Every listener (services, gateway, admin) on a free port of
    /// 127.0.0.1, whatever the sections say: for tests, and for several
    /// copies side by side. The addresses are printed and written to
    /// `$MUNITY_READY_FILE`.
    pub any_port: bool,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: PathBuf::from("munity-data"),
            one_file: true,
            any_port: false,
        }
    }
}

/// Every service `munity dev` runs, in any order. A new service adds its
/// line here (its protos declare its upstream, which gives the gateway its
/// route; its `Service::PEERS` say whom it calls).
pub fn services() -> Vec<DevEntry> {
    vec![
        dev_entry::<users_svc::UsersService>(),
        dev_entry::<events_svc::EventsService>(),
        dev_entry::<notify_svc::NotifyService>(),
        dev_entry::<warehouse_svc::WarehouseService>(),
        dev_entry::<discuss_svc::DiscussService>(),
        dev_entry::<bot_svc::BotService>(),
    ]
}

/// Starts every service, prints where each listens, and runs until
/// `shutdown` is cancelled or a service fails (which stops the others).
pub async fn dev(
    source: ConfigSource,
    args: DevArgs,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let dev: DevConfig = source.section("dev")?;
    let data_dir = args.data_dir.unwrap_or(dev.data_dir);
    let storage = DevStorage::of(&data_dir, dev.one_file);
    let auth: AuthConfig = source.section("auth")?;
    let mut source = provision_bot_account(source, &data_dir)?;
    if dev.any_port {
        let any = "127.0.0.1:0";
        for entry in services() {
            source = source.with_override(&format!("{}.listen", entry.section), any);
        }
        source = source
            .with_override("gateway.listen", any)
            .with_override("gateway.admin_listen", any);
    }

    // Bind everything before serving anything, so a port clash fails fast,
    // the printed addresses are real (port 0 resolves here), and every
    // service's peers are known before any starts: no start order.
    let entries = services();
    let mut listeners = Vec::new();
    let mut addresses = BTreeMap::new();
    for entry in &entries {
        let key = format!("{}.listen", entry.section);
        let listener = bind((entry.listen)(&source)?, &key).await?;
        addresses.insert(entry.section, listener.local_addr()?);
        listeners.push(listener);
    }
    let mut auth = auth;
    for entry in &entries {
        if entry.issues_tokens {
            auth.jwks_url = format!("http://{}", addresses[entry.section]);
        }
        for peer in entry.peers {
            let Some(address) = addresses.get(peer.upstream) else {
                anyhow::bail!(
                    "{} calls {:?} ({}.{}), which munity dev does not run",
                    entry.name,
                    peer.upstream,
                    entry.section,
                    peer.key
                );
            };
            source = source.with_override(
                &format!("{}.{}", entry.section, peer.key),
                format!("http://{address}"),
            );
        }
    }
    let mut bound = Vec::new();
    for (entry, listener) in entries.iter().zip(listeners) {
        let start = entry.start;
        bound.push(start(
            source.clone(),
            storage.clone(),
            auth.clone(),
            listener,
            shutdown.clone(),
        )?);
    }

    // The gateway fronts the in-process services: each upstream's route
    // points at the service of that name.
    let mut gateway = munity_gateway::GatewayConfig::load(&source)?;
    gateway.claim_listen_addresses()?;
    // The gateway follows revocations on the services' own log.
    gateway.bus = Some(munity_platform::config::BusConfig {
        backend: munity_platform::config::BusBackend::Embedded,
        path: storage.bus_path(),
        ..munity_platform::config::BusConfig::load(&source)?
    });
    for service in &bound {
        gateway.point_upstream(service.section, service.address);
    }
    // One process: the services behind the gateway stop at the same moment,
    // so there is nothing to drain for; Ctrl-C should be instant.
    gateway.shutdown_grace_secs = 0;

    announce(&format!(
        "munity: data in {}",
        match &storage {
            DevStorage::OneFile(file) => file.display(),
            DevStorage::PerSection(data_dir) => data_dir.display(),
        }
    ));
    announce(&format!(
        "munity: gateway     grpc://{}   (the front door: auth, rate limits; metrics on http://{}/metrics)",
        gateway.listen, gateway.admin_listen
    ));
    let mut ready = BTreeMap::from([
        ("gateway".to_owned(), gateway.listen.clone()),
        ("gateway_admin".to_owned(), gateway.admin_listen.clone()),
    ]);
    for service in &bound {
        announce(&format!(
            "munity: {:<11} grpc://{}   (health, reflection, metrics on /metrics)",
            service.name, service.address
        ));
        ready.insert(service.section.to_owned(), service.address.to_string());
    }

    let sections: Vec<String> = bound.iter().map(|s| s.section.to_owned()).collect();
    let mut services = tokio::task::JoinSet::new();
    for service in bound {
        services.spawn(async move { (service.name, service.serve.await) });
    }
    let gateway_address = gateway.listen.clone();
    services.spawn_blocking({
        let shutdown = shutdown.clone();
        move || ("gateway", munity_gateway::run(gateway, auth, shutdown))
    });
    // Pingora binds inside its own start-up; "ready" means a client can
    // connect now, so wait for the gateway's port to accept.
    if let Err(error) = wait_until_listening(&gateway_address, Duration::from_secs(15)).await {
        shutdown.cancel();
        return Err(error);
    }
    // ... and, so that a first call is not UNAVAILABLE, until the gateway's
    // health checks have found every service serving.
    let upstreams = munity_gateway::config::policy().upstreams();
    let routed: Vec<String> = sections
        .iter()
        .filter_map(|section| upstreams.get(section.as_str()))
        .filter_map(|(_, services)| services.first().cloned())
        .collect();
    if let Err(error) = wait_until_serving(&gateway_address, &routed, Duration::from_secs(15)).await
    {
        shutdown.cancel();
        return Err(error);
    }
    write_ready_file(&ready)?;
    announce("munity: ready (Ctrl-C to stop)");

    let mut first_error = None;
    while let Some(joined) = services.join_next().await {
        let (name, result) = joined?;
        if let Err(error) = result {
            tracing::error!(service = name, %error, "service failed; stopping the others");
            shutdown.cancel();
            first_error.get_or_insert(error.context(format!("{name} failed")));
        }
    }
    announce("munity: stopped");
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Where `munity dev` keeps the bot's service account (client id and
/// secret), made on the first start with `bot.telegram_token` set.
pub const BOT_ACCOUNT_FILE: &str = "bot-service-account.json";

#[derive(Serialize, Deserialize)]
struct BotAccount {
    client_id: String,
    client_secret: String,
}

/// With `bot.telegram_token` set and no `bot.client_id`, the bot's service
/// account (scopes `bot.link`, `bot.act`) is provisioned: on the first
/// start an id and a secret are made and kept in `<data>/`[`BOT_ACCOUNT_FILE`]
/// (readable by its owner only), and on every start users-svc is told to
/// make the account if it has none under that id
/// (`users.provisioned_service_accounts`) and bot-svc is given the
/// credentials. An account configured by hand wins.
fn provision_bot_account(
    source: ConfigSource,
    data_dir: &std::path::Path,
) -> anyhow::Result<ConfigSource> {
    let bot: bot_svc::BotConfig = source.section("bot")?;
    if bot.telegram_token.is_empty() || !bot.client_id.is_empty() {
        return Ok(source);
    }
    let file = data_dir.join(BOT_ACCOUNT_FILE);
    let account = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice::<BotAccount>(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let (secret, _) = users_svc::api::service_secret();
            let account = BotAccount {
                client_id: uuid::Uuid::now_v7().to_string(),
                client_secret: secret,
            };
            std::fs::create_dir_all(data_dir)?;
            write_private(&file, &serde_json::to_vec_pretty(&account)?)?;
            announce(&format!(
                "munity: the Telegram bot's service account is provisioned ({})",
                file.display()
            ));
            account
        }
        Err(error) => return Err(anyhow::anyhow!("{}: {error}", file.display())),
    };
    let provisioned = users_svc::config::ProvisionedServiceAccount {
        id: account.client_id.clone(),
        name: "telegram-bot".to_owned(),
        scopes: vec!["bot.act".to_owned(), "bot.link".to_owned()],
        secret_hash: users_svc::api::service_secret_hash(&account.client_secret),
    };
    let mut users: users_svc::UsersConfig = source.section("users")?;
    users.provisioned_service_accounts.push(provisioned);
    Ok(source
        .with_override(
            "users.provisioned_service_accounts",
            &users.provisioned_service_accounts,
        )
        .with_override("bot.client_id", &account.client_id)
        .with_override("bot.client_secret", &account.client_secret))
}

/// Writes `bytes` to a new file only its owner may read (a secret).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Waits until the gateway at `address` says each of `services` is
/// SERVING (its health checks of their replicas have passed).
pub async fn wait_until_serving(
    address: &str,
    services: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let started = std::time::Instant::now();
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    for service in services {
        loop {
            let request = HealthCheckRequest {
                service: service.clone(),
            };
            let serving = health
                .check(request)
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
            if serving {
                break;
            }
            if started.elapsed() > limit {
                anyhow::bail!("the gateway did not see {service} serving within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn wait_until_listening(address: &str, limit: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > limit {
            anyhow::bail!("the gateway did not start listening on {address} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! The shape every Munity service takes, written once.
//!
//! A service is a library that implements [`Service`]: its name, its config
//! section, its descriptors, and `run(config, auth, listener, shutdown)`.
//! From that the platform gives it:
//!
//! - [`ServiceConfig`]: the keys every service has (`listen`,
//!   `shutdown_grace_secs`, `storage`) plus the service's own, read from its
//!   section with the usual errors (bad values and unknown keys named);
//!   defaults come from the protos (`default_port`) and the section name
//!   (CQL keyspace `munity_<section>`);
//! - [`main`]: the whole `main` of the service's own binary (flags, config,
//!   telemetry, binding with a clear error, readiness, signals);
//! - [`dev_entry`]: how `munity dev` starts it in-process with an embedded
//!   store under its data directory, in a loop over the registered services.
//!
//! Readiness for scripts and tests: when `MUNITY_READY_FILE` names a file,
//! the process writes its bound addresses there as one JSON object once it
//! accepts connections (written whole, then renamed into place), so nobody
//! parses log lines.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use futures::future::BoxFuture;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::net::TcpListener;

use crate::{
    auth::AuthConfig,
    config::{BusBackend, BusConfig, ConfigError, ConfigSource, StorageConfig, struct_fields},
    policy::MethodPolicy,
    server::{DEFAULT_SHUTDOWN_GRACE, announce},
    shutdown::{self, ShutdownToken},
    telemetry,
};

/// A deployable service.
pub trait Service: 'static {
    /// Process name in logs and traces, e.g. `users-svc`.
    const NAME: &'static str;
    /// Its config section, store name and gateway upstream, e.g. `users`;
    /// the protos name it as the `upstream` of its gRPC services.
    const SECTION: &'static str;
    /// The encoded descriptor set its gRPC services are in (reflection,
    /// method policy, default port).
    const DESCRIPTOR_SET: &'static [u8];
    /// The service's own keys of its section (shared keys excluded). Every
    /// key must have a default (`#[serde(default)]`); unknown keys are
    /// refused by the platform, so no `deny_unknown_fields` here.
    type Config: DeserializeOwned + Default + Clone + Send + Sync + 'static;
    /// The services it calls, each by the key of its own section that holds
    /// the peer's URL: `munity dev` sets each key to where that peer
    /// listens, whatever the order of the registered services.
    const PEERS: &'static [Peer] = &[];
    /// Whether it issues the access tokens every service verifies (its
    /// `/.well-known/jwks.json` becomes `auth.jwks_url` in `munity dev`).
    const ISSUES_TOKENS: bool = false;

    /// Serves on `listener` until `shutdown` is cancelled.
    fn run(
        config: ServiceConfig<Self::Config>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A service another one calls: `key` (of the caller's section) holds the
/// URL of the service whose section is `upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub key: &'static str,
    pub upstream: &'static str,
}

/// A service's whole section: the shared keys and its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig<T> {
    /// Where the gRPC server listens (also plain HTTP: `/metrics`, ...).
    pub listen: SocketAddr,
    /// On shutdown, calls in flight get this many seconds to finish; then
    /// the server stops and cuts what is still open (server streams).
    pub shutdown_grace_secs: u64,
    /// Embedded store (default) or ScyllaDB.
    pub storage: StorageConfig,
    /// Where the domain-event log is: the top-level `[bus]` section, the
    /// same for every service.
    pub bus: BusConfig,
    /// The service's own settings.
    pub own: T,
}

/// The shared keys as read from a section (the listen default depends on
/// the service, so it is filled in afterwards).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct SharedKeys {
    listen: Option<SocketAddr>,
    shutdown_grace_secs: u64,
    storage: StorageConfig,
}

impl Default for SharedKeys {
    fn default() -> Self {
        SharedKeys {
            listen: None,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE.as_secs(),
            storage: StorageConfig::default(),
        }
    }
}

impl<T: DeserializeOwned + Default> ServiceConfig<T> {
    /// Reads section `section`; `default_port` is used when `listen` is not
    /// set (on 127.0.0.1). An empty CQL keyspace becomes `munity_<section>`.
    pub fn load(
        source: &ConfigSource,
        section: &str,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let shared: SharedKeys = source.section(section)?;
        let own: T = source.section(section)?;
        let known = [struct_fields::<SharedKeys>(), struct_fields::<T>()].concat();
        source.refuse_unknown_keys(section, &known)?;
        let mut storage = shared.storage;
        if let StorageConfig::Cql(cql) = &mut storage
            && cql.keyspace.is_empty()
        {
            cql.keyspace = format!("munity_{section}");
        }
        let mut bus = BusConfig::load(source)?;
        if bus.path.as_os_str().is_empty() {
            bus.path = match &storage {
                // A file the process's stores share (`munity_store`'s
                // `is_shared_file`): the log goes in it too.
                StorageConfig::Embedded { path }
                    if path.extension().is_some_and(|e| e == "redb") =>
                {
                    path.clone()
                }
                StorageConfig::Embedded { path } => path.join("bus"),
                StorageConfig::Cql(_) => PathBuf::from("munity-data/bus"),
            };
        }
        Ok(ServiceConfig {
            listen: shared
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port))),
            shutdown_grace_secs: shared.shutdown_grace_secs,
            storage,
            bus,
            own,
        })
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The port the protos give `S` in the one-machine layout.
pub fn default_port<S: Service>() -> anyhow::Result<u16> {
    let policy = MethodPolicy::from_descriptor_sets(&[S::DESCRIPTOR_SET])?;
    policy
        .services()
        .iter()
        .find(|s| s.upstream == S::SECTION)
        .map(|s| s.default_port)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no service in the protos declares upstream {:?} (option (munity.options.v1.service))",
                S::SECTION
            )
        })
}

/// Reads `S`'s section from `source`.
pub fn load_config<S: Service>(source: &ConfigSource) -> anyhow::Result<ServiceConfig<S::Config>> {
    Ok(ServiceConfig::load(
        source,
        S::SECTION,
        default_port::<S>()?,
    )?)
}

/// Binds `address`; the error names the config key.
pub async fn bind(address: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {key} {address}: {e}"))
}

/// Flags of every service binary.
#[derive(Debug, clap::Parser)]
struct Args {
    /// TOML configuration file (default: $MUNITY_CONFIG, else none).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The `main` of `S`'s own binary (scale-out mode): `--config FILE` or
/// `$MUNITY_CONFIG`, then `MUNITY_*` environment; serves until SIGTERM or
/// SIGINT.
pub fn main<S: Service>() -> anyhow::Result<()> {
    use clap::Parser;
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let source = ConfigSource::load(args.config.as_deref())?;
            let config = load_config::<S>(&source)?;
            let auth: AuthConfig = source.section("auth")?;
            let _telemetry = telemetry::init(S::NAME, &source.section("telemetry")?)?;
            let listener = bind(config.listen, &format!("{}.listen", S::SECTION)).await?;
            let address = listener.local_addr()?;
            announce(&format!("{}: listening on grpc://{address}", S::NAME));
            write_ready_file(&BTreeMap::from([(
                S::SECTION.to_owned(),
                address.to_string(),
            )]))?;
            S::run(config, auth, listener, shutdown::on_signal()).await
        })
}

/// The environment variable naming the readiness file.
pub const READY_FILE_ENV: &str = "MUNITY_READY_FILE";

/// Writes `addresses` as JSON to `$MUNITY_READY_FILE`, when it is set.
pub fn write_ready_file(addresses: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os(READY_FILE_ENV).map(PathBuf::from) else {
        return Ok(());
    };
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec(addresses)?)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|e| anyhow::anyhow!("cannot write {READY_FILE_ENV} {}: {e}", path.display()))
}

/// A service bound by `munity dev`, ready to serve.
pub struct DevService {
    pub name: &'static str,
    pub section: &'static str,
    pub address: SocketAddr,
    /// Serves until the shutdown token given to the entry is cancelled.
    pub serve: BoxFuture<'static, anyhow::Result<()>>,
}

/// Where `munity dev` keeps every store and the event log (whatever the
/// services' sections say about storage).
#[derive(Debug, Clone, PartialEq)]
pub enum DevStorage {
    /// One file, `<data_dir>/munity.redb`, for every store and the log:
    /// one process, so their writes share transactions and fsyncs (a vote,
    /// the relay's append of its event and the consumers' acknowledgements
    /// commit together).
    OneFile(PathBuf),
    /// A file per store under `<data_dir>/<section>/`, the log under
    /// `<data_dir>/bus/`: how data directories were laid out before the
    /// one file, kept for them (nothing is moved), and `dev.one_file =
    /// false`.
    PerSection(PathBuf),
}

impl DevStorage {
    /// The one file's name in the data directory.
    pub const FILE: &str = "munity.redb";

    /// The layout of `data_dir`: the one it has, when it has data; else one
    /// file, unless `one_file` is false.
    pub fn of(data_dir: &Path, one_file: bool) -> DevStorage {
        let file = data_dir.join(Self::FILE);
        if file.exists() {
            return DevStorage::OneFile(file);
        }
        let per_section = std::fs::read_dir(data_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().is_dir())
            .flat_map(|dir| {
                std::fs::read_dir(dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|entry| entry.path().extension().is_some_and(|e| e == "redb"));
        if per_section || !one_file {
            DevStorage::PerSection(data_dir.to_owned())
        } else {
            DevStorage::OneFile(file)
        }
    }

    /// Where `section`'s stores are.
    pub fn storage(&self, section: &str) -> StorageConfig {
        let path = match self {
            DevStorage::OneFile(file) => file.clone(),
            DevStorage::PerSection(data_dir) => data_dir.join(section),
        };
        StorageConfig::Embedded { path }
    }

    /// Where the event log is.
    pub fn bus_path(&self) -> PathBuf {
        match self {
            DevStorage::OneFile(file) => file.clone(),
            DevStorage::PerSection(data_dir) => data_dir.join("bus"),
        }
    }
}

/// A service in `munity dev`'s list: who it is, whom it calls, where it
/// listens, and how to start it on a bound listener with its embedded
/// stores where [`DevStorage`] says. `munity dev` binds every listener first, then points each
/// declared peer at its address, then starts them all.
#[derive(Clone, Copy)]
pub struct DevEntry {
    pub name: &'static str,
    pub section: &'static str,
    pub peers: &'static [Peer],
    pub issues_tokens: bool,
    /// Where its section says it listens.
    pub listen: fn(source: &ConfigSource) -> anyhow::Result<SocketAddr>,
    pub start: fn(
        source: ConfigSource,
        storage: DevStorage,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<DevService>,
}

/// `S`'s entry in `munity dev`'s list of services.
pub fn dev_entry<S: Service>() -> DevEntry {
    DevEntry {
        name: S::NAME,
        section: S::SECTION,
        peers: S::PEERS,
        issues_tokens: S::ISSUES_TOKENS,
        listen: |source| Ok(load_config::<S>(source)?.listen),
        start: |source, storage, auth, listener, shutdown| {
            let mut config = load_config::<S>(&source)?;
            config.storage = storage.storage(S::SECTION);
            // One process, one embedded log, shared by every service.
            config.bus.backend = BusBackend::Embedded;
            config.bus.path = storage.bus_path();
            Ok(DevService {
                name: S::NAME,
                section: S::SECTION,
                address: listener.local_addr()?,
                serve: Box::pin(S::run(config, auth, listener, shutdown)),
            })
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_data_directory_gets_one_file_and_one_with_data_keeps_its_layout() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh");
        let one = DevStorage::OneFile(fresh.join(DevStorage::FILE));
        assert_eq!(DevStorage::of(&fresh, true), one);
        assert_eq!(
            one.storage("events"),
            StorageConfig::Embedded {
                path: fresh.join("munity.redb")
            }
        );
        assert_eq!(one.bus_path(), fresh.join("munity.redb"));
        assert_eq!(
            DevStorage::of(&fresh, false),
            DevStorage::PerSection(fresh.clone())
        );

        // Made before the one file: a file per store, kept as it is.
        let old = root.path().join("old");
        std::fs::create_dir_all(old.join("events")).unwrap();
        std::fs::write(old.join("events").join("events.redb"), b"").unwrap();
        std::fs::write(old.join("bot-account.json"), b"{}").unwrap();
        let per_section = DevStorage::PerSection(old.clone());
        assert_eq!(DevStorage::of(&old, true), per_section);
        assert_eq!(
            per_section.storage("events"),
            StorageConfig::Embedded {
                path: old.join("events")
            }
        );
        assert_eq!(per_section.bus_path(), old.join("bus"));

        // One file already there: kept, whatever `one_file` says now.
        let new = root.path().join("new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("munity.redb"), b"").unwrap();
        assert_eq!(
            DevStorage::of(&new, false),
            DevStorage::OneFile(new.join("munity.redb"))
        );
    }

    #[test]
    fn the_log_defaults_to_beside_the_store_or_into_its_shared_file() {
        #[derive(serde::Deserialize, Default)]
        struct Own {}
        let bus_path = |storage: &str| {
            let source = ConfigSource::load(None)
                .unwrap()
                .with_override("example.storage.path", storage);
            ServiceConfig::<Own>::load(&source, "example", 1)
                .unwrap()
                .bus
                .path
        };
        assert_eq!(
            bus_path("/data/example"),
            PathBuf::from("/data/example/bus")
        );
        assert_eq!(
            bus_path("/data/munity.redb"),
            PathBuf::from("/data/munity.redb")
        );
    }
}

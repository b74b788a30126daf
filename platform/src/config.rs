//! Layered, typed configuration: built-in defaults, then an optional TOML
//! file, then `MUNITY_*` environment variables.
//!
//! Every service owns one struct for its own section (`[users]`, ...); the
//! keys every service has (`listen`, `shutdown_grace_secs`, `storage`) are
//! the platform's (`crate::service::ServiceConfig`). Nested keys are separated by a double
//! underscore in the environment: `MUNITY_USERS__LISTEN=0.0.0.0:50051` sets
//! `users.listen`, `MUNITY_TELEMETRY__LOG_FORMAT=json` sets
//! `telemetry.log_format`. A bad value is reported with the full key path, e.g.
//! `invalid type: found string "x", expected u64 for key "users.tokens.access_ttl_secs"`.

use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The environment variable that names the config file when no `--config`
/// flag is given.
pub const CONFIG_FILE_ENV: &str = "MUNITY_CONFIG";

/// Why configuration could not be loaded. The message names the offending key
/// (or file), so an operator can fix it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("configuration is invalid: {0}")]
    Invalid(String),
}

/// Lists every error (figment's Display shows only the first), each with the
/// full key as an operator writes it (`users.tokens.access_ttl_secs`) and
/// where the bad value came from (file or environment).
fn section_error(section: &str, error: figment::Error) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let key: Vec<&str> = std::iter::once(section)
                .chain(e.path.iter().map(String::as_str))
                .collect();
            let origin = match &e.metadata {
                Some(metadata) => match &metadata.source {
                    Some(source) => format!(" (from {} {source})", metadata.name),
                    None => format!(" (from {})", metadata.name),
                },
                None => String::new(),
            };
            format!("{}: {}{origin}", key.join("."), e.kind)
        })
        .collect();
    ConfigError::Invalid(messages.join("; "))
}

/// The layered sources, ready to extract sections from. Build it once at
/// start-up and pass it around; extracting is cheap.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
}

impl ConfigSource {
    /// Reads `file` (or `$MUNITY_CONFIG` when `file` is `None`) and the
    /// `MUNITY_*` environment. A file given explicitly must exist; with no file
    /// at all, defaults and the environment are used.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
        let mut figment = Figment::new();
        if let Some(path) = file.map(Path::to_path_buf).or(from_env) {
            if !path.exists() {
                return Err(ConfigError::MissingFile { path });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Ok(ConfigSource {
            figment: figment.merge(Env::prefixed("MUNITY_").split("__")),
        })
    }

    /// Configuration from TOML text alone (no file, no environment): for
    /// tools and the config fuzz target.
    pub fn from_toml_str(text: &str) -> Self {
        ConfigSource {
            figment: Figment::new().merge(Toml::string(text)),
        }
    }

    /// Adds overrides on top of everything else (command-line flags, or tests
    /// that pin ports and directories).
    pub fn with_override(mut self, key: &str, value: impl Serialize) -> Self {
        self.figment = self.figment.merge(Serialized::global(key, value));
        self
    }

    /// One section, e.g. `[users]` into `UsersConfig`. The struct should be
    /// `#[serde(default)]` so that keys missing from every source keep their
    /// default; a section nobody mentions is entirely the default.
    pub fn section<T>(&self, name: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Default,
    {
        if self.figment.find_value(name).is_err() {
            return Ok(T::default());
        }
        self.figment
            .focus(name)
            .extract()
            .map_err(|error| section_error(name, error))
    }

    /// Section `name` with `defaults` laid under every source key by key:
    /// tables (maps) merge, so a file that sets one entry of a map keeps the
    /// default entries; other values are replaced whole.
    pub fn section_over_defaults<T>(&self, name: &str, defaults: &T) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Serialize,
    {
        self.figment
            .clone()
            .join(Serialized::default(name, defaults))
            .focus(name)
            .extract()
            .map_err(|error| section_error(name, error))
    }

    /// Refuses keys of section `name` that none of `known` lists, naming
    /// each with where it came from. For sections read as several structs
    /// (shared keys plus a service's own), where serde's
    /// `deny_unknown_fields` cannot see the whole section.
    pub fn refuse_unknown_keys(&self, name: &str, known: &[&str]) -> Result<(), ConfigError> {
        let Ok(figment::value::Value::Dict(_, keys)) = self.figment.find_value(name) else {
            return Ok(());
        };
        let unknown: Vec<String> = keys
            .keys()
            .filter(|key| !known.contains(&key.as_str()))
            .map(|key| {
                let path = format!("{name}.{key}");
                let origin = match self.figment.find_metadata(&path) {
                    Some(metadata) => match &metadata.source {
                        Some(source) => format!(" (from {} {source})", metadata.name),
                        None => format!(" (from {})", metadata.name),
                    },
                    None => String::new(),
                };
                format!("{path}: unknown key{origin}; expected one of {known:?}")
            })
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(unknown.join("; ")))
        }
    }
}

/// The top-level field names of a `#[derive(Deserialize)]` struct, as serde
/// sees them (after renames); empty for anything that is not a struct.
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Where a service keeps its data. `backend` defaults to `embedded`, so a
/// section that sets only `path` means the embedded store there; a key of
/// the other backend is refused by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(
    tag = "backend",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "StorageKeys"
)]
pub enum StorageConfig {
    /// An embedded on-disk store under `path`: nothing to install.
    Embedded { path: PathBuf },
    /// ScyllaDB (or any server speaking CQL v4).
    Cql(CqlConfig),
}

/// `[<svc>.storage]` as written: every key of either backend, checked
/// against `backend` afterwards.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StorageKeys {
    backend: Option<Backend>,
    path: Option<PathBuf>,
    nodes: Option<Vec<String>>,
    keyspace: Option<String>,
    replication_factor: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Backend {
    Embedded,
    Cql,
}

impl TryFrom<StorageKeys> for StorageConfig {
    type Error = String;

    fn try_from(keys: StorageKeys) -> Result<Self, String> {
        let cql_keys = [
            ("nodes", keys.nodes.is_some()),
            ("keyspace", keys.keyspace.is_some()),
            ("replication_factor", keys.replication_factor.is_some()),
            ("username", keys.username.is_some()),
            ("password", keys.password.is_some()),
            ("request_timeout_ms", keys.request_timeout_ms.is_some()),
        ];
        match keys.backend.unwrap_or(Backend::Embedded) {
            Backend::Embedded => {
                if let Some((key, _)) = cql_keys.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "`{key}` is a key of backend = \"cql\", not of the embedded store"
                    ));
                }
                Ok(StorageConfig::Embedded {
                    path: keys.path.unwrap_or_else(|| PathBuf::from("munity-data")),
                })
            }
            Backend::Cql => {
                if keys.path.is_some() {
                    return Err("`path` is a key of backend = \"embedded\", not of cql".to_owned());
                }
                let defaults = CqlConfig::default();
                Ok(StorageConfig::Cql(CqlConfig {
                    nodes: keys.nodes.unwrap_or(defaults.nodes),
                    keyspace: keys.keyspace.unwrap_or(defaults.keyspace),
                    replication_factor: keys
                        .replication_factor
                        .unwrap_or(defaults.replication_factor),
                    username: keys.username,
                    password: keys.password,
                    request_timeout_ms: keys
                        .request_timeout_ms
                        .unwrap_or(defaults.request_timeout_ms),
                }))
            }
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig::Embedded {
            path: PathBuf::from("munity-data"),
        }
    }
}

/// How to reach a ScyllaDB cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CqlConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace the service's tables live in; created when missing.
    /// Empty means the service's own default, `munity_<section>` (e.g.
    /// `munity_users`), so two services' tables never collide.
    pub keyspace: String,
    /// Replication factor used when the keyspace is created.
    pub replication_factor: u32,
    /// Credentials for PasswordAuthenticator, when the cluster needs them.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for CqlConfig {
    fn default() -> Self {
        CqlConfig {
            nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: String::new(),
            replication_factor: 1,
            username: None,
            password: None,
            request_timeout_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        listen: String,
        limit: u64,
        storage: StorageConfig,
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("munity.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn file_values_override_defaults_and_missing_section_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[example]\nlimit = 7\n[example.storage]\nbackend = \"cql\"\nkeyspace = \"k\"\n",
        );
        let source = ConfigSource::load(Some(&path)).unwrap();
        let example: Example = source.section("example").unwrap();
        assert_eq!(example.limit, 7);
        assert_eq!(example.listen, "");
        match example.storage {
            StorageConfig::Cql(cql) => {
                assert_eq!(cql.keyspace, "k");
                assert_eq!(cql.nodes, vec!["127.0.0.1:9042".to_owned()]);
            }
            other => panic!("expected cql storage, got {other:?}"),
        }
        let absent: Example = source.section("absent").unwrap();
        assert_eq!(absent, Example::default());
    }

    #[test]
    fn bad_value_names_the_full_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[example]\nlimit = \"lots\"\n");
        let error = ConfigSource::load(Some(&path))
            .unwrap()
            .section::<Example>("example")
            .unwrap_err()
            .to_string();
        assert!(error.contains("example.limit"), "{error}");
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[example]\nlimmit = 3\n");
        let error = ConfigSource::load(Some(&path))
            .unwrap()
            .section::<Example>("example")
            .unwrap_err()
            .to_string();
        assert!(error.contains("limmit"), "{error}");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[example]\nlimit = 7\n");
        let example: Example = ConfigSource::load(Some(&path))
            .unwrap()
            .with_override("example.limit", 9)
            .section("example")
            .unwrap();
        assert_eq!(example.limit, 9);
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Shared {
        listen: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Own {
        limit: u64,
        #[serde(rename = "max")]
        maximum: u64,
    }

    #[test]
    fn sections_read_as_several_structs_still_refuse_unknown_keys() {
        assert_eq!(struct_fields::<Own>(), ["limit", "max"]);
        assert!(struct_fields::<u64>().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[example]\nlisten = \"x\"\nlimit = 3\nmax = 4\n");
        let source = ConfigSource::load(Some(&path)).unwrap();
        let known = [struct_fields::<Shared>(), struct_fields::<Own>()].concat();
        source.refuse_unknown_keys("example", &known).unwrap();
        source.refuse_unknown_keys("absent", &known).unwrap();

        let path = write(&dir, "[example]\nlisten = \"x\"\nlimmit = 3\n");
        let error = ConfigSource::load(Some(&path))
            .unwrap()
            .refuse_unknown_keys("example", &known)
            .unwrap_err()
            .to_string();
        assert!(error.contains("example.limmit"), "{error}");
        assert!(error.contains("munity.toml"), "{error}");
    }

    #[test]
    fn maps_merge_with_their_defaults_key_by_key() {
        #[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        struct Routed {
            routes: std::collections::BTreeMap<String, Route>,
            name: String,
        }
        #[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        struct Route {
            upstreams: Vec<String>,
            timeout: u64,
        }
        let defaults = Routed {
            routes: [(
                "users".to_owned(),
                Route {
                    upstreams: vec!["a:1".to_owned()],
                    timeout: 7,
                },
            )]
            .into(),
            name: "x".to_owned(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[routed.routes.users]\nupstreams = [\"b:2\"]\n[routed.routes.events]\nupstreams = [\"c:3\"]\n",
        );
        let routed: Routed = ConfigSource::load(Some(&path))
            .unwrap()
            .section_over_defaults("routed", &defaults)
            .unwrap();
        assert_eq!(routed.name, "x");
        assert_eq!(routed.routes["users"].upstreams, ["b:2"]);
        assert_eq!(
            routed.routes["users"].timeout, 7,
            "the default's other keys stay"
        );
        assert_eq!(routed.routes["events"].upstreams, ["c:3"]);
        let absent: Routed = ConfigSource::load(None)
            .unwrap()
            .section_over_defaults("routed", &defaults)
            .unwrap();
        assert_eq!(absent, defaults);
    }

    #[test]
    fn storage_backend_defaults_to_embedded_and_keys_must_fit_it() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let path = write(&dir, text);
            ConfigSource::load(Some(&path))
                .unwrap()
                .section::<Example>("example")
                .map(|e| e.storage)
        };
        assert_eq!(
            load("[example.storage]\npath = \"/data\"\n").unwrap(),
            StorageConfig::Embedded {
                path: PathBuf::from("/data")
            }
        );
        assert_eq!(
            load("[example.storage]\nbackend = \"cql\"\n").unwrap(),
            StorageConfig::Cql(CqlConfig::default())
        );
        let mixed = load("[example.storage]\nbackend = \"cql\"\npath = \"/data\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            mixed.contains("example.storage") && mixed.contains("path"),
            "{mixed}"
        );
        let mixed = load("[example.storage]\nnodes = [\"a:1\"]\n")
            .unwrap_err()
            .to_string();
        assert!(mixed.contains("nodes"), "{mixed}");
        let typo = load("[example.storage]\npaht = \"/data\"\n")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("paht"), "{typo}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let error = ConfigSource::load(Some(Path::new("/nonexistent/munity.toml"))).unwrap_err();
        assert!(matches!(error, ConfigError::MissingFile { .. }));
    }
}

/// `[bus]`: where the domain-event log is (`munity-bus` opens it). One
/// section for the whole deployment, not one per service.
///
/// ```toml
/// [bus]
/// backend = "redis"            # or "embedded" (the default)
/// redis_url = "redis://127.0.0.1:6379"
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusBackend {
    /// A redb file under `path`, shared by every service of the process
    /// (`munity dev`).
    #[default]
    Embedded,
    /// One Redis stream (`redis_key`) at `redis_url`, for scale-out.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    pub backend: BusBackend,
    /// Embedded: the directory of `bus.redb`, or a file ending in `.redb`
    /// shared with the process's stores. Empty: `bus` under the service's
    /// embedded store directory, or the store's file when it names one
    /// (`munity-data/bus` when the service stores in CQL).
    pub path: PathBuf,
    pub redis_url: String,
    pub redis_key: String,
    /// About how many events the log keeps (older ones are trimmed; a
    /// consumer group further behind than this misses them).
    pub max_len: u64,
    /// How long one Redis command may take before it counts as a failure.
    pub redis_timeout_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            backend: BusBackend::Embedded,
            path: PathBuf::new(),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_key: "munity:domain-events".to_owned(),
            max_len: 1_000_000,
            redis_timeout_ms: 1_000,
        }
    }
}

impl BusConfig {
    /// `[bus]` from the layered configuration (file, then `MUNITY_BUS__*`).
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        source.section("bus")
    }
}

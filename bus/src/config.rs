//! `[bus]`: where the event log is. One section for the whole deployment:
//! every service publishes to and consumes from the same log.
//!
//! ```toml
//! [bus]
//! backend = "redis"            # or "embedded" (the default)
//! redis_url = "redis://127.0.0.1:6379"
//! ```

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{EmbeddedLog, EventLog, RedisLog};

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
    /// Embedded: the directory of `bus.redb`.
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
            path: PathBuf::from("munity-data/bus"),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_key: "munity:domain-events".to_owned(),
            max_len: 1_000_000,
            redis_timeout_ms: 1_000,
        }
    }
}

impl BusConfig {
    /// `[bus]` from the layered configuration (file, then `MUNITY_BUS__*`).
    pub fn load(
        source: &munity_platform::config::ConfigSource,
    ) -> Result<Self, munity_platform::config::ConfigError> {
        source.section("bus")
    }
}

/// The log `config` names. An embedded log is opened once per directory
/// and process and shared (redb allows one opener), so every service of
/// `munity dev` appends to and reads from the same one.
pub async fn open(config: &BusConfig) -> anyhow::Result<Arc<dyn EventLog>> {
    match config.backend {
        BusBackend::Embedded => {
            static OPEN: OnceLock<Mutex<HashMap<PathBuf, EmbeddedLog>>> = OnceLock::new();
            let mut open = OPEN
                .get_or_init(Default::default)
                .lock()
                .map_err(|_| anyhow::anyhow!("bus registry poisoned"))?;
            let log = match open.get(&config.path) {
                Some(log) => log.clone(),
                None => {
                    let log = EmbeddedLog::open(&config.path, config.max_len)
                        .map_err(|e| anyhow::anyhow!("bus.path {}: {e}", config.path.display()))?;
                    open.insert(config.path.clone(), log.clone());
                    log
                }
            };
            Ok(Arc::new(log))
        }
        BusBackend::Redis => {
            let log = RedisLog::connect(
                &config.redis_url,
                &config.redis_key,
                config.max_len,
                Duration::from_millis(config.redis_timeout_ms.max(1)),
            )
            .await
            .map_err(|e| anyhow::anyhow!("bus.redis_url {:?}: {e}", config.redis_url))?;
            Ok(Arc::new(log))
        }
    }
}

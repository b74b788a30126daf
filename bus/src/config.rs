//! `[bus]`: where the event log is (the keys are the platform's
//! [`BusConfig`], so every service's config carries them), and [`open`].
//! One section for the whole deployment: every service publishes to and
//! consumes from the same log.
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

pub use munity_platform::config::{BusBackend, BusConfig};

use crate::{EmbeddedLog, EventLog, RedisLog};

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

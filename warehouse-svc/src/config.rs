//! warehouse-svc's own keys of the `[warehouse]` section (the shared ones,
//! `listen`, `shutdown_grace_secs`, `storage`, are the platform's).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
// No deny_unknown_fields: the section also holds the shared keys; the
// platform refuses keys neither knows, by name.
#[serde(default)]
pub struct WarehouseConfig {
    /// Records one Ingest (or one IngestStream message) may carry.
    pub max_batch_records: usize,
    /// Largest payload (`data`, or `value` encoded) of one record.
    pub max_payload_bytes: usize,
    /// How long records are kept, unless `source_ttl_secs` says otherwise
    /// for their source; 0 keeps them.
    pub default_ttl_secs: u64,
    /// Per source (`chat.general`) or source prefix (`sensors.*`): how long
    /// its records are kept (0: kept). The longest matching entry wins.
    pub source_ttl_secs: BTreeMap<String, u64>,
    /// How far back a Tail can resume.
    pub tail_retention_secs: u64,
    /// How often a Tail looks for new records stored by other replicas.
    pub tail_poll_ms: u64,
    /// CQL only: a Tail hands out records stored at least this long ago,
    /// so writes still in flight (and clock skew between replicas) cannot
    /// land behind a cursor already handed out.
    pub tail_settle_ms: u64,
    /// A heartbeat on every Tail idle this long.
    pub heartbeat_secs: u64,
    /// Tails and Exports open at once on this replica.
    pub max_streams: usize,
    /// Exports and Aggregates running at once on this replica (others
    /// wait their turn, within their deadline).
    pub max_scans: usize,
    /// Aggregate refuses ranges holding more records than this.
    pub aggregate_max_records: u64,
    /// CQL writes in flight at once on this replica.
    pub cql_write_concurrency: usize,
    /// The consumer group that stores domain events as activity records.
    pub activity_group: String,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            max_batch_records: 1_000,
            max_payload_bytes: 64 * 1024,
            default_ttl_secs: 0,
            source_ttl_secs: BTreeMap::new(),
            tail_retention_secs: 24 * 3600,
            tail_poll_ms: 250,
            tail_settle_ms: 1_000,
            heartbeat_secs: 15,
            max_streams: 1_024,
            max_scans: 8,
            aggregate_max_records: 1_000_000,
            cql_write_concurrency: 64,
            activity_group: "warehouse-svc.activity".to_owned(),
        }
    }
}

impl WarehouseConfig {
    /// How far back a Tail can resume, in milliseconds.
    pub fn tail_retention_ms(&self) -> munity_store::Millis {
        munity_store::Millis::try_from(self.tail_retention_secs.saturating_mul(1000))
            .unwrap_or(munity_store::Millis::MAX)
    }

    /// How long `source`'s records are kept (seconds; 0: kept).
    pub fn ttl_secs(&self, source: &str) -> u64 {
        let mut best: Option<(usize, u64)> = None;
        for (pattern, ttl) in &self.source_ttl_secs {
            let matches = match pattern.strip_suffix('*') {
                Some(prefix) => source.starts_with(prefix),
                None => source == pattern,
            };
            if matches && best.is_none_or(|(len, _)| pattern.len() > len) {
                best = Some((pattern.len(), *ttl));
            }
        }
        best.map_or(self.default_ttl_secs, |(_, ttl)| ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::WarehouseConfig;

    #[test]
    fn the_longest_matching_ttl_entry_wins() {
        let mut config = WarehouseConfig {
            default_ttl_secs: 7,
            ..WarehouseConfig::default()
        };
        config.source_ttl_secs.insert("sensors.*".into(), 60);
        config.source_ttl_secs.insert("sensors.berlin".into(), 0);
        config.source_ttl_secs.insert("chat.general".into(), 30);
        assert_eq!(config.ttl_secs("sensors.paris"), 60);
        assert_eq!(config.ttl_secs("sensors.berlin"), 0);
        assert_eq!(config.ttl_secs("chat.general"), 30);
        assert_eq!(config.ttl_secs("chat.other"), 7);
    }
}

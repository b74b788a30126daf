//! events-svc's own keys of the `[events]` section (the shared ones,
//! `listen`, `shutdown_grace_secs`, `storage`, are the platform's).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
// No deny_unknown_fields: the section also holds the shared keys; the
// platform refuses keys neither knows, by name.
#[serde(default)]
pub struct EventsConfig {
    /// The consumer group events-svc's membership view reads users-svc's
    /// events in (one per deployment; replicas share it).
    pub members_group: String,
    /// The consumer group that counts events-svc's own domain events into
    /// hourly statistics (one per deployment; replicas share it).
    pub stats_group: String,
    /// How often each replica looks for events whose voting deadline has
    /// passed and reminders that are due, and runs them (each once,
    /// whichever replica gets there first).
    pub sweep_interval_ms: u64,
    /// When voting closes, a reminder is scheduled this long before the
    /// chosen time starts, for each offset still ahead (seconds).
    pub reminders_before_secs: Vec<u32>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            members_group: "events-svc.members".to_owned(),
            stats_group: "events-svc.stats".to_owned(),
            sweep_interval_ms: 1_000,
            reminders_before_secs: vec![24 * 3600, 3600],
        }
    }
}

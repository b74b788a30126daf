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
    /// How often each replica looks for events whose voting deadline has
    /// passed, and closes them (once, whichever replica gets there first).
    pub close_sweep_interval_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            members_group: "events-svc.members".to_owned(),
            close_sweep_interval_ms: 1_000,
        }
    }
}

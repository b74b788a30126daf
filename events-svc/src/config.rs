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
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            members_group: "events-svc.members".to_owned(),
        }
    }
}

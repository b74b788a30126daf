//! events-svc's own keys of the `[events]` section (the shared ones,
//! `listen`, `shutdown_grace_secs`, `storage`, are the platform's).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
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

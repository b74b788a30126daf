//! discuss-svc's own keys of the `[discuss]` section (the shared ones,
//! `listen`, `shutdown_grace_secs`, `storage`, are the platform's).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
// No deny_unknown_fields: the section also holds the shared keys; the
// platform refuses keys neither knows, by name.
#[serde(default)]
pub struct DiscussConfig {
    /// The consumer group discuss-svc's membership view reads users-svc's
    /// events in (one per deployment; replicas share it).
    pub members_group: String,
    /// Distinct reporters at which a published post is hidden until a
    /// moderator reviews it (at least 1).
    pub reports_to_hide: u32,
}

impl Default for DiscussConfig {
    fn default() -> Self {
        DiscussConfig {
            members_group: "discuss-svc.members".to_owned(),
            reports_to_hide: 3,
        }
    }
}

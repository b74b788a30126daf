//! Where notifications come from: a consumer group on the domain-event log
//! (`notify.sources_group`) turns events-svc's events into notifications on
//! the topics they concern:
//! - every event of a meeting on `event:<id>`;
//! - a meeting created, updated, cancelled, closed (scheduled) or due soon
//!   also on `community:<id>` of its community.
//!
//! Publishing is idempotent by the domain event's id, so a redelivery from
//! the log changes nothing.

use std::sync::Arc;

use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;

use crate::hub::{Hub, valid_topic};

/// events-svc's events that matter to a whole community.
const COMMUNITY_WIDE: &[&str] = &[
    "munity.events.v1.EventCreated",
    "munity.events.v1.EventUpdated",
    "munity.events.v1.EventCancelled",
    "munity.events.v1.VotingClosed",
    "munity.events.v1.ReminderDue",
];

/// The topics `event` is published on.
pub fn topics(event: &DomainEvent) -> Vec<String> {
    let mut topics = Vec::new();
    if event.source == "events-svc" {
        topics.push(format!("event:{}", event.aggregate_id));
        // subject_ids: the community (if any), then the acting user.
        if event.subject_ids.len() >= 2 && COMMUNITY_WIDE.contains(&event.r#type.as_str()) {
            topics.push(format!("community:{}", event.subject_ids[0]));
        }
    }
    topics.retain(|t| valid_topic(t));
    topics
}

/// Publishes what the log brings until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    hub: Arc<dyn Hub>,
    group: String,
    shutdown: ShutdownToken,
) {
    let consumer = ConsumerLoop::member(log, group, "notify-svc");
    consumer
        .run(shutdown, move |event| {
            let hub = hub.clone();
            async move {
                for topic in topics(&event) {
                    hub.publish(
                        &topic,
                        &event.id,
                        &event.r#type,
                        &event.payload,
                        event.occurred_at_ms,
                    )
                    .await?;
                }
                Ok(())
            }
        })
        .await;
}

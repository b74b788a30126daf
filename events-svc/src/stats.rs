//! Admin statistics, counted from events-svc's own domain events: a
//! consumer group on the event log (`events.stats_group`) adds each
//! EventCreated, VoteCast, ParticipantJoined and ParticipantLeft to the
//! counters of the hour it happened in (`EventsRepository::record_activity`).
//! GetStats then reads a window's hourly buckets, never the events
//! themselves. Counting from the log rather than beside each change keeps
//! writes as they were and counts the same on both backends; the counts lag
//! the changes by the relay's delay (milliseconds).

use std::sync::Arc;

use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::events::v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::{
    domain::{Activity, ActivityKind, HOUR_MS},
    store::EventsRepository,
};

/// What `event` adds to the statistics, if anything.
pub fn activity(event: &DomainEvent) -> anyhow::Result<Option<Activity>> {
    let payload = event.payload.as_slice();
    let (kind, event_id, user) = match event.r#type.as_str() {
        "munity.events.v1.EventCreated" => {
            let created = pb::EventCreated::decode(payload)?.event.unwrap_or_default();
            (ActivityKind::Created, created.id, created.owner_id)
        }
        "munity.events.v1.VoteCast" => {
            let e = pb::VoteCast::decode(payload)?;
            (ActivityKind::Voted, e.event_id, e.user_id)
        }
        "munity.events.v1.ParticipantJoined" => {
            let e = pb::ParticipantJoined::decode(payload)?;
            (ActivityKind::Joined, e.event_id, e.user_id)
        }
        "munity.events.v1.ParticipantLeft" => {
            let e = pb::ParticipantLeft::decode(payload)?;
            (ActivityKind::Left, e.event_id, e.user_id)
        }
        _ => return Ok(None),
    };
    Ok(Some(Activity {
        id: Uuid::parse_str(&event.id)?,
        kind,
        hour: event.occurred_at_ms.div_euclid(HOUR_MS),
        event_id: Uuid::parse_str(&event_id)?,
        user_id: Uuid::parse_str(&user)?,
    }))
}

/// Counts until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    repo: Arc<dyn EventsRepository>,
    group: String,
    shutdown: ShutdownToken,
) {
    let consumer = ConsumerLoop::member(log, group, "events-svc");
    // A read of the log is counted in one write.
    consumer
        .run_batches(shutdown, move |events| {
            let repo = repo.clone();
            async move {
                let mut activities = Vec::with_capacity(events.len());
                for event in &events {
                    activities.extend(activity(event)?);
                }
                if !activities.is_empty() {
                    repo.record_activities(&activities).await?;
                }
                Ok(())
            }
        })
        .await;
}

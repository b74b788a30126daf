//! The domain events events-svc publishes (`munity.events.v1`), built from
//! the records the repository writes; the aggregate is the event, the
//! subjects its community (if any) and the acting user.

use munity_bus::DomainEvent;
use munity_proto::events::v1 as pb;
use uuid::Uuid;

use crate::{
    convert::{event_to_proto, timestamp},
    domain::EventRecord,
};

const SOURCE: &str = "events-svc";

fn subjects(event: &EventRecord, user: Uuid) -> Vec<String> {
    let mut subjects: Vec<String> = event.community_id.iter().map(Uuid::to_string).collect();
    subjects.push(user.to_string());
    subjects
}

fn publish<M: prost::Name>(event: &EventRecord, user: Uuid, payload: &M) -> DomainEvent {
    munity_bus::event(SOURCE, event.id.to_string(), subjects(event, user), payload)
}

pub fn created(event: &EventRecord) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::EventCreated {
            event: Some(event_to_proto(event, &[], &[])),
        },
    )
}

pub fn cancelled(event: &EventRecord, by: Uuid) -> DomainEvent {
    publish(
        event,
        by,
        &pb::EventCancelled {
            event_id: event.id.to_string(),
            community_id: event
                .community_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
        },
    )
}

pub fn vote_cast(event: &EventRecord, option: u32, user: Uuid) -> DomainEvent {
    publish(
        event,
        user,
        &pb::VoteCast {
            event_id: event.id.to_string(),
            option_id: option,
            user_id: user.to_string(),
        },
    )
}

pub fn vote_withdrawn(event: &EventRecord, option: u32, user: Uuid) -> DomainEvent {
    publish(
        event,
        user,
        &pb::VoteWithdrawn {
            event_id: event.id.to_string(),
            option_id: option,
            user_id: user.to_string(),
        },
    )
}

pub fn voting_closed(event: &EventRecord, option: u32) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::VotingClosed {
            event_id: event.id.to_string(),
            chosen_option_id: option,
            start: event
                .options
                .get(option as usize)
                .map(|o| timestamp(o.start)),
        },
    )
}

pub fn joined(event: &EventRecord, user: Uuid) -> DomainEvent {
    publish(
        event,
        user,
        &pb::ParticipantJoined {
            event_id: event.id.to_string(),
            user_id: user.to_string(),
            owner_id: event.owner_id.to_string(),
        },
    )
}

pub fn left(event: &EventRecord, user: Uuid) -> DomainEvent {
    publish(
        event,
        user,
        &pb::ParticipantLeft {
            event_id: event.id.to_string(),
            user_id: user.to_string(),
            owner_id: event.owner_id.to_string(),
        },
    )
}

pub fn updated(event: &EventRecord, by: Uuid) -> DomainEvent {
    publish(
        event,
        by,
        &pb::EventUpdated {
            event: Some(event_to_proto(event, &[], &[])),
        },
    )
}

/// A reminder: the acting "user" is the owner (the scheduler acts for them).
pub fn reminder_due(event: &EventRecord, job: &crate::domain::ReminderJob) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::ReminderDue {
            event_id: event.id.to_string(),
            start: Some(timestamp(job.due + i64::from(job.before_secs) * 1000)),
            seconds_before: job.before_secs,
            community_id: event
                .community_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
        },
    )
}

//! The domain events events-svc publishes (`munity.events.v1`), built from
//! the records the repository writes; the aggregate is the event, the
//! subjects its community (if any) and the acting user.

use munity_bus::DomainEvent;
use munity_proto::events::v1 as pb;
use uuid::Uuid;

use crate::{
    convert::{event_to_proto, timestamp},
    domain::{AUDIENCE_MAX, EventRecord},
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

/// The people to tell personally (`notify_user_ids`): `audience` without
/// `but` (who did it), as strings, at most [`AUDIENCE_MAX`].
fn tell(audience: &[Uuid], but: Option<Uuid>) -> Vec<String> {
    audience
        .iter()
        .filter(|u| Some(**u) != but)
        .take(AUDIENCE_MAX)
        .map(Uuid::to_string)
        .collect()
}

/// `members`: the community's (a new meeting in my community).
pub fn created(event: &EventRecord, members: &[Uuid]) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::EventCreated {
            event: Some(event_to_proto(event, &[], &[])),
            notify_user_ids: tell(members, Some(event.owner_id)),
        },
    )
}

/// `audience`: [`crate::store::EventsRepository::audience`].
pub fn cancelled(event: &EventRecord, by: Uuid, audience: &[Uuid]) -> DomainEvent {
    publish(
        event,
        by,
        &pb::EventCancelled {
            notify_user_ids: tell(audience, Some(by)),
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

pub fn voting_closed(event: &EventRecord, option: u32, audience: &[Uuid]) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::VotingClosed {
            notify_user_ids: tell(audience, None),
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
pub fn reminder_due(
    event: &EventRecord,
    job: &crate::domain::ReminderJob,
    audience: &[Uuid],
) -> DomainEvent {
    publish(
        event,
        event.owner_id,
        &pb::ReminderDue {
            notify_user_ids: tell(audience, None),
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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::domain::{Status, TimeOption};

    fn meeting(owner: Uuid) -> EventRecord {
        EventRecord {
            id: Uuid::now_v7(),
            owner_id: owner,
            community_id: Some(Uuid::now_v7()),
            title: "t".to_owned(),
            description: String::new(),
            location: String::new(),
            options: vec![TimeOption { start: 1, end: 2 }],
            voting_deadline: 0,
            capacity: None,
            status: Status::Voting,
            participant_count: 0,
            created_at: 0,
        }
    }

    /// A community of 1,500: the event names 1,000 of them, never the owner
    /// (bounded fan-out: notify-svc's work per event is capped here).
    #[test]
    fn who_is_told_is_capped_and_leaves_out_who_did_it() {
        let owner = Uuid::now_v7();
        let mut members: Vec<Uuid> = (0..1500).map(|_| Uuid::now_v7()).collect();
        members.insert(3, owner);
        let made = created(&meeting(owner), &members);
        let told = pb::EventCreated::decode(made.payload.as_slice())
            .unwrap()
            .notify_user_ids;
        assert_eq!(told.len(), AUDIENCE_MAX);
        assert!(!told.contains(&owner.to_string()));

        let event = meeting(owner);
        let cancelled = cancelled(&event, owner, &[owner, members[0]]);
        let told = pb::EventCancelled::decode(cancelled.payload.as_slice())
            .unwrap()
            .notify_user_ids;
        assert_eq!(told, [members[0].to_string()]);
    }
}

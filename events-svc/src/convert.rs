//! Between stored records and protobuf messages.

use munity_proto::events::v1 as pb;

use crate::domain::{EventRecord, ParticipantRecord, Status};

pub use munity_platform::wire::timestamp;

/// The event as clients see it: with `counts` (votes per option) and the
/// options the caller voted for.
pub fn event_to_proto(event: &EventRecord, counts: &[u32], my_votes: &[u32]) -> pb::Event {
    let (status, chosen) = match event.status {
        Status::Voting => (pb::EventStatus::Voting, None),
        Status::Scheduled { option } => (pb::EventStatus::Scheduled, Some(option)),
        Status::Cancelled => (pb::EventStatus::Cancelled, None),
    };
    pb::Event {
        id: event.id.to_string(),
        title: event.title.clone(),
        description: event.description.clone(),
        location: event.location.clone(),
        community_id: event
            .community_id
            .map(|c| c.to_string())
            .unwrap_or_default(),
        owner_id: event.owner_id.to_string(),
        options: event
            .options
            .iter()
            .enumerate()
            .map(|(i, option)| pb::TimeOption {
                id: i as u32,
                start: Some(timestamp(option.start)),
                end: Some(timestamp(option.end)),
                votes: counts.get(i).copied().unwrap_or(0),
            })
            .collect(),
        voting_deadline: Some(timestamp(event.voting_deadline)),
        capacity: event.capacity.unwrap_or(0),
        status: status as i32,
        chosen_option_id: chosen,
        participant_count: event.participant_count,
        my_votes: my_votes.to_vec(),
        created_at: Some(timestamp(event.created_at)),
    }
}

pub fn participant_to_proto(participant: &ParticipantRecord) -> pb::Participant {
    pb::Participant {
        event_id: participant.event_id.to_string(),
        user_id: participant.user_id.to_string(),
        joined_at: Some(timestamp(participant.joined_at)),
    }
}

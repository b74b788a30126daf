//! Where notifications come from: a consumer group on the domain-event log
//! (`notify.sources_group`) turns events-svc's events into notifications on
//! the topics they concern:
//! - every event of a meeting on `event:<id>`;
//! - a meeting created, updated, cancelled, closed (scheduled) or due soon
//!   also on `community:<id>` of its community;
//! - someone joining or leaving a meeting also on its owner's `user:<id>`
//!   (and so in the owner's inbox);
//! - a reminder, voting closed (with the chosen time) and a cancellation
//!   also on the `user:<id>` of each of the meeting's owner, participants
//!   and voters, and a new meeting on each of its community's members':
//!   the people the domain event names (`notify_user_ids`, taken by
//!   events-svc when it happened and capped there at 1,000 a meeting, so
//!   handling one event is bounded);
//! - and discuss-svc's: every event of a post on `post:<id>`; a post
//!   published, edited, pinned or removed also on `community:<id>`; a
//!   comment, a rejection (with its reason) or hiding by reports also on
//!   the post's author's `user:<id>` (unless the author did it); a post
//!   shared with one user on theirs; members mentioned in a post or
//!   comment on each of theirs (only there: a mention is news to them,
//!   not to the post's followers).
//!
//! Publishing is idempotent by the domain event's id within each topic (and
//! each user's inbox), so a redelivery from the log changes nothing: the
//! per-recipient key is (`user:<id>`, event id), the same on every
//! delivery. The id itself stays the domain event's on every topic, so a
//! follower of several topics (bot-svc) sees one event as one thing.

use std::sync::Arc;

use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::{discuss::v1 as discuss, events::v1 as events};
use prost::Message;

use crate::{
    hub::{Publication, valid_topic},
    publish::Publisher,
};

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
    if event.source == "discuss-svc" && event.r#type == MENTIONED {
        // discuss-svc chose them (members, not the author, capped).
        if let Ok(mentioned) = discuss::MembersMentioned::decode(event.payload.as_slice()) {
            for user in mentioned.user_ids.iter().take(MENTIONED_MAX) {
                topics.push(format!("user:{user}"));
            }
        }
    } else if event.source == "discuss-svc" {
        topics.push(format!("post:{}", event.aggregate_id));
        // subject_ids: the community, then the acting user.
        if event.subject_ids.len() >= 2 && DISCUSS_COMMUNITY_WIDE.contains(&event.r#type.as_str()) {
            topics.push(format!("community:{}", event.subject_ids[0]));
        }
        if let Some(author) = author_to_tell(event) {
            topics.push(format!("user:{author}"));
        }
    }
    if event.source == "events-svc" {
        topics.push(format!("event:{}", event.aggregate_id));
        // subject_ids: the community (if any), then the acting user.
        if event.subject_ids.len() >= 2 && COMMUNITY_WIDE.contains(&event.r#type.as_str()) {
            topics.push(format!("community:{}", event.subject_ids[0]));
        }
        if let Some(owner) = owner_to_tell(event) {
            topics.push(format!("user:{owner}"));
        }
        for user in people_to_tell(event) {
            let topic = format!("user:{user}");
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
    }
    topics.retain(|t| valid_topic(t));
    topics
}

/// Members mentioned in a post or comment.
const MENTIONED: &str = "munity.discuss.v1.MembersMentioned";
/// discuss-svc sends at most 10 mentions an event; a bound here too, as
/// every topic is a write.
const MENTIONED_MAX: usize = 10;

/// discuss-svc's events that matter to a whole community.
const DISCUSS_COMMUNITY_WIDE: &[&str] = &[
    "munity.discuss.v1.PostPublished",
    "munity.discuss.v1.PostEdited",
    "munity.discuss.v1.PostPinned",
    "munity.discuss.v1.PostRemoved",
];

/// The author of a post someone else commented on, rejected or hid; or
/// whom a post was shared with.
fn author_to_tell(event: &DomainEvent) -> Option<String> {
    let payload = event.payload.as_slice();
    if event.r#type == "munity.discuss.v1.PostShared" {
        return Some(discuss::PostShared::decode(payload).ok()?.to_user_id);
    }
    let acting = event.subject_ids.get(1).cloned().unwrap_or_default();
    let author = match event.r#type.as_str() {
        "munity.discuss.v1.CommentCreated" => {
            discuss::CommentCreated::decode(payload)
                .ok()?
                .post_author_id
        }
        "munity.discuss.v1.PostRejected" => discuss::PostRejected::decode(payload).ok()?.author_id,
        // Hiding is done by the reports, not by anyone in particular.
        "munity.discuss.v1.PostHidden" => {
            return Some(discuss::PostHidden::decode(payload).ok()?.author_id);
        }
        _ => return None,
    };
    (!author.is_empty() && author != acting).then_some(author)
}

/// The owner of a meeting someone else joined or left.
fn owner_to_tell(event: &DomainEvent) -> Option<String> {
    let (user, owner) = match event.r#type.as_str() {
        "munity.events.v1.ParticipantJoined" => {
            let e = events::ParticipantJoined::decode(event.payload.as_slice()).ok()?;
            (e.user_id, e.owner_id)
        }
        "munity.events.v1.ParticipantLeft" => {
            let e = events::ParticipantLeft::decode(event.payload.as_slice()).ok()?;
            (e.user_id, e.owner_id)
        }
        _ => return None,
    };
    (!owner.is_empty() && owner != user).then_some(owner)
}

/// The people an events-svc event names to be told personally (at most
/// [`MAX_PEOPLE`] even if a producer sent more).
fn people_to_tell(event: &DomainEvent) -> Vec<String> {
    let payload = event.payload.as_slice();
    let people = match event.r#type.as_str() {
        "munity.events.v1.ReminderDue" => events::ReminderDue::decode(payload)
            .map(|e| e.notify_user_ids)
            .unwrap_or_default(),
        "munity.events.v1.VotingClosed" => events::VotingClosed::decode(payload)
            .map(|e| e.notify_user_ids)
            .unwrap_or_default(),
        "munity.events.v1.EventCancelled" => events::EventCancelled::decode(payload)
            .map(|e| e.notify_user_ids)
            .unwrap_or_default(),
        "munity.events.v1.EventCreated" => events::EventCreated::decode(payload)
            .map(|e| e.notify_user_ids)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    people.into_iter().take(MAX_PEOPLE).collect()
}

/// events-svc caps its lists at 1,000; this bounds what one event costs
/// here whatever the producer does.
const MAX_PEOPLE: usize = 1000;

/// Notifications stored in one write at most.
const PUBLISH_CHUNK: usize = 1000;

/// Publishes what the log brings until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    publisher: Publisher,
    group: String,
    shutdown: ShutdownToken,
) {
    let consumer = ConsumerLoop::member(log, group, "notify-svc");
    // A read of the log is published in one write of the hub.
    consumer
        .run_batches(shutdown, move |events| {
            let publisher = publisher.clone();
            async move {
                let mut items = Vec::new();
                for event in &events {
                    for topic in topics(event) {
                        items.push(Publication {
                            topic,
                            id: event.id.clone(),
                            kind: event.r#type.clone(),
                            payload: event.payload.clone(),
                            at: event.occurred_at_ms,
                        });
                    }
                }
                // A reminder may name a thousand people: writes stay bounded.
                while !items.is_empty() {
                    let rest = items.split_off(items.len().min(PUBLISH_CHUNK));
                    publisher
                        .publish_many(std::mem::replace(&mut items, rest))
                        .await?;
                }
                Ok(())
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mention_goes_to_each_mentioned_members_user_topic_only() {
        let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let event = munity_bus::event(
            "discuss-svc",
            "post-1",
            vec!["community-1".to_owned(), "author-1".to_owned()],
            &discuss::MembersMentioned {
                post_id: "post-1".to_owned(),
                user_ids: vec![a.to_string(), b.to_string()],
                ..Default::default()
            },
        );
        assert_eq!(
            topics(&event),
            vec![format!("user:{a}"), format!("user:{b}")]
        );
        // A mention event from anyone else is nobody's business here.
        let other = DomainEvent {
            source: "events-svc".to_owned(),
            ..event.clone()
        };
        assert!(!topics(&other).iter().any(|t| t.starts_with("user:")));
    }
}

//! events-svc's view of community memberships, kept from users-svc's
//! domain events (`munity.users.v1.MemberJoined`, `MemberLeft`,
//! `MemberRoleChanged`) by a consumer group on the event log, so deciding
//! who sees a community's events needs no call to users-svc. The view lags
//! users-svc by the relay's delay; a handler is idempotent (it sets the
//! state the event describes).

use std::sync::Arc;

use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::users::v1 as users;
use prost::Message;
use uuid::Uuid;

use crate::{domain::MemberRole, store::EventsRepository};

fn role(raw: i32) -> MemberRole {
    match users::MemberRole::try_from(raw) {
        Ok(users::MemberRole::Owner) => MemberRole::Owner,
        Ok(users::MemberRole::Moderator) => MemberRole::Moderator,
        _ => MemberRole::Member,
    }
}

fn ids(community: &str, user: &str) -> anyhow::Result<(Uuid, Uuid)> {
    Ok((Uuid::parse_str(community)?, Uuid::parse_str(user)?))
}

/// Applies one event to the view; other events are none of its business.
pub async fn apply(repo: &dyn EventsRepository, event: &DomainEvent) -> anyhow::Result<()> {
    let payload = event.payload.as_slice();
    match event.r#type.as_str() {
        "munity.users.v1.MemberJoined" => {
            let e = users::MemberJoined::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            repo.set_member(community, user, Some(role(e.role))).await?;
        }
        "munity.users.v1.MemberRoleChanged" => {
            let e = users::MemberRoleChanged::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            repo.set_member(community, user, Some(role(e.role))).await?;
        }
        "munity.users.v1.MemberLeft" => {
            let e = users::MemberLeft::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            repo.set_member(community, user, None).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Keeps the view until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    repo: Arc<dyn EventsRepository>,
    group: String,
    shutdown: ShutdownToken,
) {
    let consumer = ConsumerLoop::member(log, group, "events-svc");
    consumer
        .run(shutdown, move |event| {
            let repo = repo.clone();
            async move { apply(repo.as_ref(), &event).await }
        })
        .await;
}

//! The domain events users-svc publishes (`munity.users.v1.CommunityCreated`,
//! `MemberJoined`, `MemberLeft`, `MemberRoleChanged`, `ProfileChanged`), built here from the
//! records the repository writes; and the revocations (`SessionRevoked`,
//! `SubjectRevoked`) every gateway and service follows, staged on their own
//! just before the change they announce. Both backends stage them with the change:
//! the embedded one in the same write transaction, the CQL one tentatively
//! around its lightweight transaction, with [`verify`] answering the relay
//! about events whose writer died before confirming them.

use munity_bus::DomainEvent;
use munity_proto::users::v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::domain::{CommunityRecord, MembershipRecord, UserRecord};

/// The publishing service, as events name it.
const SOURCE: &str = "users-svc";

fn subjects(community_id: Uuid, user_id: Uuid) -> Vec<String> {
    vec![community_id.to_string(), user_id.to_string()]
}

pub fn community_created(community: &CommunityRecord) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        community.id.to_string(),
        subjects(community.id, community.owner_id),
        &pb::CommunityCreated {
            community_id: community.id.to_string(),
            owner_id: community.owner_id.to_string(),
            name: community.name.clone(),
        },
    )
}

pub fn member_joined(membership: &MembershipRecord) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        membership.community_id.to_string(),
        subjects(membership.community_id, membership.user_id),
        &pb::MemberJoined {
            community_id: membership.community_id.to_string(),
            user_id: membership.user_id.to_string(),
            role: membership.role.to_proto() as i32,
            joined_at_ms: membership.joined_at,
        },
    )
}

pub fn member_left(community_id: Uuid, user_id: Uuid) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        community_id.to_string(),
        subjects(community_id, user_id),
        &pb::MemberLeft {
            community_id: community_id.to_string(),
            user_id: user_id.to_string(),
        },
    )
}

pub fn member_role_changed(membership: &MembershipRecord) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        membership.community_id.to_string(),
        subjects(membership.community_id, membership.user_id),
        &pb::MemberRoleChanged {
            community_id: membership.community_id.to_string(),
            user_id: membership.user_id.to_string(),
            role: membership.role.to_proto() as i32,
        },
    )
}

/// `user`'s profile as written at `at_ms` (registration, UpdateProfile, a
/// role change): the display name others find them by.
pub fn profile_changed(user: &UserRecord, at_ms: i64) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        user.id.to_string(),
        vec![user.id.to_string()],
        &pb::ProfileChanged {
            user_id: user.id.to_string(),
            display_name: user.display_name.clone(),
            changed_at_ms: at_ms,
        },
    )
}

/// Session `session_id` of `user_id` ended early: its access tokens, the
/// last of which expires by `not_after_ms`, are refused everywhere.
pub fn session_revoked(
    session_id: Uuid,
    user_id: Uuid,
    reason: pb::RevocationReason,
    not_after_ms: i64,
) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        session_id.to_string(),
        vec![user_id.to_string()],
        &pb::SessionRevoked {
            session_id: session_id.to_string(),
            user_id: user_id.to_string(),
            reason: reason as i32,
            not_after_ms,
        },
    )
}

/// Every token of `subject` (a user or a service account) issued until
/// now is refused everywhere; the last of them expires by `not_after_ms`.
pub fn subject_revoked(
    subject: Uuid,
    reason: pb::RevocationReason,
    revoked_at_ms: i64,
    not_after_ms: i64,
) -> DomainEvent {
    munity_bus::event(
        SOURCE,
        subject.to_string(),
        vec![subject.to_string()],
        &pb::SubjectRevoked {
            subject_id: subject.to_string(),
            reason: reason as i32,
            revoked_at_ms,
            not_after_ms,
        },
    )
}

/// What an event says happened, decoded: the questions [`verify`] asks of
/// the store.
pub enum Claim {
    CommunityExists(Uuid),
    /// The membership exists and began at this time.
    MemberSince(Uuid, Uuid, i64),
    /// The membership does not exist, or began after this time (a rejoin).
    NotMemberAt(Uuid, Uuid, i64),
    /// The membership exists with this role.
    MemberWithRole(Uuid, Uuid, i32),
    /// The account exists with this display name.
    NamedAs(Uuid, String),
}

fn id(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text).ok()
}

/// The claim `event` makes, or `None` for an event this service does not
/// publish (or cannot read).
pub fn claim(event: &DomainEvent) -> Option<Claim> {
    let payload = event.payload.as_slice();
    match event.r#type.as_str() {
        "munity.users.v1.CommunityCreated" => {
            let e = pb::CommunityCreated::decode(payload).ok()?;
            Some(Claim::CommunityExists(id(&e.community_id)?))
        }
        "munity.users.v1.MemberJoined" => {
            let e = pb::MemberJoined::decode(payload).ok()?;
            Some(Claim::MemberSince(
                id(&e.community_id)?,
                id(&e.user_id)?,
                e.joined_at_ms,
            ))
        }
        "munity.users.v1.MemberLeft" => {
            let e = pb::MemberLeft::decode(payload).ok()?;
            Some(Claim::NotMemberAt(
                id(&e.community_id)?,
                id(&e.user_id)?,
                event.occurred_at_ms,
            ))
        }
        "munity.users.v1.ProfileChanged" => {
            let e = pb::ProfileChanged::decode(payload).ok()?;
            Some(Claim::NamedAs(id(&e.user_id)?, e.display_name))
        }
        "munity.users.v1.MemberRoleChanged" => {
            let e = pb::MemberRoleChanged::decode(payload).ok()?;
            Some(Claim::MemberWithRole(
                id(&e.community_id)?,
                id(&e.user_id)?,
                e.role,
            ))
        }
        _ => None,
    }
}

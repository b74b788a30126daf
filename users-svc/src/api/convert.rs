//! Between stored records and protobuf messages, and the request fields
//! every handler parses the same way (ids, page sizes, page tokens).

use munity_proto::users::v1 as pb;
use munity_store::page_token;
use uuid::Uuid;

use crate::{
    domain::{CommunityRecord, MembershipRecord, Role, ServiceAccountRecord, UserRecord, limits},
    error::UsersError,
};

/// One id field, or INVALID_ARGUMENT naming it.
pub(super) fn parse_one_id(raw: &str, field: &str) -> Result<Uuid, UsersError> {
    Ok(munity_platform::wire::one_id(raw, field)?)
}

pub(super) fn page_size(requested: u32) -> usize {
    munity_store::page_size(requested, limits::PAGE_SIZE_DEFAULT, limits::PAGE_SIZE_MAX)
}

/// Where a listing continues, from the client's `page_token`.
pub(super) fn page_after(token: &str) -> Result<Option<Uuid>, UsersError> {
    Ok(page_token::decode(token)?)
}

pub(super) use munity_platform::wire::timestamp;

pub(super) fn user_to_proto(user: &UserRecord, with_email: bool) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: if with_email {
            user.email.clone()
        } else {
            String::new()
        },
        display_name: user.display_name.clone(),
        roles: user
            .roles
            .iter()
            .map(|role| match role {
                Role::User => pb::Role::User as i32,
                Role::Admin => pb::Role::Admin as i32,
            })
            .collect(),
        created_at: Some(timestamp(user.created_at)),
    }
}

pub(super) fn community_to_proto(community: &CommunityRecord) -> pb::Community {
    pb::Community {
        id: community.id.to_string(),
        name: community.name.clone(),
        description: community.description.clone(),
        owner_id: community.owner_id.to_string(),
        created_at: Some(timestamp(community.created_at)),
    }
}

pub(super) fn membership_to_proto(membership: &MembershipRecord) -> pb::Membership {
    pb::Membership {
        community_id: membership.community_id.to_string(),
        user_id: membership.user_id.to_string(),
        role: membership.role.to_proto() as i32,
        joined_at: Some(timestamp(membership.joined_at)),
    }
}

/// A service account as clients see it: never its secret's hash.
pub(super) fn service_account_to_proto(account: &ServiceAccountRecord) -> pb::ServiceAccount {
    pb::ServiceAccount {
        id: account.id.to_string(),
        name: account.name.clone(),
        scopes: account.scopes.clone(),
        disabled: account.disabled,
        created_at: Some(timestamp(account.created_at)),
        secret_rotated_at: Some(timestamp(account.secret_rotated_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_page_tokens_are_invalid_arguments() {
        assert!(matches!(
            page_after("AAAA"),
            Err(UsersError::InvalidInput(_))
        ));
        assert_eq!(page_after("").unwrap(), None);
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(10_000), 500);
    }
}

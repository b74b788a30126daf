//! Communities: creating and listing them, joining and leaving, and the
//! owner's and moderators' powers over members.

use munity_platform::{auth::Claims, error::FieldViolations};
use munity_proto::users::v1 as pb;
use munity_store::page_token;
use uuid::Uuid;

use super::{UsersApi, convert};
use crate::{
    domain::{self, CommunityRecord, MemberRole, MembershipRecord, Role, limits, now_millis},
    error::UsersError,
};

impl UsersApi {
    pub(super) async fn community(&self, id: Uuid) -> Result<CommunityRecord, UsersError> {
        self.repo
            .get_community(id)
            .await?
            .ok_or(UsersError::NotFound("community"))
    }

    pub(super) async fn create_community(
        &self,
        claims: &Claims,
        request: pb::CreateCommunityRequest,
    ) -> Result<pb::Community, UsersError> {
        let mut violations = FieldViolations::new();
        let name = domain::required_text(
            &request.name,
            limits::COMMUNITY_NAME_MAX,
            "name",
            &mut violations,
        );
        let description = request.description.trim().to_owned();
        domain::check_text(
            &description,
            limits::COMMUNITY_DESCRIPTION_MAX,
            "description",
            &mut violations,
        );
        violations.into_result()?;
        let owner = self.current_user(claims).await?;
        let now = now_millis();
        let community = CommunityRecord {
            id: Uuid::now_v7(),
            name,
            description,
            owner_id: owner.id,
            created_at: now,
        };
        let membership = MembershipRecord {
            community_id: community.id,
            user_id: owner.id,
            role: MemberRole::Owner,
            joined_at: now,
        };
        self.repo.create_community(&community, &membership).await?;
        Ok(convert::community_to_proto(&community))
    }

    pub(super) async fn list_communities(
        &self,
        request: pb::ListCommunitiesRequest,
    ) -> Result<pb::ListCommunitiesResponse, UsersError> {
        let after = convert::page_after(&request.page_token)?;
        let page = self
            .repo
            .list_communities(after, convert::page_size(request.page_size))
            .await?;
        Ok(pb::ListCommunitiesResponse {
            communities: page.items.iter().map(convert::community_to_proto).collect(),
            next_page_token: page_token::encode(page.next_after),
        })
    }

    pub(super) async fn join(
        &self,
        claims: &Claims,
        community_id: &str,
    ) -> Result<pb::Membership, UsersError> {
        let community = self
            .community(convert::parse_one_id(community_id, "community_id")?)
            .await?;
        let user = self.current_user(claims).await?;
        let membership = self
            .repo
            .add_membership(&MembershipRecord {
                community_id: community.id,
                user_id: user.id,
                role: MemberRole::Member,
                joined_at: now_millis(),
            })
            .await?;
        Ok(convert::membership_to_proto(&membership))
    }

    pub(super) async fn leave(
        &self,
        claims: &Claims,
        community_id: &str,
    ) -> Result<(), UsersError> {
        let community = self
            .community(convert::parse_one_id(community_id, "community_id")?)
            .await?;
        let user_id = claims.user_id();
        if let Some(membership) = self.repo.get_membership(community.id, user_id).await? {
            if membership.role == MemberRole::Owner {
                return Err(UsersError::FailedPrecondition(
                    "the owner cannot leave their community".to_owned(),
                ));
            }
            self.repo.remove_membership(community.id, user_id).await?;
        }
        Ok(())
    }

    pub(super) async fn list_members(
        &self,
        request: pb::ListMembersRequest,
    ) -> Result<pb::ListMembersResponse, UsersError> {
        let community = self
            .community(convert::parse_one_id(
                &request.community_id,
                "community_id",
            )?)
            .await?;
        let after = convert::page_after(&request.page_token)?;
        let page = self
            .repo
            .list_members(community.id, after, convert::page_size(request.page_size))
            .await?;
        Ok(pb::ListMembersResponse {
            members: page
                .items
                .iter()
                .map(convert::membership_to_proto)
                .collect(),
            next_page_token: page_token::encode(page.next_after),
        })
    }

    /// The caller's and the target's memberships of a community, after
    /// checking the ids and that both exist.
    pub(super) async fn memberships(
        &self,
        claims: &Claims,
        community_id: &str,
        user_id: &str,
    ) -> Result<(Option<MembershipRecord>, MembershipRecord), UsersError> {
        let mut violations = FieldViolations::new();
        let community_id = domain::parse_id(community_id, "community_id", &mut violations);
        let target_id = domain::parse_id(user_id, "user_id", &mut violations);
        violations.into_result()?;
        let community = self.community(community_id).await?;
        let actor = self
            .repo
            .get_membership(community.id, claims.user_id())
            .await?;
        let target = self
            .repo
            .get_membership(community.id, target_id)
            .await?
            .ok_or(UsersError::NotFound("membership"))?;
        Ok((actor, target))
    }

    pub(super) async fn set_member_role(
        &self,
        claims: &Claims,
        request: pb::SetMemberRoleRequest,
    ) -> Result<pb::Membership, UsersError> {
        let role = match pb::MemberRole::try_from(request.role) {
            Ok(pb::MemberRole::Moderator) => MemberRole::Moderator,
            Ok(pb::MemberRole::Member) => MemberRole::Member,
            _ => {
                return Err(UsersError::invalid(
                    "role",
                    "must be MEMBER_ROLE_MODERATOR or MEMBER_ROLE_MEMBER",
                ));
            }
        };
        let (actor, mut target) = self
            .memberships(claims, &request.community_id, &request.user_id)
            .await?;
        if actor.map(|a| a.role) != Some(MemberRole::Owner) {
            return Err(UsersError::PermissionDenied(
                "only the community's owner can appoint moderators".to_owned(),
            ));
        }
        if target.role == MemberRole::Owner {
            return Err(UsersError::FailedPrecondition(
                "the owner's role cannot be changed".to_owned(),
            ));
        }
        target.role = role;
        self.repo.update_membership(&target).await?;
        Ok(convert::membership_to_proto(&target))
    }

    pub(super) async fn remove_member(
        &self,
        claims: &Claims,
        request: pb::RemoveMemberRequest,
    ) -> Result<(), UsersError> {
        let (actor, target) = self
            .memberships(claims, &request.community_id, &request.user_id)
            .await?;
        let actor_role = actor.map(|a| a.role);
        let platform_admin =
            claims.has_role(Role::Admin.as_str()) && self.require_admin(claims).await.is_ok();
        let allowed = match target.role {
            MemberRole::Owner => false,
            MemberRole::Moderator => actor_role == Some(MemberRole::Owner) || platform_admin,
            MemberRole::Member => {
                matches!(actor_role, Some(MemberRole::Owner | MemberRole::Moderator))
                    || platform_admin
            }
        };
        if !allowed {
            return Err(UsersError::PermissionDenied(match target.role {
                MemberRole::Owner => "nobody can remove a community's owner".to_owned(),
                MemberRole::Moderator => "only the owner can remove a moderator".to_owned(),
                MemberRole::Member => "only the owner or a moderator can remove members".to_owned(),
            }));
        }
        self.repo
            .remove_membership(target.community_id, target.user_id)
            .await?;
        tracing::info!(community_id = %target.community_id, user_id = %target.user_id, removed_by = %claims.sub, "member removed");
        Ok(())
    }
}

//! Accounts: the caller's own, others' public profiles, and the admin's
//! listing and role changes.

use munity_platform::{auth::Claims, error::FieldViolations};
use munity_proto::users::v1 as pb;
use munity_store::page_token;

use super::{UsersApi, convert};
use crate::{
    domain::{self, Role, SERVICE_ROLE, UserRecord, limits},
    error::UsersError,
};

impl UsersApi {
    /// The caller's account. A service account's token names no user, so it
    /// is refused here, clearly, before any lookup: nothing that acts as
    /// the caller (their profile, admin rights, communities) takes one.
    pub(super) async fn current_user(&self, claims: &Claims) -> Result<UserRecord, UsersError> {
        if claims.has_role(SERVICE_ROLE) {
            return Err(UsersError::PermissionDenied(
                "a service account's token cannot act as a user".to_owned(),
            ));
        }
        self.repo
            .get_user(claims.user_id())
            .await?
            .ok_or(UsersError::NotFound("user"))
    }

    /// Admin rights are checked against storage, not the token, so revoking
    /// them takes effect at once rather than when the token expires.
    pub(super) async fn require_admin(&self, claims: &Claims) -> Result<UserRecord, UsersError> {
        // A bot acting for an admin gets the admin's ordinary rights only.
        if claims.is_delegated() {
            return Err(UsersError::PermissionDenied(
                "a token exchanged by a bot cannot act as an administrator".to_owned(),
            ));
        }
        let user = self.current_user(claims).await?;
        if user.has_role(Role::Admin) {
            Ok(user)
        } else {
            Err(UsersError::PermissionDenied(
                "this method is for administrators".to_owned(),
            ))
        }
    }

    pub(super) async fn get_user(
        &self,
        claims: &Claims,
        request: pb::GetUserRequest,
    ) -> Result<pb::User, UsersError> {
        let id = convert::parse_one_id(&request.user_id, "user_id")?;
        let user = self
            .repo
            .get_user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        let sees_email = claims.user_id() == user.id || claims.has_role(Role::Admin.as_str());
        Ok(convert::user_to_proto(&user, sees_email))
    }

    pub(super) async fn update_profile(
        &self,
        claims: &Claims,
        request: pb::UpdateProfileRequest,
    ) -> Result<pb::User, UsersError> {
        let mut violations = FieldViolations::new();
        let display_name = domain::required_text(
            &request.display_name,
            limits::DISPLAY_NAME_MAX,
            "display_name",
            &mut violations,
        );
        violations.into_result()?;
        let mut user = self.current_user(claims).await?;
        user.display_name = display_name;
        self.repo.update_user(&user).await?;
        Ok(convert::user_to_proto(&user, true))
    }

    pub(super) async fn list_users(
        &self,
        claims: &Claims,
        request: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse, UsersError> {
        self.require_admin(claims).await?;
        let after = convert::page_after(&request.page_token)?;
        let page = self
            .repo
            .list_users(after, convert::page_size(request.page_size))
            .await?;
        Ok(pb::ListUsersResponse {
            users: page
                .items
                .iter()
                .map(|u| convert::user_to_proto(u, true))
                .collect(),
            next_page_token: page_token::encode(page.next_after),
        })
    }

    /// Disables or enables an account. Disabling revokes every token it
    /// holds (before and after the flag is written, as a role change does)
    /// and Login and Refresh then refuse it.
    pub(super) async fn set_user_disabled(
        &self,
        claims: &Claims,
        request: pb::SetUserDisabledRequest,
    ) -> Result<pb::SetUserDisabledResponse, UsersError> {
        let admin = self.require_admin(claims).await?;
        let mut violations = FieldViolations::new();
        let id = domain::parse_id(&request.user_id, "user_id", &mut violations);
        violations.into_result()?;
        if id == admin.id && request.disabled {
            return Err(UsersError::FailedPrecondition(
                "you cannot disable your own account; ask another admin".to_owned(),
            ));
        }
        self.repo
            .get_user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        let revoke = || {
            self.revoke_subject_tokens(id, pb::RevocationReason::AccountDisabled, self.access_ttl)
        };
        if request.disabled {
            revoke().await?;
        }
        self.repo.set_user_disabled(id, request.disabled).await?;
        if request.disabled {
            revoke().await?;
        }
        tracing::info!(admin_id = %admin.id, user_id = %id, disabled = request.disabled, "account disabled flag set");
        Ok(pb::SetUserDisabledResponse {
            user_id: id.to_string(),
            disabled: request.disabled,
        })
    }

    pub(super) async fn set_role(
        &self,
        claims: &Claims,
        request: pb::SetRoleRequest,
    ) -> Result<pb::User, UsersError> {
        let admin = self.require_admin(claims).await?;
        let mut violations = FieldViolations::new();
        let id = domain::parse_id(&request.user_id, "user_id", &mut violations);
        let role = match pb::Role::try_from(request.role) {
            Ok(pb::Role::Admin) => Some(Role::Admin),
            Ok(pb::Role::User) => {
                violations.add("role", "every account has ROLE_USER; it cannot be changed");
                None
            }
            _ => {
                violations.add("role", "must be ROLE_ADMIN");
                None
            }
        };
        violations.into_result()?;
        let role = role.expect("validated above");
        if id == admin.id && role == Role::Admin && !request.granted {
            return Err(UsersError::FailedPrecondition(
                "you cannot take away your own admin role; ask another admin".to_owned(),
            ));
        }
        let mut user = self
            .repo
            .get_user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        let changed = user.roles.contains(&role) != request.granted;
        user.set_role(role, request.granted);
        if changed {
            // Tokens carry roles: the ones issued so far say the old ones.
            self.revoke_subject_tokens(user.id, pb::RevocationReason::RoleChanged, self.access_ttl)
                .await?;
        }
        self.repo.update_user(&user).await?;
        if changed {
            // Again, after: a refresh that read the old roles while the
            // change was being written issued its token after the first
            // cutoff; this one covers it.
            self.revoke_subject_tokens(user.id, pb::RevocationReason::RoleChanged, self.access_ttl)
                .await?;
        }
        tracing::info!(admin_id = %admin.id, user_id = %user.id, role = role.as_str(), granted = request.granted, "role changed");
        Ok(convert::user_to_proto(&user, true))
    }
}

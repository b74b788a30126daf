//! The `munity.users.v1.Users` gRPC service: input validation, the rules of
//! accounts, sessions and communities, and conversion to protobuf. Storage is
//! behind [`UsersRepository`]; errors are [`UsersError`], turned into gRPC
//! statuses in `error.rs`.

use std::{sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use munity_platform::{
    auth::{AuthConfig, Claims, caller},
    error::FieldViolations,
};
use munity_proto::users::v1::{self as pb, users_server::Users};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    config::UsersConfig,
    domain::{
        self, CommunityRecord, MemberRole, MembershipRecord, Millis, RefreshTokenRecord, Role,
        SessionRecord, UserRecord, limits, now_millis,
    },
    error::UsersError,
    keys::KeyManager,
    passwords,
    store::{StoreError, UsersRepository},
};

/// Methods callable without an access token.
pub const PUBLIC_METHODS: &[&str] = &[
    "/munity.users.v1.Users/Register",
    "/munity.users.v1.Users/Login",
    "/munity.users.v1.Users/Refresh",
    "/munity.users.v1.Users/Logout",
    "/munity.users.v1.Users/GetJwks",
];

/// The service implementation.
pub struct UsersApi {
    repo: Arc<dyn UsersRepository>,
    keys: Arc<KeyManager>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    auth: AuthConfig,
    admin_emails: Vec<String>,
}

impl UsersApi {
    pub fn new(
        repo: Arc<dyn UsersRepository>,
        keys: Arc<KeyManager>,
        config: &UsersConfig,
        auth: &AuthConfig,
    ) -> Self {
        UsersApi {
            repo,
            keys,
            access_ttl: Duration::from_secs(config.tokens.access_ttl_secs),
            refresh_ttl: Duration::from_secs(config.tokens.refresh_ttl_secs),
            auth: auth.clone(),
            admin_emails: config
                .admin_emails
                .iter()
                .map(|e| e.trim().to_lowercase())
                .collect(),
        }
    }

    // ---- sessions ----------------------------------------------------------

    /// Starts a new session for `user`: a session record, a refresh token and
    /// an access token.
    async fn start_session(&self, user: &UserRecord) -> Result<pb::AuthResponse, UsersError> {
        let session = SessionRecord {
            id: Uuid::now_v7(),
            user_id: user.id,
            created_at: now_millis(),
            revoked: false,
        };
        self.repo.create_session(&session).await?;
        self.issue_tokens(user, session.id).await
    }

    /// A fresh refresh token in `session_id`, and an access token.
    async fn issue_tokens(
        &self,
        user: &UserRecord,
        session_id: Uuid,
    ) -> Result<pb::AuthResponse, UsersError> {
        let now = now_millis();
        let refresh_token = format!("mrt_{}", URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
        let refresh_expires = now + self.refresh_ttl.as_millis() as Millis;
        self.repo
            .insert_refresh_token(&RefreshTokenRecord {
                token_hash: token_hash(&refresh_token),
                session_id,
                user_id: user.id,
                expires_at: refresh_expires,
                used: false,
            })
            .await?;

        let access_expires = now + self.access_ttl.as_millis() as Millis;
        let claims = Claims {
            sub: user.id.to_string(),
            iss: self.auth.issuer.clone(),
            aud: self.auth.audience.clone(),
            exp: access_expires / 1000,
            iat: now / 1000,
            jti: Uuid::now_v7().to_string(),
            sid: session_id.to_string(),
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
        };
        Ok(pb::AuthResponse {
            user: Some(user_to_proto(user, true)),
            access_token: self.keys.sign(&claims)?,
            access_token_expires_at: Some(timestamp((access_expires / 1000) * 1000)),
            refresh_token,
            refresh_token_expires_at: Some(timestamp(refresh_expires)),
        })
    }

    async fn register(&self, request: pb::RegisterRequest) -> Result<pb::AuthResponse, UsersError> {
        let mut violations = FieldViolations::new();
        let email = domain::normalize_email(&request.email, "email", &mut violations);
        domain::check_password(&request.password, "password", &mut violations);
        let display_name = domain::required_text(
            &request.display_name,
            limits::DISPLAY_NAME_MAX,
            "display_name",
            &mut violations,
        );
        violations.into_result()?;

        let mut roles = vec![Role::User];
        if self.admin_emails.contains(&email) {
            roles.push(Role::Admin);
        }
        let mut user = UserRecord {
            id: Uuid::now_v7(),
            email,
            display_name,
            password_hash: passwords::hash(request.password).await?,
            roles: Vec::new(),
            created_at: now_millis(),
        };
        for role in roles {
            user.set_role(role, true);
        }
        match self.repo.create_user(&user).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(UsersError::EmailTaken),
            Err(error) => return Err(error.into()),
        }
        tracing::info!(user_id = %user.id, "account registered");
        self.start_session(&user).await
    }

    async fn login(&self, request: pb::LoginRequest) -> Result<pb::AuthResponse, UsersError> {
        let mut violations = FieldViolations::new();
        let email = domain::normalize_email(&request.email, "email", &mut violations);
        if request.password.is_empty() {
            violations.add("password", "is required");
        } else if request.password.chars().count() > limits::PASSWORD_MAX {
            // No stored password is this long; don't spend a hash on it.
            violations.add(
                "password",
                format!("must be at most {} characters", limits::PASSWORD_MAX),
            );
        }
        violations.into_result()?;

        let user = self.repo.get_user_by_email(&email).await?;
        let stored_hash = user.as_ref().map(|u| u.password_hash.clone());
        if !passwords::verify(request.password, stored_hash).await? {
            return Err(UsersError::BadCredentials);
        }
        let user = user.ok_or(UsersError::BadCredentials)?;
        self.start_session(&user).await
    }

    async fn refresh(&self, request: pb::RefreshRequest) -> Result<pb::AuthResponse, UsersError> {
        let presented = required_token(&request.refresh_token)?;
        let hash = token_hash(presented);
        let token = self
            .repo
            .get_refresh_token(&hash)
            .await?
            .ok_or(UsersError::InvalidRefreshToken)?;
        let session = self
            .repo
            .get_session(token.session_id)
            .await?
            .ok_or(UsersError::InvalidRefreshToken)?;
        if session.revoked || token.expires_at <= now_millis() {
            return Err(UsersError::InvalidRefreshToken);
        }
        // Exactly one exchange per token wins. A second presentation means the
        // token was copied: end the whole session, for the thief and the
        // owner alike, and make the owner log in again.
        if token.used || !self.repo.consume_refresh_token(&hash).await? {
            self.repo.revoke_session(session.id).await?;
            tracing::warn!(
                user_id = %token.user_id,
                session_id = %session.id,
                "refresh token reused; session revoked"
            );
            return Err(UsersError::RefreshTokenReused);
        }
        let user = self
            .repo
            .get_user(token.user_id)
            .await?
            .ok_or(UsersError::InvalidRefreshToken)?;
        self.issue_tokens(&user, session.id).await
    }

    async fn logout(&self, request: pb::LogoutRequest) -> Result<pb::LogoutResponse, UsersError> {
        let presented = required_token(&request.refresh_token)?;
        if let Some(token) = self.repo.get_refresh_token(&token_hash(presented)).await? {
            self.repo.revoke_session(token.session_id).await?;
        }
        Ok(pb::LogoutResponse {})
    }

    // ---- accounts ----------------------------------------------------------

    async fn current_user(&self, claims: &Claims) -> Result<UserRecord, UsersError> {
        let id = Uuid::parse_str(&claims.sub).map_err(|_| UsersError::NotFound("user"))?;
        self.repo
            .get_user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))
    }

    /// Admin rights are checked against storage, not the token, so revoking
    /// them takes effect at once rather than when the token expires.
    async fn require_admin(&self, claims: &Claims) -> Result<UserRecord, UsersError> {
        let user = self.current_user(claims).await?;
        if user.has_role(Role::Admin) {
            Ok(user)
        } else {
            Err(UsersError::PermissionDenied(
                "this method is for administrators".to_owned(),
            ))
        }
    }

    async fn get_user(
        &self,
        claims: &Claims,
        request: pb::GetUserRequest,
    ) -> Result<pb::User, UsersError> {
        let id = parse_one_id(&request.user_id, "user_id")?;
        let user = self
            .repo
            .get_user(id)
            .await?
            .ok_or(UsersError::NotFound("user"))?;
        let sees_email = claims.sub == user.id.to_string() || claims.has_role(Role::Admin.as_str());
        Ok(user_to_proto(&user, sees_email))
    }

    async fn update_profile(
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
        Ok(user_to_proto(&user, true))
    }

    async fn list_users(
        &self,
        claims: &Claims,
        request: pb::ListUsersRequest,
    ) -> Result<pb::ListUsersResponse, UsersError> {
        self.require_admin(claims).await?;
        let after = decode_page_token(&request.page_token)?;
        let page = self
            .repo
            .list_users(after, page_size(request.page_size))
            .await?;
        Ok(pb::ListUsersResponse {
            users: page.items.iter().map(|u| user_to_proto(u, true)).collect(),
            next_page_token: encode_page_token(page.next_after),
        })
    }

    async fn set_role(
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
        user.set_role(role, request.granted);
        self.repo.update_user(&user).await?;
        tracing::info!(admin_id = %admin.id, user_id = %user.id, role = role.as_str(), granted = request.granted, "role changed");
        Ok(user_to_proto(&user, true))
    }

    // ---- communities -------------------------------------------------------

    async fn community(&self, id: Uuid) -> Result<CommunityRecord, UsersError> {
        self.repo
            .get_community(id)
            .await?
            .ok_or(UsersError::NotFound("community"))
    }

    async fn create_community(
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
        Ok(community_to_proto(&community))
    }

    async fn list_communities(
        &self,
        request: pb::ListCommunitiesRequest,
    ) -> Result<pb::ListCommunitiesResponse, UsersError> {
        let after = decode_page_token(&request.page_token)?;
        let page = self
            .repo
            .list_communities(after, page_size(request.page_size))
            .await?;
        Ok(pb::ListCommunitiesResponse {
            communities: page.items.iter().map(community_to_proto).collect(),
            next_page_token: encode_page_token(page.next_after),
        })
    }

    async fn join(
        &self,
        claims: &Claims,
        community_id: &str,
    ) -> Result<pb::Membership, UsersError> {
        let community = self
            .community(parse_one_id(community_id, "community_id")?)
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
        Ok(membership_to_proto(&membership))
    }

    async fn leave(&self, claims: &Claims, community_id: &str) -> Result<(), UsersError> {
        let community = self
            .community(parse_one_id(community_id, "community_id")?)
            .await?;
        let user_id = caller_id(claims)?;
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

    async fn list_members(
        &self,
        request: pb::ListMembersRequest,
    ) -> Result<pb::ListMembersResponse, UsersError> {
        let community = self
            .community(parse_one_id(&request.community_id, "community_id")?)
            .await?;
        let after = decode_page_token(&request.page_token)?;
        let page = self
            .repo
            .list_members(community.id, after, page_size(request.page_size))
            .await?;
        Ok(pb::ListMembersResponse {
            members: page.items.iter().map(membership_to_proto).collect(),
            next_page_token: encode_page_token(page.next_after),
        })
    }

    /// The caller's and the target's memberships of a community, after
    /// checking the ids and that both exist.
    async fn memberships(
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
            .get_membership(community.id, caller_id(claims)?)
            .await?;
        let target = self
            .repo
            .get_membership(community.id, target_id)
            .await?
            .ok_or(UsersError::NotFound("membership"))?;
        Ok((actor, target))
    }

    async fn set_member_role(
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
        Ok(membership_to_proto(&target))
    }

    async fn remove_member(
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

// ---- helpers ---------------------------------------------------------------

/// Only a hash of each refresh token is stored: a leaked database does not
/// leak working tokens. The tokens are 256 random bits, so a fast hash is
/// enough (no password-style stretching needed).
fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn required_token(token: &str) -> Result<&str, UsersError> {
    let token = token.trim();
    if token.is_empty() {
        Err(UsersError::invalid("refresh_token", "is required"))
    } else if token.len() > 256 {
        Err(UsersError::invalid(
            "refresh_token",
            "is not a refresh token",
        ))
    } else {
        Ok(token)
    }
}

fn parse_one_id(raw: &str, field: &str) -> Result<Uuid, UsersError> {
    let mut violations = FieldViolations::new();
    let id = domain::parse_id(raw, field, &mut violations);
    violations.into_result()?;
    Ok(id)
}

fn caller_id(claims: &Claims) -> Result<Uuid, UsersError> {
    Uuid::parse_str(&claims.sub).map_err(|_| UsersError::NotFound("user"))
}

fn page_size(requested: u32) -> usize {
    match requested {
        0 => limits::PAGE_SIZE_DEFAULT as usize,
        n => n.min(limits::PAGE_SIZE_MAX) as usize,
    }
}

fn encode_page_token(after: Option<Uuid>) -> String {
    after
        .map(|id| URL_SAFE_NO_PAD.encode(id.as_bytes()))
        .unwrap_or_default()
}

fn decode_page_token(token: &str) -> Result<Option<Uuid>, UsersError> {
    if token.is_empty() {
        return Ok(None);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            UsersError::invalid("page_token", "is not a page token returned by this method")
        })
}

fn timestamp(millis: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn user_to_proto(user: &UserRecord, with_email: bool) -> pb::User {
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

fn community_to_proto(community: &CommunityRecord) -> pb::Community {
    pb::Community {
        id: community.id.to_string(),
        name: community.name.clone(),
        description: community.description.clone(),
        owner_id: community.owner_id.to_string(),
        created_at: Some(timestamp(community.created_at)),
    }
}

fn membership_to_proto(membership: &MembershipRecord) -> pb::Membership {
    pb::Membership {
        community_id: membership.community_id.to_string(),
        user_id: membership.user_id.to_string(),
        role: match membership.role {
            MemberRole::Member => pb::MemberRole::Member,
            MemberRole::Moderator => pb::MemberRole::Moderator,
            MemberRole::Owner => pb::MemberRole::Owner,
        } as i32,
        joined_at: Some(timestamp(membership.joined_at)),
    }
}

/// Runs a handler that needs the verified caller.
macro_rules! authed {
    ($request:ident, |$claims:ident, $message:ident| $body:expr) => {{
        let $claims = caller(&$request)?.clone();
        let $message = $request.into_inner();
        let result: Result<_, UsersError> = $body.await;
        result.map(Response::new).map_err(Status::from)
    }};
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        Ok(Response::new(self.register(request.into_inner()).await?))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        Ok(Response::new(self.login(request.into_inner()).await?))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        Ok(Response::new(self.refresh(request.into_inner()).await?))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        Ok(Response::new(self.logout(request.into_inner()).await?))
    }

    async fn get_me(
        &self,
        request: Request<pb::GetMeRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, |claims, _message| async {
            Ok(user_to_proto(&self.current_user(&claims).await?, true))
        })
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, |claims, message| self.get_user(&claims, message))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, |claims, message| self
            .update_profile(&claims, message))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        authed!(request, |claims, message| self.list_users(&claims, message))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, |claims, message| self.set_role(&claims, message))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.keys.jwks_json().to_string(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        authed!(request, |claims, _message| async {
            let admin = self.require_admin(&claims).await?;
            let kid = self.keys.rotate().await?;
            tracing::info!(admin_id = %admin.id, %kid, "signing key rotated");
            Ok(pb::RotateSigningKeyResponse { active_kid: kid })
        })
    }

    async fn create_community(
        &self,
        request: Request<pb::CreateCommunityRequest>,
    ) -> Result<Response<pb::Community>, Status> {
        authed!(request, |claims, message| self
            .create_community(&claims, message))
    }

    async fn get_community(
        &self,
        request: Request<pb::GetCommunityRequest>,
    ) -> Result<Response<pb::Community>, Status> {
        authed!(request, |_claims, message| async {
            let id = parse_one_id(&message.community_id, "community_id")?;
            Ok(community_to_proto(&self.community(id).await?))
        })
    }

    async fn list_communities(
        &self,
        request: Request<pb::ListCommunitiesRequest>,
    ) -> Result<Response<pb::ListCommunitiesResponse>, Status> {
        authed!(request, |_claims, message| self.list_communities(message))
    }

    async fn join_community(
        &self,
        request: Request<pb::JoinCommunityRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        authed!(request, |claims, message| self
            .join(&claims, &message.community_id))
    }

    async fn leave_community(
        &self,
        request: Request<pb::LeaveCommunityRequest>,
    ) -> Result<Response<pb::LeaveCommunityResponse>, Status> {
        authed!(request, |claims, message| async {
            self.leave(&claims, &message.community_id).await?;
            Ok(pb::LeaveCommunityResponse {})
        })
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        authed!(request, |_claims, message| self.list_members(message))
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        authed!(request, |claims, message| self
            .set_member_role(&claims, message))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        authed!(request, |claims, message| async {
            self.remove_member(&claims, message).await?;
            Ok(pb::RemoveMemberResponse {})
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let id = Uuid::now_v7();
        assert_eq!(
            decode_page_token(&encode_page_token(Some(id))).unwrap(),
            Some(id)
        );
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("not-a-token!").is_err());
        assert!(decode_page_token("AAAA").is_err());
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(10_000), 500);
    }

    #[test]
    fn timestamps_split_millis() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}

//! The `munity.users.v1.Users` gRPC service, a file per concern:
//! `sessions.rs` (register, login, refresh, logout), `accounts.rs`,
//! `communities.rs`, `service_accounts.rs` (and their tokens), and
//! `convert.rs` (records to protobuf, ids, pages).
//! This file holds the service's state and the glue from tonic's trait to
//! those handlers. Storage is behind [`UsersRepository`]; errors are
//! [`UsersError`], turned into gRPC statuses in `error.rs`. Which methods
//! need a token is declared in the proto (`munity.options.v1.method`).

mod accounts;
mod communities;
pub(crate) mod convert;
pub mod links;
mod service_accounts;
pub use service_accounts::{
    provision as provision_service_accounts, service_secret, service_secret_hash,
};
mod sessions;

use std::{sync::Arc, time::Duration};

use munity_platform::{auth::AuthConfig, authed};
use munity_proto::users::v1::{self as pb, users_server::Users};
use tonic::{Request, Response, Status};

use crate::{
    config::UsersConfig, error::UsersError, keys::KeyManager, passwords::Hashing,
    store::UsersRepository,
};

/// The service implementation.
pub struct UsersApi {
    repo: Arc<dyn UsersRepository>,
    keys: Arc<KeyManager>,
    /// Every password hash and check goes through its bound.
    hashing: Hashing,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Lifetime of service accounts' tokens.
    service_token_ttl: Duration,
    auth: AuthConfig,
    admin_emails: Vec<String>,
}

impl UsersApi {
    pub fn new(
        repo: Arc<dyn UsersRepository>,
        keys: Arc<KeyManager>,
        hashing: Hashing,
        config: &UsersConfig,
        auth: &AuthConfig,
    ) -> Self {
        UsersApi {
            repo,
            keys,
            hashing,
            access_ttl: Duration::from_secs(config.tokens.access_ttl_secs),
            refresh_ttl: Duration::from_secs(config.tokens.refresh_ttl_secs),
            service_token_ttl: Duration::from_secs(config.service_token_ttl_secs),
            auth: auth.clone(),
            admin_emails: config
                .admin_emails
                .iter()
                .map(|e| e.trim().to_lowercase())
                .collect(),
        }
    }
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
        authed!(request, UsersError, |claims, _message| async {
            Ok(convert::user_to_proto(
                &self.current_user(&claims).await?,
                true,
            ))
        })
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, UsersError, |claims, message| self
            .get_user(&claims, message))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, UsersError, |claims, message| self
            .update_profile(&claims, message))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        authed!(request, UsersError, |claims, message| self
            .list_users(&claims, message))
    }

    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::User>, Status> {
        authed!(request, UsersError, |claims, message| self
            .set_role(&claims, message))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.keys.current_jwks().await.to_string(),
        }))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        authed!(request, UsersError, |claims, _message| async {
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
        authed!(request, UsersError, |claims, message| self
            .create_community(&claims, message))
    }

    async fn get_community(
        &self,
        request: Request<pb::GetCommunityRequest>,
    ) -> Result<Response<pb::Community>, Status> {
        authed!(request, UsersError, |_claims, message| async {
            let id = convert::parse_one_id(&message.community_id, "community_id")?;
            Ok(convert::community_to_proto(&self.community(id).await?))
        })
    }

    async fn list_communities(
        &self,
        request: Request<pb::ListCommunitiesRequest>,
    ) -> Result<Response<pb::ListCommunitiesResponse>, Status> {
        authed!(request, UsersError, |_claims, message| self
            .list_communities(message))
    }

    async fn join_community(
        &self,
        request: Request<pb::JoinCommunityRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        authed!(request, UsersError, |claims, message| self
            .join(&claims, &message.community_id))
    }

    async fn leave_community(
        &self,
        request: Request<pb::LeaveCommunityRequest>,
    ) -> Result<Response<pb::LeaveCommunityResponse>, Status> {
        authed!(request, UsersError, |claims, message| async {
            self.leave(&claims, &message.community_id).await?;
            Ok(pb::LeaveCommunityResponse {})
        })
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        authed!(request, UsersError, |_claims, message| self
            .list_members(message))
    }

    async fn set_member_role(
        &self,
        request: Request<pb::SetMemberRoleRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        authed!(request, UsersError, |claims, message| self
            .set_member_role(&claims, message))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        authed!(request, UsersError, |claims, message| async {
            self.remove_member(&claims, message).await?;
            Ok(pb::RemoveMemberResponse {})
        })
    }

    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccountSecret>, Status> {
        authed!(request, UsersError, |claims, message| self
            .create_service_account(&claims, message))
    }

    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        authed!(request, UsersError, |claims, _message| self
            .list_service_accounts(&claims))
    }

    async fn rotate_service_secret(
        &self,
        request: Request<pb::RotateServiceSecretRequest>,
    ) -> Result<Response<pb::ServiceAccountSecret>, Status> {
        authed!(request, UsersError, |claims, message| self
            .rotate_service_secret(&claims, message))
    }

    async fn set_user_disabled(
        &self,
        request: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::SetUserDisabledResponse>, Status> {
        authed!(request, UsersError, |claims, message| self
            .set_user_disabled(&claims, message))
    }

    async fn set_service_account_disabled(
        &self,
        request: Request<pb::SetServiceAccountDisabledRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        authed!(request, UsersError, |claims, message| self
            .set_service_account_disabled(&claims, message))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::ServiceToken>, Status> {
        Ok(Response::new(
            self.issue_service_token(request.into_inner()).await?,
        ))
    }

    async fn create_link_code(
        &self,
        request: Request<pb::CreateLinkCodeRequest>,
    ) -> Result<Response<pb::LinkCode>, Status> {
        authed!(request, UsersError, |claims, _message| self
            .create_link_code(&claims))
    }

    async fn redeem_link_code(
        &self,
        request: Request<pb::RedeemLinkCodeRequest>,
    ) -> Result<Response<pb::ChatLink>, Status> {
        authed!(request, UsersError, |claims, message| self
            .redeem_link_code(&claims, message))
    }

    async fn list_chat_links(
        &self,
        request: Request<pb::ListChatLinksRequest>,
    ) -> Result<Response<pb::ListChatLinksResponse>, Status> {
        authed!(request, UsersError, |claims, _message| self
            .list_chat_links(&claims))
    }

    async fn unlink(
        &self,
        request: Request<pb::UnlinkRequest>,
    ) -> Result<Response<pb::UnlinkResponse>, Status> {
        authed!(request, UsersError, |claims, message| self
            .unlink(&claims, message))
    }

    async fn unlink_chat(
        &self,
        request: Request<pb::UnlinkChatRequest>,
    ) -> Result<Response<pb::UnlinkResponse>, Status> {
        authed!(request, UsersError, |_claims, message| self
            .unlink_chat(message))
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Result<Response<pb::ExchangedToken>, Status> {
        authed!(request, UsersError, |claims, message| self
            .exchange_token(&claims, message))
    }
}

//! Sessions: registering, logging in, refreshing and logging out. A login
//! starts a session (a refresh-token family); each refresh token works once.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use munity_platform::{auth::Claims, error::FieldViolations};
use munity_proto::users::v1 as pb;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{UsersApi, convert};
use crate::{
    domain::{
        self, Millis, RefreshTokenRecord, Role, SessionRecord, UserRecord, limits, now_millis,
    },
    error::UsersError,
    events,
    store::StoreError,
};

impl UsersApi {
    /// Starts a new session for `user`: a session record, a refresh token and
    /// an access token.
    pub(super) async fn start_session(
        &self,
        user: &UserRecord,
    ) -> Result<pb::AuthResponse, UsersError> {
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
    pub(super) async fn issue_tokens(
        &self,
        user: &UserRecord,
        session_id: Uuid,
    ) -> Result<pb::AuthResponse, UsersError> {
        let now = now_millis();
        let refresh_token = new_secret("mrt_");
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
            sub: user.id,
            iss: self.auth.issuer.clone(),
            aud: self.auth.audience.clone(),
            exp: access_expires / 1000,
            iat: now / 1000,
            // A UUIDv7: its time says when the token was issued, to the
            // ms, which subject revocations compare (`iat` has seconds).
            jti: Uuid::now_v7().to_string(),
            sid: session_id.to_string(),
            roles: user.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            scope: String::new(),
            act: None,
        };
        Ok(pb::AuthResponse {
            user: Some(convert::user_to_proto(user, true)),
            access_token: self.keys.sign(&claims)?,
            access_token_expires_at: Some(convert::timestamp((access_expires / 1000) * 1000)),
            refresh_token,
            refresh_token_expires_at: Some(convert::timestamp(refresh_expires)),
        })
    }

    pub(super) async fn register(
        &self,
        request: pb::RegisterRequest,
    ) -> Result<pb::AuthResponse, UsersError> {
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
            password_hash: self.hashing.hash(request.password).await?,
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

    pub(super) async fn login(
        &self,
        request: pb::LoginRequest,
    ) -> Result<pb::AuthResponse, UsersError> {
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
        if !self.hashing.verify(request.password, stored_hash).await? {
            return Err(UsersError::BadCredentials);
        }
        let user = user.ok_or(UsersError::BadCredentials)?;
        if self.repo.is_user_disabled(user.id).await? {
            return Err(UsersError::AccountDisabled);
        }
        self.start_session(&user).await
    }

    pub(super) async fn refresh(
        &self,
        request: pb::RefreshRequest,
    ) -> Result<pb::AuthResponse, UsersError> {
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
            self.revoke_session_tokens(
                session.id,
                token.user_id,
                pb::RevocationReason::RefreshTokenReused,
            )
            .await?;
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
        if self.repo.is_user_disabled(user.id).await? {
            return Err(UsersError::InvalidRefreshToken);
        }
        self.issue_tokens(&user, session.id).await
    }

    pub(super) async fn logout(
        &self,
        request: pb::LogoutRequest,
    ) -> Result<pb::LogoutResponse, UsersError> {
        let presented = required_token(&request.refresh_token)?;
        if let Some(token) = self.repo.get_refresh_token(&token_hash(presented)).await? {
            self.revoke_session_tokens(
                token.session_id,
                token.user_id,
                pb::RevocationReason::Logout,
            )
            .await?;
            self.repo.revoke_session(token.session_id).await?;
        }
        Ok(pb::LogoutResponse {})
    }

    /// Announces that the access tokens of session `session_id` are void
    /// (every gateway and service refuses them within about a second).
    /// Staged before the session is marked revoked: a crash in between
    /// leaves the session's tokens refused, never a revoked session's
    /// tokens working.
    pub(super) async fn revoke_session_tokens(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        reason: pb::RevocationReason,
    ) -> Result<(), UsersError> {
        // The session's last access token was issued by now at the latest.
        let not_after = now_millis() + self.access_ttl.as_millis() as Millis;
        let event = events::session_revoked(session_id, user_id, reason, not_after);
        self.repo.stage_events(&[event]).await?;
        tracing::info!(%user_id, %session_id, ?reason, "session's access tokens revoked");
        Ok(())
    }

    /// Announces that every token of `subject` issued until now is void
    /// (tokens issued afterwards are not: a refresh after a role change
    /// carries the new roles). `token_ttl` is how long such tokens live.
    pub(super) async fn revoke_subject_tokens(
        &self,
        subject: Uuid,
        reason: pb::RevocationReason,
        token_ttl: std::time::Duration,
    ) -> Result<(), UsersError> {
        let now = now_millis();
        let not_after = now + token_ttl.as_millis() as Millis;
        let event = events::subject_revoked(subject, reason, now, not_after);
        self.repo.stage_events(&[event]).await?;
        tracing::info!(%subject, ?reason, "subject's tokens revoked");
        Ok(())
    }
}

/// A fresh bearer secret (refresh tokens, `mrt_`; service accounts' client
/// secrets, `mss_`): 256 random bits, base64url, after a prefix that says
/// what it is (for people, and for secret scanners).
pub(super) fn new_secret(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// Only a hash of each refresh token or client secret is stored: a leaked
/// database does not leak working ones. They are 256 random bits
/// ([`new_secret`]), so a fast hash is enough: no password-style stretching,
/// which would also hand anyone who can call a public method a way to burn
/// CPU.
pub(super) fn token_hash(token: &str) -> String {
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

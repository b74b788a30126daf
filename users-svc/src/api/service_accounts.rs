//! Service accounts: identities for internal callers (other services, the
//! Telegram bot), not people. Admins create them with scopes and get a
//! client secret once; the account exchanges its id and secret for a
//! short-lived access token (IssueServiceToken) signed like users' tokens,
//! with role `service` and its scopes in `scope`.
//!
//! A service token names no user: `current_user` refuses it, so it cannot
//! act as one (GetMe, admin checks, communities).

use munity_platform::{auth::Claims, error::FieldViolations};
use munity_proto::users::v1 as pb;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{
    UsersApi, convert,
    sessions::{new_secret, token_hash},
};
use crate::{
    domain::{self, Millis, SERVICE_ROLE, ServiceAccountRecord, now_millis},
    error::UsersError,
    store::StoreError,
};

/// What starts every client secret (refresh tokens start `mrt_`).
const SECRET_PREFIX: &str = "mss_";

/// Longer than any secret [`new_secret`] makes; anything longer is wrong
/// without being hashed.
const SECRET_MAX: usize = 256;

/// A new client secret and the hash users-svc stores of it: for whoever
/// provisions an account outside the API (`munity dev`'s bot account).
pub fn service_secret() -> (String, String) {
    let secret = new_secret(SECRET_PREFIX);
    let hash = token_hash(&secret);
    (secret, hash)
}

/// The hash users-svc stores of a client secret.
pub fn service_secret_hash(secret: &str) -> String {
    token_hash(secret)
}

/// Makes each of `accounts` that has no account under its id yet (see
/// [`crate::config::UsersConfig::provisioned_service_accounts`]).
pub async fn provision(
    repo: &dyn crate::store::UsersRepository,
    accounts: &[crate::config::ProvisionedServiceAccount],
) -> anyhow::Result<()> {
    for wanted in accounts {
        let id = Uuid::parse_str(&wanted.id).map_err(|e| {
            anyhow::anyhow!("users.provisioned_service_accounts id {:?}: {e}", wanted.id)
        })?;
        if repo.get_service_account(id).await?.is_some() {
            continue;
        }
        let mut violations = FieldViolations::new();
        domain::check_service_account_name(&wanted.name, "name", &mut violations);
        let scopes = domain::normalize_scopes(&wanted.scopes, "scopes", &mut violations);
        if let Err(error) = violations.into_result() {
            anyhow::bail!(
                "users.provisioned_service_accounts {:?}: {error}",
                wanted.name
            );
        }
        let now = now_millis();
        let account = ServiceAccountRecord {
            id,
            name: wanted.name.clone(),
            scopes,
            secret_hash: wanted.secret_hash.clone(),
            disabled: false,
            created_at: now,
            secret_rotated_at: now,
        };
        match repo.create_service_account(&account).await {
            Ok(()) => {
                tracing::info!(service_account_id = %id, name = %account.name, "service account provisioned");
            }
            // Someone made one of that name by hand: theirs stays.
            Err(StoreError::Conflict(_)) => tracing::warn!(
                name = %account.name,
                "a service account of that name exists under another id; not provisioned"
            ),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

impl UsersApi {
    pub(super) async fn create_service_account(
        &self,
        claims: &Claims,
        request: pb::CreateServiceAccountRequest,
    ) -> Result<pb::ServiceAccountSecret, UsersError> {
        let admin = self.require_admin(claims).await?;
        let mut violations = FieldViolations::new();
        domain::check_service_account_name(&request.name, "name", &mut violations);
        let scopes = domain::normalize_scopes(&request.scopes, "scopes", &mut violations);
        violations.into_result()?;

        let secret = new_secret(SECRET_PREFIX);
        let now = now_millis();
        let account = ServiceAccountRecord {
            id: Uuid::now_v7(),
            name: request.name,
            scopes,
            secret_hash: token_hash(&secret),
            disabled: false,
            created_at: now,
            secret_rotated_at: now,
        };
        match self.repo.create_service_account(&account).await {
            Ok(()) => {}
            Err(StoreError::Conflict("service account name")) => {
                return Err(UsersError::ServiceAccountNameTaken);
            }
            Err(error) => return Err(error.into()),
        }
        tracing::info!(
            admin_id = %admin.id,
            service_account_id = %account.id,
            name = %account.name,
            scopes = %account.scopes.join(" "),
            "service account created"
        );
        Ok(pb::ServiceAccountSecret {
            account: Some(convert::service_account_to_proto(&account)),
            client_secret: secret,
        })
    }

    pub(super) async fn list_service_accounts(
        &self,
        claims: &Claims,
    ) -> Result<pb::ListServiceAccountsResponse, UsersError> {
        self.require_admin(claims).await?;
        let accounts = self.repo.list_service_accounts().await?;
        Ok(pb::ListServiceAccountsResponse {
            accounts: accounts
                .iter()
                .map(convert::service_account_to_proto)
                .collect(),
        })
    }

    pub(super) async fn rotate_service_secret(
        &self,
        claims: &Claims,
        request: pb::RotateServiceSecretRequest,
    ) -> Result<pb::ServiceAccountSecret, UsersError> {
        let admin = self.require_admin(claims).await?;
        let id = convert::parse_one_id(&request.id, "id")?;
        let secret = new_secret(SECRET_PREFIX);
        // The old hash is overwritten: the old secret stops working with this
        // write. Tokens it already got live out their (short) lifetime.
        let account = self
            .repo
            .set_service_secret(id, &token_hash(&secret), now_millis())
            .await?;
        tracing::info!(admin_id = %admin.id, service_account_id = %id, "service account secret rotated");
        Ok(pb::ServiceAccountSecret {
            account: Some(convert::service_account_to_proto(&account)),
            client_secret: secret,
        })
    }

    pub(super) async fn set_service_account_disabled(
        &self,
        claims: &Claims,
        request: pb::SetServiceAccountDisabledRequest,
    ) -> Result<pb::ServiceAccount, UsersError> {
        let admin = self.require_admin(claims).await?;
        let id = convert::parse_one_id(&request.id, "id")?;
        if request.disabled {
            // Its tokens stop working now, not when they expire.
            self.revoke_subject_tokens(
                id,
                pb::RevocationReason::ServiceAccountDisabled,
                self.service_token_ttl,
            )
            .await?;
        }
        let account = self
            .repo
            .set_service_account_disabled(id, request.disabled)
            .await?;
        if request.disabled {
            // Again, after: a token issued while the flag was being written
            // (its issuer read the account still enabled) is covered too.
            self.revoke_subject_tokens(
                id,
                pb::RevocationReason::ServiceAccountDisabled,
                self.service_token_ttl,
            )
            .await?;
        }
        tracing::info!(admin_id = %admin.id, service_account_id = %id, disabled = request.disabled, "service account disabled flag set");
        Ok(convert::service_account_to_proto(&account))
    }

    /// Public: the client id and secret are the credentials. Every failure
    /// is [`UsersError::BadClientCredentials`], whichever it was.
    pub(super) async fn issue_service_token(
        &self,
        request: pb::IssueServiceTokenRequest,
    ) -> Result<pb::ServiceToken, UsersError> {
        let id = Uuid::try_parse(request.client_id.trim())
            .map_err(|_| UsersError::BadClientCredentials)?;
        if request.client_secret.is_empty() || request.client_secret.len() > SECRET_MAX {
            return Err(UsersError::BadClientCredentials);
        }
        let account = self
            .repo
            .get_service_account(id)
            .await?
            .ok_or(UsersError::BadClientCredentials)?;
        let presented = token_hash(&request.client_secret);
        // Constant time, so response times say nothing about how much of a
        // guess matched the stored hash.
        let matches: bool = presented
            .as_bytes()
            .ct_eq(account.secret_hash.as_bytes())
            .into();
        if !matches || account.disabled {
            return Err(UsersError::BadClientCredentials);
        }

        let now = now_millis();
        let expires = now + self.service_token_ttl.as_millis() as Millis;
        let claims = Claims {
            sub: account.id,
            iss: self.auth.issuer.clone(),
            aud: self.auth.audience.clone(),
            exp: expires / 1000,
            iat: now / 1000,
            jti: Uuid::now_v7().to_string(),
            // No login session stands behind it; this says whose it is in
            // logs without looking like a session id.
            sid: format!("service:{}", account.id),
            roles: vec![SERVICE_ROLE.to_owned()],
            scope: account.scopes.join(" "),
            act: None,
        };
        Ok(pb::ServiceToken {
            access_token: self.keys.sign(&claims)?,
            expires_at: Some(convert::timestamp((expires / 1000) * 1000)),
            scopes: account.scopes,
        })
    }
}

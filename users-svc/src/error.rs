//! users-svc's domain errors, mapped to gRPC status codes in one place.

use munity_platform::error::{FieldViolations, internal, invalid_argument};
use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] FieldViolations),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("the refresh token is invalid or expired")]
    InvalidRefreshToken,
    #[error("the refresh token was already used; its session has been revoked")]
    RefreshTokenReused,
    #[error("a service account with this name already exists")]
    ServiceAccountNameTaken,
    /// IssueServiceToken's one answer to every failure (malformed or unknown
    /// client id, wrong secret, disabled account): a caller probing with
    /// guesses learns nothing about which ids exist or are disabled.
    #[error("unknown client or wrong secret")]
    BadClientCredentials,
    /// Only said after the right password: the account exists and is
    /// disabled by an admin.
    #[error("this account is disabled")]
    AccountDisabled,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Every password-hash slot is taken and the queue for them is full, or
    /// this call waited too long for one (`passwords.rs`).
    #[error("too many password checks in progress; retry shortly")]
    HashingBusy,
    /// Too many wrong link codes from one chat (guessing).
    #[error("too many wrong link codes; try again in {retry_after_secs} s")]
    TooManyAttempts { retry_after_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl UsersError {
    /// One violation on one field.
    pub fn invalid(field: &str, description: &str) -> Self {
        let mut violations = FieldViolations::new();
        violations.add(field, description);
        UsersError::InvalidInput(violations)
    }
}

impl From<UsersError> for Status {
    fn from(error: UsersError) -> Self {
        match error {
            UsersError::InvalidInput(violations) => invalid_argument(&violations),
            UsersError::EmailTaken | UsersError::ServiceAccountNameTaken => {
                Status::already_exists(error.to_string())
            }
            UsersError::BadCredentials
            | UsersError::InvalidRefreshToken
            | UsersError::RefreshTokenReused
            | UsersError::BadClientCredentials => Status::unauthenticated(error.to_string()),
            UsersError::NotFound(_) => Status::not_found(error.to_string()),
            UsersError::PermissionDenied(message) => Status::permission_denied(message),
            UsersError::AccountDisabled => Status::permission_denied(error.to_string()),
            UsersError::FailedPrecondition(message) => Status::failed_precondition(message),
            // RESOURCE_EXHAUSTED, not UNAVAILABLE: the replica is healthy,
            // only busy, and the client should come back shortly. The gateway
            // counts UNAVAILABLE from a replica towards ejecting it
            // (`gateway/src/outlier.rs`), which would push a login storm onto
            // the other replicas; RESOURCE_EXHAUSTED is also what the
            // gateway's own Login quota answers.
            UsersError::HashingBusy | UsersError::TooManyAttempts { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            UsersError::Store(error) => error.into(),
            UsersError::Internal(cause) => internal("internal error", &cause),
        }
    }
}

//! discuss-svc's domain errors, mapped to gRPC status codes in one place.

use munity_platform::error::{FieldViolations, invalid_argument};
use munity_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum DiscussError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] FieldViolations),
    /// Missing, or not visible to the caller: the same answer, so ids
    /// cannot be probed.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DiscussError {
    pub fn invalid(field: &str, description: &str) -> Self {
        let mut violations = FieldViolations::new();
        violations.add(field, description);
        DiscussError::InvalidInput(violations)
    }
}

impl From<DiscussError> for Status {
    fn from(error: DiscussError) -> Self {
        match error {
            DiscussError::InvalidInput(violations) => invalid_argument(&violations),
            DiscussError::NotFound(_) => Status::not_found(error.to_string()),
            DiscussError::PermissionDenied(message) => Status::permission_denied(message),
            DiscussError::FailedPrecondition(message) => Status::failed_precondition(message),
            DiscussError::Store(error) => error.into(),
        }
    }
}

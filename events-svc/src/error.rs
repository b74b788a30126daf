//! events-svc's domain errors, mapped to gRPC status codes in one place.

use munity_platform::error::{FieldViolations, invalid_argument};
use munity_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] FieldViolations),
    /// Missing, or not visible to the caller: the same answer, so ids
    /// cannot be probed.
    #[error("event not found")]
    NotFound,
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventsError {
    pub fn invalid(field: &str, description: &str) -> Self {
        let mut violations = FieldViolations::new();
        violations.add(field, description);
        EventsError::InvalidInput(violations)
    }
}

impl From<EventsError> for Status {
    fn from(error: EventsError) -> Self {
        match error {
            EventsError::InvalidInput(violations) => invalid_argument(&violations),
            EventsError::NotFound => Status::not_found(error.to_string()),
            EventsError::PermissionDenied(message) => Status::permission_denied(message),
            EventsError::FailedPrecondition(message) => Status::failed_precondition(message),
            EventsError::Store(error) => error.into(),
        }
    }
}

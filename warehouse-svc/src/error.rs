//! warehouse-svc's errors, mapped to gRPC status codes in one place.

use munity_platform::error::{FieldViolations, invalid_argument};
use munity_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] FieldViolations),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WarehouseError {
    pub fn invalid(field: &str, description: &str) -> Self {
        let mut violations = FieldViolations::new();
        violations.add(field, description);
        WarehouseError::InvalidInput(violations)
    }
}

impl From<WarehouseError> for Status {
    fn from(error: WarehouseError) -> Self {
        match error {
            WarehouseError::InvalidInput(violations) => invalid_argument(&violations),
            WarehouseError::PermissionDenied(message) => Status::permission_denied(message),
            WarehouseError::FailedPrecondition(message) => Status::failed_precondition(message),
            WarehouseError::OutOfRange(message) => Status::out_of_range(message),
            WarehouseError::ResourceExhausted(message) => Status::resource_exhausted(message),
            WarehouseError::Store(error) => error.into(),
        }
    }
}

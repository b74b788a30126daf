//! notify-svc's errors, and the one place they become gRPC statuses (the
//! storage codes are `munity_store`'s table, as in every service).

use munity_platform::error::{FieldViolations, invalid_argument};
use munity_store::StoreError;
use tonic::Status;

use crate::{hub::HubError, publish::PublishError};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid request: {0}")]
    InvalidInput(#[from] FieldViolations),
    /// The topic history (redb, or Redis) failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The inbox store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, NotifyError>;

impl From<PublishError> for NotifyError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Hub(error) => NotifyError::Hub(error),
            PublishError::Inbox(error) => NotifyError::Storage(error),
        }
    }
}

impl From<NotifyError> for Status {
    fn from(error: NotifyError) -> Self {
        match error {
            NotifyError::InvalidInput(violations) => invalid_argument(&violations),
            // A publisher retries with the same id: nothing is doubled.
            NotifyError::Hub(HubError::Unavailable(error)) => Status::unavailable(format!(
                "notification history is unavailable ({error}); publish again with the same id"
            )),
            NotifyError::Hub(HubError::Internal(error)) => {
                tracing::error!(%error, "notification history failed");
                Status::internal("publishing failed")
            }
            NotifyError::Storage(error) => error.into(),
        }
    }
}

//! bot-svc's errors, mapped to gRPC status codes in one place.

use munity_store::StoreError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Telegram refused or could not be reached.
    #[error("Telegram: {0}")]
    Telegram(#[from] teloxide::RequestError),
    /// A Munity service answered with an error.
    #[error("Munity: {0}")]
    Munity(#[from] Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BotError> for Status {
    fn from(error: BotError) -> Self {
        match error {
            BotError::Telegram(error) => Status::unavailable(format!("Telegram: {error}")),
            BotError::Munity(status) => status,
            BotError::Store(error) => error.into(),
        }
    }
}

//! Publishing, as sources and the Publish RPC both do it: on the hub, then
//! (for `user:<id>`) into that user's inbox. Both steps are idempotent by
//! the source id, so whoever retries after a failure (the consumer group,
//! a Publish caller) completes what is missing and duplicates nothing.

use std::sync::Arc;

use munity_store::{Millis, StoreError};

use crate::{
    hub::{Hub, HubError, Notification, Publication},
    inbox::{Inbox, owner_of},
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("the inbox failed: {0}")]
    Inbox(#[from] StoreError),
}

#[derive(Clone)]
pub struct Publisher {
    pub hub: Arc<dyn Hub>,
    pub inbox: Arc<dyn Inbox>,
}

impl Publisher {
    pub async fn publish(
        &self,
        topic: &str,
        id: &str,
        kind: &str,
        payload: &[u8],
        at: Millis,
    ) -> Result<Notification, PublishError> {
        let notification = self.hub.publish(topic, id, kind, payload, at).await?;
        if let Some(user) = owner_of(topic) {
            self.inbox.add(user, &notification).await?;
        }
        Ok(notification)
    }

    /// [`Publisher::publish`] of each: on the hub at once (one write on
    /// the embedded hub), then into the inboxes of the `user:` topics.
    pub async fn publish_many(&self, items: Vec<Publication>) -> Result<(), PublishError> {
        for notification in self.hub.publish_many(items).await? {
            if let Some(user) = owner_of(&notification.topic) {
                self.inbox.add(user, &notification).await?;
            }
        }
        Ok(())
    }
}

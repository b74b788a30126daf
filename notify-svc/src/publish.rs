//! Publishing, as sources and the Publish RPC both do it: on the hub, then
//! (for `user:<id>`) into that user's inbox before it is heard live. Both
//! steps are idempotent by the source id, so whoever retries after a
//! failure (the consumer group, a Publish caller) completes what is missing
//! and duplicates nothing.

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
        if owner_of(topic).is_none() {
            return Ok(self.hub.publish(topic, id, kind, payload, at).await?);
        }
        let item = Publication::new(topic, id, kind, payload, at);
        self.inboxes_first(vec![item])
            .await?
            .pop()
            .ok_or_else(|| PublishError::Hub(HubError::Internal("nothing published".to_owned())))
    }

    /// [`Publisher::publish`] of each: on the hub at once (one write on
    /// the embedded hub), the `user:` topics' in a second write.
    pub async fn publish_many(&self, items: Vec<Publication>) -> Result<(), PublishError> {
        let (owned, others): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|item| owner_of(&item.topic).is_some());
        if !others.is_empty() {
            self.hub.publish_many(others).await?;
        }
        if !owned.is_empty() {
            self.inboxes_first(owned).await?;
        }
        Ok(())
    }

    /// Publications on `user:` topics: stored on the hub, added to their
    /// users' inboxes, and only then heard live, so a client that counts
    /// its unread items when it hears one finds it counted. Runs to the
    /// end in a task of its own, even when the caller stops waiting (a
    /// Publish whose client went away): what was stored is always
    /// announced, or the embedded hub would hold that topic's later
    /// notifications back.
    async fn inboxes_first(
        &self,
        items: Vec<Publication>,
    ) -> Result<Vec<Notification>, PublishError> {
        let (hub, inbox) = (self.hub.clone(), self.inbox.clone());
        tokio::spawn(async move {
            let stored = hub.store_many(items).await?;
            let mut added = Ok(());
            for stored in &stored {
                if let Some(user) = owner_of(&stored.notification.topic) {
                    added = inbox.add(user, &stored.notification).await;
                    if added.is_err() {
                        break;
                    }
                }
            }
            hub.announce(&stored).await;
            added?;
            Ok(stored.into_iter().map(|s| s.notification).collect())
        })
        .await
        .map_err(|e| PublishError::Hub(HubError::Internal(format!("publishing failed: {e}"))))?
    }
}

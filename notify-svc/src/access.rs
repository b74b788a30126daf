//! Who may follow which topic, decided before anything streams:
//! - `user:<id>`: the caller's own;
//! - `event:<id>`: an event the caller can see, as events-svc decides
//!   (GetEvent with the caller's own token);
//! - `community:<id>`: a community the caller is a member of, as
//!   events-svc knows it (its community listing, with the caller's token);
//! - `post:<id>`: a post the caller can see, as discuss-svc decides
//!   (GetPost with the caller's own token).
//!
//! Asking the owning service with the caller's token keeps one rule in one place;
//! it costs one call per topic per Subscribe.

use munity_platform::auth::{Claims, with_bearer};
use munity_proto::{
    discuss::v1::{self as discuss, discuss_client::DiscussClient},
    events::v1::{self as events, events_client::EventsClient},
};
use tonic::{Code, Status, transport::Channel};

#[derive(Clone)]
pub struct Access {
    events: EventsClient<Channel>,
    discuss: DiscussClient<Channel>,
}

/// A channel to `url`, over every replica its host resolves to
/// (connecting lazily, on first use).
fn lazy(url: &str) -> anyhow::Result<Channel> {
    munity_platform::peers::balanced_channel(url, |endpoint| {
        endpoint
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
    })
}

impl Access {
    /// Calls events-svc at `events_url` and discuss-svc at `discuss_url`
    /// (connecting lazily, on first use).
    pub fn new(events_url: &str, discuss_url: &str) -> anyhow::Result<Self> {
        Ok(Access {
            events: EventsClient::new(lazy(events_url)?),
            discuss: DiscussClient::new(lazy(discuss_url)?),
        })
    }

    /// Ok when `claims` (presenting `token`) may follow `topic`.
    pub async fn check(&self, claims: &Claims, token: &str, topic: &str) -> Result<(), Status> {
        let denied = || Status::permission_denied(format!("topic {topic} is not yours to follow"));
        let (kind, id) = topic.split_once(':').ok_or_else(denied)?;
        let answer = match kind {
            "user" => {
                return if id == claims.sub.to_string() {
                    Ok(())
                } else {
                    Err(denied())
                };
            }
            "event" => self
                .events
                .clone()
                .get_event(with_bearer(
                    events::GetEventRequest {
                        event_id: id.to_owned(),
                    },
                    token,
                ))
                .await
                .map(drop),
            "community" => self
                .events
                .clone()
                .list_events(with_bearer(
                    events::ListEventsRequest {
                        filter: events::EventFilter::Community as i32,
                        community_id: id.to_owned(),
                        page_size: 1,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
            "post" => self
                .discuss
                .clone()
                .get_post(with_bearer(
                    discuss::GetPostRequest {
                        post_id: id.to_owned(),
                    },
                    token,
                ))
                .await
                .map(drop),
            _ => return Err(denied()),
        };
        match answer {
            Ok(()) => Ok(()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::NotFound | Code::PermissionDenied | Code::InvalidArgument
                ) =>
            {
                Err(denied())
            }
            Err(status) => Err(Status::unavailable(format!(
                "cannot check topic {topic} now ({}); try again",
                status.message()
            ))),
        }
    }
}

//! Munity as the bot sees it: gRPC clients for users-svc, events-svc and
//! notify-svc, the bot's own service token (IssueServiceToken, renewed
//! before it expires) and, for every call on a user's behalf, a token from
//! ExchangeToken: the user as subject, the bot as actor. The bot never
//! calls with its own power for a user: the services decide by their rules
//! for that user.

use std::time::{Duration, Instant};

use munity_platform::auth::with_bearer;
use munity_proto::{
    events::v1::events_client::EventsClient, notify::v1::notify_client::NotifyClient,
    users::v1 as users_pb, users::v1::users_client::UsersClient,
};
use tokio::sync::Mutex;
use tonic::{Code, Status, transport::Channel};

use crate::config::BotConfig;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

pub struct Munity {
    pub users: UsersClient<Channel>,
    pub events: EventsClient<Channel>,
    pub notify: NotifyClient<Channel>,
    client_id: String,
    client_secret: String,
    service_token: Mutex<Option<(String, Instant)>>,
}

/// A token to act for a chat's user.
#[derive(Debug, Clone)]
pub struct UserToken {
    pub token: String,
    pub user_id: String,
}

fn channel(url: &str, key: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("bot.{key} {url:?} is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .connect_lazy())
}

impl Munity {
    pub fn new(config: &BotConfig) -> anyhow::Result<Self> {
        Ok(Munity {
            users: UsersClient::new(channel(&config.users_url, "users_url")?),
            events: EventsClient::new(channel(&config.events_url, "events_url")?),
            notify: NotifyClient::new(channel(&config.notify_url, "notify_url")?),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            service_token: Mutex::new(None),
        })
    }

    /// The bot's own token (for linking and exchanging only).
    pub async fn service_token(&self) -> Result<String, Status> {
        let mut cached = self.service_token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let issued = self
            .users
            .clone()
            .issue_service_token(users_pb::IssueServiceTokenRequest {
                client_id: self.client_id.clone(),
                client_secret: self.client_secret.clone(),
            })
            .await?
            .into_inner();
        let lifetime = issued
            .expires_at
            .map(|at| at.seconds - unix_now())
            .unwrap_or(0)
            .max(0) as u64;
        let renew_at = Instant::now() + Duration::from_secs(lifetime).saturating_sub(RENEW_BEFORE);
        *cached = Some((issued.access_token.clone(), renew_at));
        Ok(issued.access_token)
    }

    /// Links the chat with a code the user got from Munity.
    pub async fn redeem(&self, chat_id: i64, code: &str) -> Result<users_pb::ChatLink, Status> {
        let token = self.service_token().await?;
        Ok(self
            .users
            .clone()
            .redeem_link_code(with_bearer(
                users_pb::RedeemLinkCodeRequest {
                    code: code.to_owned(),
                    chat_id,
                },
                &token,
            ))
            .await?
            .into_inner())
    }

    pub async fn unlink(&self, chat_id: i64) -> Result<bool, Status> {
        let token = self.service_token().await?;
        Ok(self
            .users
            .clone()
            .unlink_chat(with_bearer(users_pb::UnlinkChatRequest { chat_id }, &token))
            .await?
            .into_inner()
            .unlinked
            > 0)
    }

    /// A token for the chat's user; `None` when the chat is not linked
    /// (any more: an unlink from the account side shows here).
    pub async fn user_token(&self, chat_id: i64) -> Result<Option<UserToken>, Status> {
        let token = self.service_token().await?;
        match self
            .users
            .clone()
            .exchange_token(with_bearer(
                users_pb::ExchangeTokenRequest { chat_id },
                &token,
            ))
            .await
        {
            Ok(answer) => {
                let answer = answer.into_inner();
                Ok(Some(UserToken {
                    token: answer.access_token,
                    user_id: answer.user_id,
                }))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

//! bot-svc: Munity in Telegram (`munity.bot.v1`).
//!
//! Layout:
//! - `config.rs`: `[bot]`'s own keys (token, Bot API URL, service account,
//!   peers, rates);
//! - `munity.rs`: gRPC clients, the bot's service token, ExchangeToken for
//!   every call on a user's behalf;
//! - `chat.rs`: commands and button presses;
//! - `follow.rs`: pushes from linked users' `user:` topics;
//! - `sender.rs`: the durable outgoing queue, sent within Telegram's rates;
//! - `webhook.rs`: updates posted by Telegram through the gateway (with
//!   `bot.webhook_url`), instead of long polling;
//! - `store/`: links, positions, sent-log and queue on redb or CQL;
//! - `error.rs`: one error enum, mapped to gRPC statuses in one place.
//!
//! Without `bot.telegram_token` the bot is off: bot-svc serves health and
//! GetStatus (which says so and names the key) and nothing else.

#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
pub mod error;
pub mod follow;
pub mod munity;
pub mod sender;
pub mod store;
pub mod webhook;

use std::{sync::Arc, time::Duration};

pub use config::BotConfig;
use munity_platform::{
    auth::AuthConfig,
    server::{GrpcHost, announce},
    service::{Peer, Service, ServiceConfig},
    shutdown::ShutdownToken,
};
use munity_proto::bot::v1::{
    self as pb,
    bot_server::{Bot as BotRpc, BotServer},
};
use teloxide::prelude::*;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::{chat::Chat, error::BotError, follow::Following, store::BotStore, webhook::Webhook};

/// The largest request bot-svc reads (a webhook's update; Telegram's are a
/// few KiB: a message is at most 4,096 characters). The gateway bounds the
/// HTTP body too (`gateway.max_json_body_bytes`).
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// What to set to turn the bot on.
pub const OFF_HINT: &str = "set bot.telegram_token (and bot.client_id, bot.client_secret: a \
service account with scopes bot.link and bot.act; munity dev makes one on first start) to run \
the Telegram bot";

/// bot-svc as a platform service: `[bot]`, `munity.bot.v1`.
pub struct BotService;

impl Service for BotService {
    const NAME: &'static str = "bot-svc";
    const SECTION: &'static str = "bot";
    const DESCRIPTOR_SET: &'static [u8] = munity_proto::FILE_DESCRIPTOR_SET;
    type Config = BotConfig;
    const PEERS: &'static [Peer] = &[
        Peer {
            key: "users_url",
            upstream: "users",
        },
        Peer {
            key: "events_url",
            upstream: "events",
        },
        Peer {
            key: "notify_url",
            upstream: "notify",
        },
    ];

    async fn run(
        config: ServiceConfig<BotConfig>,
        auth: AuthConfig,
        listener: TcpListener,
        shutdown: ShutdownToken,
    ) -> anyhow::Result<()> {
        run(config, auth, listener, shutdown).await
    }
}

/// GetStatus and ReceiveUpdate.
struct BotApi {
    /// With the bot running: its store and followers.
    running: Option<(Arc<dyn BotStore>, Arc<Following>)>,
    /// With the bot running by webhook.
    webhook: Option<Webhook>,
}

#[tonic::async_trait]
impl BotRpc for BotApi {
    async fn receive_update(
        &self,
        request: Request<pb::ReceiveUpdateRequest>,
    ) -> Result<Response<pb::ReceiveUpdateResponse>, Status> {
        let Some(webhook) = &self.webhook else {
            return Err(Status::failed_precondition(
                "the bot does not run by webhook (bot.webhook_url is not set)",
            ));
        };
        // The secret first: a stranger's post is read no further.
        webhook.check_secret(request.metadata())?;
        webhook.receive(request.into_inner().update).await?;
        Ok(Response::new(pb::ReceiveUpdateResponse {}))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::BotStatus>, Status> {
        let Some((store, following)) = &self.running else {
            return Ok(Response::new(pb::BotStatus {
                enabled: false,
                hint: OFF_HINT.to_owned(),
                ..Default::default()
            }));
        };
        let status = async {
            Ok::<_, BotError>(pb::BotStatus {
                enabled: true,
                hint: String::new(),
                linked_chats: store.list_links().await?.len() as u64,
                queued_messages: store.queue_len().await?,
                following_users: following.count(),
            })
        }
        .await?;
        Ok(Response::new(status))
    }
}

/// Serves bot-svc on `listener` until `shutdown` is cancelled; runs the bot
/// when a token is set.
pub async fn run(
    config: ServiceConfig<BotConfig>,
    auth: AuthConfig,
    listener: TcpListener,
    shutdown: ShutdownToken,
) -> anyhow::Result<()> {
    let own = config.own.clone();
    let webhook_url = webhook::check_config(&own)?;
    let (running, webhook) = if own.telegram_token.is_empty() {
        announce(&format!("bot-svc: off ({OFF_HINT})"));
        (None, None)
    } else {
        let store = store::open(&config.storage).await?;
        let api_url: url::Url = own
            .telegram_api_url
            .parse()
            .map_err(|e| anyhow::anyhow!("bot.telegram_api_url {:?}: {e}", own.telegram_api_url))?;
        let bot = Bot::new(own.telegram_token.clone()).set_api_url(api_url);
        let munity = Arc::new(munity::Munity::new(&own)?);
        let following = Arc::new(Following::default());
        tokio::spawn(sender::run(
            bot.clone(),
            store.clone(),
            own.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(follow::supervise(
            munity.clone(),
            store.clone(),
            own.queue_capacity.max(1),
            following.clone(),
            shutdown.clone(),
        ));
        let chat = Arc::new(Chat {
            bot: bot.clone(),
            munity,
            store: store.clone(),
        });
        let webhook = match webhook_url {
            Some(url) => {
                let shutdown = shutdown.clone();
                let secret = own.webhook_secret.clone();
                tokio::spawn(async move { webhook::set(&bot, url, &secret, &shutdown).await });
                Some(Webhook::new(chat, own.webhook_secret.clone()))
            }
            None => {
                tokio::spawn(poll(bot, chat, own.poll_timeout_secs, shutdown.clone()));
                None
            }
        };
        (Some((store, following)), webhook)
    };
    GrpcHost::new(BotService::DESCRIPTOR_SET)?
        .add_service(
            BotServer::new(BotApi { running, webhook })
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .with_shutdown_grace(config.shutdown_grace())
        .with_auth(
            munity_bus::revocations::remote_verifier(
                &config.bus,
                &auth,
                BotService::NAME,
                &shutdown,
            )
            .await?,
        )
        .serve(listener, shutdown.cancelled_owned())
        .await
}

/// Long polling: `getUpdates` from the stored offset; each update is
/// handled, then the offset moves past it (stored, so a restart neither
/// repeats nor skips one).
async fn poll(bot: Bot, chat: Arc<Chat>, timeout_secs: u32, shutdown: ShutdownToken) {
    webhook::delete(&bot, &shutdown).await;
    let mut offset = chat.store.update_offset().await.unwrap_or(0);
    while !shutdown.is_cancelled() {
        let asked = std::time::Instant::now();
        let updates = tokio::select! {
            () = shutdown.cancelled() => break,
            updates = bot.get_updates().offset(offset as i32).timeout(timeout_secs) => updates,
        };
        let updates = match updates {
            Ok(updates) => updates,
            Err(teloxide::RequestError::RetryAfter(wait)) => {
                tokio::time::sleep(wait.duration()).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "getUpdates failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // An API that answers at once when there is nothing (no long
        // polling, as some stand-ins do) is not asked in a busy loop.
        if updates.is_empty() && asked.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for update in updates {
            let id = update.id.0;
            let handled = chat.on_update(update).await;
            if let Err(error) = handled {
                tracing::warn!(%error, update = id, "update not handled");
            }
            offset = i64::from(id) + 1;
            if let Err(error) = chat.store.set_update_offset(offset).await {
                tracing::warn!(%error, "cannot store the update offset");
            }
        }
    }
}

//! What the bot says: commands, button presses, and how Munity's answers
//! and errors read in a chat. Every command but /start, /help and /link
//! exchanges a token for the chat's user first; an unlinked chat gets the
//! linking help and nothing else.

use std::sync::Arc;

use munity_platform::auth::with_bearer;
use munity_proto::{events::v1 as events_pb, notify::v1 as notify_pb, users::v1 as users_pb};
use teloxide::{
    prelude::*,
    types::{CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, MessageId},
};
use tonic::{Code, Status};

use crate::{
    error::BotError,
    munity::{Munity, UserToken},
    store::{BotStore, Outgoing},
};

pub const HELP: &str = "Munity in Telegram.\n\
/link CODE - link this chat to your Munity account (get the code in Munity: \"Link Telegram\")\n\
/unlink - unlink this chat\n\
/communities - communities\n\
/events - upcoming meetings\n\
/event ID - a meeting, with buttons to vote\n\
/join ID, /leave ID - take part in a meeting, or not\n\
/inbox - your latest notifications";

pub const NOT_LINKED: &str = "This chat is not linked to a Munity account.\n\
In Munity, ask for a link code (\"Link Telegram\"), then send /link CODE here. \
Never send your password to a chat.";

/// What handling needs.
pub struct Chat {
    pub bot: Bot,
    pub munity: Arc<Munity>,
    pub store: Arc<dyn BotStore>,
}

/// How a refusal or failure from Munity reads in the chat.
pub fn explain(status: &Status) -> String {
    match status.code() {
        Code::ResourceExhausted => {
            format!(
                "Munity is busy: try again in {} s.",
                retry_after_secs(status)
            )
        }
        Code::NotFound => "Not found (or not visible to you).".to_owned(),
        Code::PermissionDenied => format!("Refused by Munity: {}", status.message()),
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
            format!("Munity says: {}", status.message())
        }
        _ => "Munity could not answer; try again later.".to_owned(),
    }
}

/// Seconds to wait from a RESOURCE_EXHAUSTED: the `retry-after` header,
/// else "N s" in the message, else 1.
fn retry_after_secs(status: &Status) -> u64 {
    if let Some(secs) = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
    {
        return secs;
    }
    let message = status.message();
    message
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|w| (w[1].starts_with('s')).then(|| w[0].parse().ok()).flatten())
        .unwrap_or(1)
}

/// `YYYY-MM-DD HH:MM UTC` for a protobuf time (days to civil date after
/// Howard Hinnant's published algorithm).
pub fn when(time: &Option<prost_types::Timestamp>) -> String {
    let Some(time) = time else {
        return "?".to_owned();
    };
    let secs = time.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn status_name(status: i32) -> &'static str {
    match events_pb::EventStatus::try_from(status) {
        Ok(events_pb::EventStatus::Voting) => "voting",
        Ok(events_pb::EventStatus::Scheduled) => "scheduled",
        Ok(events_pb::EventStatus::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// A meeting as text, with one button per proposed time (its live count;
/// a press votes or unvotes) and Join / Leave.
pub fn render_event(event: &events_pb::Event) -> (String, Vec<Vec<(String, String)>>) {
    let mut text = format!(
        "{}\n{} - {} going{}\n",
        event.title,
        status_name(event.status),
        event.participant_count,
        if event.capacity > 0 {
            format!(" of {}", event.capacity)
        } else {
            String::new()
        }
    );
    if !event.location.is_empty() {
        text.push_str(&format!("Where: {}\n", event.location));
    }
    let mut buttons = Vec::new();
    for option in &event.options {
        let mine = event.my_votes.contains(&option.id);
        let chosen = event.chosen_option_id == Some(option.id);
        text.push_str(&format!(
            "{}{}. {}: {} votes{}\n",
            if chosen { "* " } else { "" },
            // Ids count from 0; people from 1.
            option.id + 1,
            when(&option.start),
            option.votes,
            if mine { " (yours)" } else { "" }
        ));
        buttons.push(vec![(
            format!(
                "{}{} ({})",
                if mine { "✓ " } else { "" },
                when(&option.start),
                option.votes
            ),
            format!("v:{}:{}", event.id, option.id),
        )]);
    }
    buttons.push(vec![
        ("Join".to_owned(), format!("j:{}", event.id)),
        ("Leave".to_owned(), format!("l:{}", event.id)),
    ]);
    (text, buttons)
}

pub fn keyboard(buttons: &[Vec<(String, String)>]) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(buttons.iter().map(|row| {
        row.iter()
            .map(|(label, data)| InlineKeyboardButton::callback(label.clone(), data.clone()))
            .collect::<Vec<_>>()
    }))
}

impl Chat {
    /// Queues a reply (the sender keeps Telegram's rates).
    async fn say(&self, chat_id: i64, text: impl Into<String>) -> Result<(), BotError> {
        self.say_with(chat_id, text, Vec::new()).await
    }

    async fn say_with(
        &self,
        chat_id: i64,
        text: impl Into<String>,
        buttons: Vec<Vec<(String, String)>>,
    ) -> Result<(), BotError> {
        self.store
            .enqueue(
                &Outgoing {
                    chat_id,
                    text: text.into(),
                    buttons,
                },
                None,
            )
            .await?;
        Ok(())
    }

    /// The chat's user, or `None` after telling the chat how to link.
    async fn user(&self, chat_id: i64) -> Result<Option<UserToken>, BotError> {
        match self.munity.user_token(chat_id).await? {
            Some(token) => {
                if let Ok(user) = token.user_id.parse()
                    && self.store.get_link(chat_id).await? != Some(user)
                {
                    self.store.put_link(chat_id, user).await?;
                }
                Ok(Some(token))
            }
            None => {
                // Unlinked (maybe from the account side): stop following.
                self.store.remove_link(chat_id).await?;
                self.say(chat_id, NOT_LINKED).await?;
                Ok(None)
            }
        }
    }

    /// One update, polled or posted to the webhook: text messages and
    /// button presses; anything else is not for the bot.
    pub async fn on_update(&self, update: teloxide::types::Update) -> Result<(), BotError> {
        use teloxide::types::UpdateKind;
        match update.kind {
            UpdateKind::Message(message) => match message.text() {
                Some(text) => self.on_message(message.chat.id.0, text).await,
                None => Ok(()),
            },
            UpdateKind::CallbackQuery(query) => self.on_callback(query).await,
            UpdateKind::Error(raw) => match lenient_callback(&raw) {
                Some(query) => self.on_callback(query).await,
                None => {
                    // Said, not dropped silently: an update teloxide cannot
                    // read is either a kind newer than it, or a bug here.
                    tracing::warn!(update = update.id.0, %raw, "an update the bot cannot read; skipped");
                    Ok(())
                }
            },
            _ => Ok(()),
        }
    }

    /// One text message.
    pub async fn on_message(&self, chat_id: i64, text: &str) -> Result<(), BotError> {
        let mut words = text.split_whitespace();
        let command = words
            .next()
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let arg = words.collect::<Vec<_>>().join(" ");
        match command.as_str() {
            "/start" | "/help" => {
                let linked = self.store.get_link(chat_id).await?.is_some();
                self.say(chat_id, if linked { HELP } else { NOT_LINKED })
                    .await
            }
            "/link" => self.link(chat_id, &arg).await,
            "/unlink" => {
                let removed = self.munity.unlink(chat_id).await;
                self.store.remove_link(chat_id).await?;
                match removed {
                    Ok(_) => {
                        self.say(chat_id, "Unlinked. This chat sees no Munity data any more.")
                            .await
                    }
                    Err(status) => self.say(chat_id, explain(&status)).await,
                }
            }
            _ => {
                let Some(user) = self.user(chat_id).await? else {
                    return Ok(());
                };
                let answer = self.command(chat_id, &command, &arg, &user).await;
                match answer {
                    Ok(()) => Ok(()),
                    Err(BotError::Munity(status)) => self.say(chat_id, explain(&status)).await,
                    Err(other) => Err(other),
                }
            }
        }
    }

    async fn link(&self, chat_id: i64, code: &str) -> Result<(), BotError> {
        if code.is_empty() {
            return self.say(chat_id, NOT_LINKED).await;
        }
        match self.munity.redeem(chat_id, code).await {
            Ok(link) => {
                if let Ok(user) = link.user_id.parse() {
                    self.store.put_link(chat_id, user).await?;
                }
                let name = match self.munity.user_token(chat_id).await? {
                    Some(token) => self
                        .munity
                        .users
                        .clone()
                        .get_me(with_bearer(users_pb::GetMeRequest {}, &token.token))
                        .await
                        .map(|me| me.into_inner().display_name)
                        .unwrap_or_default(),
                    None => String::new(),
                };
                self.say(
                    chat_id,
                    format!("Linked to {name}. /help lists what I can do."),
                )
                .await
            }
            Err(status) if status.code() == Code::NotFound => {
                self.say(
                    chat_id,
                    "That code is wrong, used or expired. Ask Munity for a new one.",
                )
                .await
            }
            Err(status) => self.say(chat_id, explain(&status)).await,
        }
    }

    async fn command(
        &self,
        chat_id: i64,
        command: &str,
        arg: &str,
        user: &UserToken,
    ) -> Result<(), BotError> {
        let token = &user.token;
        match command {
            "/communities" => {
                let page = self
                    .munity
                    .users
                    .clone()
                    .list_communities(with_bearer(
                        users_pb::ListCommunitiesRequest {
                            page_size: 20,
                            page_token: String::new(),
                        },
                        token,
                    ))
                    .await?
                    .into_inner();
                let mut text = String::from("Communities:\n");
                for community in &page.communities {
                    text.push_str(&format!("- {} ({})\n", community.name, community.id));
                }
                if page.communities.is_empty() {
                    text = "No communities yet.".to_owned();
                }
                self.say(chat_id, text).await
            }
            "/events" => {
                let page = self
                    .munity
                    .events
                    .clone()
                    .list_events(with_bearer(
                        events_pb::ListEventsRequest {
                            filter: events_pb::EventFilter::Upcoming as i32,
                            page_size: 10,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?
                    .into_inner();
                let mut text = String::from("Upcoming meetings:\n");
                for event in &page.events {
                    let start = event
                        .options
                        .iter()
                        .find(|o| Some(o.id) == event.chosen_option_id)
                        .or(event.options.first())
                        .map(|o| when(&o.start))
                        .unwrap_or_default();
                    text.push_str(&format!(
                        "- {} ({}, {}) /event {}\n",
                        event.title,
                        status_name(event.status),
                        start,
                        event.id
                    ));
                }
                if page.events.is_empty() {
                    text = "No upcoming meetings.".to_owned();
                }
                self.say(chat_id, text).await
            }
            "/event" => {
                let event = self.get_event(arg, token).await?;
                let (text, buttons) = render_event(&event);
                self.say_with(chat_id, text, buttons).await
            }
            "/join" => {
                self.munity
                    .events
                    .clone()
                    .join(with_bearer(
                        events_pb::JoinRequest {
                            event_id: arg.to_owned(),
                        },
                        token,
                    ))
                    .await?;
                self.say(chat_id, "You are in.").await
            }
            "/leave" => {
                self.munity
                    .events
                    .clone()
                    .leave(with_bearer(
                        events_pb::LeaveRequest {
                            event_id: arg.to_owned(),
                        },
                        token,
                    ))
                    .await?;
                self.say(chat_id, "You left.").await
            }
            "/inbox" => {
                let inbox = self
                    .munity
                    .notify
                    .clone()
                    .list_inbox(with_bearer(
                        notify_pb::ListInboxRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                        token,
                    ))
                    .await?
                    .into_inner();
                let mut text = String::from("Latest notifications:\n");
                for item in &inbox.items {
                    if let Some(n) = &item.notification {
                        text.push_str(&format!(
                            "- {} {}\n",
                            when(&n.at),
                            crate::follow::describe(n)
                        ));
                    }
                }
                if inbox.items.is_empty() {
                    text = "Your inbox is empty.".to_owned();
                }
                self.say(chat_id, text).await
            }
            _ => self.say(chat_id, HELP).await,
        }
    }

    async fn get_event(&self, id: &str, token: &str) -> Result<events_pb::Event, BotError> {
        Ok(self
            .munity
            .events
            .clone()
            .get_event(with_bearer(
                events_pb::GetEventRequest {
                    event_id: id.to_owned(),
                },
                token,
            ))
            .await?
            .into_inner())
    }

    /// A button press: vote or unvote, join or leave; the message is edited
    /// with the new counts and the press answered. The callback's data is
    /// the client's to forge: whatever meeting it names, events-svc decides
    /// with the chat user's token.
    pub async fn on_callback(&self, query: CallbackQuery) -> Result<(), BotError> {
        let answer = self.press(&query).await;
        let text = match answer {
            Ok(text) => text,
            Err(BotError::Munity(status)) => explain(&status),
            Err(other) => return Err(other),
        };
        match self.bot.answer_callback_query(query.id).text(text).await {
            // Answered; only the answer's body did not parse (stand-ins
            // answer `null` where Telegram says `true`).
            Ok(_) | Err(teloxide::RequestError::InvalidJson { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn press(&self, query: &CallbackQuery) -> Result<String, BotError> {
        let Some(message) = &query.message else {
            return Ok("This message is too old.".to_owned());
        };
        let chat_id = message.chat().id.0;
        let message_id: MessageId = message.id();
        let Some(user) = self.munity.user_token(chat_id).await? else {
            self.store.remove_link(chat_id).await?;
            return Ok(NOT_LINKED.to_owned());
        };
        let data = query.data.as_deref().unwrap_or("");
        let mut parts = data.splitn(3, ':');
        let (kind, event_id, option) = (parts.next(), parts.next(), parts.next());
        let Some(event_id) = event_id else {
            return Ok("Unknown button.".to_owned());
        };
        let mut events = self.munity.events.clone();
        let said = match (kind, option) {
            (Some("v"), Some(option)) => {
                let option_id: u32 = option.parse().unwrap_or(u32::MAX);
                let event = self.get_event(event_id, &user.token).await?;
                let request = events_pb::VoteRequest {
                    event_id: event_id.to_owned(),
                    option_id,
                };
                if event.my_votes.contains(&option_id) {
                    events.unvote(with_bearer(request, &user.token)).await?;
                    "Vote withdrawn."
                } else {
                    events.vote(with_bearer(request, &user.token)).await?;
                    "Vote counted."
                }
            }
            (Some("j"), None) => {
                events
                    .join(with_bearer(
                        events_pb::JoinRequest {
                            event_id: event_id.to_owned(),
                        },
                        &user.token,
                    ))
                    .await?;
                "You are in."
            }
            (Some("l"), None) => {
                events
                    .leave(with_bearer(
                        events_pb::LeaveRequest {
                            event_id: event_id.to_owned(),
                        },
                        &user.token,
                    ))
                    .await?;
                "You left."
            }
            _ => return Ok("Unknown button.".to_owned()),
        };
        let event = self.get_event(event_id, &user.token).await?;
        let (text, buttons) = render_event(&event);
        // Editing is an answer to this press, not a new message: it goes
        // out at once (a failed edit still leaves the vote counted).
        match self
            .bot
            .edit_message_text(ChatId(chat_id), message_id, text)
            .reply_markup(keyboard(&buttons))
            .await
        {
            Ok(_) | Err(teloxide::RequestError::InvalidJson { .. }) => {}
            Err(error) => tracing::warn!(%error, chat_id, "could not edit the meeting's message"),
        }
        Ok(said.to_owned())
    }
}

/// A callback query teloxide could not read because it lacks
/// `chat_instance` (Bot API stand-ins leave it out; the bot does not use
/// it): read again with it empty. Anything else stays unread.
fn lenient_callback(raw: &serde_json::Value) -> Option<CallbackQuery> {
    let mut query = raw.get("callback_query")?.as_object()?.clone();
    query
        .entry("chat_instance")
        .or_insert_with(|| serde_json::Value::String(String::new()));
    serde_json::from_value(serde_json::Value::Object(query))
        .inspect_err(|error| tracing::warn!(%error, "an update that is no callback query"))
        .ok()
}

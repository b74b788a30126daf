//! Chat links for the Telegram bot (bot-svc), without a password ever typed
//! into a chat:
//!
//! 1. a signed-in user asks for a one-time code (CreateLinkCode): 8
//!    characters, 40 random bits, stored as a SHA-256, valid 5 minutes;
//! 2. the user sends `/link CODE` to the bot, which redeems it
//!    (RedeemLinkCode, service tokens with `bot.link`): the code is used up
//!    and the chat bound to the user. Guessing is bounded per chat: after
//!    [`MAX_FAILURES`] wrong codes within [`FAILURE_WINDOW_MS`] the chat is
//!    refused before any code is looked at;
//! 3. for every call on the user's behalf the bot exchanges its own service
//!    token and the chat (ExchangeToken, `bot.act`) for a short-lived token
//!    whose `sub` is the user and whose `act.sub` is the bot (RFC 8693), so
//!    the services authorize the call by their own rules for that user.
//!
//! Unlinking from either side removes the link: the next exchange fails,
//! so an unlinked chat sees nothing within one exchanged token's lifetime.

use munity_platform::auth::{Actor, Claims};
use munity_proto::users::v1 as pb;
use uuid::Uuid;

use super::{UsersApi, convert, sessions::token_hash};
use crate::{
    domain::{ChatLinkRecord, LinkCodeRecord, Millis, now_millis},
    error::UsersError,
    store::StoreError,
};

/// How long a link code works.
pub const CODE_TTL_MS: Millis = 5 * 60 * 1000;
/// Wrong codes a chat may send within [`FAILURE_WINDOW_MS`].
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW_MS: Millis = 10 * 60 * 1000;
/// Lifetime of an exchanged token: short, so an unlink shuts the bot out
/// soon even for a token it already holds.
pub const EXCHANGED_TTL_MS: Millis = 5 * 60 * 1000;
/// No 0/O, 1/I/L: codes are read off a screen and typed.
const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 8;

fn new_code() -> String {
    (0..CODE_LEN)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

/// What a typed code is compared as: upper case, without spaces or dashes.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn link_to_proto(link: &ChatLinkRecord) -> pb::ChatLink {
    pb::ChatLink {
        chat_id: link.chat_id,
        user_id: link.user_id.to_string(),
        linked_at: Some(convert::timestamp(link.linked_at)),
    }
}

impl UsersApi {
    pub(super) async fn create_link_code(
        &self,
        claims: &Claims,
    ) -> Result<pb::LinkCode, UsersError> {
        if claims.is_delegated() {
            return Err(UsersError::PermissionDenied(
                "a token exchanged by a bot cannot make link codes".to_owned(),
            ));
        }
        let user = self.current_user(claims).await?;
        let expires_at = now_millis() + CODE_TTL_MS;
        // A clash of 40 random bits with a live code is all but impossible;
        // a few tries make it impossible in practice.
        for _ in 0..4 {
            let code = new_code();
            let record = LinkCodeRecord {
                code_hash: token_hash(&code),
                user_id: user.id,
                expires_at,
            };
            match self.repo.insert_link_code(&record).await {
                Ok(()) => {
                    tracing::info!(user_id = %user.id, "link code created");
                    return Ok(pb::LinkCode {
                        code,
                        expires_at: Some(convert::timestamp(expires_at)),
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(UsersError::Internal("no free link code".to_owned()))
    }

    pub(super) async fn redeem_link_code(
        &self,
        claims: &Claims,
        request: pb::RedeemLinkCodeRequest,
    ) -> Result<pb::ChatLink, UsersError> {
        let chat_id = request.chat_id;
        let now = now_millis();
        let failures = self
            .repo
            .link_failures(chat_id, now, FAILURE_WINDOW_MS)
            .await?;
        if failures >= MAX_FAILURES {
            return Err(UsersError::TooManyAttempts {
                retry_after_secs: (FAILURE_WINDOW_MS / 1000) as u64,
            });
        }
        let code = normalize(&request.code);
        let taken = if code.len() == CODE_LEN {
            self.repo.take_link_code(&token_hash(&code), now).await?
        } else {
            None
        };
        let Some(code) = taken else {
            self.repo
                .record_link_failure(chat_id, now, FAILURE_WINDOW_MS)
                .await?;
            return Err(UsersError::NotFound("link code"));
        };
        let link = ChatLinkRecord {
            chat_id,
            user_id: code.user_id,
            linked_at: now,
        };
        self.repo.put_chat_link(&link).await?;
        tracing::info!(user_id = %link.user_id, chat_id, bot = %claims.sub, "chat linked");
        Ok(link_to_proto(&link))
    }

    pub(super) async fn list_chat_links(
        &self,
        claims: &Claims,
    ) -> Result<pb::ListChatLinksResponse, UsersError> {
        let user = self.current_user(claims).await?;
        let links = self.repo.list_chat_links(user.id).await?;
        Ok(pb::ListChatLinksResponse {
            links: links.iter().map(link_to_proto).collect(),
        })
    }

    pub(super) async fn unlink(
        &self,
        claims: &Claims,
        request: pb::UnlinkRequest,
    ) -> Result<pb::UnlinkResponse, UsersError> {
        let user = self.current_user(claims).await?;
        let chats: Vec<i64> = if request.chat_id == 0 {
            self.repo
                .list_chat_links(user.id)
                .await?
                .iter()
                .map(|link| link.chat_id)
                .collect()
        } else {
            vec![request.chat_id]
        };
        let mut unlinked = 0;
        for chat_id in chats {
            if self.repo.delete_chat_link(chat_id, Some(user.id)).await? {
                unlinked += 1;
            }
        }
        tracing::info!(user_id = %user.id, unlinked, "chats unlinked by their user");
        Ok(pb::UnlinkResponse { unlinked })
    }

    pub(super) async fn unlink_chat(
        &self,
        request: pb::UnlinkChatRequest,
    ) -> Result<pb::UnlinkResponse, UsersError> {
        let removed = self.repo.delete_chat_link(request.chat_id, None).await?;
        Ok(pb::UnlinkResponse {
            unlinked: u32::from(removed),
        })
    }

    pub(super) async fn exchange_token(
        &self,
        claims: &Claims,
        request: pb::ExchangeTokenRequest,
    ) -> Result<pb::ExchangedToken, UsersError> {
        let link = self
            .repo
            .get_chat_link(request.chat_id)
            .await?
            .ok_or(UsersError::NotFound("chat link"))?;
        let user = self
            .repo
            .get_user(link.user_id)
            .await?
            .ok_or(UsersError::NotFound("chat link"))?;
        let now = now_millis();
        let expires = now + EXCHANGED_TTL_MS;
        let token = Claims {
            sub: user.id,
            iss: self.auth.issuer.clone(),
            aud: self.auth.audience.clone(),
            exp: expires / 1000,
            iat: now / 1000,
            jti: Uuid::now_v7().to_string(),
            // No login session: the link is what stands behind it.
            sid: format!("chat:{}", link.chat_id),
            // A user's ordinary rights only: admin checks refuse delegated
            // tokens anyway (`require_admin`).
            roles: vec![crate::domain::Role::User.as_str().to_owned()],
            scope: String::new(),
            act: Some(Actor {
                sub: claims.sub.to_string(),
            }),
        };
        Ok(pb::ExchangedToken {
            access_token: self.keys.sign(&token)?,
            expires_at: Some(convert::timestamp((expires / 1000) * 1000)),
            user_id: user.id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ALPHABET, CODE_LEN, new_code, normalize};

    #[test]
    fn codes_are_read_back_as_typed() {
        let code = new_code();
        assert_eq!(code.len(), CODE_LEN);
        assert!(code.bytes().all(|b| ALPHABET.contains(&b)));
        let typed = format!(" {}-{} ", &code[..4].to_lowercase(), &code[4..]);
        assert_eq!(normalize(&typed), code);
    }
}

//! The users repository: one trait, two backends, one contract.
//!
//! - [`embedded::EmbeddedStore`] (the default): a redb file under the data
//!   directory; crash-safe, nothing to install.
//! - [`cql::CqlStore`]: ScyllaDB through the `scylla` crate, for scale-out.
//!
//! Both must behave identically; `tests/repository_contract.rs` runs one
//! suite against each. Operations that must be atomic across concurrent
//! replicas (unique emails and service-account names, single-use refresh
//! tokens, joining once) are compare-and-set operations here, so the service
//! logic above never races.

pub mod cql;
mod cql_links;
pub mod embedded;

use std::sync::Arc;

use munity_bus::outbox::Publishing;

use munity_platform::config::StorageConfig;
pub use munity_store::{Page, StoreError, StoreResult};
use uuid::Uuid;

use crate::domain::{
    ChatLinkRecord, CommunityRecord, LinkCodeRecord, MembershipRecord, Millis, RefreshTokenRecord,
    ServiceAccountRecord, SessionRecord, SigningKeyRecord, UserRecord,
};

/// Everything users-svc stores.
#[async_trait::async_trait]
pub trait UsersRepository: Send + Sync + 'static {
    /// Creates an account; `Conflict("email")` when the email is taken, even
    /// when two replicas race for it.
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>>;
    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
    /// Replaces the mutable fields (display name, roles) of an existing
    /// account; `NotFound("user")` when there is none. The email and password
    /// hash are not changed here.
    async fn update_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// Marks the account disabled (or enabled again); whether it exists is
    /// the caller's to check.
    async fn set_user_disabled(&self, id: Uuid, disabled: bool) -> StoreResult<()>;
    /// Whether the account is disabled.
    async fn is_user_disabled(&self, id: Uuid) -> StoreResult<bool>;
    /// Accounts after `after` (exclusive), at most `limit`.
    async fn list_users(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Page<UserRecord>>;

    /// Stages `events` in the outbox on their own (no change with them),
    /// for the relay to publish: revocations, which are staged before the
    /// change they announce, so that a crash in between can refuse a token
    /// early but never leave a revoked one working; and the data
    /// migrations' events (`migrations.rs`).
    async fn stage_events(&self, events: &[munity_bus::DomainEvent]) -> StoreResult<()>;

    /// Whether the one-time data migration `name` (`migrations.rs`; the
    /// name carries its version) has run to its end on this store.
    async fn migration_done(&self, name: &str) -> StoreResult<bool>;
    /// Records that migration `name` ran to its end at `at`; recording it
    /// again is not an error.
    async fn record_migration(&self, name: &str, at: Millis) -> StoreResult<()>;

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()>;
    async fn get_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>>;
    /// Marks the session revoked; revoking twice, or an unknown session, is
    /// not an error.
    async fn revoke_session(&self, id: Uuid) -> StoreResult<()>;

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()>;
    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>>;
    /// Marks the token used. Returns true when this call did it, false when it
    /// was already used (or is unknown): of two concurrent calls exactly one
    /// gets true.
    async fn consume_refresh_token(&self, token_hash: &str) -> StoreResult<bool>;

    async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;
    /// Stores a new key; `Conflict("signing key")` when the kid exists.
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()>;
    /// Sets `retired_at` on every key that has none, except `keep_kid`.
    async fn retire_signing_keys_except(&self, keep_kid: &str, at: Millis) -> StoreResult<()>;

    /// Creates a service account; `Conflict("service account name")` when
    /// its name is taken (ignoring ASCII case,
    /// [`ServiceAccountRecord::name_key`]), even when two replicas race for
    /// it.
    async fn create_service_account(&self, account: &ServiceAccountRecord) -> StoreResult<()>;
    async fn get_service_account(&self, id: Uuid) -> StoreResult<Option<ServiceAccountRecord>>;
    /// Every service account, oldest first. Unpaged: they are a handful of
    /// internal callers, made by hand.
    async fn list_service_accounts(&self) -> StoreResult<Vec<ServiceAccountRecord>>;
    /// Replaces the secret's hash and `secret_rotated_at`, touching nothing
    /// else (a concurrent disable is not undone); returns the account as
    /// stored afterwards, or `NotFound("service account")`.
    async fn set_service_secret(
        &self,
        id: Uuid,
        secret_hash: &str,
        rotated_at: Millis,
    ) -> StoreResult<ServiceAccountRecord>;
    /// Sets `disabled`, touching nothing else (a concurrent rotation is not
    /// undone); returns the account as stored afterwards, or
    /// `NotFound("service account")`.
    async fn set_service_account_disabled(
        &self,
        id: Uuid,
        disabled: bool,
    ) -> StoreResult<ServiceAccountRecord>;

    /// Creates a community with its owner as first member.
    async fn create_community(
        &self,
        community: &CommunityRecord,
        owner: &MembershipRecord,
    ) -> StoreResult<()>;
    async fn get_community(&self, id: Uuid) -> StoreResult<Option<CommunityRecord>>;
    async fn list_communities(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommunityRecord>>;

    /// Adds the membership unless the user is already a member; returns the
    /// stored membership either way (so joining twice keeps the first role).
    async fn add_membership(&self, membership: &MembershipRecord) -> StoreResult<MembershipRecord>;
    async fn get_membership(
        &self,
        community_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<MembershipRecord>>;
    /// Changes the role of an existing membership; `NotFound("membership")`
    /// otherwise.
    async fn update_membership(&self, membership: &MembershipRecord) -> StoreResult<()>;
    /// Returns whether there was a membership to remove.
    async fn remove_membership(&self, community_id: Uuid, user_id: Uuid) -> StoreResult<bool>;
    /// Members ordered by user id, after `after` (exclusive), at most `limit`.
    async fn list_members(
        &self,
        community_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<MembershipRecord>>;

    /// Stores a new link code; `Conflict("link code")` when its hash exists.
    async fn insert_link_code(&self, code: &LinkCodeRecord) -> StoreResult<()>;
    /// Uses the code up: the record when this call took it and it had not
    /// expired at `now`; `None` when it is unknown, used or expired. Of two
    /// concurrent calls at most one gets it.
    async fn take_link_code(
        &self,
        code_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<LinkCodeRecord>>;
    /// Wrong codes `chat_id` sent in `(now - window, now]`.
    async fn link_failures(&self, chat_id: i64, now: Millis, window: Millis) -> StoreResult<u32>;
    /// Counts one wrong code from `chat_id` at `now`, forgotten after
    /// `window`.
    async fn record_link_failure(
        &self,
        chat_id: i64,
        now: Millis,
        window: Millis,
    ) -> StoreResult<()>;
    /// Binds the chat to its user, replacing the chat's earlier link.
    async fn put_chat_link(&self, link: &ChatLinkRecord) -> StoreResult<()>;
    async fn get_chat_link(&self, chat_id: i64) -> StoreResult<Option<ChatLinkRecord>>;
    /// The user's linked chats, ordered by chat id.
    async fn list_chat_links(&self, user_id: Uuid) -> StoreResult<Vec<ChatLinkRecord>>;
    /// Removes the chat's link when it is `user_id`'s (anyone's when
    /// `None`); returns whether one was removed.
    async fn delete_chat_link(&self, chat_id: i64, user_id: Option<Uuid>) -> StoreResult<bool>;
}

/// An open backend: the repository, and what its relay needs
/// (membership changes stage domain events).
pub struct Opened {
    pub repo: Arc<dyn UsersRepository>,
    pub publishing: Publishing,
}

/// Opens the configured backend.
pub async fn open(storage: &StorageConfig) -> anyhow::Result<Opened> {
    Ok(match storage {
        StorageConfig::Embedded { path } => {
            let store = embedded::EmbeddedStore::open(path)?;
            Opened {
                publishing: store.publishing(),
                repo: Arc::new(store),
            }
        }
        StorageConfig::Cql(config) => {
            let store = Arc::new(cql::CqlStore::connect(config).await?);
            Opened {
                publishing: Publishing::cql(store.outbox(), store.clone()),
                repo: store,
            }
        }
    })
}

//! The embedded backend: one redb file, `users.redb`, under the configured
//! directory (see `munity_store::embedded` for why redb and the key and
//! value conventions). Every compare-and-set in the repository contract is
//! a single write transaction, which redb serializes.

use std::path::Path;

use munity_store::{
    StoreError, StoreResult,
    embedded::{
        EmbeddedDb, decode, encode, pair_key, read_all, read_children, read_for_update, read_one,
        read_page,
    },
    internal,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::{Page, UsersRepository};
use crate::domain::{
    ChatLinkRecord, CommunityRecord, LinkCodeRecord, MembershipRecord, Millis, RefreshTokenRecord,
    ServiceAccountRecord, SessionRecord, SigningKeyRecord, UserRecord,
};
use crate::events;

const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, &[u8]> = TableDefinition::new("users_by_email");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// Disabled accounts: user id → when. A table of its own, so records
/// written before it existed need no migration.
const DISABLED_USERS: TableDefinition<&[u8], i64> = TableDefinition::new("disabled_users");
const REFRESH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
const SIGNING_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");
const COMMUNITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("communities");
/// Keyed by `pair_key(community id, user id)`: one community's members are
/// one contiguous range ordered by user id.
const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("community_members");
/// Keyed by id: UUID v7s, so key order is creation order.
const SERVICE_ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("service_accounts");
/// `ServiceAccountRecord::name_key` to id: what makes names unique.
const SERVICE_ACCOUNTS_BY_NAME: TableDefinition<&str, &[u8]> =
    TableDefinition::new("service_accounts_by_name");
/// Link codes by hash; expired ones are swept when a new one is stored.
const LINK_CODES: TableDefinition<&str, &[u8]> = TableDefinition::new("link_codes");
/// A chat's recent wrong codes: the times, oldest first, within the window.
const LINK_FAILURES: TableDefinition<i64, &[u8]> = TableDefinition::new("link_failures");
const CHAT_LINKS: TableDefinition<i64, &[u8]> = TableDefinition::new("chat_links");
/// `user_chat_key(user, chat)` to nothing: one user's chats are one range.
const CHAT_LINKS_BY_USER: TableDefinition<&[u8], ()> = TableDefinition::new("chat_links_by_user");
/// Data migrations run to their end: name → when (`migrations.rs`).
const MIGRATIONS: TableDefinition<&str, i64> = TableDefinition::new("migrations");

/// The redb-backed repository.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: EmbeddedDb,
    /// Where membership changes stage their domain events.
    outbox: munity_bus::outbox::EmbeddedOutbox,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/users.redb`, creating `dir` when missing.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let db = EmbeddedDb::open(dir, "users", |txn| {
            txn.open_table(USERS)?;
            txn.open_table(USERS_BY_EMAIL)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(DISABLED_USERS)?;
            txn.open_table(REFRESH_TOKENS)?;
            txn.open_table(SIGNING_KEYS)?;
            txn.open_table(COMMUNITIES)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(SERVICE_ACCOUNTS)?;
            txn.open_table(SERVICE_ACCOUNTS_BY_NAME)?;
            txn.open_table(LINK_CODES)?;
            txn.open_table(LINK_FAILURES)?;
            txn.open_table(CHAT_LINKS)?;
            txn.open_table(CHAT_LINKS_BY_USER)?;
            txn.open_table(MIGRATIONS)?;
            Ok(())
        })?;
        Ok(EmbeddedStore {
            outbox: munity_bus::outbox::EmbeddedOutbox::new(db.clone())?,
            db,
        })
    }

    /// What the relay needs: the outbox and its cue.
    pub fn publishing(&self) -> munity_bus::outbox::Publishing {
        munity_bus::outbox::Publishing::embedded(&self.outbox)
    }
}

fn id_key(id: &Uuid) -> &[u8] {
    id.as_bytes().as_slice()
}

/// The user's id, then the chat id with its sign bit flipped (so
/// big-endian bytes sort as the numbers do).
fn user_chat_key(user: Uuid, chat: i64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(user.as_bytes());
    key[16..].copy_from_slice(&((chat as u64) ^ (1 << 63)).to_be_bytes());
    key
}

/// Wrong codes kept per chat at most: the limit refuses long before.
const MAX_FAILURES_KEPT: usize = 64;

impl EmbeddedStore {
    /// Changes one service account in one write transaction, so changes to
    /// different fields made at once by two callers both stay.
    async fn change_service_account(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut ServiceAccountRecord) + Send + 'static,
    ) -> StoreResult<ServiceAccountRecord> {
        self.db
            .write(move |txn| {
                let mut accounts = txn.open_table(SERVICE_ACCOUNTS).map_err(internal)?;
                let mut account: ServiceAccountRecord = read_for_update(&accounts, id_key(&id))?
                    .ok_or(StoreError::NotFound("service account"))?;
                change(&mut account);
                accounts
                    .insert(id_key(&id), encode(&account)?.as_slice())
                    .map_err(internal)?;
                Ok(account)
            })
            .await
    }
}

#[async_trait::async_trait]
impl UsersRepository for EmbeddedStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let user = user.clone();
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(internal)?;
                if by_email
                    .get(user.email.as_str())
                    .map_err(internal)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("email"));
                }
                by_email
                    .insert(user.email.as_str(), id_key(&user.id))
                    .map_err(internal)?;
                txn.open_table(USERS)
                    .map_err(internal)?
                    .insert(id_key(&user.id), encode(&user)?.as_slice())
                    .map_err(internal)?;
                outbox.stage(txn, &[events::profile_changed(&user, user.created_at)])
            })
            .await
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn set_user_disabled(&self, id: Uuid, disabled: bool) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                let mut table = txn.open_table(DISABLED_USERS).map_err(internal)?;
                if disabled {
                    table
                        .insert(id_key(&id), crate::domain::now_millis())
                        .map_err(internal)?;
                } else {
                    table.remove(id_key(&id)).map_err(internal)?;
                }
                Ok(())
            })
            .await
    }

    async fn is_user_disabled(&self, id: Uuid) -> StoreResult<bool> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(DISABLED_USERS).map_err(internal)?;
                Ok(table.get(id_key(&id)).map_err(internal)?.is_some())
            })
            .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        self.db
            .blocking(move |db| read_one(db, USERS, id_key(&id)))
            .await
    }

    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let email = email.to_owned();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let by_email = txn.open_table(USERS_BY_EMAIL).map_err(internal)?;
                let Some(id) = by_email.get(email.as_str()).map_err(internal)? else {
                    return Ok(None);
                };
                let users = txn.open_table(USERS).map_err(internal)?;
                match users.get(id.value()).map_err(internal)? {
                    Some(value) => decode(value.value()).map(Some),
                    None => Ok(None),
                }
            })
            .await
    }

    async fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        let update = user.clone();
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let mut users = txn.open_table(USERS).map_err(internal)?;
                let key = id_key(&update.id);
                let mut stored: UserRecord =
                    read_for_update(&users, key)?.ok_or(StoreError::NotFound("user"))?;
                stored.display_name = update.display_name;
                stored.roles = update.roles;
                users
                    .insert(key, encode(&stored)?.as_slice())
                    .map_err(internal)?;
                let at = crate::domain::now_millis();
                outbox.stage(txn, &[events::profile_changed(&stored, at)])
            })
            .await
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn list_users(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        self.db
            .blocking(move |db| {
                let start = after.unwrap_or(Uuid::nil());
                read_page(db, USERS, id_key(&start), None, limit, |u: &UserRecord| {
                    u.id
                })
            })
            .await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let session = session.clone();
        self.db
            .write(move |txn| {
                txn.open_table(SESSIONS)
                    .map_err(internal)?
                    .insert(id_key(&session.id), encode(&session)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        self.db
            .blocking(move |db| read_one(db, SESSIONS, id_key(&id)))
            .await
    }

    async fn stage_events(&self, events: &[munity_bus::DomainEvent]) -> StoreResult<()> {
        let events = events.to_vec();
        self.outbox
            .write(move |_txn| Ok(((), events.clone())))
            .await
    }

    async fn migration_done(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(MIGRATIONS).map_err(internal)?;
                Ok(table.get(name.as_str()).map_err(internal)?.is_some())
            })
            .await
    }

    async fn record_migration(&self, name: &str, at: Millis) -> StoreResult<()> {
        let name = name.to_owned();
        self.db
            .write(move |txn| {
                txn.open_table(MIGRATIONS)
                    .map_err(internal)?
                    .insert(name.as_str(), at)
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn revoke_session(&self, id: Uuid) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                let mut sessions = txn.open_table(SESSIONS).map_err(internal)?;
                if let Some(mut session) =
                    read_for_update::<_, SessionRecord>(&sessions, id_key(&id))?
                {
                    session.revoked = true;
                    sessions
                        .insert(id_key(&id), encode(&session)?.as_slice())
                        .map_err(internal)?;
                }
                Ok(())
            })
            .await
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        let token = token.clone();
        self.db
            .write(move |txn| {
                txn.open_table(REFRESH_TOKENS)
                    .map_err(internal)?
                    .insert(token.token_hash.as_str(), encode(&token)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
        let token_hash = token_hash.to_owned();
        self.db
            .blocking(move |db| read_one(db, REFRESH_TOKENS, token_hash.as_str()))
            .await
    }

    async fn consume_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let token_hash = token_hash.to_owned();
        self.db
            .write(move |txn| {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(internal)?;
                match read_for_update::<_, RefreshTokenRecord>(&tokens, token_hash.as_str())? {
                    Some(mut token) if !token.used => {
                        token.used = true;
                        tokens
                            .insert(token_hash.as_str(), encode(&token)?.as_slice())
                            .map_err(internal)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })
            .await
    }

    async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.db.blocking(|db| read_all(db, SIGNING_KEYS)).await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let key = key.clone();
        self.db
            .write(move |txn| {
                let mut keys = txn.open_table(SIGNING_KEYS).map_err(internal)?;
                if keys.get(key.kid.as_str()).map_err(internal)?.is_some() {
                    return Err(StoreError::Conflict("signing key"));
                }
                keys.insert(key.kid.as_str(), encode(&key)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn retire_signing_keys_except(&self, keep_kid: &str, at: Millis) -> StoreResult<()> {
        let keep_kid = keep_kid.to_owned();
        self.db
            .write(move |txn| {
                let mut keys = txn.open_table(SIGNING_KEYS).map_err(internal)?;
                let mut to_retire: Vec<SigningKeyRecord> = Vec::new();
                for entry in keys.iter().map_err(internal)? {
                    let (_, value) = entry.map_err(internal)?;
                    let key: SigningKeyRecord = decode(value.value())?;
                    if key.kid != keep_kid && key.retired_at.is_none() {
                        to_retire.push(key);
                    }
                }
                for mut key in to_retire {
                    key.retired_at = Some(at);
                    keys.insert(key.kid.as_str(), encode(&key)?.as_slice())
                        .map_err(internal)?;
                }
                Ok(())
            })
            .await
    }

    async fn create_service_account(&self, account: &ServiceAccountRecord) -> StoreResult<()> {
        let account = account.clone();
        self.db
            .write(move |txn| {
                let name_key = account.name_key();
                let mut by_name = txn.open_table(SERVICE_ACCOUNTS_BY_NAME).map_err(internal)?;
                if by_name.get(name_key.as_str()).map_err(internal)?.is_some() {
                    return Err(StoreError::Conflict("service account name"));
                }
                let mut accounts = txn.open_table(SERVICE_ACCOUNTS).map_err(internal)?;
                if accounts
                    .get(id_key(&account.id))
                    .map_err(internal)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("service account"));
                }
                by_name
                    .insert(name_key.as_str(), id_key(&account.id))
                    .map_err(internal)?;
                accounts
                    .insert(id_key(&account.id), encode(&account)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get_service_account(&self, id: Uuid) -> StoreResult<Option<ServiceAccountRecord>> {
        self.db
            .blocking(move |db| read_one(db, SERVICE_ACCOUNTS, id_key(&id)))
            .await
    }

    async fn list_service_accounts(&self) -> StoreResult<Vec<ServiceAccountRecord>> {
        // Key order is id order, and v7 ids are in creation order; sorted
        // by time anyway, as the CQL backend must.
        let mut accounts: Vec<ServiceAccountRecord> = self
            .db
            .blocking(|db| read_all(db, SERVICE_ACCOUNTS))
            .await?;
        accounts.sort_by_key(|a| (a.created_at, a.id));
        Ok(accounts)
    }

    async fn set_service_secret(
        &self,
        id: Uuid,
        secret_hash: &str,
        rotated_at: Millis,
    ) -> StoreResult<ServiceAccountRecord> {
        let secret_hash = secret_hash.to_owned();
        self.change_service_account(id, move |account| {
            account.secret_hash = secret_hash;
            account.secret_rotated_at = rotated_at;
        })
        .await
    }

    async fn set_service_account_disabled(
        &self,
        id: Uuid,
        disabled: bool,
    ) -> StoreResult<ServiceAccountRecord> {
        self.change_service_account(id, move |account| account.disabled = disabled)
            .await
    }

    async fn create_community(
        &self,
        community: &CommunityRecord,
        owner: &MembershipRecord,
    ) -> StoreResult<()> {
        let (community, owner) = (community.clone(), owner.clone());
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let mut communities = txn.open_table(COMMUNITIES).map_err(internal)?;
                let key = id_key(&community.id);
                if communities.get(key).map_err(internal)?.is_some() {
                    return Err(StoreError::Conflict("community"));
                }
                communities
                    .insert(key, encode(&community)?.as_slice())
                    .map_err(internal)?;
                txn.open_table(MEMBERS)
                    .map_err(internal)?
                    .insert(
                        pair_key(owner.community_id, owner.user_id).as_slice(),
                        encode(&owner)?.as_slice(),
                    )
                    .map_err(internal)?;
                outbox.stage(
                    txn,
                    &[
                        events::community_created(&community),
                        events::member_joined(&owner),
                    ],
                )
            })
            .await
            // Staged events: the relay can go now.
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn get_community(&self, id: Uuid) -> StoreResult<Option<CommunityRecord>> {
        self.db
            .blocking(move |db| read_one(db, COMMUNITIES, id_key(&id)))
            .await
    }

    async fn list_communities(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommunityRecord>> {
        self.db
            .blocking(move |db| {
                let start = after.unwrap_or(Uuid::nil());
                read_page(
                    db,
                    COMMUNITIES,
                    id_key(&start),
                    None,
                    limit,
                    |c: &CommunityRecord| c.id,
                )
            })
            .await
    }

    async fn add_membership(&self, membership: &MembershipRecord) -> StoreResult<MembershipRecord> {
        let membership = membership.clone();
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let mut members = txn.open_table(MEMBERS).map_err(internal)?;
                let key = pair_key(membership.community_id, membership.user_id);
                if let Some(existing) = read_for_update(&members, key.as_slice())? {
                    return Ok(existing);
                }
                members
                    .insert(key.as_slice(), encode(&membership)?.as_slice())
                    .map_err(internal)?;
                outbox.stage(txn, &[events::member_joined(&membership)])?;
                Ok(membership)
            })
            .await
            // Staged events: the relay can go now.
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn get_membership(
        &self,
        community_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<MembershipRecord>> {
        self.db
            .blocking(move |db| read_one(db, MEMBERS, pair_key(community_id, user_id).as_slice()))
            .await
    }

    async fn update_membership(&self, membership: &MembershipRecord) -> StoreResult<()> {
        let membership = membership.clone();
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let mut members = txn.open_table(MEMBERS).map_err(internal)?;
                let key = pair_key(membership.community_id, membership.user_id);
                if members.get(key.as_slice()).map_err(internal)?.is_none() {
                    return Err(StoreError::NotFound("membership"));
                }
                members
                    .insert(key.as_slice(), encode(&membership)?.as_slice())
                    .map_err(internal)?;
                outbox.stage(txn, &[events::member_role_changed(&membership)])
            })
            .await
            // Staged events: the relay can go now.
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn remove_membership(&self, community_id: Uuid, user_id: Uuid) -> StoreResult<bool> {
        let outbox = self.outbox.table();
        self.db
            .write(move |txn| {
                let removed = txn
                    .open_table(MEMBERS)
                    .map_err(internal)?
                    .remove(pair_key(community_id, user_id).as_slice())
                    .map_err(internal)?
                    .is_some();
                if removed {
                    outbox.stage(txn, &[events::member_left(community_id, user_id)])?;
                }
                Ok(removed)
            })
            .await
            // Staged events: the relay can go now.
            .inspect(|_| self.outbox.notify_staged())
    }

    async fn list_members(
        &self,
        community_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<MembershipRecord>> {
        self.db
            .blocking(move |db| {
                read_children(
                    db,
                    MEMBERS,
                    community_id,
                    after,
                    limit,
                    |m: &MembershipRecord| m.user_id,
                )
            })
            .await
    }

    async fn insert_link_code(&self, code: &LinkCodeRecord) -> StoreResult<()> {
        let code = code.clone();
        self.db
            .write(move |txn| {
                let mut codes = txn.open_table(LINK_CODES).map_err(internal)?;
                // Expired codes go here, so the table holds only the codes
                // of the last few minutes.
                let now = munity_store::now_millis();
                codes
                    .retain(|_, value| {
                        decode::<LinkCodeRecord>(value).is_ok_and(|c| c.expires_at > now)
                    })
                    .map_err(internal)?;
                if codes
                    .get(code.code_hash.as_str())
                    .map_err(internal)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("link code"));
                }
                codes
                    .insert(code.code_hash.as_str(), encode(&code)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn take_link_code(
        &self,
        code_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<LinkCodeRecord>> {
        let code_hash = code_hash.to_owned();
        self.db
            .write(move |txn| {
                let mut codes = txn.open_table(LINK_CODES).map_err(internal)?;
                let taken = codes
                    .remove(code_hash.as_str())
                    .map_err(internal)?
                    .map(|value| decode::<LinkCodeRecord>(value.value()))
                    .transpose()?;
                Ok(taken.filter(|code| code.expires_at > now))
            })
            .await
    }

    async fn link_failures(&self, chat_id: i64, now: Millis, window: Millis) -> StoreResult<u32> {
        let times: Option<Vec<Millis>> = self
            .db
            .blocking(move |db| read_one(db, LINK_FAILURES, chat_id))
            .await?;
        Ok(times
            .unwrap_or_default()
            .iter()
            .filter(|&&at| at > now - window)
            .count() as u32)
    }

    async fn record_link_failure(
        &self,
        chat_id: i64,
        now: Millis,
        window: Millis,
    ) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                let mut failures = txn.open_table(LINK_FAILURES).map_err(internal)?;
                let mut times: Vec<Millis> =
                    read_for_update(&failures, chat_id)?.unwrap_or_default();
                times.retain(|&at| at > now - window);
                times.push(now);
                if times.len() > MAX_FAILURES_KEPT {
                    times.drain(..times.len() - MAX_FAILURES_KEPT);
                }
                failures
                    .insert(chat_id, encode(&times)?.as_slice())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn put_chat_link(&self, link: &ChatLinkRecord) -> StoreResult<()> {
        let link = link.clone();
        self.db
            .write(move |txn| {
                let mut links = txn.open_table(CHAT_LINKS).map_err(internal)?;
                let mut by_user = txn.open_table(CHAT_LINKS_BY_USER).map_err(internal)?;
                if let Some(old) = read_for_update::<_, ChatLinkRecord>(&links, link.chat_id)? {
                    by_user
                        .remove(user_chat_key(old.user_id, old.chat_id).as_slice())
                        .map_err(internal)?;
                }
                links
                    .insert(link.chat_id, encode(&link)?.as_slice())
                    .map_err(internal)?;
                by_user
                    .insert(user_chat_key(link.user_id, link.chat_id).as_slice(), ())
                    .map_err(internal)?;
                Ok(())
            })
            .await
    }

    async fn get_chat_link(&self, chat_id: i64) -> StoreResult<Option<ChatLinkRecord>> {
        self.db
            .blocking(move |db| read_one(db, CHAT_LINKS, chat_id))
            .await
    }

    async fn list_chat_links(&self, user_id: Uuid) -> StoreResult<Vec<ChatLinkRecord>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let by_user = txn.open_table(CHAT_LINKS_BY_USER).map_err(internal)?;
                let links = txn.open_table(CHAT_LINKS).map_err(internal)?;
                let start = user_chat_key(user_id, i64::MIN);
                let end = user_chat_key(user_id, i64::MAX);
                let mut found = Vec::new();
                for entry in by_user
                    .range::<&[u8]>(start.as_slice()..=end.as_slice())
                    .map_err(internal)?
                {
                    let (key, _) = entry.map_err(internal)?;
                    let key = key.value();
                    let mut chat = [0u8; 8];
                    chat.copy_from_slice(&key[16..24]);
                    let chat_id = (u64::from_be_bytes(chat) ^ (1 << 63)) as i64;
                    if let Some(value) = links.get(chat_id).map_err(internal)? {
                        found.push(decode(value.value())?);
                    }
                }
                Ok(found)
            })
            .await
    }

    async fn delete_chat_link(&self, chat_id: i64, user_id: Option<Uuid>) -> StoreResult<bool> {
        self.db
            .write(move |txn| {
                let mut links = txn.open_table(CHAT_LINKS).map_err(internal)?;
                let Some(link) = read_for_update::<_, ChatLinkRecord>(&links, chat_id)? else {
                    return Ok(false);
                };
                if user_id.is_some_and(|user| user != link.user_id) {
                    return Ok(false);
                }
                links.remove(chat_id).map_err(internal)?;
                txn.open_table(CHAT_LINKS_BY_USER)
                    .map_err(internal)?
                    .remove(user_chat_key(link.user_id, chat_id).as_slice())
                    .map_err(internal)?;
                Ok(true)
            })
            .await
    }
}

//! The embedded backend: one redb file, `users.redb`, under the configured
//! directory. redb commits are atomic and durable (copy-on-write B-trees with
//! a checksummed commit), so a crash loses at most the call in flight. Every
//! compare-and-set in the repository contract is a single write transaction,
//! which redb serializes.
//!
//! Keys are raw UUID bytes; ids are UUIDv7, so key order is creation order,
//! which gives listings a stable order for free. Values are JSON, so a field
//! added later with a serde default needs no migration.

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

use super::{Page, StoreError, StoreResult, UsersRepository, page_from};
use crate::domain::{
    CommunityRecord, MembershipRecord, Millis, RefreshTokenRecord, SessionRecord, SigningKeyRecord,
    UserRecord,
};

const USERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("users");
const USERS_BY_EMAIL: TableDefinition<&str, &[u8]> = TableDefinition::new("users_by_email");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const REFRESH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
const SIGNING_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signing_keys");
const COMMUNITIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("communities");
/// Keyed by community id bytes followed by user id bytes, so one community's
/// members are one contiguous range ordered by user id.
const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("community_members");

/// The redb-backed repository.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/users.redb`, creating `dir` when missing.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join("users.redb");
        let db = Database::create(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open {} (is another munity process using it?): {e}",
                path.display()
            )
        })?;
        // Create every table up front so read transactions never meet a
        // missing one.
        let txn = db.begin_write()?;
        txn.open_table(USERS)?;
        txn.open_table(USERS_BY_EMAIL)?;
        txn.open_table(SESSIONS)?;
        txn.open_table(REFRESH_TOKENS)?;
        txn.open_table(SIGNING_KEYS)?;
        txn.open_table(COMMUNITIES)?;
        txn.open_table(MEMBERS)?;
        txn.commit()?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// redb blocks on disk I/O (fsync on commit), so every operation runs on
    /// tokio's blocking pool rather than stalling the async workers.
    async fn blocking<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || operation(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }
}

fn internal(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(error.to_string())
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(internal)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(internal)
}

fn member_key(community_id: Uuid, user_id: Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(community_id.as_bytes());
    key[16..].copy_from_slice(user_id.as_bytes());
    key
}

/// Reads one JSON record by key from `table`.
fn read_one<K, T>(
    db: &Database,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
) -> StoreResult<Option<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(table).map_err(internal)?;
    match table.get(key).map_err(internal)? {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// Up to `limit + 1` records with keys in `(after, end)`, as a page.
fn read_page<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&[u8], &[u8]>,
    start_exclusive: &[u8],
    end_exclusive: Option<&[u8]>,
    limit: usize,
    key_of: impl Fn(&T) -> Uuid,
) -> StoreResult<Page<T>> {
    use std::ops::Bound;
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(table).map_err(internal)?;
    let end = match end_exclusive {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    let mut items = Vec::with_capacity(limit + 1);
    for entry in table
        .range::<&[u8]>((Bound::Excluded(start_exclusive), end))
        .map_err(internal)?
    {
        let (_, value) = entry.map_err(internal)?;
        items.push(decode(value.value())?);
        if items.len() > limit {
            break;
        }
    }
    Ok(page_from(items, limit, key_of))
}

#[async_trait::async_trait]
impl UsersRepository for EmbeddedStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let user = user.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut by_email = txn.open_table(USERS_BY_EMAIL).map_err(internal)?;
                if by_email
                    .get(user.email.as_str())
                    .map_err(internal)?
                    .is_some()
                {
                    return Err(StoreError::Conflict("email"));
                }
                by_email
                    .insert(user.email.as_str(), user.id.as_bytes().as_slice())
                    .map_err(internal)?;
                let mut users = txn.open_table(USERS).map_err(internal)?;
                users
                    .insert(user.id.as_bytes().as_slice(), encode(&user)?.as_slice())
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        self.blocking(move |db| read_one(db, USERS, id.as_bytes().as_slice()))
            .await
    }

    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let email = email.to_owned();
        self.blocking(move |db| {
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
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut users = txn.open_table(USERS).map_err(internal)?;
                let key = update.id.as_bytes().as_slice();
                let mut stored: UserRecord = match users.get(key).map_err(internal)? {
                    Some(value) => decode(value.value())?,
                    None => return Err(StoreError::NotFound("user")),
                };
                stored.display_name = update.display_name;
                stored.roles = update.roles;
                users
                    .insert(key, encode(&stored)?.as_slice())
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn list_users(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        self.blocking(move |db| {
            let start = after.unwrap_or(Uuid::nil());
            read_page(
                db,
                USERS,
                start.as_bytes(),
                None,
                limit,
                |u: &UserRecord| u.id,
            )
        })
        .await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let session = session.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            txn.open_table(SESSIONS)
                .map_err(internal)?
                .insert(
                    session.id.as_bytes().as_slice(),
                    encode(&session)?.as_slice(),
                )
                .map_err(internal)?;
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn get_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        self.blocking(move |db| read_one(db, SESSIONS, id.as_bytes().as_slice()))
            .await
    }

    async fn revoke_session(&self, id: Uuid) -> StoreResult<()> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut sessions = txn.open_table(SESSIONS).map_err(internal)?;
                let key = id.as_bytes().as_slice();
                let stored: Option<SessionRecord> = match sessions.get(key).map_err(internal)? {
                    Some(value) => Some(decode(value.value())?),
                    None => None,
                };
                if let Some(mut session) = stored {
                    session.revoked = true;
                    sessions
                        .insert(key, encode(&session)?.as_slice())
                        .map_err(internal)?;
                }
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        let token = token.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            txn.open_table(REFRESH_TOKENS)
                .map_err(internal)?
                .insert(token.token_hash.as_str(), encode(&token)?.as_slice())
                .map_err(internal)?;
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
        let token_hash = token_hash.to_owned();
        self.blocking(move |db| read_one(db, REFRESH_TOKENS, token_hash.as_str()))
            .await
    }

    async fn consume_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        let token_hash = token_hash.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            let consumed = {
                let mut tokens = txn.open_table(REFRESH_TOKENS).map_err(internal)?;
                let stored: Option<RefreshTokenRecord> =
                    match tokens.get(token_hash.as_str()).map_err(internal)? {
                        Some(value) => Some(decode(value.value())?),
                        None => None,
                    };
                match stored {
                    Some(mut token) if !token.used => {
                        token.used = true;
                        tokens
                            .insert(token_hash.as_str(), encode(&token)?.as_slice())
                            .map_err(internal)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(internal)?;
            Ok(consumed)
        })
        .await
    }

    async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(internal)?;
            let keys = txn.open_table(SIGNING_KEYS).map_err(internal)?;
            let mut all = Vec::new();
            for entry in keys.iter().map_err(internal)? {
                let (_, value) = entry.map_err(internal)?;
                all.push(decode(value.value())?);
            }
            Ok(all)
        })
        .await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let key = key.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut keys = txn.open_table(SIGNING_KEYS).map_err(internal)?;
                if keys.get(key.kid.as_str()).map_err(internal)?.is_some() {
                    return Err(StoreError::Conflict("signing key"));
                }
                keys.insert(key.kid.as_str(), encode(&key)?.as_slice())
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn retire_signing_keys_except(&self, keep_kid: &str, at: Millis) -> StoreResult<()> {
        let keep_kid = keep_kid.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
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
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn create_community(
        &self,
        community: &CommunityRecord,
        owner: &MembershipRecord,
    ) -> StoreResult<()> {
        let (community, owner) = (community.clone(), owner.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut communities = txn.open_table(COMMUNITIES).map_err(internal)?;
                let key = community.id.as_bytes().as_slice();
                if communities.get(key).map_err(internal)?.is_some() {
                    return Err(StoreError::Conflict("community"));
                }
                communities
                    .insert(key, encode(&community)?.as_slice())
                    .map_err(internal)?;
                txn.open_table(MEMBERS)
                    .map_err(internal)?
                    .insert(
                        member_key(owner.community_id, owner.user_id).as_slice(),
                        encode(&owner)?.as_slice(),
                    )
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn get_community(&self, id: Uuid) -> StoreResult<Option<CommunityRecord>> {
        self.blocking(move |db| read_one(db, COMMUNITIES, id.as_bytes().as_slice()))
            .await
    }

    async fn list_communities(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommunityRecord>> {
        self.blocking(move |db| {
            let start = after.unwrap_or(Uuid::nil());
            read_page(
                db,
                COMMUNITIES,
                start.as_bytes(),
                None,
                limit,
                |c: &CommunityRecord| c.id,
            )
        })
        .await
    }

    async fn add_membership(&self, membership: &MembershipRecord) -> StoreResult<MembershipRecord> {
        let membership = membership.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            let stored = {
                let mut members = txn.open_table(MEMBERS).map_err(internal)?;
                let key = member_key(membership.community_id, membership.user_id);
                let existing: Option<MembershipRecord> =
                    match members.get(key.as_slice()).map_err(internal)? {
                        Some(value) => Some(decode(value.value())?),
                        None => None,
                    };
                match existing {
                    Some(existing) => existing,
                    None => {
                        members
                            .insert(key.as_slice(), encode(&membership)?.as_slice())
                            .map_err(internal)?;
                        membership
                    }
                }
            };
            txn.commit().map_err(internal)?;
            Ok(stored)
        })
        .await
    }

    async fn get_membership(
        &self,
        community_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<MembershipRecord>> {
        self.blocking(move |db| read_one(db, MEMBERS, member_key(community_id, user_id).as_slice()))
            .await
    }

    async fn update_membership(&self, membership: &MembershipRecord) -> StoreResult<()> {
        let membership = membership.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            {
                let mut members = txn.open_table(MEMBERS).map_err(internal)?;
                let key = member_key(membership.community_id, membership.user_id);
                if members.get(key.as_slice()).map_err(internal)?.is_none() {
                    return Err(StoreError::NotFound("membership"));
                }
                members
                    .insert(key.as_slice(), encode(&membership)?.as_slice())
                    .map_err(internal)?;
            }
            txn.commit().map_err(internal)
        })
        .await
    }

    async fn remove_membership(&self, community_id: Uuid, user_id: Uuid) -> StoreResult<bool> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(internal)?;
            let removed = txn
                .open_table(MEMBERS)
                .map_err(internal)?
                .remove(member_key(community_id, user_id).as_slice())
                .map_err(internal)?
                .is_some();
            txn.commit().map_err(internal)?;
            Ok(removed)
        })
        .await
    }

    async fn list_members(
        &self,
        community_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<MembershipRecord>> {
        self.blocking(move |db| {
            let start = member_key(community_id, after.unwrap_or(Uuid::nil()));
            // The first key past this community: its id plus one, as a
            // 128-bit number (no community has the all-ones id).
            let next_community = Uuid::from_u128(community_id.as_u128().wrapping_add(1));
            let end = member_key(next_community, Uuid::nil());
            let end = (community_id != Uuid::max()).then_some(end);
            read_page(
                db,
                MEMBERS,
                start.as_slice(),
                end.as_ref().map(|e| e.as_slice()),
                limit,
                |m: &MembershipRecord| m.user_id,
            )
        })
        .await
    }
}

//! A service's view of community memberships, kept from users-svc's domain
//! events (`munity.users.v1.MemberJoined`, `MemberLeft`,
//! `MemberRoleChanged`, and `ProfileChanged` for display names) by a
//! consumer group on the event log, so deciding who sees a community's
//! meetings or posts, or which member `@Ada Lovelace` names, needs no call
//! to users-svc.
//!
//! Members by name: users' display names ([`name_key`] folded) and an index
//! of (community, folded name, user). The index is only where to look:
//! [`MembershipView::members_named`] answers a user only while their
//! current name folds to the key and they are a member. So an entry a race
//! leaves behind (on CQL, two replicas applying a join and a rename at
//! once) is passed over, and none is missing: a join writes the membership
//! before it reads the name, a rename writes the name before it reads the
//! memberships, so at least one of the two sees the other and writes the
//! entry.
//!
//! Written once for every service that needs it (events-svc, discuss-svc):
//! the view lives in the service's own store (a table pair in its redb
//! file, or in its keyspace), and [`follow`] keeps it. It lags users-svc by
//! the outbox relay's delay; applying an event sets the state it describes,
//! so a redelivery is harmless.

use std::sync::Arc;

use async_trait::async_trait;
use munity_platform::shutdown::ShutdownToken;
use munity_proto::users::v1 as users;
use munity_store::{
    StoreError, StoreResult,
    cql::CqlStore,
    embedded::{EmbeddedDb, decode, encode, pair_key},
};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ConsumerLoop, DomainEvent, EventLog};

/// A user's role in a community: users-svc's record of it, and every
/// view's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Member,
    Moderator,
    Owner,
}

impl MemberRole {
    /// Moderators and owners moderate.
    pub fn moderates(self) -> bool {
        self >= MemberRole::Moderator
    }

    /// As stored (CQL text, config).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Member => "member",
            MemberRole::Moderator => "moderator",
            MemberRole::Owner => "owner",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "member" => Some(MemberRole::Member),
            "moderator" => Some(MemberRole::Moderator),
            "owner" => Some(MemberRole::Owner),
            _ => None,
        }
    }

    /// The wire role, in users-svc's answers and in the domain events the
    /// views are kept from.
    pub fn to_proto(self) -> users::MemberRole {
        match self {
            MemberRole::Member => users::MemberRole::Member,
            MemberRole::Moderator => users::MemberRole::Moderator,
            MemberRole::Owner => users::MemberRole::Owner,
        }
    }

    /// users-svc's wire role (unknown values read as a plain member).
    pub fn from_users(raw: i32) -> Self {
        match users::MemberRole::try_from(raw) {
            Ok(users::MemberRole::Owner) => MemberRole::Owner,
            Ok(users::MemberRole::Moderator) => MemberRole::Moderator,
            _ => MemberRole::Member,
        }
    }
}

/// Who is in which community, with what role.
#[async_trait]
pub trait MembershipView: Send + Sync + 'static {
    /// Sets `user`'s role in `community`; `None` removes the membership.
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()>;

    /// `user`'s role in `community`, `None` when not a member.
    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>>;

    /// Every community `user` belongs to, by community id.
    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>>;

    /// The first `limit` members of `community`, by user id (bounded: a
    /// community may have any number).
    async fn members_of(&self, community: Uuid, limit: usize) -> StoreResult<Vec<Uuid>>;

    /// Sets `user`'s display name as of `at_ms` (users-svc's clock); a name
    /// older than the one kept is ignored (events may arrive out of order
    /// across replicas), the same one again changes nothing.
    async fn set_display_name(&self, user: Uuid, name: &str, at_ms: i64) -> StoreResult<()>;

    /// `user`'s display name, as far as the view knows it.
    async fn display_name(&self, user: Uuid) -> StoreResult<Option<String>>;

    /// The longest of `keys` (folded names, [`name_key`]) that is the name
    /// of at least one member of `community`, with those members (by user
    /// id, at most `limit`); `None` when no key names a member.
    async fn members_named(
        &self,
        community: Uuid,
        keys: &[String],
        limit: usize,
    ) -> StoreResult<Option<(String, Vec<Uuid>)>>;
}

/// The longest display name users-svc takes, in characters.
pub const DISPLAY_NAME_MAX: usize = 64;

/// A display name as members are found by it: lower-cased, every run of
/// whitespace (spaces, tabs, newlines) one space, no whitespace at either
/// end. `Ada  LOVELACE` and `ada lovelace` are the same name.
pub fn name_key(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for word in name.split_whitespace() {
        if !key.is_empty() {
            key.push(' ');
        }
        key.extend(word.chars().flat_map(char::to_lowercase));
    }
    key
}

/// What the view keeps of a user's display name (embedded).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DisplayName {
    name: String,
    at_ms: i64,
}

/// The view's tables in a store's file: these names in a file of the
/// store's own, each prefixed with the store's name in a file several
/// stores share ([`EmbeddedDb::own_table`]).
struct ViewTables {
    members: String,
    member_communities: String,
    display_names: String,
    member_names: String,
}

impl ViewTables {
    fn of(db: &EmbeddedDb) -> Self {
        ViewTables {
            members: db.own_table("members"),
            member_communities: db.own_table("member_communities"),
            display_names: db.own_table("display_names"),
            member_names: db.own_table("member_names"),
        }
    }

    /// pair_key(community, user) → role (JSON). The name and encoding are
    /// events-svc's from before the view was shared, so its stored view
    /// stays.
    fn members(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.members)
    }

    /// pair_key(user, community) → role: a user's communities.
    fn member_communities(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.member_communities)
    }

    /// user → [`DisplayName`] (JSON).
    fn display_names(&self) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(&self.display_names)
    }

    /// community ‖ name key ‖ 0 ‖ user → (): members by folded name (a
    /// name holds no NUL: users-svc refuses control characters).
    fn member_names(&self) -> TableDefinition<'_, &'static [u8], ()> {
        TableDefinition::new(&self.member_names)
    }
}

fn name_entry(community: Uuid, key: &str, user: Uuid) -> Vec<u8> {
    let mut entry = name_prefix(community, key);
    entry.extend_from_slice(user.as_bytes());
    entry
}

fn name_prefix(community: Uuid, key: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(16 + key.len() + 1 + 16);
    prefix.extend_from_slice(community.as_bytes());
    prefix.extend_from_slice(key.as_bytes());
    prefix.push(0);
    prefix
}

/// A table of a read transaction, `None` while nobody wrote it (the view's
/// tables are created on first write).
fn readable<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> StoreResult<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(internal(error)),
    }
}

fn stored_name(
    names: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
    user: Uuid,
) -> StoreResult<Option<DisplayName>> {
    match names.get(user.as_bytes().as_slice()).map_err(internal)? {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// The view in a service's redb file (its tables are created on first
/// write; reads before that see no members).
pub struct EmbeddedMemberships {
    db: EmbeddedDb,
    tables: Arc<ViewTables>,
}

impl EmbeddedMemberships {
    pub fn open(db: EmbeddedDb) -> Arc<dyn MembershipView> {
        let tables = Arc::new(ViewTables::of(&db));
        Arc::new(EmbeddedMemberships { db, tables })
    }
}

fn internal(error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(error.to_string())
}

#[async_trait]
impl MembershipView for EmbeddedMemberships {
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()> {
        let tables = self.tables.clone();
        self.db
            .write(move |txn| {
                let mut members = txn.open_table(tables.members()).map_err(internal)?;
                let mut by_user = txn
                    .open_table(tables.member_communities())
                    .map_err(internal)?;
                let key = pair_key(community, user);
                let user_key = pair_key(user, community);
                match role {
                    Some(role) => {
                        let value = encode(&role)?;
                        members
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(internal)?;
                        by_user
                            .insert(user_key.as_slice(), value.as_slice())
                            .map_err(internal)?;
                    }
                    None => {
                        members.remove(key.as_slice()).map_err(internal)?;
                        by_user.remove(user_key.as_slice()).map_err(internal)?;
                    }
                }
                // The member is found by their name from now on (or no more).
                let names = txn.open_table(tables.display_names()).map_err(internal)?;
                if let Some(known) = stored_name(&names, user)? {
                    let entry = name_entry(community, &name_key(&known.name), user);
                    let mut index = txn.open_table(tables.member_names()).map_err(internal)?;
                    if role.is_some() {
                        index.insert(entry.as_slice(), ()).map_err(internal)?;
                    } else {
                        index.remove(entry.as_slice()).map_err(internal)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>> {
        let tables = self.tables.clone();
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(tables.members()) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(error) => return Err(internal(error)),
                };
                match table
                    .get(pair_key(community, user).as_slice())
                    .map_err(internal)?
                {
                    Some(value) => decode(value.value()).map(Some),
                    None => Ok(None),
                }
            })
            .await
    }

    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>> {
        let tables = self.tables.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(tables.member_communities()) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(error) => return Err(internal(error)),
                };
                let start = pair_key(user, Uuid::nil());
                let end = pair_key(user, Uuid::max());
                let mut communities = Vec::new();
                for entry in table
                    .range::<&[u8]>(start.as_slice()..=end.as_slice())
                    .map_err(internal)?
                {
                    let (key, value) = entry.map_err(internal)?;
                    let community = Uuid::from_slice(&key.value()[16..]).map_err(internal)?;
                    communities.push((community, decode(value.value())?));
                }
                Ok(communities)
            })
            .await
    }

    async fn members_of(&self, community: Uuid, limit: usize) -> StoreResult<Vec<Uuid>> {
        let tables = self.tables.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(tables.members()) {
                    Ok(table) => table,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(error) => return Err(internal(error)),
                };
                let start = pair_key(community, Uuid::nil());
                let end = pair_key(community, Uuid::max());
                let mut members = Vec::new();
                for entry in table
                    .range::<&[u8]>(start.as_slice()..=end.as_slice())
                    .map_err(internal)?
                    .take(limit)
                {
                    let (key, _) = entry.map_err(internal)?;
                    members.push(Uuid::from_slice(&key.value()[16..]).map_err(internal)?);
                }
                Ok(members)
            })
            .await
    }

    async fn set_display_name(&self, user: Uuid, name: &str, at_ms: i64) -> StoreResult<()> {
        let name = name.to_owned();
        let tables = self.tables.clone();
        self.db
            .write(move |txn| {
                let mut names = txn.open_table(tables.display_names()).map_err(internal)?;
                let old = stored_name(&names, user)?;
                if old.as_ref().is_some_and(|old| old.at_ms > at_ms) {
                    return Ok(());
                }
                let (new_key, old_key) = (name_key(&name), old.map(|old| name_key(&old.name)));
                names
                    .insert(
                        user.as_bytes().as_slice(),
                        encode(&DisplayName { name, at_ms })?.as_slice(),
                    )
                    .map_err(internal)?;
                drop(names);
                let by_user = txn
                    .open_table(tables.member_communities())
                    .map_err(internal)?;
                let mut index = txn.open_table(tables.member_names()).map_err(internal)?;
                let (start, end) = (pair_key(user, Uuid::nil()), pair_key(user, Uuid::max()));
                for entry in by_user
                    .range::<&[u8]>(start.as_slice()..=end.as_slice())
                    .map_err(internal)?
                {
                    let (key, _) = entry.map_err(internal)?;
                    let community = Uuid::from_slice(&key.value()[16..]).map_err(internal)?;
                    if let Some(old_key) = old_key.as_ref().filter(|k| **k != new_key) {
                        index
                            .remove(name_entry(community, old_key, user).as_slice())
                            .map_err(internal)?;
                    }
                    index
                        .insert(name_entry(community, &new_key, user).as_slice(), ())
                        .map_err(internal)?;
                }
                Ok(())
            })
            .await
    }

    async fn display_name(&self, user: Uuid) -> StoreResult<Option<String>> {
        let tables = self.tables.clone();
        self.db
            .read_now(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let Some(names) = readable(&txn, tables.display_names())? else {
                    return Ok(None);
                };
                Ok(stored_name(&names, user)?.map(|known| known.name))
            })
            .await
    }

    async fn members_named(
        &self,
        community: Uuid,
        keys: &[String],
        limit: usize,
    ) -> StoreResult<Option<(String, Vec<Uuid>)>> {
        let mut keys = keys.to_vec();
        keys.sort_by_key(|key| std::cmp::Reverse(key.len()));
        let tables = self.tables.clone();
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let (Some(index), Some(names), Some(members)) = (
                    readable(&txn, tables.member_names())?,
                    readable(&txn, tables.display_names())?,
                    readable(&txn, tables.members())?,
                ) else {
                    return Ok(None);
                };
                for key in keys {
                    let prefix = name_prefix(community, &key);
                    let (start, end) = (
                        [prefix.as_slice(), Uuid::nil().as_bytes().as_slice()].concat(),
                        [prefix.as_slice(), Uuid::max().as_bytes().as_slice()].concat(),
                    );
                    let mut found = Vec::new();
                    for entry in index
                        .range::<&[u8]>(start.as_slice()..=end.as_slice())
                        .map_err(internal)?
                    {
                        let (entry, _) = entry.map_err(internal)?;
                        let user =
                            Uuid::from_slice(&entry.value()[prefix.len()..]).map_err(internal)?;
                        let named = stored_name(&names, user)?
                            .is_some_and(|known| name_key(&known.name) == key);
                        let member = members
                            .get(pair_key(community, user).as_slice())
                            .map_err(internal)?
                            .is_some();
                        if named && member {
                            found.push(user);
                            if found.len() >= limit {
                                break;
                            }
                        }
                    }
                    if !found.is_empty() {
                        return Ok(Some((key, found)));
                    }
                }
                Ok(None)
            })
            .await
    }
}

/// The view's tables, for the owning service's schema list. The first is
/// events-svc's from before the view was shared.
pub const CQL_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS members (
        community_id uuid, user_id uuid, role text, PRIMARY KEY ((community_id), user_id))",
    "CREATE TABLE IF NOT EXISTS member_communities (
        user_id uuid, community_id uuid, role text, PRIMARY KEY ((user_id), community_id))",
    // Written `USING TIMESTAMP` users-svc's change time: the later name
    // wins whatever order replicas apply them in.
    "CREATE TABLE IF NOT EXISTS display_names (user_id uuid PRIMARY KEY, name text)",
    // Longest name first: the keys one `@` is looked up by are prefixes of
    // each other, so the longest that matches comes first.
    "CREATE TABLE IF NOT EXISTS member_names (
        community_id uuid, name text, user_id uuid, PRIMARY KEY ((community_id), name, user_id))
        WITH CLUSTERING ORDER BY (name DESC, user_id ASC)",
];

/// Entries read for one `members_named` call at most (a bound on what a
/// community of many namesakes costs; the longest name's come first).
const NAMED_ROWS_MAX: i32 = 1_000;

/// The view in a service's keyspace (whose schema includes [`CQL_SCHEMA`]).
pub struct CqlMemberships {
    cql: Arc<CqlStore>,
    set: PreparedStatement,
    set_by_user: PreparedStatement,
    delete: PreparedStatement,
    delete_by_user: PreparedStatement,
    get: PreparedStatement,
    of_user: PreparedStatement,
    members: PreparedStatement,
    get_name: PreparedStatement,
    set_name: PreparedStatement,
    add_named: PreparedStatement,
    remove_named: PreparedStatement,
    named: PreparedStatement,
}

impl CqlMemberships {
    pub async fn prepare(cql: Arc<CqlStore>) -> anyhow::Result<Arc<dyn MembershipView>> {
        Ok(Arc::new(CqlMemberships {
            set: cql
                .prepare("INSERT INTO members (community_id, user_id, role) VALUES (?, ?, ?)")
                .await?,
            set_by_user: cql
                .prepare(
                    "INSERT INTO member_communities (user_id, community_id, role) VALUES (?, ?, ?)",
                )
                .await?,
            delete: cql
                .prepare("DELETE FROM members WHERE community_id = ? AND user_id = ?")
                .await?,
            delete_by_user: cql
                .prepare("DELETE FROM member_communities WHERE user_id = ? AND community_id = ?")
                .await?,
            get: cql
                .prepare("SELECT role FROM members WHERE community_id = ? AND user_id = ?")
                .await?,
            of_user: cql
                .prepare("SELECT community_id, role FROM member_communities WHERE user_id = ?")
                .await?,
            members: cql
                .prepare("SELECT user_id FROM members WHERE community_id = ? LIMIT ?")
                .await?,
            get_name: cql
                .prepare("SELECT name, WRITETIME(name) FROM display_names WHERE user_id = ?")
                .await?,
            set_name: cql
                .prepare("INSERT INTO display_names (user_id, name) VALUES (?, ?) USING TIMESTAMP ?")
                .await?,
            add_named: cql
                .prepare("INSERT INTO member_names (community_id, name, user_id) VALUES (?, ?, ?)")
                .await?,
            remove_named: cql
                .prepare(
                    "DELETE FROM member_names WHERE community_id = ? AND name = ? AND user_id = ?",
                )
                .await?,
            named: cql
                .prepare(
                    "SELECT name, user_id FROM member_names WHERE community_id = ? AND name IN ? LIMIT ?",
                )
                .await?,
            cql,
        }))
    }
}

#[async_trait]
impl MembershipView for CqlMemberships {
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()> {
        // Plain writes, each idempotent: a failure between them is repaired
        // by the redelivery the failure causes. The membership is written
        // before the name is read (see the module's note on races).
        match role {
            Some(role) => {
                self.cql
                    .execute(&self.set, (community, user, role.as_str()))
                    .await?;
                self.cql
                    .execute(&self.set_by_user, (user, community, role.as_str()))
                    .await?;
            }
            None => {
                self.cql.execute(&self.delete, (community, user)).await?;
                self.cql
                    .execute(&self.delete_by_user, (user, community))
                    .await?;
            }
        }
        if let Some((name, _)) = self.stored_name(user).await? {
            let entry = (community, name_key(&name), user);
            let statement = if role.is_some() {
                &self.add_named
            } else {
                &self.remove_named
            };
            self.cql.execute(statement, entry).await?;
        }
        Ok(())
    }

    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>> {
        let row: Option<(String,)> = self.cql.maybe_row(&self.get, (community, user)).await?;
        Ok(row.and_then(|(role,)| MemberRole::parse(&role)))
    }

    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>> {
        let rows: Vec<(Uuid, String)> = self.cql.rows(&self.of_user, (user,)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(community, role)| Some((community, MemberRole::parse(&role)?)))
            .collect())
    }

    async fn members_of(&self, community: Uuid, limit: usize) -> StoreResult<Vec<Uuid>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let rows: Vec<(Uuid,)> = self.cql.rows(&self.members, (community, limit)).await?;
        Ok(rows.into_iter().map(|(user,)| user).collect())
    }

    async fn set_display_name(&self, user: Uuid, name: &str, at_ms: i64) -> StoreResult<()> {
        let at_micros = at_ms.saturating_mul(1000);
        let old = self.stored_name(user).await?;
        if old
            .as_ref()
            .is_some_and(|(_, written)| *written > at_micros)
        {
            return Ok(());
        }
        self.cql
            .execute(&self.set_name, (user, name, at_micros))
            .await?;
        // The name is written before the memberships are read (see the
        // module's note on races).
        let (new_key, old_key) = (name_key(name), old.map(|(old, _)| name_key(&old)));
        for (community, _) in self.communities_of(user).await? {
            if let Some(old_key) = old_key.as_ref().filter(|k| **k != new_key) {
                self.cql
                    .execute(&self.remove_named, (community, old_key, user))
                    .await?;
            }
            self.cql
                .execute(&self.add_named, (community, &new_key, user))
                .await?;
        }
        Ok(())
    }

    async fn display_name(&self, user: Uuid) -> StoreResult<Option<String>> {
        Ok(self.stored_name(user).await?.map(|(name, _)| name))
    }

    async fn members_named(
        &self,
        community: Uuid,
        keys: &[String],
        limit: usize,
    ) -> StoreResult<Option<(String, Vec<Uuid>)>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let rows: Vec<(String, Uuid)> = self
            .cql
            .rows(&self.named, (community, keys.to_vec(), NAMED_ROWS_MAX))
            .await?;
        // Longest name first (the table's order; sorted again so nothing
        // rests on how a server orders an IN).
        let mut rows = rows;
        rows.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut found: Option<(String, Vec<Uuid>)> = None;
        for (key, user) in rows {
            if let Some((matched, users)) = &found
                && (*matched != key || users.len() >= limit)
            {
                break;
            }
            let named = self
                .stored_name(user)
                .await?
                .is_some_and(|(name, _)| name_key(&name) == key);
            if !named || self.role(community, user).await?.is_none() {
                continue;
            }
            found.get_or_insert_with(|| (key, Vec::new())).1.push(user);
        }
        Ok(found)
    }
}

impl CqlMemberships {
    /// `user`'s display name and when it was written (µs).
    async fn stored_name(&self, user: Uuid) -> StoreResult<Option<(String, i64)>> {
        let row: Option<(Option<String>, Option<i64>)> =
            self.cql.maybe_row(&self.get_name, (user,)).await?;
        Ok(row.and_then(|(name, written)| Some((name?, written.unwrap_or(0)))))
    }
}

fn ids(community: &str, user: &str) -> anyhow::Result<(Uuid, Uuid)> {
    Ok((Uuid::parse_str(community)?, Uuid::parse_str(user)?))
}

/// Applies one event to the view; other events are none of its business.
pub async fn apply(view: &dyn MembershipView, event: &DomainEvent) -> anyhow::Result<()> {
    let payload = event.payload.as_slice();
    match event.r#type.as_str() {
        "munity.users.v1.MemberJoined" => {
            let e = users::MemberJoined::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            let role = MemberRole::from_users(e.role);
            view.set_member(community, user, Some(role)).await?;
        }
        "munity.users.v1.MemberRoleChanged" => {
            let e = users::MemberRoleChanged::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            let role = MemberRole::from_users(e.role);
            view.set_member(community, user, Some(role)).await?;
        }
        "munity.users.v1.MemberLeft" => {
            let e = users::MemberLeft::decode(payload)?;
            let (community, user) = ids(&e.community_id, &e.user_id)?;
            view.set_member(community, user, None).await?;
        }
        "munity.users.v1.ProfileChanged" => {
            let e = users::ProfileChanged::decode(payload)?;
            let user = Uuid::parse_str(&e.user_id)?;
            let at = if e.changed_at_ms > 0 {
                e.changed_at_ms
            } else {
                event.occurred_at_ms
            };
            view.set_display_name(user, &e.display_name, at).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Keeps `view` from the log in consumer group `group` until `shutdown`;
/// `service` names this process's consumer.
pub async fn follow(
    log: Arc<dyn EventLog>,
    view: Arc<dyn MembershipView>,
    group: String,
    service: &'static str,
    shutdown: ShutdownToken,
) {
    ConsumerLoop::member(log, group, service)
        .run(shutdown, move |event| {
            let view = view.clone();
            async move { apply(view.as_ref(), &event).await }
        })
        .await;
}

//! TEMPORARY: a stand-in for `munity_bus::membership`, which the lead is
//! moving into the shared kit on main right now. It has the API announced
//! for it (a `MembershipView` trait, embedded and CQL constructors sharing
//! the service's store, `follow`), so that once the kit module lands this
//! file is deleted and `use crate::membership` becomes
//! `use munity_bus::membership`. Do not grow it.

use std::sync::Arc;

use async_trait::async_trait;
use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::users::v1 as users;
use munity_store::{
    StoreResult,
    cql::CqlStore,
    embedded::{EmbeddedDb, decode, encode, pair_key},
    internal,
};
use prost::Message;
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};
use scylla::statement::prepared::PreparedStatement;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    Member,
    Moderator,
    Owner,
}

impl MemberRole {
    /// Moderators and the owner moderate.
    pub fn moderates(self) -> bool {
        matches!(self, MemberRole::Moderator | MemberRole::Owner)
    }
}

/// Who belongs to which community, as users-svc's events said.
#[async_trait]
pub trait MembershipView: Send + Sync {
    /// `None` removes the membership.
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()>;
    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>>;
    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>>;
}

/// pair_key(community, user) → role.
const BY_COMMUNITY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("members");
/// pair_key(user, community) → role.
const BY_USER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("memberships");

/// Creates the view's tables in the service's redb file.
pub fn create_tables(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(BY_COMMUNITY)?;
    txn.open_table(BY_USER)?;
    Ok(())
}

/// The view in the service's redb file (tables made by [`create_tables`]).
pub struct EmbeddedMembership {
    db: EmbeddedDb,
}

impl EmbeddedMembership {
    pub fn new(db: EmbeddedDb) -> Self {
        EmbeddedMembership { db }
    }
}

#[async_trait]
impl MembershipView for EmbeddedMembership {
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()> {
        self.db
            .write(move |txn| {
                let mut by_community = txn.open_table(BY_COMMUNITY).map_err(internal)?;
                let mut by_user = txn.open_table(BY_USER).map_err(internal)?;
                let (a, b) = (pair_key(community, user), pair_key(user, community));
                match role {
                    Some(role) => {
                        let value = encode(&role)?;
                        by_community
                            .insert(a.as_slice(), value.as_slice())
                            .map_err(internal)?;
                        by_user
                            .insert(b.as_slice(), value.as_slice())
                            .map_err(internal)?;
                    }
                    None => {
                        by_community.remove(a.as_slice()).map_err(internal)?;
                        by_user.remove(b.as_slice()).map_err(internal)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>> {
        self.db
            .blocking(move |db| {
                munity_store::embedded::read_one(
                    db,
                    BY_COMMUNITY,
                    pair_key(community, user).as_slice(),
                )
            })
            .await
    }

    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = txn.open_table(BY_USER).map_err(internal)?;
                let (from, to) = (pair_key(user, Uuid::nil()), pair_key(user, Uuid::max()));
                let mut all = Vec::new();
                for entry in table
                    .range::<&[u8]>(from.as_slice()..=to.as_slice())
                    .map_err(internal)?
                {
                    let (key, value) = entry.map_err(internal)?;
                    let community = Uuid::from_slice(&key.value()[16..]).map_err(internal)?;
                    all.push((community, decode(value.value())?));
                }
                Ok(all)
            })
            .await
    }
}

/// The view's CQL tables: add them to the service's schema.
pub const CQL_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS members (
        community_id uuid, user_id uuid, role text, PRIMARY KEY ((community_id), user_id))",
    "CREATE TABLE IF NOT EXISTS memberships (
        user_id uuid, community_id uuid, role text, PRIMARY KEY ((user_id), community_id))",
];

/// The view in the service's keyspace (schema [`CQL_SCHEMA`]).
pub struct CqlMembership {
    cql: Arc<CqlStore>,
    put: PreparedStatement,
    put_by_user: PreparedStatement,
    delete: PreparedStatement,
    delete_by_user: PreparedStatement,
    get: PreparedStatement,
    of_user: PreparedStatement,
}

impl CqlMembership {
    pub async fn new(cql: Arc<CqlStore>) -> anyhow::Result<Self> {
        Ok(CqlMembership {
            put: cql
                .prepare("INSERT INTO members (community_id, user_id, role) VALUES (?, ?, ?)")
                .await?,
            put_by_user: cql
                .prepare("INSERT INTO memberships (user_id, community_id, role) VALUES (?, ?, ?)")
                .await?,
            delete: cql
                .prepare("DELETE FROM members WHERE community_id = ? AND user_id = ?")
                .await?,
            delete_by_user: cql
                .prepare("DELETE FROM memberships WHERE user_id = ? AND community_id = ?")
                .await?,
            get: cql
                .prepare("SELECT role FROM members WHERE community_id = ? AND user_id = ?")
                .await?,
            of_user: cql
                .prepare("SELECT community_id, role FROM memberships WHERE user_id = ?")
                .await?,
            cql,
        })
    }
}

fn role_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Member => "member",
        MemberRole::Moderator => "moderator",
        MemberRole::Owner => "owner",
    }
}

fn role_from(name: &str) -> MemberRole {
    match name {
        "owner" => MemberRole::Owner,
        "moderator" => MemberRole::Moderator,
        _ => MemberRole::Member,
    }
}

#[async_trait]
impl MembershipView for CqlMembership {
    async fn set_member(
        &self,
        community: Uuid,
        user: Uuid,
        role: Option<MemberRole>,
    ) -> StoreResult<()> {
        match role {
            Some(role) => {
                let name = role_name(role);
                self.cql.execute(&self.put, (community, user, name)).await?;
                self.cql
                    .execute(&self.put_by_user, (user, community, name))
                    .await?;
            }
            None => {
                self.cql.execute(&self.delete, (community, user)).await?;
                self.cql
                    .execute(&self.delete_by_user, (user, community))
                    .await?;
            }
        }
        Ok(())
    }

    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>> {
        let row: Option<(Option<String>,)> =
            self.cql.maybe_row(&self.get, (community, user)).await?;
        Ok(row.map(|(name,)| role_from(name.as_deref().unwrap_or(""))))
    }

    async fn communities_of(&self, user: Uuid) -> StoreResult<Vec<(Uuid, MemberRole)>> {
        let rows: Vec<(Uuid, Option<String>)> = self.cql.rows(&self.of_user, (user,)).await?;
        Ok(rows
            .into_iter()
            .map(|(community, name)| (community, role_from(name.as_deref().unwrap_or(""))))
            .collect())
    }
}

fn role_of(raw: i32) -> MemberRole {
    match users::MemberRole::try_from(raw) {
        Ok(users::MemberRole::Owner) => MemberRole::Owner,
        Ok(users::MemberRole::Moderator) => MemberRole::Moderator,
        _ => MemberRole::Member,
    }
}

/// The membership change one of users-svc's events describes, if any.
fn change_in(event: &DomainEvent) -> anyhow::Result<Option<(Uuid, Uuid, Option<MemberRole>)>> {
    let payload = event.payload.as_slice();
    let (community, user, role) = match event.r#type.as_str() {
        "munity.users.v1.MemberJoined" => {
            let e = users::MemberJoined::decode(payload)?;
            (e.community_id, e.user_id, Some(role_of(e.role)))
        }
        "munity.users.v1.MemberRoleChanged" => {
            let e = users::MemberRoleChanged::decode(payload)?;
            (e.community_id, e.user_id, Some(role_of(e.role)))
        }
        "munity.users.v1.MemberLeft" => {
            let e = users::MemberLeft::decode(payload)?;
            (e.community_id, e.user_id, None)
        }
        _ => return Ok(None),
    };
    Ok(Some((
        Uuid::parse_str(&community)?,
        Uuid::parse_str(&user)?,
        role,
    )))
}

/// Keeps `view` from users-svc's membership events until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    view: Arc<dyn MembershipView>,
    group: String,
    consumer_name: &str,
    shutdown: ShutdownToken,
) {
    ConsumerLoop::member(log, group, consumer_name)
        .run(shutdown, move |event| {
            let view = view.clone();
            async move {
                if let Some((community, user, role)) = change_in(&event)? {
                    view.set_member(community, user, role).await?;
                }
                Ok(())
            }
        })
        .await;
}

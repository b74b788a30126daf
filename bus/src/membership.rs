//! A service's view of community memberships, kept from users-svc's domain
//! events (`munity.users.v1.MemberJoined`, `MemberLeft`,
//! `MemberRoleChanged`) by a consumer group on the event log, so deciding
//! who sees a community's meetings or posts needs no call to users-svc.
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
use redb::{ReadableDatabase, TableDefinition};
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
}

/// pair_key(community, user) → role (JSON). The name and encoding are
/// events-svc's from before the view was shared, so its stored view stays.
const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("members");
/// pair_key(user, community) → role: a user's communities.
const MEMBER_COMMUNITIES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("member_communities");

/// The view in a service's redb file (its tables are created on first
/// write; reads before that see no members).
pub struct EmbeddedMemberships {
    db: EmbeddedDb,
}

impl EmbeddedMemberships {
    pub fn open(db: EmbeddedDb) -> Arc<dyn MembershipView> {
        Arc::new(EmbeddedMemberships { db })
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
        self.db
            .write(move |txn| {
                let mut members = txn.open_table(MEMBERS).map_err(internal)?;
                let mut by_user = txn.open_table(MEMBER_COMMUNITIES).map_err(internal)?;
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
                Ok(())
            })
            .await
    }

    async fn role(&self, community: Uuid, user: Uuid) -> StoreResult<Option<MemberRole>> {
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(MEMBERS) {
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
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(MEMBER_COMMUNITIES) {
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
        self.db
            .blocking(move |db| {
                let txn = db.begin_read().map_err(internal)?;
                let table = match txn.open_table(MEMBERS) {
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
}

/// The view's tables, for the owning service's schema list. The first is
/// events-svc's from before the view was shared.
pub const CQL_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS members (
        community_id uuid, user_id uuid, role text, PRIMARY KEY ((community_id), user_id))",
    "CREATE TABLE IF NOT EXISTS member_communities (
        user_id uuid, community_id uuid, role text, PRIMARY KEY ((user_id), community_id))",
];

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
        // Two plain writes, each idempotent: a failure between them is
        // repaired by the redelivery the failure causes.
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

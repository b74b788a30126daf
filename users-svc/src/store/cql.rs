//! The ScyllaDB backend, through the `scylla` crate.
//!
//! Schema is created at start-up by idempotent statements. Every statement is
//! prepared once. Uniqueness and single-use rules are lightweight
//! transactions (`IF NOT EXISTS`, `IF used = false`, `IF EXISTS`), so two
//! replicas racing for the same email or refresh token cannot both win.
//! Listings page by partition token (`token(id) > token(?)`), a stable order
//! that needs no secondary index. Refresh tokens carry a TTL so expired ones
//! disappear on their own.
//!
//! The plumbing (connecting, schema, prepared statements, LWTs, typed rows)
//! is `munity_store::cql`'s; this file is the tables and the queries.

use std::sync::Arc;

use munity_bus::{
    DomainEvent,
    outbox::{
        Verify,
        cql::{self as outbox, CqlOutbox},
    },
};
use munity_platform::config::CqlConfig;
use munity_store::{
    cql::{CqlStore as Cql, limit_plus_one, ts, ttl_until},
    page_from,
};
use scylla::{
    DeserializeRow,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::CqlTimestamp,
};
use uuid::Uuid;

use super::cql_links::{self, LinkStatements};
use super::{Page, StoreError, StoreResult, UsersRepository};
use crate::domain::{
    ChatLinkRecord, CommunityRecord, LinkCodeRecord, MemberRole, MembershipRecord, Millis,
    RefreshTokenRecord, Role, ServiceAccountRecord, SessionRecord, SigningKeyRecord, UserRecord,
};
use crate::events::{self, Claim};

/// Tables, in the order they are created. Each statement is idempotent.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        id uuid PRIMARY KEY,
        email text,
        display_name text,
        password_hash text,
        roles set<text>,
        created_at timestamp)",
    // Disabled accounts: a table of its own, so `users` needs no migration.
    "CREATE TABLE IF NOT EXISTS disabled_users (
        user_id uuid PRIMARY KEY,
        disabled_at timestamp)",
    "CREATE TABLE IF NOT EXISTS users_by_email (
        email text PRIMARY KEY,
        user_id uuid)",
    "CREATE TABLE IF NOT EXISTS sessions (
        id uuid PRIMARY KEY,
        user_id uuid,
        created_at timestamp,
        revoked boolean)",
    "CREATE TABLE IF NOT EXISTS refresh_tokens (
        token_hash text PRIMARY KEY,
        session_id uuid,
        user_id uuid,
        expires_at timestamp,
        used boolean)",
    "CREATE TABLE IF NOT EXISTS signing_keys (
        kid text PRIMARY KEY,
        secret blob,
        created_at timestamp,
        retired_at timestamp)",
    "CREATE TABLE IF NOT EXISTS communities (
        id uuid PRIMARY KEY,
        name text,
        description text,
        owner_id uuid,
        created_at timestamp)",
    "CREATE TABLE IF NOT EXISTS community_members (
        community_id uuid,
        user_id uuid,
        role text,
        joined_at timestamp,
        PRIMARY KEY ((community_id), user_id))",
    "CREATE TABLE IF NOT EXISTS service_accounts (
        id uuid PRIMARY KEY,
        name text,
        scopes set<text>,
        secret_hash text,
        disabled boolean,
        created_at timestamp,
        secret_rotated_at timestamp)",
    // Keyed by `ServiceAccountRecord::name_key`: names are unique by an
    // `IF NOT EXISTS` here, as emails are in `users_by_email`.
    "CREATE TABLE IF NOT EXISTS service_accounts_by_name (
        name text PRIMARY KEY,
        account_id uuid)",
    // Data migrations run to their end (`migrations.rs`).
    "CREATE TABLE IF NOT EXISTS migrations (
        name text PRIMARY KEY,
        done_at timestamp)",
];

const USER_COLUMNS: &str = "id, email, display_name, password_hash, roles, created_at";
const COMMUNITY_COLUMNS: &str = "id, name, description, owner_id, created_at";
const MEMBER_COLUMNS: &str = "community_id, user_id, role, joined_at";
const TOKEN_COLUMNS: &str = "token_hash, session_id, user_id, expires_at, used";
const SERVICE_ACCOUNT_COLUMNS: &str =
    "id, name, scopes, secret_hash, disabled, created_at, secret_rotated_at";

struct Statements {
    claim_email: PreparedStatement,
    release_email: PreparedStatement,
    insert_user: PreparedStatement,
    get_user: PreparedStatement,
    get_user_id_by_email: PreparedStatement,
    update_user: PreparedStatement,
    list_users_first: PreparedStatement,
    list_users_after: PreparedStatement,
    insert_session: PreparedStatement,
    get_session: PreparedStatement,
    disable_user: PreparedStatement,
    enable_user: PreparedStatement,
    get_disabled_user: PreparedStatement,
    revoke_session: PreparedStatement,
    insert_token: PreparedStatement,
    get_token: PreparedStatement,
    consume_token: PreparedStatement,
    list_keys: PreparedStatement,
    insert_key: PreparedStatement,
    retire_key: PreparedStatement,
    insert_community: PreparedStatement,
    get_community: PreparedStatement,
    list_communities_first: PreparedStatement,
    list_communities_after: PreparedStatement,
    insert_member: PreparedStatement,
    get_member: PreparedStatement,
    update_member: PreparedStatement,
    delete_member: PreparedStatement,
    list_members_first: PreparedStatement,
    list_members_after: PreparedStatement,
    claim_service_name: PreparedStatement,
    release_service_name: PreparedStatement,
    insert_service_account: PreparedStatement,
    get_service_account: PreparedStatement,
    list_service_accounts: PreparedStatement,
    set_service_secret: PreparedStatement,
    set_service_disabled: PreparedStatement,
    get_migration: PreparedStatement,
    record_migration: PreparedStatement,
}

/// The ScyllaDB-backed repository.
pub struct CqlStore {
    cql: Arc<Cql>,
    statements: Statements,
    /// Chat links and link codes (`cql_links.rs`).
    links: LinkStatements,
    outbox: Arc<CqlOutbox>,
}

impl CqlStore {
    /// Connects, creates the keyspace and tables (the outbox's too) when
    /// missing, and prepares every statement.
    pub async fn connect(config: &CqlConfig) -> anyhow::Result<Self> {
        let schema: Vec<&str> = SCHEMA
            .iter()
            .chain(cql_links::SCHEMA)
            .chain(outbox::SCHEMA)
            .copied()
            .collect();
        let cql = Arc::new(Cql::connect(config, &schema).await?);
        let statements = Statements::prepare(&cql).await?;
        let links = LinkStatements::prepare(&cql).await?;
        let outbox = Arc::new(CqlOutbox::new(cql.clone()).await?);
        Ok(CqlStore {
            cql,
            statements,
            links,
            outbox,
        })
    }

    /// The outbox membership changes stage their events in.
    pub fn outbox(&self) -> Arc<CqlOutbox> {
        self.outbox.clone()
    }
}

/// Whether the change an unconfirmed event describes happened: asked by
/// the relay about events whose writer died between staging and confirming.
#[async_trait::async_trait]
impl Verify for CqlStore {
    async fn happened(&self, event: &DomainEvent) -> munity_bus::BusResult<bool> {
        let unavailable = |e: StoreError| munity_bus::BusError::Unavailable(e.to_string());
        let Some(claim) = events::claim(event) else {
            return Ok(false);
        };
        Ok(match claim {
            Claim::CommunityExists(id) => {
                self.get_community(id).await.map_err(unavailable)?.is_some()
            }
            Claim::MemberSince(community, user, since) => self
                .get_membership(community, user)
                .await
                .map_err(unavailable)?
                .is_some_and(|m| m.joined_at == since),
            Claim::NotMemberAt(community, user, at) => self
                .get_membership(community, user)
                .await
                .map_err(unavailable)?
                .is_none_or(|m| m.joined_at > at),
            Claim::MemberWithRole(community, user, role) => self
                .get_membership(community, user)
                .await
                .map_err(unavailable)?
                .is_some_and(|m| m.role.to_proto() as i32 == role),
            Claim::NamedAs(user, name) => self
                .get_user(user)
                .await
                .map_err(unavailable)?
                .is_some_and(|u| u.display_name == name),
        })
    }
}

impl Statements {
    async fn prepare(cql: &Cql) -> anyhow::Result<Self> {
        let p = |statement: String| cql.prepare(statement);
        Ok(Statements {
            claim_email: p("INSERT INTO users_by_email (email, user_id) VALUES (?, ?) IF NOT EXISTS".into()).await?,
            release_email: p("DELETE FROM users_by_email WHERE email = ? IF user_id = ?".into()).await?,
            insert_user: p(format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)")).await?,
            get_user: p(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?")).await?,
            get_user_id_by_email: p("SELECT user_id FROM users_by_email WHERE email = ?".into()).await?,
            update_user: p("UPDATE users SET display_name = ?, roles = ? WHERE id = ? IF EXISTS".into()).await?,
            list_users_first: p(format!("SELECT {USER_COLUMNS} FROM users LIMIT ?")).await?,
            list_users_after: p(format!("SELECT {USER_COLUMNS} FROM users WHERE token(id) > token(?) LIMIT ?")).await?,
            insert_session: p("INSERT INTO sessions (id, user_id, created_at, revoked) VALUES (?, ?, ?, ?)".into()).await?,
            get_session: p("SELECT id, user_id, created_at, revoked FROM sessions WHERE id = ?".into()).await?,
            disable_user: p("INSERT INTO disabled_users (user_id, disabled_at) VALUES (?, ?)".into()).await?,
            enable_user: p("DELETE FROM disabled_users WHERE user_id = ?".into()).await?,
            get_disabled_user: p("SELECT user_id FROM disabled_users WHERE user_id = ?".into()).await?,
            revoke_session: p("UPDATE sessions SET revoked = true WHERE id = ? IF EXISTS".into()).await?,
            insert_token: p(format!("INSERT INTO refresh_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?) USING TTL ?")).await?,
            get_token: p(format!("SELECT {TOKEN_COLUMNS} FROM refresh_tokens WHERE token_hash = ?")).await?,
            consume_token: p("UPDATE refresh_tokens USING TTL ? SET used = true WHERE token_hash = ? IF used = false".into()).await?,
            list_keys: p("SELECT kid, secret, created_at, retired_at FROM signing_keys".into()).await?,
            insert_key: p("INSERT INTO signing_keys (kid, secret, created_at, retired_at) VALUES (?, ?, ?, ?) IF NOT EXISTS".into()).await?,
            retire_key: p("UPDATE signing_keys SET retired_at = ? WHERE kid = ? IF retired_at = null".into()).await?,
            insert_community: p(format!("INSERT INTO communities ({COMMUNITY_COLUMNS}) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            get_community: p(format!("SELECT {COMMUNITY_COLUMNS} FROM communities WHERE id = ?")).await?,
            list_communities_first: p(format!("SELECT {COMMUNITY_COLUMNS} FROM communities LIMIT ?")).await?,
            list_communities_after: p(format!("SELECT {COMMUNITY_COLUMNS} FROM communities WHERE token(id) > token(?) LIMIT ?")).await?,
            insert_member: p(format!("INSERT INTO community_members ({MEMBER_COLUMNS}) VALUES (?, ?, ?, ?) IF NOT EXISTS")).await?,
            get_member: p(format!("SELECT {MEMBER_COLUMNS} FROM community_members WHERE community_id = ? AND user_id = ?")).await?,
            update_member: p("UPDATE community_members SET role = ? WHERE community_id = ? AND user_id = ? IF EXISTS".into()).await?,
            delete_member: p("DELETE FROM community_members WHERE community_id = ? AND user_id = ? IF EXISTS".into()).await?,
            list_members_first: p(format!("SELECT {MEMBER_COLUMNS} FROM community_members WHERE community_id = ? LIMIT ?")).await?,
            list_members_after: p(format!("SELECT {MEMBER_COLUMNS} FROM community_members WHERE community_id = ? AND user_id > ? LIMIT ?")).await?,
            claim_service_name: p("INSERT INTO service_accounts_by_name (name, account_id) VALUES (?, ?) IF NOT EXISTS".into()).await?,
            release_service_name: p("DELETE FROM service_accounts_by_name WHERE name = ? IF account_id = ?".into()).await?,
            insert_service_account: p(format!("INSERT INTO service_accounts ({SERVICE_ACCOUNT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS")).await?,
            get_service_account: p(format!("SELECT {SERVICE_ACCOUNT_COLUMNS} FROM service_accounts WHERE id = ?")).await?,
            list_service_accounts: p(format!("SELECT {SERVICE_ACCOUNT_COLUMNS} FROM service_accounts")).await?,
            set_service_secret: p("UPDATE service_accounts SET secret_hash = ?, secret_rotated_at = ? WHERE id = ? IF EXISTS".into()).await?,
            set_service_disabled: p("UPDATE service_accounts SET disabled = ? WHERE id = ? IF EXISTS".into()).await?,
            get_migration: p("SELECT name FROM migrations WHERE name = ?".into()).await?,
            record_migration: p("INSERT INTO migrations (name, done_at) VALUES (?, ?)".into()).await?,
        })
    }
}

#[derive(DeserializeRow)]
struct UserRow {
    id: Uuid,
    email: String,
    display_name: String,
    password_hash: String,
    // An empty set is stored as null in CQL.
    roles: Option<Vec<String>>,
    created_at: CqlTimestamp,
}

impl From<UserRow> for UserRecord {
    fn from(row: UserRow) -> Self {
        UserRecord {
            id: row.id,
            email: row.email,
            display_name: row.display_name,
            password_hash: row.password_hash,
            roles: row
                .roles
                .unwrap_or_default()
                .iter()
                .filter_map(|r| Role::parse(r))
                .collect(),
            created_at: row.created_at.0,
        }
    }
}

fn role_names(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|r| r.as_str().to_owned()).collect()
}

#[derive(DeserializeRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: CqlTimestamp,
    revoked: Option<bool>,
}

#[derive(DeserializeRow)]
struct TokenRow {
    token_hash: String,
    session_id: Uuid,
    user_id: Uuid,
    expires_at: CqlTimestamp,
    used: Option<bool>,
}

impl From<TokenRow> for RefreshTokenRecord {
    fn from(row: TokenRow) -> Self {
        RefreshTokenRecord {
            token_hash: row.token_hash,
            session_id: row.session_id,
            user_id: row.user_id,
            expires_at: row.expires_at.0,
            used: row.used.unwrap_or(false),
        }
    }
}

#[derive(DeserializeRow)]
struct KeyRow {
    kid: String,
    secret: Vec<u8>,
    created_at: CqlTimestamp,
    retired_at: Option<CqlTimestamp>,
}

#[derive(DeserializeRow)]
struct CommunityRow {
    id: Uuid,
    name: String,
    description: Option<String>,
    owner_id: Uuid,
    created_at: CqlTimestamp,
}

impl From<CommunityRow> for CommunityRecord {
    fn from(row: CommunityRow) -> Self {
        CommunityRecord {
            id: row.id,
            name: row.name,
            description: row.description.unwrap_or_default(),
            owner_id: row.owner_id,
            created_at: row.created_at.0,
        }
    }
}

#[derive(DeserializeRow)]
struct MemberRow {
    community_id: Uuid,
    user_id: Uuid,
    role: String,
    joined_at: CqlTimestamp,
}

impl TryFrom<MemberRow> for MembershipRecord {
    type Error = StoreError;

    fn try_from(row: MemberRow) -> Result<Self, StoreError> {
        Ok(MembershipRecord {
            community_id: row.community_id,
            user_id: row.user_id,
            role: MemberRole::parse(&row.role).ok_or_else(|| {
                StoreError::Internal(format!("unknown member role {:?} in storage", row.role))
            })?,
            joined_at: row.joined_at.0,
        })
    }
}

#[derive(DeserializeRow)]
struct ServiceAccountRow {
    id: Uuid,
    name: String,
    // An empty set is stored as null in CQL.
    scopes: Option<Vec<String>>,
    secret_hash: String,
    disabled: Option<bool>,
    created_at: CqlTimestamp,
    secret_rotated_at: CqlTimestamp,
}

impl From<ServiceAccountRow> for ServiceAccountRecord {
    fn from(row: ServiceAccountRow) -> Self {
        ServiceAccountRecord {
            id: row.id,
            name: row.name,
            // A set comes back sorted, as the record keeps them.
            scopes: row.scopes.unwrap_or_default(),
            secret_hash: row.secret_hash,
            disabled: row.disabled.unwrap_or(false),
            created_at: row.created_at.0,
            secret_rotated_at: row.secret_rotated_at.0,
        }
    }
}

impl CqlStore {
    /// The account after a change applied by `IF EXISTS`; `NotFound` when
    /// it was not applied (no such account).
    async fn changed_service_account(
        &self,
        applied: bool,
        id: Uuid,
    ) -> StoreResult<ServiceAccountRecord> {
        if !applied {
            return Err(StoreError::NotFound("service account"));
        }
        self.get_service_account(id)
            .await?
            .ok_or(StoreError::NotFound("service account"))
    }
}

#[async_trait::async_trait]
impl UsersRepository for CqlStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let s = &self.statements;
        if !self
            .cql
            .execute_lwt(&s.claim_email, (&user.email, user.id))
            .await?
        {
            return Err(StoreError::Conflict("email"));
        }
        let row = (
            user.id,
            &user.email,
            &user.display_name,
            &user.password_hash,
            role_names(&user.roles),
            ts(user.created_at),
        );
        // The account and its ProfileChanged in one logged batch.
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(s.insert_user.clone());
        batch.append_statement(self.outbox.insert_statement().clone());
        let event = CqlOutbox::row(&events::profile_changed(user, user.created_at));
        let written = self.cql.batch(&batch, (row, event)).await;
        if written.is_ok() {
            self.outbox.notify_staged();
        }
        if let Err(error) = written {
            // Give the email back so the account can be registered again.
            let _ = self
                .cql
                .execute_lwt(&s.release_email, (&user.email, user.id))
                .await;
            return Err(error);
        }
        Ok(())
    }

    async fn get_user(&self, id: Uuid) -> StoreResult<Option<UserRecord>> {
        Ok(self
            .cql
            .maybe_row::<UserRow>(&self.statements.get_user, (id,))
            .await?
            .map(UserRecord::from))
    }

    async fn get_user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let id: Option<(Uuid,)> = self
            .cql
            .maybe_row(&self.statements.get_user_id_by_email, (email,))
            .await?;
        match id {
            Some((id,)) => self.get_user(id).await,
            None => Ok(None),
        }
    }

    async fn update_user(&self, user: &UserRecord) -> StoreResult<()> {
        let values = (&user.display_name, role_names(&user.roles), user.id);
        let event = events::profile_changed(user, munity_store::now_millis());
        let updated = self
            .outbox
            .with_events(&[event], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.statements.update_user, values)
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if updated {
            Ok(())
        } else {
            Err(StoreError::NotFound("user"))
        }
    }

    async fn list_users(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Page<UserRecord>> {
        let s = &self.statements;
        let rows: Vec<UserRow> = match after {
            None => {
                self.cql
                    .rows(&s.list_users_first, (limit_plus_one(limit),))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(&s.list_users_after, (after, limit_plus_one(limit)))
                    .await?
            }
        };
        let users = rows.into_iter().map(UserRecord::from).collect();
        Ok(page_from(users, limit, |u: &UserRecord| u.id))
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let values = (
            session.id,
            session.user_id,
            ts(session.created_at),
            session.revoked,
        );
        self.cql
            .execute(&self.statements.insert_session, values)
            .await?;
        Ok(())
    }

    async fn set_user_disabled(&self, id: Uuid, disabled: bool) -> StoreResult<()> {
        if disabled {
            self.cql
                .execute(
                    &self.statements.disable_user,
                    (id, ts(crate::domain::now_millis())),
                )
                .await?;
        } else {
            self.cql
                .execute(&self.statements.enable_user, (id,))
                .await?;
        }
        Ok(())
    }

    async fn is_user_disabled(&self, id: Uuid) -> StoreResult<bool> {
        let row: Option<(Uuid,)> = self
            .cql
            .maybe_row(&self.statements.get_disabled_user, (id,))
            .await?;
        Ok(row.is_some())
    }

    async fn get_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        let row: Option<SessionRow> = self
            .cql
            .maybe_row(&self.statements.get_session, (id,))
            .await?;
        Ok(row.map(|row| SessionRecord {
            id: row.id,
            user_id: row.user_id,
            created_at: row.created_at.0,
            revoked: row.revoked.unwrap_or(false),
        }))
    }

    async fn stage_events(&self, events: &[munity_bus::DomainEvent]) -> StoreResult<()> {
        for event in events {
            self.cql
                .execute(self.outbox.insert_statement(), CqlOutbox::row(event))
                .await?;
        }
        self.outbox.notify_staged();
        Ok(())
    }

    async fn migration_done(&self, name: &str) -> StoreResult<bool> {
        let row: Option<(String,)> = self
            .cql
            .maybe_row(&self.statements.get_migration, (name,))
            .await?;
        Ok(row.is_some())
    }

    async fn record_migration(&self, name: &str, at: Millis) -> StoreResult<()> {
        self.cql
            .execute(&self.statements.record_migration, (name, ts(at)))
            .await?;
        Ok(())
    }

    async fn revoke_session(&self, id: Uuid) -> StoreResult<()> {
        // Not applied means there was no such session: nothing to revoke.
        self.cql
            .execute_lwt(&self.statements.revoke_session, (id,))
            .await?;
        Ok(())
    }

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()> {
        let values = (
            &token.token_hash,
            token.session_id,
            token.user_id,
            ts(token.expires_at),
            token.used,
            ttl_until(token.expires_at),
        );
        self.cql
            .execute(&self.statements.insert_token, values)
            .await?;
        Ok(())
    }

    async fn get_refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>> {
        Ok(self
            .cql
            .maybe_row::<TokenRow>(&self.statements.get_token, (token_hash,))
            .await?
            .map(RefreshTokenRecord::from))
    }

    async fn consume_refresh_token(&self, token_hash: &str) -> StoreResult<bool> {
        // The row's TTL must carry over to the updated column, or `used`
        // would outlive the token and leave a stub row behind.
        let Some(token) = self.get_refresh_token(token_hash).await? else {
            return Ok(false);
        };
        self.cql
            .execute_lwt(
                &self.statements.consume_token,
                (ttl_until(token.expires_at), token_hash),
            )
            .await
    }

    async fn list_signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        let rows: Vec<KeyRow> = self.cql.rows(&self.statements.list_keys, ()).await?;
        Ok(rows
            .into_iter()
            .map(|row| SigningKeyRecord {
                kid: row.kid,
                secret: row.secret,
                created_at: row.created_at.0,
                retired_at: row.retired_at.map(|t| t.0),
            })
            .collect())
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let values = (
            &key.kid,
            &key.secret,
            ts(key.created_at),
            key.retired_at.map(ts),
        );
        if self
            .cql
            .execute_lwt(&self.statements.insert_key, values)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Conflict("signing key"))
        }
    }

    async fn retire_signing_keys_except(&self, keep_kid: &str, at: Millis) -> StoreResult<()> {
        for key in self.list_signing_keys().await? {
            if key.kid != keep_kid && key.retired_at.is_none() {
                self.cql
                    .execute_lwt(&self.statements.retire_key, (ts(at), &key.kid))
                    .await?;
            }
        }
        Ok(())
    }

    async fn create_service_account(&self, account: &ServiceAccountRecord) -> StoreResult<()> {
        let s = &self.statements;
        let name_key = account.name_key();
        if !self
            .cql
            .execute_lwt(&s.claim_service_name, (&name_key, account.id))
            .await?
        {
            return Err(StoreError::Conflict("service account name"));
        }
        let row = (
            account.id,
            &account.name,
            &account.scopes,
            &account.secret_hash,
            account.disabled,
            ts(account.created_at),
            ts(account.secret_rotated_at),
        );
        // A lightweight transaction, though the id is fresh: every write to
        // the row is then one (the changes are `IF EXISTS`), so none can lose
        // to another by its timestamp.
        let inserted = self.cql.execute_lwt(&s.insert_service_account, row).await;
        if !matches!(inserted, Ok(true)) {
            // Give the name back so the account can be created again.
            let _ = self
                .cql
                .execute_lwt(&s.release_service_name, (&name_key, account.id))
                .await;
        }
        match inserted {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::Conflict("service account")),
            Err(error) => Err(error),
        }
    }

    async fn get_service_account(&self, id: Uuid) -> StoreResult<Option<ServiceAccountRecord>> {
        Ok(self
            .cql
            .maybe_row::<ServiceAccountRow>(&self.statements.get_service_account, (id,))
            .await?
            .map(ServiceAccountRecord::from))
    }

    async fn list_service_accounts(&self) -> StoreResult<Vec<ServiceAccountRecord>> {
        // Rows come in partition-token order; oldest first is a sort here
        // (they are few).
        let rows: Vec<ServiceAccountRow> = self
            .cql
            .rows(&self.statements.list_service_accounts, ())
            .await?;
        let mut accounts: Vec<ServiceAccountRecord> =
            rows.into_iter().map(ServiceAccountRecord::from).collect();
        accounts.sort_by_key(|a| (a.created_at, a.id));
        Ok(accounts)
    }

    async fn set_service_secret(
        &self,
        id: Uuid,
        secret_hash: &str,
        rotated_at: Millis,
    ) -> StoreResult<ServiceAccountRecord> {
        let applied = self
            .cql
            .execute_lwt(
                &self.statements.set_service_secret,
                (secret_hash, ts(rotated_at), id),
            )
            .await?;
        self.changed_service_account(applied, id).await
    }

    async fn set_service_account_disabled(
        &self,
        id: Uuid,
        disabled: bool,
    ) -> StoreResult<ServiceAccountRecord> {
        let applied = self
            .cql
            .execute_lwt(&self.statements.set_service_disabled, (disabled, id))
            .await?;
        self.changed_service_account(applied, id).await
    }

    async fn create_community(
        &self,
        community: &CommunityRecord,
        owner: &MembershipRecord,
    ) -> StoreResult<()> {
        let values = (
            community.id,
            &community.name,
            &community.description,
            community.owner_id,
            ts(community.created_at),
        );
        let created = self
            .outbox
            .with_events(&[events::community_created(community)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.statements.insert_community, values)
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if !created {
            return Err(StoreError::Conflict("community"));
        }
        self.add_membership(owner).await?;
        Ok(())
    }

    async fn get_community(&self, id: Uuid) -> StoreResult<Option<CommunityRecord>> {
        Ok(self
            .cql
            .maybe_row::<CommunityRow>(&self.statements.get_community, (id,))
            .await?
            .map(CommunityRecord::from))
    }

    async fn list_communities(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<CommunityRecord>> {
        let s = &self.statements;
        let rows: Vec<CommunityRow> = match after {
            None => {
                self.cql
                    .rows(&s.list_communities_first, (limit_plus_one(limit),))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(&s.list_communities_after, (after, limit_plus_one(limit)))
                    .await?
            }
        };
        let communities = rows.into_iter().map(CommunityRecord::from).collect();
        Ok(page_from(communities, limit, |c: &CommunityRecord| c.id))
    }

    async fn add_membership(&self, membership: &MembershipRecord) -> StoreResult<MembershipRecord> {
        let values = (
            membership.community_id,
            membership.user_id,
            membership.role.as_str(),
            ts(membership.joined_at),
        );
        let joined = self
            .outbox
            .with_events(&[events::member_joined(membership)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.statements.insert_member, values)
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if joined {
            return Ok(membership.clone());
        }
        self.get_membership(membership.community_id, membership.user_id)
            .await?
            .ok_or_else(|| StoreError::Internal("membership vanished while joining".to_owned()))
    }

    async fn get_membership(
        &self,
        community_id: Uuid,
        user_id: Uuid,
    ) -> StoreResult<Option<MembershipRecord>> {
        self.cql
            .maybe_row::<MemberRow>(&self.statements.get_member, (community_id, user_id))
            .await?
            .map(MembershipRecord::try_from)
            .transpose()
    }

    async fn update_membership(&self, membership: &MembershipRecord) -> StoreResult<()> {
        let values = (
            membership.role.as_str(),
            membership.community_id,
            membership.user_id,
        );
        let updated = self
            .outbox
            .with_events(&[events::member_role_changed(membership)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.statements.update_member, values)
                    .await?;
                Ok((applied, applied))
            })
            .await?;
        if updated {
            Ok(())
        } else {
            Err(StoreError::NotFound("membership"))
        }
    }

    async fn remove_membership(&self, community_id: Uuid, user_id: Uuid) -> StoreResult<bool> {
        self.outbox
            .with_events(&[events::member_left(community_id, user_id)], async {
                let applied = self
                    .cql
                    .execute_lwt(&self.statements.delete_member, (community_id, user_id))
                    .await?;
                Ok((applied, applied))
            })
            .await
    }

    async fn list_members(
        &self,
        community_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Page<MembershipRecord>> {
        let s = &self.statements;
        let rows: Vec<MemberRow> = match after {
            None => {
                self.cql
                    .rows(&s.list_members_first, (community_id, limit_plus_one(limit)))
                    .await?
            }
            Some(after) => {
                self.cql
                    .rows(
                        &s.list_members_after,
                        (community_id, after, limit_plus_one(limit)),
                    )
                    .await?
            }
        };
        let members = rows
            .into_iter()
            .map(MembershipRecord::try_from)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(page_from(members, limit, |m: &MembershipRecord| m.user_id))
    }

    async fn insert_link_code(&self, code: &LinkCodeRecord) -> StoreResult<()> {
        self.links.insert_code(&self.cql, code).await
    }

    async fn take_link_code(
        &self,
        code_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<LinkCodeRecord>> {
        self.links.take_code(&self.cql, code_hash, now).await
    }

    async fn link_failures(&self, chat_id: i64, now: Millis, window: Millis) -> StoreResult<u32> {
        self.links.failures(&self.cql, chat_id, now, window).await
    }

    async fn record_link_failure(
        &self,
        chat_id: i64,
        now: Millis,
        window: Millis,
    ) -> StoreResult<()> {
        self.links
            .record_failure(&self.cql, chat_id, now, window)
            .await
    }

    async fn put_chat_link(&self, link: &ChatLinkRecord) -> StoreResult<()> {
        self.links.put_link(&self.cql, link).await
    }

    async fn get_chat_link(&self, chat_id: i64) -> StoreResult<Option<ChatLinkRecord>> {
        self.links.get_link(&self.cql, chat_id).await
    }

    async fn list_chat_links(&self, user_id: Uuid) -> StoreResult<Vec<ChatLinkRecord>> {
        self.links.list_links(&self.cql, user_id).await
    }

    async fn delete_chat_link(&self, chat_id: i64, user_id: Option<Uuid>) -> StoreResult<bool> {
        self.links.delete_link(&self.cql, chat_id, user_id).await
    }
}

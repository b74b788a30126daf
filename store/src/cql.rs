//! ScyllaDB (or any CQL v4 server) the same way in every service: one
//! session per store, the keyspace created when missing, idempotent schema
//! statements applied at start-up, prepared statements run through
//! [`CqlStore`], which maps driver errors to [`StoreError`]s.
//!
//! Verified against Apache Cassandra 5.0 (same CQL protocol); only portable
//! CQL is used: no `USING TIMEOUT`, no tablets-specific options.

use std::time::Duration;

use munity_platform::config::CqlConfig;
use scylla::{
    client::{
        execution_profile::ExecutionProfile, session::Session, session_builder::SessionBuilder,
    },
    errors::ExecutionError,
    response::query_result::QueryResult,
    serialize::row::SerializeRow,
    statement::prepared::PreparedStatement,
    value::{CqlTimestamp, CqlValue, Row},
};

use crate::{Millis, StoreError, StoreResult, internal, now_millis};

/// Why the CQL store could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CqlSetupError {
    #[error(
        "storage.keyspace {0:?} is not a valid name (letters, digits, underscores; at most 48)"
    )]
    BadKeyspace(String),
    #[error("cannot connect to CQL nodes {nodes:?}: {source}")]
    Connect {
        nodes: Vec<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("schema statement failed: {statement}: {source}")]
    Schema {
        statement: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Whether `name` can be used unquoted as a CQL keyspace name.
pub fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Connects, creates the keyspace if needed and makes it the session's
/// default, then runs `schema` (each statement must be idempotent, e.g.
/// `CREATE TABLE IF NOT EXISTS`), waiting for schema agreement after each.
pub async fn connect(config: &CqlConfig, schema: &[&str]) -> Result<Session, CqlSetupError> {
    if !valid_keyspace(&config.keyspace) {
        return Err(CqlSetupError::BadKeyspace(config.keyspace.clone()));
    }
    let profile = ExecutionProfile::builder()
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.user(user, password);
    }
    let session = builder.build().await.map_err(|e| CqlSetupError::Connect {
        nodes: config.nodes.clone(),
        source: Box::new(e),
    })?;

    let create_keyspace = format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
         {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
        config.keyspace, config.replication_factor
    );
    run_schema_statement(&session, &create_keyspace).await?;
    session
        .use_keyspace(&config.keyspace, false)
        .await
        .map_err(|e| CqlSetupError::Schema {
            statement: format!("USE {}", config.keyspace),
            source: Box::new(e),
        })?;
    for statement in schema {
        run_schema_statement(&session, statement).await?;
    }
    Ok(session)
}

async fn run_schema_statement(session: &Session, statement: &str) -> Result<(), CqlSetupError> {
    let schema_error = |e: Box<dyn std::error::Error + Send + Sync>| CqlSetupError::Schema {
        statement: statement.to_owned(),
        source: e,
    };
    session
        .query_unpaged(statement, &[])
        .await
        .map_err(|e| schema_error(Box::new(e)))?;
    session
        .await_schema_agreement()
        .await
        .map_err(|e| schema_error(Box::new(e)))?;
    Ok(())
}

/// A connected session and the helpers every CQL repository uses.
pub struct CqlStore {
    session: Session,
}

impl CqlStore {
    /// Connects, creates the keyspace and applies `schema` (see [`connect`]).
    pub async fn connect(config: &CqlConfig, schema: &[&str]) -> Result<Self, CqlSetupError> {
        Ok(CqlStore {
            session: connect(config, schema).await?,
        })
    }

    /// Prepares one statement (once, at start-up).
    pub async fn prepare(&self, cql: impl Into<String>) -> anyhow::Result<PreparedStatement> {
        let cql = cql.into();
        self.session
            .prepare(cql.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot prepare `{cql}`: {e}"))
    }

    pub async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(execution_error)
    }

    /// Runs a lightweight transaction (`IF NOT EXISTS`, `IF col = ?`, ...);
    /// true when it was applied.
    pub async fn execute_lwt(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<bool> {
        let result = self.execute(statement, values).await?;
        applied(result)
    }

    /// Runs a batch (e.g. a logged batch: a change and its outbox entries,
    /// all applied or none).
    pub async fn batch(
        &self,
        batch: &scylla::statement::batch::Batch,
        values: impl scylla::serialize::batch::BatchValues,
    ) -> StoreResult<QueryResult> {
        self.session
            .batch(batch, values)
            .await
            .map_err(execution_error)
    }

    /// Runs a conditional batch (statements with `IF` in one partition:
    /// one Paxos round for all of them); true when it was applied, which
    /// is all or none.
    pub async fn batch_lwt(
        &self,
        batch: &scylla::statement::batch::Batch,
        values: impl scylla::serialize::batch::BatchValues,
    ) -> StoreResult<bool> {
        let result = self.batch(batch, values).await?;
        applied(result)
    }

    /// Every row of the answer, typed.
    pub async fn rows<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Vec<R>>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let result = self.execute(statement, values).await?;
        let rows = result.into_rows_result().map_err(internal)?;
        rows.rows::<R>()
            .map_err(internal)?
            .collect::<Result<Vec<R>, _>>()
            .map_err(internal)
    }

    /// The first row of the answer, if any.
    pub async fn maybe_row<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> StoreResult<Option<R>>
    where
        R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        Ok(self.rows(statement, values).await?.into_iter().next())
    }
}

/// A lightweight transaction's `[applied]` column.
fn applied(result: QueryResult) -> StoreResult<bool> {
    let rows = result.into_rows_result().map_err(internal)?;
    let row: Row = rows.first_row().map_err(internal)?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Internal(format!(
            "lightweight transaction answered without [applied]: {other:?}"
        ))),
    }
}

/// Timeouts and unreachable nodes are worth a retry; the rest is not.
pub fn execution_error(error: ExecutionError) -> StoreError {
    match &error {
        ExecutionError::RequestTimeout(_)
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::LastAttemptError(_) => StoreError::Unavailable(error.to_string()),
        _ => StoreError::Internal(error.to_string()),
    }
}

/// A stored time as a CQL `timestamp`.
pub fn ts(millis: Millis) -> CqlTimestamp {
    CqlTimestamp(millis)
}

/// `LIMIT ?` for "one more than asked" (see [`crate::page_from`]); `LIMIT`
/// takes a CQL int.
pub fn limit_plus_one(limit: usize) -> i32 {
    i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX)
}

/// `USING TTL ?` seconds until `expires_at`, at least one (CQL reads a TTL
/// of 0 as "no TTL").
pub fn ttl_until(expires_at: Millis) -> i32 {
    let seconds = (expires_at - now_millis()).div_euclid(1000);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::{ttl_until, valid_keyspace};
    use crate::now_millis;

    #[test]
    fn ttls_are_at_least_one_second() {
        assert_eq!(ttl_until(now_millis() - 10_000), 1);
        assert!((59..=60).contains(&ttl_until(now_millis() + 60_000)));
    }

    #[test]
    fn keyspace_names() {
        assert!(valid_keyspace("munity"));
        assert!(valid_keyspace("munity_test_01"));
        assert!(!valid_keyspace("1munity"));
        assert!(!valid_keyspace("munity; DROP"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace(&"a".repeat(49)));
    }
}

//! Connecting to ScyllaDB (or any CQL v4 server) the same way in every
//! service: one session per process, the keyspace created when missing, and
//! idempotent schema statements applied at start-up.

use std::time::Duration;

use scylla::client::{
    execution_profile::ExecutionProfile, session::Session, session_builder::SessionBuilder,
};

use crate::config::CqlConfig;

/// Why the CQL store could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CqlSetupError {
    #[error("cql.keyspace {0:?} is not a valid name (letters, digits, underscores; at most 48)")]
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

#[cfg(test)]
mod tests {
    use super::valid_keyspace;

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

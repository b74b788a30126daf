//! What several users-svc test files open their store with: the embedded
//! backend in a temporary directory, and the CQL test server
//! (`MUNITY_TEST_CQL`) in a keyspace named for the test file.

use munity_platform::config::StorageConfig;
use users_svc::store::{self, Opened};

/// The embedded backend, with everything its relay needs, in a directory
/// removed when the second value is dropped.
pub async fn embedded() -> Option<(Opened, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Embedded {
        path: dir.path().to_owned(),
    };
    Some((store::open(&storage).await.unwrap(), dir))
}

/// The CQL test server, keyspace `keyspace` (one per test process); `None`
/// when no server is configured (`CI=true` makes that a failure).
pub async fn cql(keyspace: &str) -> Option<(Opened, ())> {
    let config = munity_testkit::cql_config(keyspace)?;
    let _schema = munity_testkit::schema_lock().await;
    Some((store::open(&StorageConfig::Cql(config)).await.unwrap(), ()))
}

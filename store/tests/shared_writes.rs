//! The embedded store's writer shares one transaction among concurrent
//! writers (`store/src/embedded/writer.rs`). What callers must still be
//! able to count on: each write that succeeded is committed exactly once,
//! nothing of a write that failed (or panicked) is, each caller hears its
//! own answer, and a read-modify-write stays exact under any concurrency.

use munity_store::{StoreError, embedded::EmbeddedDb, internal};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const KEYS: TableDefinition<u64, ()> = TableDefinition::new("keys");
const COUNTER: TableDefinition<&str, u64> = TableDefinition::new("counter");

fn open(dir: &std::path::Path) -> EmbeddedDb {
    EmbeddedDb::open(dir, "shared", |txn| {
        txn.open_table(KEYS)?;
        txn.open_table(COUNTER)?;
        Ok(())
    })
    .unwrap()
}

/// Inserts `key`, adds one to the counter, then fails when `fail` says so
/// (after writing: the failure must undo both).
fn count(txn: &redb::WriteTransaction, key: u64, fail: bool) -> Result<u64, StoreError> {
    txn.open_table(KEYS)
        .map_err(internal)?
        .insert(key, ())
        .map_err(internal)?;
    let mut counter = txn.open_table(COUNTER).map_err(internal)?;
    let next = counter.get("n").map_err(internal)?.map_or(0, |v| v.value()) + 1;
    counter.insert("n", next).map_err(internal)?;
    if fail {
        return Err(StoreError::Conflict("key"));
    }
    Ok(key)
}

fn stored(db: &redb::Database) -> (Vec<u64>, u64) {
    let txn = db.begin_read().unwrap();
    let keys = txn.open_table(KEYS).unwrap();
    let keys = keys.iter().unwrap().map(|e| e.unwrap().0.value()).collect();
    let counter = txn.open_table(COUNTER).unwrap();
    let n = counter.get("n").unwrap().map_or(0, |v| v.value());
    (keys, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_commit_once_each_and_failed_ones_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut calls = Vec::new();
    for key in 0..400u64 {
        let db = db.clone();
        calls.push(tokio::spawn(async move {
            let fail = key % 7 == 3;
            // A mix of writers that can run again, once-only ones and
            // unsynced ones, as services make them.
            let answer = match key % 4 {
                0 => db.write(move |txn| count(txn, key, fail)).await,
                1 => db.write_unsynced(move |txn| count(txn, key, fail)).await,
                _ => db.write_shared(move |txn| count(txn, key, fail)).await,
            };
            (key, fail, answer)
        }));
    }
    let mut expected = Vec::new();
    for call in calls {
        let (key, fail, answer) = call.await.unwrap();
        if fail {
            assert!(
                matches!(answer, Err(StoreError::Conflict("key"))),
                "{key}: {answer:?}"
            );
        } else {
            assert_eq!(answer.unwrap(), key, "each caller hears its own answer");
            expected.push(key);
        }
    }
    db.durable().await.unwrap();
    let (keys, n) = db.blocking(|db| Ok(stored(db))).await.unwrap();
    assert_eq!(keys, expected, "exactly the writes that succeeded");
    assert_eq!(n, expected.len() as u64, "the counter counts each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_writer_fails_alone_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut calls = Vec::new();
    for key in 0..100u64 {
        let db = db.clone();
        calls.push(tokio::spawn(async move {
            let answer = db
                .write_shared(move |txn| {
                    if key == 50 {
                        panic!("a bug in one writer");
                    }
                    count(txn, key, false)
                })
                .await;
            (key, answer)
        }));
    }
    for call in calls {
        let (key, answer) = call.await.unwrap();
        if key == 50 {
            assert!(matches!(answer, Err(StoreError::Internal(_))), "{answer:?}");
        } else {
            assert_eq!(answer.unwrap(), key);
        }
    }
    assert_eq!(db.write(|txn| count(txn, 1000, false)).await.unwrap(), 1000);
    let (keys, n) = db.blocking(|db| Ok(stored(db))).await.unwrap();
    assert_eq!(keys.len(), 100, "99 writers and the one after");
    assert_eq!(n, 100);
    assert!(!keys.contains(&50));
}

/// The writer thread lets go of the database before it answers: a caller
/// that drops its last handle on hearing the answer can open the file
/// again at once (redb refuses a second open while one is alive), as a
/// restart or a test does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_reopens_as_soon_as_its_last_write_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    for key in 0..200u64 {
        let db = open(dir.path());
        let answer = if key % 2 == 0 {
            db.write_shared(move |txn| count(txn, key, false)).await
        } else {
            db.write(move |txn| count(txn, key, false)).await
        };
        assert_eq!(answer.unwrap(), key);
    }
    let db = open(dir.path());
    let (keys, n) = db.blocking(|db| Ok(stored(db))).await.unwrap();
    assert_eq!((keys.len(), n), (200, 200));
}

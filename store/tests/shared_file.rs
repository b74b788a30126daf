//! Several stores of one process in one redb file (a path ending in
//! `.redb`, as `munity dev` gives every store): they share the database,
//! its writer and its group commit, keep their own tables, and close the
//! file when the last of them is dropped.

use munity_store::{
    StoreError,
    embedded::{EmbeddedDb, is_shared_file},
    internal,
};
use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

const A_KEYS: TableDefinition<u64, ()> = TableDefinition::new("a_keys");
const B_KEYS: TableDefinition<u64, ()> = TableDefinition::new("b_keys");

fn open(path: &std::path::Path, name: &str, table: TableDefinition<u64, ()>) -> EmbeddedDb {
    EmbeddedDb::open(path, name, |txn| txn.open_table(table).map(drop)).unwrap()
}

fn insert(
    txn: &redb::WriteTransaction,
    table: TableDefinition<u64, ()>,
    key: u64,
) -> Result<(), StoreError> {
    txn.open_table(table)
        .map_err(internal)?
        .insert(key, ())
        .map_err(internal)?;
    Ok(())
}

async fn count(db: &EmbeddedDb, table: TableDefinition<'static, u64, ()>) -> u64 {
    db.blocking(move |db| {
        let txn = db.begin_read().map_err(internal)?;
        txn.open_table(table)
            .map_err(internal)?
            .len()
            .map_err(internal)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_in_one_file_share_it_and_keep_their_tables() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data").join("one.redb");
    assert!(is_shared_file(&file) && !is_shared_file(dir.path()));
    let a = open(&file, "a", A_KEYS);
    let b = open(&file, "b", B_KEYS);
    // Opening the file a second time succeeded: redb allows one opener,
    // so the second store joined the open database.
    assert!(file.is_file(), "its directory is created");
    // What every store may hold is named per store in a shared file, and
    // as before in a file of the store's own.
    assert_eq!(a.own_table("outbox"), "a.outbox");
    assert_eq!(b.own_table("outbox"), "b.outbox");
    let own = open(&dir.path().join("own"), "c", A_KEYS);
    assert_eq!(own.own_table("outbox"), "outbox");

    // Both stores' writers at once: every write lands once, in its own
    // store's table (they go through one writer and may share commits).
    let mut calls = Vec::new();
    for key in 0..300u64 {
        let (db, table) = if key % 2 == 0 {
            (a.clone(), A_KEYS)
        } else {
            (b.clone(), B_KEYS)
        };
        calls.push(tokio::spawn(async move {
            match key % 3 {
                0 => db.write(move |txn| insert(txn, table, key)).await,
                1 => db.write_shared(move |txn| insert(txn, table, key)).await,
                _ => db.write_unsynced(move |txn| insert(txn, table, key)).await,
            }
        }));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(count(&a, A_KEYS).await, 150);
    assert_eq!(count(&b, B_KEYS).await, 150);

    // Dropped by every store, the file closes; opened again, both
    // stores' data is there.
    a.durable().await.unwrap();
    drop((a, b));
    let mut reopened = None;
    for _ in 0..200 {
        match EmbeddedDb::open(&file, "b", |txn| txn.open_table(B_KEYS).map(drop)) {
            Ok(db) => {
                reopened = Some(db);
                break;
            }
            // The writer thread may hold the file a moment after answering.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    let b = reopened.expect("the file reopens once its stores are gone");
    let a = open(&file, "a", A_KEYS);
    assert_eq!(count(&a, A_KEYS).await, 150);
    assert_eq!(count(&b, B_KEYS).await, 150);
}

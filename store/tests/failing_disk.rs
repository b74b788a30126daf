//! The embedded store on a failing disk: a write whose durable commit
//! cannot be made answers UNAVAILABLE within a bound (no hang), reads and
//! writes work again once the disk does, without a restart, and every
//! write that was acknowledged is still there.
//!
//! Two ways to fail the disk: fault injection in the store's I/O layer
//! (always), and a real filesystem that fills up (a 16 MiB tmpfs, when
//! this process may mount one: as root, which CI is).

use std::time::{Duration, Instant};

use munity_store::{StoreError, embedded::EmbeddedDb, internal};
use redb::{ReadableDatabase, TableDefinition};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

fn open(dir: &std::path::Path) -> EmbeddedDb {
    EmbeddedDb::open(dir, "disk", |txn| {
        txn.open_table(RECORDS)?;
        Ok(())
    })
    .unwrap()
}

async fn put(db: &EmbeddedDb, key: String, size: usize) -> Result<(), StoreError> {
    db.write(move |txn| {
        let mut table = txn.open_table(RECORDS).map_err(internal)?;
        table
            .insert(key.as_str(), vec![7u8; size].as_slice())
            .map_err(internal)?;
        Ok(())
    })
    .await
}

async fn keys(db: &EmbeddedDb) -> Result<Vec<String>, StoreError> {
    db.blocking(|db| {
        let txn = db.begin_read().map_err(internal)?;
        let table = txn.open_table(RECORDS).map_err(internal)?;
        let mut keys = Vec::new();
        for entry in redb::ReadableTable::iter(&table).map_err(internal)? {
            keys.push(entry.map_err(internal)?.0.value().to_owned());
        }
        Ok(keys)
    })
    .await
}

/// A call that must answer (Ok or not) well within the hang detector.
async fn answered<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for 30 s"))
}

/// Writes until one succeeds (the store reopens at most once a second).
async fn recovered(db: &EmbeddedDb, key: &str) -> Duration {
    let started = Instant::now();
    loop {
        match answered(
            "a write after the disk recovered",
            put(db, key.to_owned(), 64),
        )
        .await
        {
            Ok(()) => return started.elapsed(),
            Err(StoreError::Unavailable(_)) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("no recovery after {:?}: {other:?}", started.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_io_failure_is_unavailable_then_recovers_with_nothing_acknowledged_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let key = format!("before-{i:02}");
        put(&db, key.clone(), 256).await.unwrap();
        acknowledged.push(key);
    }

    db.inject_disk_failure(true);
    let started = Instant::now();
    let refused = answered("a write on a failing disk", put(&db, "during".into(), 256)).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    println!("refused UNAVAILABLE after {:?}", started.elapsed());
    // Later writes too.
    let again = answered(
        "a second write on a failing disk",
        put(&db, "during-2".into(), 256),
    )
    .await;
    assert!(
        matches!(again, Err(StoreError::Unavailable(_))),
        "{again:?}"
    );

    db.inject_disk_failure(false);
    let took = recovered(&db, "after").await;
    println!("writes work again {took:?} after the disk did");
    acknowledged.push("after".to_owned());
    let stored = keys(&db).await.unwrap();
    for key in &acknowledged {
        assert!(
            stored.contains(key),
            "acknowledged {key} is gone: {stored:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_is_unavailable_then_recovers_with_nothing_acknowledged_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI runs as root and must be able to mount a tmpfs for this test"
        );
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(dir.path());

    let db = open(&dir.path().join("data"));
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("before-{i:02}");
        put(&db, key.clone(), 1024).await.unwrap();
        acknowledged.push(key);
    }
    // Fill the filesystem to the last byte.
    let filler = dir.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let byte = [0u8; 1];
        while file.write_all(&byte).is_ok() {}
        let _ = file.sync_all();
    }

    // Write until the store meets the full disk: redb has some room left
    // in its file, so the first few may still fit.
    let started = Instant::now();
    let mut refused = None;
    for i in 0..2_000 {
        let key = format!("full-{i:04}");
        match answered("a write on a full disk", put(&db, key.clone(), 16 * 1024)).await {
            Ok(()) => acknowledged.push(key),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("the full disk refused a write");
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
    println!(
        "a full disk refused a write UNAVAILABLE after {:?} ({} acknowledged)",
        started.elapsed(),
        acknowledged.len()
    );

    std::fs::remove_file(&filler).unwrap();
    let took = recovered(&db, "after").await;
    println!("writes work again {took:?} after space was freed");
    acknowledged.push("after".to_owned());
    let stored = keys(&db).await.unwrap();
    for key in &acknowledged {
        assert!(stored.contains(key), "acknowledged {key} is gone");
    }
    drop(db);
}

//! The embedded backend's plumbing: one redb file per service under the data
//! directory. redb commits are atomic and durable (copy-on-write B-trees with
//! a checksummed commit), so a crash loses at most the call in flight, and
//! write transactions are serialized, so a compare-and-set is one write
//! transaction.
//!
//! Group commit: each write transaction commits without an fsync
//! (`Durability::None`), then waits for a durable commit that comes after
//! it; one such commit (an empty transaction with `Durability::Immediate`)
//! makes every commit before it durable, so concurrent writers share one
//! fsync instead of queueing one each. A call returns only once its write
//! is durable. Readers may see a write a moment before it is durable; what
//! publishes data elsewhere (the outbox relay) waits for [`EmbeddedDb::durable`]
//! first.
//!
//! Conventions the helpers assume: keys are raw UUID bytes (UUIDv7 ids sort
//! in creation order, which gives listings a stable order for free) or
//! strings; values are JSON, so a field added later with a serde default
//! needs no migration.

use std::{
    ops::Bound,
    path::Path,
    sync::{Arc, Mutex},
};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{Page, StoreError, StoreResult, internal, page_from};

/// One service's redb database.
#[derive(Clone)]
pub struct EmbeddedDb {
    db: Arc<Database>,
    commits: Arc<GroupCommit>,
}

/// Shares durable commits among writers (see the module doc).
struct GroupCommit {
    state: Mutex<CommitState>,
    /// How many tickets are durable.
    durable: watch::Sender<u64>,
}

struct CommitState {
    /// Tickets handed out: one per write committed without an fsync.
    issued: u64,
    /// Whether a flusher task is running.
    flushing: bool,
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/<name>.redb`, creating `dir` when missing, and
    /// runs `create_tables` in one write transaction, so that read
    /// transactions never meet a missing table.
    pub fn open(
        dir: &Path,
        name: &str,
        create_tables: impl FnOnce(&WriteTransaction) -> Result<(), redb::TableError>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::create(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open {} (is another munity process using it?): {e}",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        create_tables(&txn)?;
        txn.commit()?;
        Ok(EmbeddedDb {
            db: Arc::new(db),
            commits: Arc::new(GroupCommit {
                state: Mutex::new(CommitState {
                    issued: 0,
                    flushing: false,
                }),
                durable: watch::channel(0).0,
            }),
        })
    }

    /// Runs `operation` on tokio's blocking pool: redb blocks on disk I/O
    /// (fsync on commit), which must not stall the async workers.
    pub async fn blocking<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || operation(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }

    /// Runs `operation` in one write transaction on the blocking pool and
    /// commits it when it succeeds (nothing is written when it fails);
    /// returns once the commit is durable.
    pub async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let value = self
            .blocking(move |db| {
                let mut txn = db.begin_write().map_err(internal)?;
                txn.set_durability(Durability::None).map_err(internal)?;
                let value = operation(&txn)?;
                txn.commit().map_err(internal)?;
                Ok(value)
            })
            .await?;
        self.durable().await?;
        Ok(value)
    }

    /// Waits until every write committed so far is durable (sharing the
    /// fsync with whoever else is waiting).
    pub async fn durable(&self) -> StoreResult<()> {
        let mut durable = self.commits.durable.subscribe();
        let ticket = {
            let mut state = self.commits.state.lock().unwrap_or_else(|e| e.into_inner());
            state.issued += 1;
            if !state.flushing {
                state.flushing = true;
                tokio::spawn(flush(self.db.clone(), self.commits.clone()));
            }
            state.issued
        };
        durable
            .wait_for(|done| *done >= ticket)
            .await
            .map_err(|_| StoreError::Internal("the store's flusher stopped".to_owned()))?;
        Ok(())
    }
}

/// Makes commits durable until no one waits: each round, one durable
/// commit for every ticket issued before it.
async fn flush(db: Arc<Database>, commits: Arc<GroupCommit>) {
    loop {
        let target = {
            let mut state = commits.state.lock().unwrap_or_else(|e| e.into_inner());
            if *commits.durable.borrow() >= state.issued {
                state.flushing = false;
                return;
            }
            state.issued
        };
        let db = db.clone();
        let synced = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            txn.commit()?;
            Ok(())
        })
        .await;
        match synced {
            Ok(Ok(())) => {
                commits
                    .durable
                    .send_modify(|done| *done = (*done).max(target));
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot make commits durable; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => {
                tracing::error!(%error, "the durable commit task failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A record as stored: JSON.
pub fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(internal)
}

/// A stored record back from JSON.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(internal)
}

/// Reads one JSON record by key from `table`.
pub fn read_one<K, T>(
    db: &Database,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
) -> StoreResult<Option<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(table).map_err(internal)?;
    match table.get(key).map_err(internal)? {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads one JSON record by key inside a write transaction (the read half
/// of a compare-and-set).
pub fn read_for_update<K, T>(
    table: &redb::Table<'_, K, &'static [u8]>,
    key: K::SelfType<'_>,
) -> StoreResult<Option<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    match table.get(key).map_err(internal)? {
        Some(value) => decode(value.value()).map(Some),
        None => Ok(None),
    }
}

/// Every JSON record of `table`, in key order.
pub fn read_all<K, T>(db: &Database, table: TableDefinition<K, &[u8]>) -> StoreResult<Vec<T>>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(table).map_err(internal)?;
    let mut all = Vec::new();
    for entry in table.iter().map_err(internal)? {
        let (_, value) = entry.map_err(internal)?;
        all.push(decode(value.value())?);
    }
    Ok(all)
}

/// Up to `limit` records with keys in `(start, end)` (both exclusive; no end
/// means to the end of the table), as a page keyed by `key_of`.
pub fn read_page<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&[u8], &[u8]>,
    start_exclusive: &[u8],
    end_exclusive: Option<&[u8]>,
    limit: usize,
    key_of: impl Fn(&T) -> Uuid,
) -> StoreResult<Page<T>> {
    let txn = db.begin_read().map_err(internal)?;
    let table = txn.open_table(table).map_err(internal)?;
    let end = match end_exclusive {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    let mut items = Vec::with_capacity(limit.saturating_add(1).min(1024));
    for entry in table
        .range::<&[u8]>((Bound::Excluded(start_exclusive), end))
        .map_err(internal)?
    {
        let (_, value) = entry.map_err(internal)?;
        items.push(decode(value.value())?);
        if items.len() > limit {
            break;
        }
    }
    Ok(page_from(items, limit, key_of))
}

/// A composite key: `parent` then `child`, so one parent's children are one
/// contiguous range ordered by child id (e.g. a community's members).
pub fn pair_key(parent: Uuid, child: Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(parent.as_bytes());
    key[16..].copy_from_slice(child.as_bytes());
    key
}

/// One page of `parent`'s children in a table keyed by [`pair_key`], after
/// child `after` (exclusive).
pub fn read_children<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&[u8], &[u8]>,
    parent: Uuid,
    after: Option<Uuid>,
    limit: usize,
    child_of: impl Fn(&T) -> Uuid,
) -> StoreResult<Page<T>> {
    let start = pair_key(parent, after.unwrap_or(Uuid::nil()));
    // The first key past this parent: its id plus one, as a 128-bit number
    // (the all-ones id has nothing after it).
    let end = (parent != Uuid::max()).then(|| {
        pair_key(
            Uuid::from_u128(parent.as_u128().wrapping_add(1)),
            Uuid::nil(),
        )
    });
    read_page(
        db,
        table,
        start.as_slice(),
        end.as_ref().map(|e| e.as_slice()),
        limit,
        child_of,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Item {
        parent: Uuid,
        id: Uuid,
    }

    #[tokio::test]
    async fn children_pages_stay_inside_their_parent() {
        let dir = tempfile::tempdir().unwrap();
        let db = EmbeddedDb::open(dir.path(), "test", |txn| {
            txn.open_table(ITEMS)?;
            Ok(())
        })
        .unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let items: Vec<Item> = [a, a, a, b]
            .iter()
            .map(|parent| Item {
                parent: *parent,
                id: Uuid::now_v7(),
            })
            .collect();
        let stored = items.clone();
        db.write(move |txn| {
            let mut table = txn.open_table(ITEMS).map_err(internal)?;
            for item in &stored {
                table
                    .insert(
                        pair_key(item.parent, item.id).as_slice(),
                        encode(item)?.as_slice(),
                    )
                    .map_err(internal)?;
            }
            Ok(())
        })
        .await
        .unwrap();
        let first = db
            .blocking(move |db| read_children(db, ITEMS, a, None, 2, |i: &Item| i.id))
            .await
            .unwrap();
        assert_eq!(first.items, items[..2]);
        let after = first.next_after;
        let rest = db
            .blocking(move |db| read_children(db, ITEMS, a, after, 2, |i: &Item| i.id))
            .await
            .unwrap();
        assert_eq!(rest.items, items[2..3]);
        assert_eq!(rest.next_after, None);
    }
}

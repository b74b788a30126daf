//! The embedded backend's plumbing: a store is a redb file of its own
//! (`<dir>/<name>.redb`), or one file several stores of a process share
//! (a path ending in `.redb`: `munity dev` puts every store and the event
//! log in one, so their writes share transactions and fsyncs; their tables
//! have distinct names, and what every store may hold, the kits' outbox and
//! membership view, is named per store there, [`EmbeddedDb::own_table`]).
//! redb commits are atomic and durable (copy-on-write B-trees with
//! a checksummed commit), so a crash loses at most the call in flight, and
//! write transactions are serialized, so a compare-and-set is one write
//! transaction.
//!
//! Shared transactions and group commit: writes are queued and one writer
//! thread at a time runs what is queued in one write transaction with one
//! commit (`embedded/writer.rs`; a writer that fails is rolled back with
//! the transaction and the others run again without it, which is why
//! [`EmbeddedDb::write_shared`] takes an `Fn`). A transaction holding a
//! write whose caller waits for durability commits with an fsync
//! (`Durability::Immediate`), which makes every commit before it durable
//! too; one holding only unsynced bookkeeping commits without one. So
//! concurrent writers share one commit and one fsync instead of queueing
//! for redb's lock one each. A call returns only once its write is
//! durable. Readers may see a write a moment before it is durable; what
//! publishes data elsewhere (the outbox relay) waits for [`EmbeddedDb::durable`]
//! first, which costs nothing when every commit so far is durable already.
//! Bookkeeping whose loss a crash may cost (a consumer's position: the
//! events are delivered again) uses [`EmbeddedDb::write_unsynced`]: the
//! commit is made durable by the next group commit, and nobody waits for it.
//!
//! A failing disk (full, or I/O errors) never hangs a caller: redb's file
//! backend is watched, and once a write, resize or fsync fails, waiting
//! writers and every later call answer UNAVAILABLE at once (a write waits
//! for its answer, durable commit included, at most [`DURABLE_WAIT`] in any
//! case; one whose caller stopped waiting before it ran is not run). redb
//! refuses everything after an I/O error until the file is opened again,
//! so the next call reopens it (at most once a second; redb's repair keeps
//! every durable commit): the store recovers when the disk does, without a
//! restart, and no acknowledged write is lost (`tests/failing_disk.rs`).
//!
//! Conventions the helpers assume: keys are raw UUID bytes (UUIDv7 ids sort
//! in creation order, which gives listings a stable order for free) or
//! strings; values are JSON, so a field added later with a serde default
//! needs no migration.

use std::{
    fs::OpenOptions,
    ops::Bound,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::Instrument;

use redb::{
    BackendError, Builder, Database, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition, WriteTransaction, backends::FileBackend,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{Page, StoreError, StoreResult, internal, page_from};

mod writer;
use writer::{Job, Work};

/// How long a write waits for the durable commit that covers it before it
/// answers UNAVAILABLE (a failing or stalled disk must not hang callers).
pub const DURABLE_WAIT: Duration = Duration::from_secs(5);
/// A commit made without waiting for an fsync ([`EmbeddedDb::write_unsynced`])
/// is made durable at most this much later.
pub const UNSYNCED_WITHIN: Duration = Duration::from_millis(500);
/// After the disk failed, calls try to reopen the database at most this
/// often (each try runs redb's repair).
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// What callers are told while the disk fails.
const DISK_FAILING: &str =
    "storage cannot write to its disk (full or failing); nothing was lost, try again shortly";

/// One store's redb database: a file of its own, or a file shared with
/// the process's other stores.
#[derive(Clone)]
pub struct EmbeddedDb {
    shared: Arc<Shared>,
    /// The store's name (`events`, `bus`, ...).
    name: Arc<str>,
}

/// The shared files this process has open, by path: a second store opening
/// one gets the same database, writer and group commit (redb allows one
/// opener per file). Weak, so a file closes once its last store drops it.
static SHARED_FILES: Mutex<Vec<(PathBuf, std::sync::Weak<Shared>)>> = Mutex::new(Vec::new());

/// Whether `path` names a file shared by several stores rather than a
/// directory of files, one per store.
pub fn is_shared_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension == "redb")
}

struct Shared {
    path: PathBuf,
    /// The file's name without `.redb`: what the file's own machinery
    /// (flushes, the writer thread) calls itself.
    stem: Arc<str>,
    /// Whether stores share the file (opened by its path), or it is one
    /// store's own.
    several: bool,
    /// The open database; `None` after an I/O failure until it is
    /// reopened (redb refuses every call once a write failed, until the
    /// file is opened again).
    current: RwLock<Option<Arc<Database>>>,
    /// Set by the backend on a failed write, resize or fsync.
    io: Arc<IoHealth>,
    commits: GroupCommit,
    /// Writes waiting for the writer thread (`writer.rs`).
    writes: Mutex<writer::Queue>,
    /// When a reopen was last tried.
    reopened_at: tokio::sync::Mutex<Option<Instant>>,
}

/// What the database's I/O met, shared with its backend.
#[derive(Debug, Default)]
pub struct IoHealth {
    failed: AtomicBool,
    /// Fault injection for tests: writes, resizes and fsyncs fail as on a
    /// full disk while set.
    injected: AtomicBool,
}

/// redb's file backend, watched: the first failed write, resize or fsync
/// marks the database failed, so callers get UNAVAILABLE at once and the
/// database is reopened once the disk works again.
#[derive(Debug)]
struct WatchedBackend {
    file: FileBackend,
    io: Arc<IoHealth>,
}

impl WatchedBackend {
    /// Runs a write-side operation (write, resize, fsync); its first
    /// failure (or an injected one, as ENOSPC) marks the database failed.
    fn watch<T>(&self, operation: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let result = if self.io.injected.load(Ordering::Acquire) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            operation()
        };
        if result.is_err() {
            self.io.failed.store(true, Ordering::Release);
        }
        result
    }
}

impl StorageBackend for WatchedBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.watch(|| self.file.set_len(len))
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.watch(|| self.file.sync_data())
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.watch(|| self.file.write(offset, data))
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Opens `path` (creating it) on a watched backend.
fn open_watched(path: &Path, io: &Arc<IoHealth>) -> Result<Database, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| e.to_string())?;
    let file = FileBackend::new(file).map_err(|e| e.to_string())?;
    Builder::new()
        .create_with_backend(WatchedBackend {
            file,
            io: io.clone(),
        })
        .map_err(|e| e.to_string())
}

/// Shares durable commits among writers (see the module doc).
struct GroupCommit {
    state: Mutex<CommitState>,
    /// How far tickets are settled: durable, or failed (their commit may
    /// or may not have reached the disk; their callers were told
    /// UNAVAILABLE, so nothing they were told is lost either way).
    settled: watch::Sender<Settled>,
    /// Whether a flush of unsynced commits is scheduled.
    flush_scheduled: AtomicBool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Settled {
    durable: u64,
    failed: u64,
}

struct CommitState {
    /// Writes committed without an fsync so far: a durable commit that
    /// starts after the n-th of them makes the first n durable.
    issued: u64,
    /// Whether a flusher task is running.
    flushing: bool,
}

impl EmbeddedDb {
    /// Opens (or creates) store `name` at `path`: the file `path/<name>.redb`,
    /// or, when `path` ends in `.redb`, that file, shared with every other
    /// store of this process that names it (see [`is_shared_file`]).
    /// Creates the missing directory, and runs `create_tables` in one write
    /// transaction, so that read transactions never meet a missing table.
    pub fn open(
        path: &Path,
        name: &str,
        create_tables: impl FnOnce(&WriteTransaction) -> Result<(), redb::TableError>,
    ) -> anyhow::Result<Self> {
        let shared_file = is_shared_file(path);
        let (dir, file) = if shared_file {
            (
                path.parent().unwrap_or(Path::new(".")).to_owned(),
                path.to_owned(),
            )
        } else {
            (path.to_owned(), path.join(format!("{name}.redb")))
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let name: Arc<str> = Arc::from(name);
        if !shared_file {
            let db = EmbeddedDb {
                shared: Arc::new(Shared::open(file, false)?),
                name,
            };
            db.create_tables(create_tables)?;
            return Ok(db);
        }
        // Held while opening, so two stores opening the file at once do
        // not both try.
        let mut open = SHARED_FILES.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, shared)| shared.strong_count() > 0);
        let shared = match open
            .iter()
            .find(|(path, _)| *path == file)
            .and_then(|(_, shared)| shared.upgrade())
        {
            Some(shared) => shared,
            None => {
                let shared = Arc::new(Shared::open(file.clone(), true)?);
                open.push((file, Arc::downgrade(&shared)));
                shared
            }
        };
        drop(open);
        let db = EmbeddedDb { shared, name };
        db.create_tables(create_tables)?;
        Ok(db)
    }

    /// Creates tables (and anything else a store sets up once) in one
    /// write transaction of its own, at once: for set-up, before the store
    /// serves (it waits for any write in progress).
    pub fn create_tables(
        &self,
        create: impl FnOnce(&WriteTransaction) -> Result<(), redb::TableError>,
    ) -> anyhow::Result<()> {
        let database = self.current().ok_or_else(|| {
            anyhow::anyhow!("{} is not open: {DISK_FAILING}", self.shared.path.display())
        })?;
        let txn = database.begin_write()?;
        create(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// The store's name, as given to [`EmbeddedDb::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of this store's copy of `table`, a table every store may
    /// hold (the kits' outbox and membership view): `table` in a file of
    /// the store's own, `<store>.<table>` in a shared file, so that the
    /// stores sharing it do not share the table.
    pub fn own_table(&self, table: &str) -> String {
        if self.shared.several {
            format!("{}.{table}", self.name)
        } else {
            table.to_owned()
        }
    }

    /// A handle on `shared` for the store's own machinery (flushes, the
    /// writer thread), named after the file.
    fn on(shared: Arc<Shared>) -> Self {
        let name = shared.stem.clone();
        EmbeddedDb { shared, name }
    }

    /// Makes writes, resizes and fsyncs fail as on a full disk (`true`),
    /// or work again (`false`): for tests of the failure path.
    #[doc(hidden)]
    pub fn inject_disk_failure(&self, failing: bool) {
        self.shared.io.injected.store(failing, Ordering::Release);
    }

    /// The open database, reopening it first after an I/O failure (at most
    /// once per [`REOPEN_EVERY`]); UNAVAILABLE while that cannot be done.
    async fn database(&self) -> StoreResult<Arc<Database>> {
        if !self.shared.io.failed.load(Ordering::Acquire)
            && let Some(db) = self.current()
        {
            return Ok(db);
        }
        let mut reopened_at = self.shared.reopened_at.lock().await;
        if !self.shared.io.failed.load(Ordering::Acquire)
            && let Some(db) = self.current()
        {
            return Ok(db);
        }
        if reopened_at.is_some_and(|at| at.elapsed() < REOPEN_EVERY) {
            return Err(StoreError::Unavailable(DISK_FAILING.to_owned()));
        }
        *reopened_at = Some(Instant::now());
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.reopen())
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?
    }

    fn current(&self) -> Option<Arc<Database>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `operation` on tokio's blocking pool: redb blocks on disk I/O
    /// (fsync on commit), which must not stall the async workers. A failure
    /// that came from the disk is UNAVAILABLE.
    pub async fn blocking<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = self.database().await?;
        let result = tokio::task::spawn_blocking(move || operation(&db))
            .await
            .map_err(|e| StoreError::Internal(format!("storage task failed: {e}")))?;
        result.map_err(|error| self.disk_error(error))
    }

    /// Runs `operation` in a write transaction and commits it when it
    /// succeeds (nothing of it is written when it fails); returns once the
    /// commit is durable. The transaction may hold other callers' writes
    /// committed with it (`writer.rs`); this one is the last of them.
    pub async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        self.queued(Work::once(operation), true).await
    }

    /// Like [`EmbeddedDb::write`], for an `operation` that can run again:
    /// it shares a transaction with any number of other writers, and when
    /// one of those fails, it runs again in a new one (each run but the
    /// last is rolled back, so it must change nothing outside the
    /// transaction). For writes many callers make at once.
    pub async fn write_shared<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        self.queued(Work::again(operation), true).await
    }

    /// Like [`EmbeddedDb::write`], but returns once committed, without
    /// waiting for the commit to be durable: the next group commit makes
    /// it so (at the latest [`UNSYNCED_WITHIN`] later: one is started
    /// then if no durable write came first), and a crash before that
    /// loses it. For bookkeeping whose loss only repeats work, never for
    /// what a caller is told is stored. Bookkeeping is written by many
    /// callers at once, so it shares transactions: `operation` may run more
    /// than once, as with [`EmbeddedDb::write_shared`].
    pub async fn write_unsynced<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        self.queued(Work::again(operation), false).await
    }

    /// Queues a write for the writer thread and waits for its answer, at
    /// most [`DURABLE_WAIT`] (a failing or stalled disk must not hang
    /// callers; a write whose caller stopped waiting before it ran is
    /// skipped).
    async fn queued<T: Send + 'static>(&self, work: Work, durable: bool) -> StoreResult<T> {
        // A span for the write, entered on the writer thread too, so what
        // the operation records (a domain event's traceparent) is its child.
        let span = tracing::info_span!(
            "store.write",
            otel.kind = "client",
            db.system = "redb",
            db.name = %self.name,
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Job {
            work,
            durable,
            span: span.clone(),
            reply,
        });
        match tokio::time::timeout(DURABLE_WAIT, answer)
            .instrument(span)
            .await
        {
            Ok(Ok(Ok(value))) => value.downcast::<T>().map(|value| *value).map_err(|_| {
                StoreError::Internal("a storage write answered another type".to_owned())
            }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(StoreError::Internal(
                "the storage writer failed during this write".to_owned(),
            )),
            Err(_) => {
                tracing::warn!(path = %self.shared.path.display(), "a write took longer than {DURABLE_WAIT:?}");
                Err(StoreError::Unavailable(DISK_FAILING.to_owned()))
            }
        }
    }

    /// An error from a write, as its caller hears it: UNAVAILABLE when it
    /// came from the disk.
    fn disk_error(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::Internal(cause) if self.shared.io.failed.load(Ordering::Acquire) => {
                tracing::warn!(%cause, path = %self.shared.path.display(), "storage I/O failed");
                StoreError::Unavailable(DISK_FAILING.to_owned())
            }
            other => other,
        }
    }

    /// A ticket for a durable commit about to be made (inside its write
    /// transaction, so every commit counted so far precedes it).
    fn ticket(&self) -> u64 {
        let mut state = self
            .shared
            .commits
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.issued += 1;
        state.issued
    }

    fn settle_durable(&self, ticket: u64) {
        self.shared
            .commits
            .settled
            .send_modify(|s| s.durable = s.durable.max(ticket));
    }

    fn settle_failed(&self, ticket: u64) {
        self.shared
            .commits
            .settled
            .send_modify(|s| s.failed = s.failed.max(ticket));
    }

    /// Makes what is committed durable within [`UNSYNCED_WITHIN`], unless
    /// a durable write does it first (under load one always does, so
    /// unsynced writes cost no fsync of their own).
    fn flush_later(&self) {
        if self
            .shared
            .commits
            .flush_scheduled
            .swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Not holding the database open: dropped meanwhile, redb makes
        // pending commits durable as it closes the file.
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(UNSYNCED_WITHIN).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let db = EmbeddedDb::on(shared);
            db.shared
                .commits
                .flush_scheduled
                .store(false, Ordering::Release);
            if let Err(error) = db.durable().await {
                tracing::warn!(%error, "unsynced commits not made durable; a later commit will");
            }
        });
    }

    /// Runs a short read on the calling thread instead of the blocking
    /// pool: for reads bounded to a few entries that the page cache holds
    /// (a hop to another thread costs more than they do). Anything that
    /// may read many pages or wait belongs in [`EmbeddedDb::blocking`].
    pub async fn read_now<T>(
        &self,
        operation: impl FnOnce(&Database) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let db = self.database().await?;
        operation(&db).map_err(|error| self.disk_error(error))
    }

    /// Counts a commit made without an fsync (after it is made).
    fn committed(&self) {
        let mut state = self
            .shared
            .commits
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.issued += 1;
    }

    /// Starts the flusher unless it runs or nothing waits to be made
    /// durable; the number of commits it will cover. After a failed
    /// durable commit, a caller waiting for durability gets a round of its
    /// own (the database is reopened by it), as if it had committed.
    fn start_flusher(&self) -> u64 {
        let mut state = self
            .shared
            .commits
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let settled = *self.shared.commits.settled.borrow();
        if settled.failed >= state.issued && settled.durable < state.issued {
            state.issued += 1;
        }
        if !state.flushing && settled.durable.max(settled.failed) < state.issued {
            state.flushing = true;
            tokio::spawn(flush(self.clone()));
        }
        state.issued
    }

    /// Waits until every write committed so far is durable (sharing the
    /// fsync with whoever else is waiting), at most [`DURABLE_WAIT`]:
    /// UNAVAILABLE when the disk fails or stalls. At once when they are
    /// durable already.
    pub async fn durable(&self) -> StoreResult<()> {
        let mut settled = self.shared.commits.settled.subscribe();
        let ticket = self.start_flusher();
        let wait = settled.wait_for(|s| s.durable >= ticket || s.failed >= ticket);
        match tokio::time::timeout(DURABLE_WAIT, wait).await {
            Ok(Ok(s)) if s.durable >= ticket => Ok(()),
            Ok(Ok(_)) => Err(StoreError::Unavailable(DISK_FAILING.to_owned())),
            Ok(Err(_)) => Err(StoreError::Internal(
                "the store's flusher stopped".to_owned(),
            )),
            Err(_) => {
                tracing::warn!(path = %self.shared.path.display(), "a durable commit took longer than {DURABLE_WAIT:?}");
                Err(StoreError::Unavailable(DISK_FAILING.to_owned()))
            }
        }
    }
}

impl Shared {
    /// Closes the failed database and opens the file again (redb repairs
    /// it: every commit that was durable is there). Runs on the blocking
    /// pool; the old database must be dropped before the file can be
    /// opened again, so calls still holding it are waited for (they fail
    /// fast: redb refuses everything after an I/O error).
    /// Opens `path` (creating it).
    fn open(path: PathBuf, several: bool) -> anyhow::Result<Shared> {
        let io = Arc::new(IoHealth::default());
        let db = open_watched(&path, &io).map_err(|e| {
            anyhow::anyhow!(
                "cannot open {} (is another munity process using it?): {e}",
                path.display()
            )
        })?;
        Ok(Shared {
            stem: Arc::from(path.file_stem().unwrap_or_default().to_string_lossy()),
            several,
            path,
            current: RwLock::new(Some(Arc::new(db))),
            io,
            commits: GroupCommit {
                state: Mutex::new(CommitState {
                    issued: 0,
                    flushing: false,
                }),
                settled: watch::channel(Settled::default()).0,
                flush_scheduled: AtomicBool::new(false),
            },
            writes: Mutex::default(),
            reopened_at: tokio::sync::Mutex::new(None),
        })
    }

    fn reopen(&self) -> StoreResult<Arc<Database>> {
        let old = self
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(old) = old {
            let started = Instant::now();
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if started.elapsed() < DURABLE_WAIT => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still_shared) => {
                        // Put it back: the next try waits again.
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(still_shared);
                        return Err(StoreError::Unavailable(DISK_FAILING.to_owned()));
                    }
                }
            }
        }
        self.io.failed.store(false, Ordering::Release);
        match open_watched(&self.path, &self.io) {
            Ok(db) if !self.io.failed.load(Ordering::Acquire) => {
                tracing::info!(path = %self.path.display(), "storage reopened after an I/O failure");
                let db = Arc::new(db);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(db.clone());
                Ok(db)
            }
            Ok(_) | Err(_) => {
                self.io.failed.store(true, Ordering::Release);
                tracing::warn!(path = %self.path.display(), "storage still cannot write to its disk");
                Err(StoreError::Unavailable(DISK_FAILING.to_owned()))
            }
        }
    }
}

/// Makes commits durable until no one waits: each round, one durable
/// commit for every ticket issued before it. When the disk fails, every
/// ticket issued so far is settled as failed and the flusher stops; the
/// next write reopens the database (or is refused while it cannot).
async fn flush(db: EmbeddedDb) {
    let commits = &db.shared.commits;
    loop {
        let target = {
            let mut state = commits.state.lock().unwrap_or_else(|e| e.into_inner());
            let settled = *commits.settled.borrow();
            if settled.durable.max(settled.failed) >= state.issued {
                state.flushing = false;
                return;
            }
            state.issued
        };
        // An empty durable write: it shares its commit with whatever
        // writes are queued.
        let synced = db.write_shared(|_| Ok(())).await;
        match synced {
            Ok(()) => db.settle_durable(target),
            Err(error) => {
                tracing::error!(%error, "cannot make commits durable; their writes are refused");
                db.settle_failed(target);
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

//! The one way records get stored (producers' RPCs and the activity
//! consumer alike): input rules, then the store, then a wake-up for this
//! replica's tails of the sources written.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use munity_proto::warehouse::v1::Record;
use munity_store::now_millis;
use tokio::sync::Notify;

use crate::{
    config::WarehouseConfig,
    domain::{Limits, prepare_batch},
    error::WarehouseError,
    store::{Batch, RecordStore},
};

#[derive(Clone)]
pub struct Ingestor {
    pub store: Arc<dyn RecordStore>,
    pub wakers: Arc<Wakers>,
    limits: Limits,
}

impl Ingestor {
    pub fn new(store: Arc<dyn RecordStore>, config: &WarehouseConfig) -> Self {
        Ingestor {
            store,
            wakers: Arc::new(Wakers::default()),
            limits: Limits {
                max_batch_records: config.max_batch_records.max(1),
                max_payload_bytes: config.max_payload_bytes,
            },
        }
    }

    /// The input limits (`warehouse.max_batch_records`,
    /// `warehouse.max_payload_bytes`).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks `records` (see [`prepare_batch`]) and hands them back ready
    /// to store.
    pub fn prepare(&self, mut records: Vec<Record>) -> Result<Batch, WarehouseError> {
        prepare_batch(&mut records, self.limits, now_millis())?;
        Ok(Batch::of(records))
    }

    /// Stores prepared records durably and wakes the tails of their
    /// sources; the ids, in order.
    pub async fn store(&self, batch: Batch) -> Result<Vec<String>, WarehouseError> {
        let ids: Vec<String> = batch.records.iter().map(|r| r.id.clone()).collect();
        self.store_all(batch).await?;
        Ok(ids)
    }

    /// [`Ingestor::store`] without the ids (IngestStream answers with
    /// counts only): how many records were stored.
    pub async fn store_all(&self, batch: Batch) -> Result<usize, WarehouseError> {
        let count = batch.records.len();
        // The distinct sources, without a copy of each record's name.
        let mut names: Vec<&str> = batch.records.iter().map(|r| r.source.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let sources: Vec<String> = names.into_iter().map(str::to_owned).collect();
        self.store.ingest(batch).await?;
        self.wakers.wake(&sources);
        Ok(count)
    }
}

/// One [`Notify`] per source someone on this replica tails.
#[derive(Default)]
pub struct Wakers {
    by_source: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    /// The source's waker, for as long as the caller holds it.
    pub fn watch(&self, source: &str) -> Arc<Notify> {
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(source.to_owned()).or_default().clone()
    }

    /// Lets go of a source's waker; forgotten once no tail holds it.
    pub fn release(&self, source: &str, notify: Arc<Notify>) {
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        drop(notify);
        if map.get(source).is_some_and(|n| Arc::strong_count(n) == 1) {
            map.remove(source);
        }
    }

    fn wake(&self, sources: &[String]) {
        let map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        for source in sources {
            if let Some(notify) = map.get(source) {
                notify.notify_waiters();
            }
        }
    }
}

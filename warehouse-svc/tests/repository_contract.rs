//! One contract, both record stores: redb, and CQL on the test server
//! (`MUNITY_TEST_CQL`; required under CI=true).

use std::{collections::HashSet, sync::Arc, time::Duration};

use munity_proto::warehouse::v1::Record;
use munity_store::now_millis;
use warehouse_svc::{
    WarehouseConfig,
    domain::{Limits, Range, RecordKey, prepare_batch, timestamp_of},
    store::{Batch, RecordStore, cql::CqlRecords, embedded::EmbeddedRecords},
};

fn config() -> WarehouseConfig {
    let mut config = WarehouseConfig {
        // Sequential test writes: nothing is in flight behind a read.
        tail_settle_ms: 0,
        ..WarehouseConfig::default()
    };
    // Long enough to be read back on a loaded machine before it expires.
    config.source_ttl_secs.insert("short-lived.*".into(), 4);
    config
}

async fn embedded() -> Option<(Arc<dyn RecordStore>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedRecords::open(dir.path(), config()).unwrap();
    Some((Arc::new(store), dir))
}

async fn cql() -> Option<(Arc<dyn RecordStore>, ())> {
    let cql = munity_testkit::cql_config("warehouse_records")?;
    let _schema = munity_testkit::schema_lock().await;
    let store = CqlRecords::connect(&cql, config()).await.unwrap();
    Some((Arc::new(store), ()))
}

/// A source no other test uses.
fn source(name: &str) -> String {
    format!("{name}.{}", uuid::Uuid::now_v7().simple())
}

const HOUR: i64 = 3_600_000;

/// Records of `source` at `times` (ids `r<time>-<n>`), prepared as the API
/// prepares them.
fn records(source: &str, times: &[i64]) -> Vec<Record> {
    let mut records: Vec<Record> = times
        .iter()
        .enumerate()
        .map(|(n, time)| Record {
            id: format!("r{time}-{n}"),
            source: source.to_owned(),
            time: Some(timestamp_of(*time)),
            attributes: [("n".to_owned(), n.to_string())].into(),
            ..Record::default()
        })
        .collect();
    let limits = Limits {
        max_batch_records: 10_000,
        max_payload_bytes: 1024,
    };
    prepare_batch(&mut records, limits, now_millis()).unwrap();
    records
}

fn range(source: &str, from: i64, to: i64, descending: bool) -> Range {
    Range {
        source: source.to_owned(),
        from,
        to,
        descending,
    }
}

fn keys(records: &[Record]) -> Vec<RecordKey> {
    records.iter().map(RecordKey::of).collect()
}

/// Every record of `range`, `page` at a time, as a client pages.
async fn read_all(store: &dyn RecordStore, range: &Range, page: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    loop {
        let after = out.last().map(RecordKey::of);
        let got = store.read(range, after.as_ref(), page).await.unwrap();
        let done = got.len() < page;
        out.extend(got);
        if done {
            return out;
        }
    }
}

mod cases {
    use super::*;

    pub async fn records_come_back_in_time_then_id_order_within_the_range(
        store: Arc<dyn RecordStore>,
    ) {
        let source = source("order");
        let base = 1_700_000_000_000;
        // Out of order, two sharing a millisecond, one at each bound.
        let times = [base + 5, base, base + 5, base + 2, base + 10];
        store
            .ingest(Batch::of(records(&source, &times)))
            .await
            .unwrap();
        store
            .ingest(Batch::of(records(&super::source("elsewhere"), &[base + 1])))
            .await
            .unwrap();

        let up = store
            .read(&range(&source, base, base + 10, false), None, 100)
            .await
            .unwrap();
        let mut expected = keys(&records(&source, &times[..4]));
        expected.sort();
        assert_eq!(keys(&up), expected, "[from, to): `to` left out");
        let down = store
            .read(&range(&source, base, base + 11, true), None, 100)
            .await
            .unwrap();
        let mut expected = keys(&records(&source, &times));
        expected.sort();
        expected.reverse();
        assert_eq!(keys(&down), expected);
        // A record keeps what it was stored with.
        assert_eq!(up[0].attributes.get("n").map(String::as_str), Some("1"));
        assert!(up[0].stored_at.is_some());
    }

    pub async fn the_same_batch_twice_is_stored_once(store: Arc<dyn RecordStore>) {
        let source = source("idempotent");
        let base = 1_700_000_000_000;
        let batch = records(&source, &[base, base + HOUR, base + 2 * HOUR]);
        store.ingest(Batch::of(batch.clone())).await.unwrap();
        store.ingest(Batch::of(batch.clone())).await.unwrap();
        let all = read_all(&*store, &range(&source, base, base + 3 * HOUR, false), 2).await;
        assert_eq!(keys(&all), keys(&batch));
    }

    pub async fn pages_cross_partitions_in_both_directions(store: Arc<dyn RecordStore>) {
        let source = source("pages");
        let base = 1_700_000_000_000 - 1_700_000_000_000 % HOUR;
        // 3 hours with records, an empty hour between, several per hour.
        let mut times = Vec::new();
        for hour in [0, 1, 3] {
            for n in 0..7 {
                times.push(base + hour * HOUR + n * 1000);
            }
        }
        store
            .ingest(Batch::of(records(&source, &times)))
            .await
            .unwrap();
        let mut expected = keys(&records(&source, &times));
        expected.sort();
        for page in [1, 3, 7, 100] {
            let up = read_all(&*store, &range(&source, base, base + 4 * HOUR, false), page).await;
            assert_eq!(keys(&up), expected, "ascending, page {page}");
            let down = read_all(&*store, &range(&source, base, base + 4 * HOUR, true), page).await;
            let mut reversed = expected.clone();
            reversed.reverse();
            assert_eq!(keys(&down), reversed, "descending, page {page}");
        }
        // A range inside one partition.
        let inner = store
            .read(
                &range(&source, base + HOUR + 1000, base + HOUR + 3000, false),
                None,
                100,
            )
            .await
            .unwrap();
        assert_eq!(inner.len(), 2);
    }

    pub async fn pages_stay_exact_while_records_arrive(store: Arc<dyn RecordStore>) {
        let source = source("stable");
        let base = 1_700_000_000_000;
        let first: Vec<i64> = (0..60).map(|n| base + n * 1000).collect();
        store
            .ingest(Batch::of(records(&source, &first)))
            .await
            .unwrap();
        let existing: HashSet<RecordKey> = keys(&records(&source, &first)).into_iter().collect();

        // Page through while new records land before, between and after
        // what was read.
        let range = range(&source, base, base + 120_000, false);
        let mut seen: Vec<RecordKey> = Vec::new();
        let mut round = 0;
        loop {
            let after = seen.last().cloned();
            let page = store.read(&range, after.as_ref(), 7).await.unwrap();
            let done = page.len() < 7;
            seen.extend(keys(&page));
            round += 1;
            let late = [
                base + 500 + round,
                base + 59_999 - round,
                base + 61_000 + round,
            ];
            let mut batch = records(&source, &late);
            for record in &mut batch {
                record.id = format!("late-{round}-{}", record.id);
            }
            store.ingest(Batch::of(batch)).await.unwrap();
            if done {
                break;
            }
        }
        let unique: HashSet<&RecordKey> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no record twice");
        assert!(
            existing.iter().all(|k| unique.contains(k)),
            "no record skipped"
        );
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(sorted, seen, "in order");
    }

    pub async fn arrivals_come_in_storage_order_and_resume_after_a_cursor(
        store: Arc<dyn RecordStore>,
    ) {
        let source = source("tail");
        assert_eq!(store.newest_arrival(&source).await.unwrap(), None);
        let base = 1_700_000_000_000;
        // Event times out of order across batches: arrival order is not
        // time order.
        let batches = [
            records(&source, &[base + 30, base + 10]),
            records(&source, &[base]),
            records(&source, &[base + 20, base + 40, base + 50]),
        ];
        let mut stored = Vec::new();
        for batch in &batches {
            store.ingest(Batch::of(batch.clone())).await.unwrap();
            stored.extend(batch.iter().map(|r| r.id.clone()));
        }
        let all = store.arrivals(&source, None, 100).await.unwrap();
        let ids: Vec<String> = all.iter().map(|(_, r)| r.id.clone()).collect();
        assert_eq!(ids, stored);
        let cursors: Vec<_> = all.iter().map(|(c, _)| *c).collect();
        let mut sorted = cursors.clone();
        sorted.sort();
        assert_eq!(cursors, sorted, "cursors grow");
        assert_eq!(
            store.newest_arrival(&source).await.unwrap(),
            cursors.last().copied()
        );
        // Resume after each position, mid-batch included; limits respected.
        for (n, cursor) in cursors.iter().enumerate() {
            let rest = store.arrivals(&source, Some(cursor), 100).await.unwrap();
            let rest: Vec<String> = rest.into_iter().map(|(_, r)| r.id).collect();
            assert_eq!(rest, stored[n + 1..], "after #{n}");
        }
        let two = store.arrivals(&source, None, 2).await.unwrap();
        assert_eq!(two.len(), 2);
        let next = store.arrivals(&source, Some(&two[1].0), 2).await.unwrap();
        assert_eq!(next[0].1.id, stored[2]);
    }

    pub async fn a_large_batch_across_hours_tails_in_request_order(store: Arc<dyn RecordStore>) {
        let source = source("tail-large");
        let base = 1_700_000_000_000 - 1_700_000_000_000 % HOUR;
        // 250 records over three hours, neither in time order nor grouped
        // by hour: the tail hands them out as they were sent.
        let times: Vec<i64> = (0..250)
            .map(|n: i64| base + (n * 7 % 3) * HOUR + (n * 7919) % 3_000_000)
            .collect();
        let batch = records(&source, &times);
        let sent: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        store.ingest(Batch::of(batch.clone())).await.unwrap();
        let all = store.arrivals(&source, None, 1_000).await.unwrap();
        let ids: Vec<String> = all.iter().map(|(_, r)| r.id.clone()).collect();
        assert_eq!(ids, sent);
        // The records as stored, attributes included.
        assert_eq!(
            all.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
            batch
        );
        // In pages of 7, resuming after each page's last cursor.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.arrivals(&source, after.as_ref(), 7).await.unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            paged.extend(page.into_iter().map(|(_, r)| r.id));
        }
        assert_eq!(paged, sent);
    }

    pub async fn the_tail_pages_through_many_small_batches(store: Arc<dyn RecordStore>) {
        let source = source("tail-many");
        let base = 1_700_000_000_000;
        let mut sent = Vec::new();
        for n in 0..80 {
            let batch = records(&source, &[base + (80 - n)]);
            sent.push(batch[0].id.clone());
            store.ingest(Batch::of(batch)).await.unwrap();
        }
        let all = store.arrivals(&source, None, 1_000).await.unwrap();
        let ids: Vec<String> = all.into_iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids, sent);
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.arrivals(&source, after.as_ref(), 30).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            paged.extend(page.into_iter().map(|(_, r)| r.id));
        }
        assert_eq!(paged, sent);
        assert_eq!(store.newest_arrival(&source).await.unwrap(), after);
    }

    pub async fn records_of_a_source_with_a_ttl_expire(store: Arc<dyn RecordStore>) {
        let kept = source("kept");
        let short = source("short-lived");
        let now = now_millis();
        store
            .ingest(Batch::of(records(&kept, &[now])))
            .await
            .unwrap();
        store
            .ingest(Batch::of(records(&short, &[now])))
            .await
            .unwrap();
        let all = |source: String| {
            let store = store.clone();
            async move {
                store
                    .read(&range(&source, now - 1, now + 1, false), None, 10)
                    .await
                    .unwrap()
                    .len()
            }
        };
        assert_eq!((all(kept.clone()).await, all(short.clone()).await), (1, 1));
        tokio::time::sleep(Duration::from_millis(4_600)).await;
        assert_eq!((all(kept).await, all(short).await), (1, 0));
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        records_come_back_in_time_then_id_order_within_the_range,
        the_same_batch_twice_is_stored_once,
        pages_cross_partitions_in_both_directions,
        pages_stay_exact_while_records_arrive,
        arrivals_come_in_storage_order_and_resume_after_a_cursor,
        a_large_batch_across_hours_tails_in_request_order,
        the_tail_pages_through_many_small_batches,
        records_of_a_source_with_a_ttl_expire,
    ],
}

//! The transactional outbox and its relay: writes commit while the log is
//! down, the relay catches up when it returns, in order per aggregate, none
//! lost; a rolled-back write publishes nothing.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use munity_bus::{
    DomainEvent, EmbeddedLog, EventLog, RedisLog,
    outbox::{EmbeddedOutbox, Outbox, Relay},
};
use munity_platform::shutdown::ShutdownToken;
use munity_store::{StoreError, embedded::EmbeddedDb};
use munity_testkit::Process;
use redb::{ReadableTableMetadata, TableDefinition};
use tokio::sync::Notify;

/// The service's own data, written in the same transactions as its events.
const CHANGES: TableDefinition<&str, u64> = TableDefinition::new("changes");

fn service_store(dir: &std::path::Path) -> EmbeddedDb {
    let db = EmbeddedDb::open(dir, "svc", |txn| txn.open_table(CHANGES).map(drop)).unwrap();
    EmbeddedOutbox::new(db.clone()).unwrap();
    db
}

fn numbered(aggregate: &str, n: i64) -> DomainEvent {
    DomainEvent {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: "munity.test.v1.Numbered".to_owned(),
        aggregate_id: aggregate.to_owned(),
        occurred_at_ms: n,
        source: "svc".to_owned(),
        ..DomainEvent::default()
    }
}

/// One write of the service: a change and its event, in one transaction.
async fn write(db: &EmbeddedDb, aggregate: &str, n: i64) {
    let event = numbered(aggregate, n);
    let key = format!("{aggregate}-{n}");
    let outbox = EmbeddedOutbox::new(db.clone()).unwrap().table();
    db.write(move |txn| {
        let mut changes = txn
            .open_table(CHANGES)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        changes
            .insert(key.as_str(), n as u64)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        outbox.stage(txn, &[event])
    })
    .await
    .unwrap();
}

/// How many events wait in the store's outbox.
async fn backlog(db: &EmbeddedDb) -> u64 {
    EmbeddedOutbox::new(db.clone())
        .unwrap()
        .backlog()
        .await
        .unwrap()
}

async fn changes(db: &EmbeddedDb) -> u64 {
    db.blocking(|db| {
        let txn = redb::ReadableDatabase::begin_read(db).unwrap();
        Ok(txn.open_table(CHANGES).unwrap().len().unwrap())
    })
    .await
    .unwrap()
}

/// A relay over `outbox` that polls fast (tests), with `verify` for
/// tentative events settled after `settle`.
fn relay(
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn EventLog>,
    verify: Option<Arc<dyn munity_bus::outbox::Verify>>,
    settle: Duration,
) -> (ShutdownToken, tokio::task::JoinHandle<()>) {
    let shutdown = ShutdownToken::new();
    let relay = Relay {
        poll: Duration::from_millis(50),
        batch: 8,
        verify,
        settle,
        ..Relay::new("svc", outbox, log, Arc::new(Notify::new()))
    };
    let task = tokio::spawn(relay.run(shutdown.clone()));
    (shutdown, task)
}

fn start_relay(
    db: &EmbeddedDb,
    log: Arc<dyn EventLog>,
) -> (ShutdownToken, tokio::task::JoinHandle<()>) {
    let outbox = Arc::new(EmbeddedOutbox::new(db.clone()).unwrap());
    relay(outbox, log, None, Duration::from_secs(5))
}

async fn wait_for_empty_outbox(db: &EmbeddedDb, limit: Duration) {
    let outbox = EmbeddedOutbox::new(db.clone()).unwrap();
    let started = Instant::now();
    while outbox.backlog().await.unwrap() > 0 {
        assert!(started.elapsed() < limit, "the relay never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a new group reads, de-duplicated by event id, as
/// (aggregate, number) in delivery order.
async fn read_all(log: &dyn EventLog, group: &str) -> Vec<(String, i64)> {
    let mut consumer = log.join(group, "reader").await.unwrap();
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    loop {
        let batch = consumer
            .next(100, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            return events;
        }
        let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
        for delivery in batch {
            if seen.insert(delivery.event.id.clone()) {
                events.push((delivery.event.aggregate_id, delivery.event.occurred_at_ms));
            }
        }
        consumer.ack(&ids).await.unwrap();
    }
}

fn assert_in_order_none_lost(events: &[(String, i64)], aggregates: &[&str], per: i64) {
    assert_eq!(
        events.len() as i64,
        aggregates.len() as i64 * per,
        "{events:?}"
    );
    for aggregate in aggregates {
        let order: Vec<i64> = events
            .iter()
            .filter(|(a, _)| a == aggregate)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, (0..per).collect::<Vec<_>>(), "{aggregate}");
    }
}

/// A Redis of this test's own, persisting to `dir` (so a restart keeps the
/// stream, as a production Redis with AOF does).
fn redis_server(port: u16, dir: &std::path::Path) -> Option<Process> {
    let args: [&std::ffi::OsStr; 7] = [
        "--save".as_ref(),
        "".as_ref(),
        "--appendonly".as_ref(),
        "yes".as_ref(),
        "--appendfsync".as_ref(),
        "always".as_ref(),
        "--dir".as_ref(),
    ];
    let mut args = args.to_vec();
    args.push(dir.as_os_str());
    munity_testkit::redis_server(port, &args).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_while_redis_is_down_and_the_relay_catches_up_in_order() {
    let redis_dir = tempfile::tempdir().unwrap();
    let port = munity_testkit::free_port();
    let Some(redis) = redis_server(port, redis_dir.path()) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "no redis-server in CI"
        );
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let db = service_store(data.path());
    let url = format!("redis://127.0.0.1:{port}");
    let log: Arc<dyn EventLog> = Arc::new(
        RedisLog::connect(&url, "test:outbox", 100_000, Duration::from_millis(500))
            .await
            .unwrap(),
    );
    let (stop, relay) = start_relay(&db, log.clone());

    for n in 0..10 {
        write(&db, "a", n).await;
        write(&db, "b", n).await;
    }
    wait_for_empty_outbox(&db, Duration::from_secs(10)).await;

    // Redis goes away: every write still commits, its events wait.
    drop(redis);
    for n in 10..25 {
        write(&db, "a", n).await;
        write(&db, "b", n).await;
    }
    assert_eq!(changes(&db).await, 50);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backlog(&db).await, 30, "nothing could be relayed");

    // It comes back (same data): the relay catches up.
    let _redis = redis_server(port, redis_dir.path()).unwrap();
    wait_for_empty_outbox(&db, Duration::from_secs(20)).await;
    let events = read_all(log.as_ref(), "g").await;
    assert_in_order_none_lost(&events, &["a", "b"], 25);
    stop.cancel();
    relay.await.unwrap();
}

/// `munity dev`: outbox and log both embedded; the process stops part way
/// and starts again: nothing lost, nothing acknowledged replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_outbox_and_log_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    {
        let db = service_store(data.path());
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(data.path(), 10_000).unwrap());
        let (stop, relay) = start_relay(&db, log.clone());
        for n in 0..10 {
            write(&db, "a", n).await;
        }
        wait_for_empty_outbox(&db, Duration::from_secs(10)).await;
        // A consumer takes the first five and acknowledges them.
        let mut consumer = log.join("g", "c").await.unwrap();
        let first = consumer.next(5, Duration::from_millis(200)).await.unwrap();
        let ids: Vec<String> = first.iter().map(|d| d.id.clone()).collect();
        consumer.ack(&ids).await.unwrap();
        stop.cancel();
        relay.await.unwrap();
        // Written while no relay runs (the process is stopping).
        for n in 10..15 {
            write(&db, "a", n).await;
        }
    }
    let db = service_store(data.path());
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(data.path(), 10_000).unwrap());
    let (stop, relay) = start_relay(&db, log.clone());
    wait_for_empty_outbox(&db, Duration::from_secs(10)).await;
    let mut consumer = log.join("g", "c").await.unwrap();
    let rest = consumer
        .next(100, Duration::from_millis(300))
        .await
        .unwrap();
    let numbers: Vec<i64> = rest.iter().map(|d| d.event.occurred_at_ms).collect();
    assert_eq!(numbers, (5..15).collect::<Vec<_>>());
    stop.cancel();
    relay.await.unwrap();
}

/// A write that fails is rolled back with its events: nothing is published
/// for a change that did not happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_write_stages_nothing() {
    let data = tempfile::tempdir().unwrap();
    let db = service_store(data.path());
    let outbox = EmbeddedOutbox::new(db.clone()).unwrap().table();
    let failed = db
        .write(move |txn| {
            outbox.stage(txn, &[numbered("a", 0)])?;
            Err::<(), _>(StoreError::Conflict("event"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(backlog(&db).await, 0);
}

/// The CQL outbox (on the real Cassandra scripts/test.sh starts,
/// `MUNITY_TEST_CQL`): each change and its event in one logged batch; the
/// relay moves every event to the log in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_outbox_relays_every_staged_event_in_order() {
    use munity_bus::outbox::cql::{self, CqlOutbox};
    use munity_store::cql::CqlStore;
    use scylla::statement::batch::{Batch, BatchType};

    let Some(config) = munity_testkit::cql_config("bus_outbox") else {
        return;
    };
    let mut schema = vec!["CREATE TABLE IF NOT EXISTS changes (key text PRIMARY KEY, n bigint)"];
    schema.extend_from_slice(cql::SCHEMA);
    let store = {
        let _lock = munity_testkit::schema_lock().await;
        Arc::new(CqlStore::connect(&config, &schema).await.unwrap())
    };
    let outbox = Arc::new(CqlOutbox::new(store.clone()).await.unwrap());
    let change = store
        .prepare("INSERT INTO changes (key, n) VALUES (?, ?)")
        .await
        .unwrap();
    let mut batch = Batch::new(BatchType::Logged);
    batch.append_statement(change);
    batch.append_statement(outbox.insert_statement().clone());
    for n in 0..12 {
        for aggregate in ["a", "b"] {
            let event = numbered(aggregate, n);
            let values = ((format!("{aggregate}-{n}"), n), CqlOutbox::row(&event));
            store.batch(&batch, values).await.unwrap();
        }
    }
    assert_eq!(outbox.backlog().await.unwrap(), 24);

    let data = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(data.path(), 10_000).unwrap());
    let (shutdown, relay) = relay(outbox.clone(), log.clone(), None, Duration::from_secs(5));
    let started = Instant::now();
    while outbox.backlog().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the relay never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = read_all(log.as_ref(), "g").await;
    assert_in_order_none_lost(&events, &["a", "b"], 12);
    shutdown.cancel();
    relay.await.unwrap();
}

/// A service's verdict on tentative events: the ones whose change happened.
struct Happened(HashSet<String>);

#[async_trait::async_trait]
impl munity_bus::outbox::Verify for Happened {
    async fn happened(&self, event: &DomainEvent) -> munity_bus::BusResult<bool> {
        Ok(self.0.contains(&event.id))
    }
}

/// Beside lightweight transactions (which cannot share a logged batch with
/// the outbox): events staged tentatively before the change. A confirmed
/// one goes out at once; an unconfirmed one holds the line until it has
/// settled, then goes out only if the service says its change happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_tentative_events_are_confirmed_or_verified_in_order() {
    use munity_bus::outbox::cql::{self, CqlOutbox};
    use munity_store::cql::CqlStore;

    // A keyspace apart from the other CQL test's, whose relay runs alongside.
    let Some(config) = munity_testkit::cql_config("bus_outbox_lwt") else {
        return;
    };
    let store = {
        let _lock = munity_testkit::schema_lock().await;
        Arc::new(CqlStore::connect(&config, cql::SCHEMA).await.unwrap())
    };
    let outbox = Arc::new(CqlOutbox::new(store).await.unwrap());

    // a: the LWT applied and the writer confirmed it.
    let a = numbered("t", 0);
    let key = outbox.stage_tentative(&a).await.unwrap();
    outbox.confirm(key).await.unwrap();
    // b: the writer died; its change never happened.
    let b = numbered("t", 1);
    outbox.stage_tentative(&b).await.unwrap();
    // c: the writer died after its change.
    let c = numbered("t", 2);
    outbox.stage_tentative(&c).await.unwrap();
    // d: the LWT was not applied; the writer dropped the event.
    let d = numbered("t", 3);
    let key = outbox.stage_tentative(&d).await.unwrap();
    outbox.relayed(&[key]).await.unwrap();
    // e: a plain confirmed event after them all.
    let e = numbered("t", 4);
    let key = outbox.stage_tentative(&e).await.unwrap();
    outbox.confirm(key).await.unwrap();

    let data = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(data.path(), 10_000).unwrap());
    let happened = Happened([c.id.clone()].into_iter().collect());
    let (shutdown, relay) = relay(
        outbox.clone(),
        log.clone(),
        Some(Arc::new(happened)),
        Duration::from_millis(1500),
    );
    // Before b settles, only a is out: b holds the line.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let early = read_all(log.as_ref(), "early").await;
    assert_eq!(early, vec![("t".to_owned(), 0)]);

    let started = Instant::now();
    while outbox.backlog().await.unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the relay never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = read_all(log.as_ref(), "all").await;
    let numbers: Vec<i64> = events.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        numbers,
        vec![0, 2, 4],
        "a, then the verified c, then e; never b or d"
    );
    shutdown.cancel();
    relay.await.unwrap();
}

/// Several replicas relay one CQL outbox (they share the keyspace): the
/// lease lets one publish, so each event reaches the log once; when that
/// replica dies, another takes over within the lease and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_replicas_relay_one_outbox_through_a_lease() {
    use munity_bus::outbox::cql::{self, CqlOutbox};
    use munity_store::cql::CqlStore;

    let Some(config) = munity_testkit::cql_config("bus_outbox_lease") else {
        return;
    };
    let store = {
        let _lock = munity_testkit::schema_lock().await;
        Arc::new(CqlStore::connect(&config, cql::SCHEMA).await.unwrap())
    };
    let data = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(data.path(), 100_000).unwrap());
    // Two replicas, each with its own handle on the shared outbox.
    let lease = Duration::from_secs(3);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let outbox = Arc::new(CqlOutbox::new(store.clone()).await.unwrap());
        let shutdown = ShutdownToken::new();
        let relay = Relay {
            poll: Duration::from_millis(50),
            lease,
            ..Relay::new("svc", outbox.clone(), log.clone(), outbox.staged())
        };
        let holder = relay.holder.clone();
        replicas.push((
            outbox,
            shutdown.clone(),
            holder,
            tokio::spawn(relay.run(shutdown)),
        ));
    }
    let writer = replicas[0].0.clone();
    let stage = |n: i64| {
        let writer = writer.clone();
        async move {
            let event = numbered("lease", n);
            let key = writer.stage_tentative(&event).await.unwrap();
            writer.confirm(key).await.unwrap();
        }
    };
    for n in 0..40 {
        stage(n).await;
    }
    let started = Instant::now();
    while writer.backlog().await.unwrap() > 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The holder of the lease dies; events staged meanwhile wait for the
    // other replica.
    let leader: Option<(String,)> = store
        .maybe_row(
            &store
                .prepare("SELECT holder FROM outbox_lease WHERE name = 'relay'")
                .await
                .unwrap(),
            (),
        )
        .await
        .unwrap();
    let leader = leader.expect("a replica holds the lease").0;
    let dying = replicas
        .iter()
        .position(|(_, _, holder, _)| *holder == leader)
        .expect("the holder is one of the replicas");
    let (_, shutdown, _, task) = replicas.remove(dying);
    shutdown.cancel();
    task.await.unwrap();
    let died = Instant::now();
    for n in 40..60 {
        stage(n).await;
    }
    while writer.backlog().await.unwrap() > 0 {
        assert!(
            died.elapsed() < Duration::from_secs(20),
            "the other replica never took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "outbox lease: the surviving replica relayed within {:?} of the holder's death (lease {lease:?})",
        died.elapsed()
    );
    // Every delivery, duplicates included.
    let mut consumer = log.join("count", "reader").await.unwrap();
    let mut times: std::collections::HashMap<String, u32> = Default::default();
    loop {
        let batch = consumer
            .next(100, Duration::from_millis(300))
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
        for delivery in batch {
            *times.entry(delivery.event.id).or_default() += 1;
        }
        consumer.ack(&ids).await.unwrap();
    }
    assert_eq!(times.len(), 60, "every staged event reached the log");
    let doubled = times.values().filter(|&&n| n > 1).count();
    assert_eq!(doubled, 0, "no event published twice");
    for (_, shutdown, _, task) in replicas {
        shutdown.cancel();
        task.await.unwrap();
    }
}

/// Two services' stores in one file (`munity dev`'s): each stages in its
/// own outbox and each relay moves only its own events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_in_one_file_keep_their_outboxes_apart() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("one.redb");
    let open = |name| {
        let db = EmbeddedDb::open(&file, name, |txn| txn.open_table(CHANGES).map(drop)).unwrap();
        EmbeddedOutbox::new(db.clone()).unwrap();
        db
    };
    let (a, b) = (open("a"), open("b"));
    for n in 0..3 {
        write(&a, "a", n).await;
    }
    write(&b, "b", 0).await;
    assert_eq!(backlog(&a).await, 3);
    assert_eq!(backlog(&b).await, 1);

    let log: Arc<dyn EventLog> = Arc::new(munity_bus::EmbeddedLog::open(&file, 1_000).unwrap());
    let (stop, relaying) = start_relay(&a, log.clone());
    wait_for_empty_outbox(&a, Duration::from_secs(10)).await;
    stop.cancel();
    relaying.await.unwrap();
    assert_eq!(
        read_all(log.as_ref(), "readers").await,
        vec![
            ("a".to_owned(), 0),
            ("a".to_owned(), 1),
            ("a".to_owned(), 2)
        ],
        "a's relay moved a's events, and only those"
    );
    assert_eq!(backlog(&b).await, 1);
}

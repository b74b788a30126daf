//! The event log's contract, run on every backend: embedded (redb, always)
//! and Redis Streams (the server scripts/test.sh starts, `MUNITY_TEST_REDIS`;
//! required under CI=true). Each Redis test uses a stream key of its own.

use std::{sync::Arc, time::Duration};

use munity_bus::{DomainEvent, EmbeddedLog, EventLog, RedisLog};

type Log = Arc<dyn EventLog>;

async fn embedded() -> Option<(Log, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), 10_000).unwrap();
    Some((Arc::new(log), dir))
}

async fn redis() -> Option<(Log, ())> {
    let Ok(url) = std::env::var("MUNITY_TEST_REDIS") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "MUNITY_TEST_REDIS is not set under CI"
        );
        return None;
    };
    let key = format!("test:bus:{}", uuid::Uuid::now_v7().simple());
    let log = RedisLog::connect(&url, &key, 10_000, Duration::from_secs(2))
        .await
        .unwrap();
    Some((Arc::new(log), ()))
}

mod cases {
    use std::collections::HashSet;

    use munity_bus::Delivery;

    use super::*;

    pub fn numbered(aggregate: &str, n: usize) -> DomainEvent {
        DomainEvent {
            id: uuid::Uuid::now_v7().to_string(),
            r#type: "munity.test.v1.Numbered".to_owned(),
            aggregate_id: aggregate.to_owned(),
            subject_ids: vec![format!("n{n}")],
            occurred_at_ms: n as i64,
            traceparent: String::new(),
            payload: n.to_le_bytes().to_vec(),
            source: "contract".to_owned(),
        }
    }

    fn numbers(deliveries: &[Delivery]) -> Vec<i64> {
        deliveries.iter().map(|d| d.event.occurred_at_ms).collect()
    }

    const WAIT: Duration = Duration::from_millis(200);

    /// Readers outside groups each see every event, in order, whatever the
    /// groups took; a reader waits for what comes next, and one started
    /// from now on does not see the past (Redis; the embedded log may start
    /// earlier, at its oldest event).
    pub async fn every_reader_sees_every_event(log: Log) {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
            - 60_000;
        let sent: Vec<DomainEvent> = (0..7).map(|n| numbered("r", n)).collect();
        log.append(&sent[..4]).await.unwrap();
        let mut group = log.join("takes-some", "a").await.unwrap();
        group.next(10, WAIT).await.unwrap();
        let mut first = log.read_from(since).await.unwrap();
        let mut second = log.read_from(since).await.unwrap();
        let mut got_first = first.next(3, Duration::ZERO).await.unwrap();
        got_first.extend(first.next(10, Duration::ZERO).await.unwrap());
        assert_eq!(numbers(&got_first), vec![0, 1, 2, 3]);
        assert!(first.next(10, Duration::ZERO).await.unwrap().is_empty());
        let waiting = tokio::spawn(async move {
            let got = first.next(10, Duration::from_secs(5)).await.unwrap();
            (first, got)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.append(&sent[4..]).await.unwrap();
        let (_, woke) = waiting.await.unwrap();
        assert!(!woke.is_empty(), "a waiting reader wakes on append");
        let mut got_second = Vec::new();
        while got_second.len() < 7 {
            let got = second.next(10, WAIT).await.unwrap();
            assert!(
                !got.is_empty(),
                "the second reader stopped at {got_second:?}"
            );
            got_second.extend(numbers(&got));
        }
        assert_eq!(got_second, (0..7).collect::<Vec<i64>>());
    }

    /// Events come out in the order they went in, whole.
    pub async fn appended_events_are_delivered_in_order(log: Log) {
        let sent: Vec<DomainEvent> = (0..25).map(|n| numbered("a", n)).collect();
        log.append(&sent[..10]).await.unwrap();
        log.append(&sent[10..]).await.unwrap();
        let mut consumer = log.join("g", "c1").await.unwrap();
        let mut received = Vec::new();
        while received.len() < sent.len() {
            let batch = consumer.next(7, WAIT).await.unwrap();
            assert!(!batch.is_empty(), "stopped at {}", received.len());
            assert!(batch.len() <= 7);
            received.extend(batch);
        }
        let events: Vec<DomainEvent> = received.iter().map(|d| d.event.clone()).collect();
        assert_eq!(events, sent);
        assert!(consumer.next(10, WAIT).await.unwrap().is_empty());
    }

    /// Each group sees every event; members of one group share them.
    pub async fn every_group_sees_every_event_and_members_share(log: Log) {
        let mut a1 = log.join("a", "a1").await.unwrap();
        let mut a2 = log.join("a", "a2").await.unwrap();
        let mut b = log.join("b", "b1").await.unwrap();
        let sent: Vec<DomainEvent> = (0..20).map(|n| numbered("x", n)).collect();
        log.append(&sent).await.unwrap();

        let first = a1.next(8, WAIT).await.unwrap();
        let second = a2.next(100, WAIT).await.unwrap();
        assert_eq!(first.len(), 8);
        assert_eq!(second.len(), 12, "the other member gets the rest");
        let mut seen: Vec<i64> = numbers(&first);
        seen.extend(numbers(&second));
        assert_eq!(seen, (0..20).collect::<Vec<i64>>());

        let all = b.next(100, WAIT).await.unwrap();
        assert_eq!(numbers(&all), (0..20).collect::<Vec<i64>>());
    }

    /// A reader waiting for events wakes when one is appended.
    pub async fn a_waiting_reader_wakes_on_append(log: Log) {
        let mut consumer = log.join("g", "c").await.unwrap();
        let writer = log.clone();
        let append = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            writer.append(&[numbered("w", 1)]).await.unwrap();
        });
        let started = std::time::Instant::now();
        let got = consumer.next(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(numbers(&got), vec![1]);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "woke only after {:?}",
            started.elapsed()
        );
        append.await.unwrap();
    }

    /// Unacknowledged deliveries of a consumer that died go to another
    /// member once idle long enough; acknowledged ones never come back.
    pub async fn pending_deliveries_of_a_dead_consumer_are_claimed(log: Log) {
        let sent: Vec<DomainEvent> = (0..6).map(|n| numbered("p", n)).collect();
        log.append(&sent).await.unwrap();
        let mut dying = log.join("g", "dying").await.unwrap();
        let got = dying.next(6, WAIT).await.unwrap();
        assert_eq!(got.len(), 6);
        // It acknowledges the first two, then dies.
        let done: Vec<String> = got[..2].iter().map(|d| d.id.clone()).collect();
        dying.ack(&done).await.unwrap();
        drop(dying);
        assert_eq!(log.lag("g").await.unwrap(), 4);

        let mut heir = log.join("g", "heir").await.unwrap();
        assert!(
            heir.claim_stale(Duration::from_secs(60), 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing is that old yet"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let claimed = heir
            .claim_stale(Duration::from_millis(200), 10)
            .await
            .unwrap();
        assert_eq!(numbers(&claimed), vec![2, 3, 4, 5]);
        let ids: Vec<String> = claimed.iter().map(|d| d.id.clone()).collect();
        heir.ack(&ids).await.unwrap();
        assert_eq!(log.lag("g").await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            heir.claim_stale(Duration::from_millis(200), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(heir.next(10, WAIT).await.unwrap().is_empty());
    }

    /// Lag counts what a group has not acknowledged, delivered or not.
    pub async fn lag_counts_what_a_group_has_not_acknowledged(log: Log) {
        let mut consumer = log.join("g", "c").await.unwrap();
        assert_eq!(log.lag("g").await.unwrap(), 0);
        let sent: Vec<DomainEvent> = (0..5).map(|n| numbered("l", n)).collect();
        log.append(&sent).await.unwrap();
        assert_eq!(log.lag("g").await.unwrap(), 5);
        let got = consumer.next(3, WAIT).await.unwrap();
        assert_eq!(log.lag("g").await.unwrap(), 5, "delivered is not done");
        let ids: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
        consumer.ack(&ids).await.unwrap();
        assert_eq!(log.lag("g").await.unwrap(), 2);
    }

    /// Concurrent appenders lose nothing and never interleave one caller's
    /// events out of order.
    pub async fn concurrent_appends_lose_nothing_and_keep_each_callers_order(log: Log) {
        let mut writers = Vec::new();
        for w in 0..4 {
            let log = log.clone();
            writers.push(tokio::spawn(async move {
                for n in 0..25 {
                    log.append(&[numbered(&format!("w{w}"), n)]).await.unwrap();
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let mut consumer = log.join("g", "c").await.unwrap();
        let mut received = Vec::new();
        loop {
            let batch = consumer.next(50, WAIT).await.unwrap();
            if batch.is_empty() {
                break;
            }
            received.extend(batch);
        }
        assert_eq!(received.len(), 100);
        let ids: HashSet<&str> = received.iter().map(|d| d.event.id.as_str()).collect();
        assert_eq!(ids.len(), 100);
        for w in 0..4 {
            let aggregate = format!("w{w}");
            let order: Vec<i64> = received
                .iter()
                .filter(|d| d.event.aggregate_id == aggregate)
                .map(|d| d.event.occurred_at_ms)
                .collect();
            assert_eq!(order, (0..25).collect::<Vec<i64>>(), "{aggregate}");
        }
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_log => embedded(), redis_log => redis() },
    tests: [
        appended_events_are_delivered_in_order,
        every_group_sees_every_event_and_members_share,
        a_waiting_reader_wakes_on_append,
        pending_deliveries_of_a_dead_consumer_are_claimed,
        lag_counts_what_a_group_has_not_acknowledged,
        concurrent_appends_lose_nothing_and_keep_each_callers_order,
        every_reader_sees_every_event,
    ],
}

/// Embedded only: positions and pending deliveries survive a restart, so
/// acknowledged events are not replayed and unacknowledged ones are not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), 1_000).unwrap();
        let sent: Vec<DomainEvent> = (0..5).map(|n| cases::numbered("r", n)).collect();
        log.append(&sent).await.unwrap();
        let mut consumer = log.join("g", "c").await.unwrap();
        let got = consumer.next(3, Duration::from_millis(100)).await.unwrap();
        consumer.ack(&[got[0].id.clone()]).await.unwrap();
    }
    // The dropped log's group-commit flusher (a background task holding the
    // database) may still be finishing: wait for it to let go of the file.
    let mut tries = 0;
    let log = loop {
        match EmbeddedLog::open(dir.path(), 1_000) {
            Ok(log) => break log,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error:#}"),
        }
    };
    assert_eq!(log.lag("g").await.unwrap(), 4);
    let mut consumer = log.join("g", "c2").await.unwrap();
    let fresh = consumer.next(10, Duration::from_millis(100)).await.unwrap();
    let fresh: Vec<i64> = fresh.iter().map(|d| d.event.occurred_at_ms).collect();
    assert_eq!(fresh, vec![3, 4], "delivered ones are not delivered again");
    let claimed = consumer.claim_stale(Duration::ZERO, 10).await.unwrap();
    let claimed: Vec<i64> = claimed.iter().map(|d| d.event.occurred_at_ms).collect();
    assert!(
        claimed.starts_with(&[1, 2]),
        "pending ones are claimable: {claimed:?}"
    );
    assert!(!claimed.contains(&0), "the acknowledged one never returns");
}

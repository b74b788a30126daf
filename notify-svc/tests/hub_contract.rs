//! One contract, both hubs: the embedded one, and Redis (`MUNITY_TEST_REDIS`;
//! required under CI=true) with two hubs on one server, as two replicas.

use std::{sync::Arc, time::Duration};

use notify_svc::hub::{
    Heard, Hub, Position, Recovery, Retention, embedded::EmbeddedHub, redis::RedisHub,
};
use uuid::Uuid;

/// Two replicas' hubs over one store (embedded: the same one twice).
type Pair = (Arc<dyn Hub>, Arc<dyn Hub>);

const RETENTION: Retention = Retention {
    size: 5,
    ttl_secs: 3600,
};

async fn embedded() -> Option<(Pair, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let hub: Arc<dyn Hub> = Arc::new(EmbeddedHub::open(dir.path(), RETENTION).unwrap());
    Some(((hub.clone(), hub), dir))
}

async fn redis() -> Option<(Pair, ())> {
    let Some(url) = std::env::var("MUNITY_TEST_REDIS")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !munity_testkit::in_ci(),
            "MUNITY_TEST_REDIS is required under CI=true"
        );
        return None;
    };
    let prefix = format!("munity:test:notify:{}", Uuid::now_v7().simple());
    let hub = || async {
        let hub = RedisHub::connect(&url, &prefix, RETENTION, Duration::from_secs(2))
            .await
            .unwrap();
        Arc::new(hub) as Arc<dyn Hub>
    };
    let (a, b) = (hub().await, hub().await);
    // Let both subscribe to the live channel.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Some(((a, b), ()))
}

fn topic() -> String {
    format!("event:{}", Uuid::now_v7())
}

async fn publish(hub: &dyn Hub, topic: &str, n: u32) -> notify_svc::hub::Notification {
    hub.publish(
        topic,
        &format!("id-{n}"),
        "munity.test.Thing",
        format!("payload {n}|\0").as_bytes(),
        1_700_000_000_000 + i64::from(n),
    )
    .await
    .unwrap()
}

/// The next notification of `topic` that `live` hears, within 5 s.
async fn heard_on(
    live: &mut notify_svc::hub::LiveFeed,
    topic: &str,
) -> Arc<notify_svc::hub::Notification> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .expect("heard within 5 s")
            .unwrap()
        {
            Heard::Notification(n) if n.topic == topic => return n,
            _ => continue,
        }
    }
}

mod cases {
    use super::*;

    pub async fn offsets_grow_by_one_per_topic_and_publishes_are_idempotent(pair: Pair) {
        let (a, b) = pair;
        let (t1, t2) = (topic(), topic());
        let start = a.position(&t1).await.unwrap();
        assert_eq!(start.offset, 0);
        assert_eq!(b.position(&t1).await.unwrap(), start, "one epoch for all");
        let mut offsets = Vec::new();
        for n in 0..4 {
            // Alternating replicas: one sequence.
            let hub = if n % 2 == 0 { &a } else { &b };
            offsets.push(publish(hub.as_ref(), &t1, n).await.offset);
        }
        assert_eq!(offsets, [1, 2, 3, 4]);
        assert_eq!(publish(a.as_ref(), &t2, 0).await.offset, 1, "per topic");
        let again = publish(b.as_ref(), &t1, 1).await;
        assert_eq!(
            again.offset, 2,
            "the same source event: the same notification"
        );
        assert_eq!(again.payload, b"payload 1|\0");
        assert_eq!(a.position(&t1).await.unwrap().offset, 4);
    }

    pub async fn a_resume_gets_exactly_what_was_missed_or_a_resync(pair: Pair) {
        let (a, b) = pair;
        let t = topic();
        let epoch = a.position(&t).await.unwrap().epoch;
        for n in 0..4 {
            publish(a.as_ref(), &t, n).await;
        }
        let after = |offset| Position {
            epoch: epoch.clone(),
            offset,
        };
        match b.since(&t, &after(1), 100).await.unwrap() {
            Recovery::Missed(missed) => {
                let offsets: Vec<u64> = missed.iter().map(|n| n.offset).collect();
                assert_eq!(offsets, [2, 3, 4]);
                assert_eq!(missed[0].id, "id-1");
                assert_eq!(missed[0].payload, b"payload 1|\0");
                assert_eq!(missed[0].at, 1_700_000_000_001);
                assert_eq!(missed[0].kind, "munity.test.Thing");
            }
            other => panic!("{other:?}"),
        }
        match b.since(&t, &after(1), 2).await.unwrap() {
            Recovery::Missed(missed) => assert_eq!(missed.len(), 2, "a limit"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            b.since(&t, &after(4), 100).await.unwrap(),
            Recovery::Missed(vec![])
        );
        // Another epoch, or a position ahead: resync.
        let wrong = Position {
            epoch: "other".to_owned(),
            offset: 2,
        };
        assert!(matches!(
            b.since(&t, &wrong, 100).await.unwrap(),
            Recovery::Resync { now, .. } if now.offset == 4 && now.epoch == epoch
        ));
        assert!(matches!(
            b.since(&t, &after(9), 100).await.unwrap(),
            Recovery::Resync { .. }
        ));
        // History keeps the last 5: further back is a resync.
        for n in 4..10 {
            publish(a.as_ref(), &t, n).await;
        }
        assert!(matches!(
            b.since(&t, &after(1), 100).await.unwrap(),
            Recovery::Resync { .. }
        ));
        match b.since(&t, &after(7), 100).await.unwrap() {
            Recovery::Missed(missed) => assert_eq!(missed.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    pub async fn live_notifications_reach_every_replica(pair: Pair) {
        let (a, b) = pair;
        let t = topic();
        let mut on_a = a.follow(vec![t.clone()]);
        let mut on_b = b.follow(vec![t.clone()]);
        let sent = publish(a.as_ref(), &t, 0).await;
        for live in [&mut on_a, &mut on_b] {
            let heard = heard_on(live, &t).await;
            assert_eq!(*heard, sent);
        }
        // A repeated publish is not delivered again.
        publish(b.as_ref(), &t, 0).await;
        let next = publish(b.as_ref(), &t, 1).await;
        let heard = loop {
            match on_a.next().await.unwrap() {
                Heard::Notification(n) if n.topic == t => break n,
                _ => continue,
            }
        };
        assert_eq!(heard.offset, next.offset);
    }

    /// `publish_many`: each topic's notifications get the next offsets in
    /// the batch's order, one already published (in an earlier call or
    /// earlier in the batch) is answered as stored, and every new one is
    /// heard live once, in order.
    pub async fn a_batch_is_published_in_order_once_and_heard_live(pair: Pair) {
        let (a, b) = pair;
        let (t1, t2) = (topic(), topic());
        let mut live = b.follow(vec![t1.clone(), t2.clone()]);
        publish(a.as_ref(), &t1, 0).await;
        let item = |topic: &str, n: u32| notify_svc::hub::Publication {
            topic: topic.to_owned(),
            id: format!("id-{n}"),
            kind: "munity.test.Thing".to_owned(),
            payload: format!("payload {n}|\0").into_bytes(),
            at: 1_700_000_000_000 + i64::from(n),
        };
        let batch = [
            item(&t1, 1),
            item(&t2, 1),
            item(&t1, 0), // published before this batch
            item(&t1, 2),
            item(&t1, 1), // earlier in this batch
        ];
        let published = a.publish_many(batch.to_vec()).await.unwrap();
        let offsets: Vec<(bool, u64)> = published
            .iter()
            .map(|n| (n.topic == t1, n.offset))
            .collect();
        assert_eq!(
            offsets,
            [(true, 2), (false, 1), (true, 1), (true, 3), (true, 2)]
        );
        assert_eq!(published[3].payload, b"payload 2|\0");
        let mut heard = Vec::new();
        while heard.len() < 4 {
            let Ok(got) = tokio::time::timeout(Duration::from_secs(5), live.next()).await else {
                panic!("heard only {heard:?} within 5 s");
            };
            match got.unwrap() {
                Heard::Notification(n) if n.topic == t1 => heard.push(("t1", n.offset)),
                Heard::Notification(n) if n.topic == t2 => heard.push(("t2", n.offset)),
                _ => continue,
            }
        }
        heard.sort();
        assert_eq!(heard, [("t1", 1), ("t1", 2), ("t1", 3), ("t2", 1)]);
        assert_eq!(b.position(&t1).await.unwrap().offset, 3);
    }

    /// A stream hears the topics it follows and nothing else, on the
    /// replica that published and on the other.
    pub async fn a_stream_hears_only_the_topics_it_follows(pair: Pair) {
        let (a, b) = pair;
        let (mine, other) = (topic(), topic());
        let mut here = a.follow(vec![mine.clone()]);
        let mut there = b.follow(vec![mine.clone()]);
        for n in 0..3 {
            publish(a.as_ref(), &other, n).await;
        }
        let sent = publish(b.as_ref(), &mine, 0).await;
        for live in [&mut here, &mut there] {
            match tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .expect("heard within 5 s")
                .unwrap()
            {
                Heard::Notification(n) => {
                    assert_eq!(*n, sent, "the first heard is its own topic's")
                }
                Heard::Behind(topic) => panic!("behind on {topic}"),
            }
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(200), here.next())
                .await
                .is_err(),
            "nothing else"
        );
    }

    pub async fn concurrent_publishes_are_heard_live_in_offset_order(pair: Pair) {
        let (a, b) = pair;
        let t = topic();
        let mut live = b.follow(vec![t.clone()]);
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..40 {
            let hub = if n % 2 == 0 { a.clone() } else { b.clone() };
            let t = t.clone();
            tasks.spawn(async move { publish(hub.as_ref(), &t, n).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let mut heard = Vec::new();
        while heard.len() < 40 {
            let Ok(got) = tokio::time::timeout(Duration::from_secs(5), live.next()).await else {
                panic!("heard only {heard:?} within 5 s");
            };
            match got.unwrap() {
                Heard::Notification(n) if n.topic == t => heard.push(n.offset),
                _ => continue,
            }
        }
        assert_eq!(
            heard,
            (1..=40).collect::<Vec<u64>>(),
            "no gap a subscriber must fill from history"
        );
    }

    pub async fn stored_notifications_are_heard_only_once_announced(pair: Pair) {
        let (a, b) = pair;
        let t = topic();
        let mut live = b.follow(vec![t.clone()]);
        let item = |n: u32| notify_svc::hub::Publication {
            topic: t.clone(),
            id: format!("id-{n}"),
            kind: "munity.test.Thing".to_owned(),
            payload: format!("payload {n}").into_bytes(),
            at: 1_700_000_000_000 + i64::from(n),
        };
        let stored = a.store_many(vec![item(0), item(1)]).await.unwrap();
        assert!(stored.iter().all(|s| s.new));
        assert_eq!(
            stored
                .iter()
                .map(|s| s.notification.offset)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), live.next())
                .await
                .is_err(),
            "nothing is heard before the announcement"
        );
        // Stored already: found, not new, and never announced twice.
        let again = a.store_many(vec![item(0)]).await.unwrap();
        assert_eq!(again[0].notification, stored[0].notification);
        assert!(!again[0].new);
        a.announce(&again).await;
        a.announce(&stored).await;
        for expected in &stored {
            let heard = heard_on(&mut live, &t).await;
            assert_eq!(*heard, expected.notification);
        }
        let next = publish(a.as_ref(), &t, 2).await;
        assert_eq!(next.offset, 3);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_hub => embedded(), redis_hub => redis() },
    tests: [
        stored_notifications_are_heard_only_once_announced,
        a_batch_is_published_in_order_once_and_heard_live,
        offsets_grow_by_one_per_topic_and_publishes_are_idempotent,
        a_resume_gets_exactly_what_was_missed_or_a_resync,
        live_notifications_reach_every_replica,
        concurrent_publishes_are_heard_live_in_offset_order,
        a_stream_hears_only_the_topics_it_follows,
    ],
}

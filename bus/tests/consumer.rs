//! The consumer loop and `[bus]`: on both backends, two members of a group
//! handle every event once between them, and a failed handling is retried.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use munity_bus::{BusConfig, ConsumerLoop, DomainEvent, EventLog, config::BusBackend};
use munity_platform::shutdown::ShutdownToken;

type Log = Arc<dyn EventLog>;

async fn embedded() -> Option<(Log, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        path: dir.path().to_owned(),
        ..BusConfig::default()
    };
    Some((munity_bus::open(&config).await.unwrap(), dir))
}

async fn redis() -> Option<(Log, ())> {
    let Ok(url) = std::env::var("MUNITY_TEST_REDIS") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "no Redis under CI"
        );
        return None;
    };
    let config = BusConfig {
        backend: BusBackend::Redis,
        redis_url: url,
        redis_key: format!("test:consumer:{}", uuid::Uuid::now_v7().simple()),
        ..BusConfig::default()
    };
    Some((munity_bus::open(&config).await.unwrap(), ()))
}

mod cases {
    use super::*;

    fn numbered(n: i64) -> DomainEvent {
        DomainEvent {
            id: uuid::Uuid::now_v7().to_string(),
            r#type: "munity.test.v1.Numbered".to_owned(),
            aggregate_id: "x".to_owned(),
            occurred_at_ms: n,
            ..DomainEvent::default()
        }
    }

    /// Waits (15 s at most) until `n` distinct events were handled.
    async fn until_handled(handled: &Mutex<HashMap<i64, u32>>, n: usize) {
        let started = Instant::now();
        while handled.lock().unwrap().len() < n {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "handled only {:?}",
                handled.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// 30 events, two members; the handling of event 7 fails once.
    pub async fn members_share_events_and_failures_are_retried(log: Log) {
        let handled: Arc<Mutex<HashMap<i64, u32>>> = Default::default();
        let failed_once = Arc::new(Mutex::new(false));
        let shutdown = ShutdownToken::new();
        let mut members = Vec::new();
        for name in ["m1", "m2"] {
            let member = ConsumerLoop {
                log: log.clone(),
                group: "g".to_owned(),
                consumer: name.to_owned(),
                batch: 4,
                wait: Duration::from_millis(100),
                retry_after: Duration::from_millis(300),
            };
            let (handled, failed_once) = (handled.clone(), failed_once.clone());
            members.push(tokio::spawn(member.run(shutdown.clone(), move |event| {
                let (handled, failed_once) = (handled.clone(), failed_once.clone());
                async move {
                    let n = event.occurred_at_ms;
                    if n == 7 && !std::mem::replace(&mut *failed_once.lock().unwrap(), true) {
                        anyhow::bail!("the first handling of 7 fails");
                    }
                    *handled.lock().unwrap().entry(n).or_default() += 1;
                    Ok(())
                }
            })));
        }
        let events: Vec<DomainEvent> = (0..30).map(numbered).collect();
        log.append(&events).await.unwrap();
        until_handled(&handled, 30).await;
        // Give redeliveries, if any, the time to show up.
        tokio::time::sleep(Duration::from_millis(800)).await;
        shutdown.cancel();
        for member in members {
            member.await.unwrap();
        }
        let handled = handled.lock().unwrap().clone();
        assert!(handled.values().all(|&count| count == 1), "{handled:?}");
        assert!(*failed_once.lock().unwrap());
        assert_eq!(log.lag("g").await.unwrap(), 0);
    }

    /// `run_batches`: each read is handed over whole; the batch holding an
    /// event that fails once is handed over again event by event, so every
    /// event is handled once and the failing one does not hold back the
    /// others.
    pub async fn batches_are_handled_whole_and_a_failed_one_event_by_event(log: Log) {
        let handled: Arc<Mutex<HashMap<i64, u32>>> = Default::default();
        let batches: Arc<Mutex<Vec<usize>>> = Default::default();
        let failed_once = Arc::new(Mutex::new(false));
        let shutdown = ShutdownToken::new();
        let member = ConsumerLoop {
            log: log.clone(),
            group: "b".to_owned(),
            consumer: "b1".to_owned(),
            batch: 10,
            wait: Duration::from_millis(100),
            retry_after: Duration::from_millis(300),
        };
        let events: Vec<DomainEvent> = (0..30).map(numbered).collect();
        log.append(&events).await.unwrap();
        let running = {
            let (handled, batches, failed_once) =
                (handled.clone(), batches.clone(), failed_once.clone());
            tokio::spawn(member.run_batches(shutdown.clone(), move |events| {
                let (handled, batches, failed_once) =
                    (handled.clone(), batches.clone(), failed_once.clone());
                async move {
                    batches.lock().unwrap().push(events.len());
                    if events.iter().any(|e| e.occurred_at_ms == 7)
                        && !std::mem::replace(&mut *failed_once.lock().unwrap(), true)
                    {
                        anyhow::bail!("the first handling of 7 fails");
                    }
                    for event in events {
                        *handled
                            .lock()
                            .unwrap()
                            .entry(event.occurred_at_ms)
                            .or_default() += 1;
                    }
                    Ok(())
                }
            }))
        };
        until_handled(&handled, 30).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        shutdown.cancel();
        running.await.unwrap();
        let handled = handled.lock().unwrap().clone();
        assert!(handled.values().all(|&count| count == 1), "{handled:?}");
        let batches = batches.lock().unwrap().clone();
        assert!(
            batches.iter().any(|&n| n > 1),
            "handed over in batches: {batches:?}"
        );
        assert!(
            batches.contains(&1),
            "the failed batch event by event: {batches:?}"
        );
        assert_eq!(log.lag("b").await.unwrap(), 0);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_bus => embedded(), redis_bus => redis() },
    tests: [
        members_share_events_and_failures_are_retried,
        batches_are_handled_whole_and_a_failed_one_event_by_event,
    ],
}

/// `munity dev`: every service opening the embedded `[bus]` gets the same
/// log (redb allows one opener per file and process).
#[tokio::test]
async fn the_embedded_log_is_shared_within_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let config = BusConfig {
        path: dir.path().to_owned(),
        ..BusConfig::default()
    };
    let publisher = munity_bus::open(&config).await.unwrap();
    let reader = munity_bus::open(&config).await.unwrap();
    publisher
        .append(&[DomainEvent {
            id: "one".to_owned(),
            ..DomainEvent::default()
        }])
        .await
        .unwrap();
    let mut member = reader.join("g", "c").await.unwrap();
    let got = member.next(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event.id, "one");
}

/// `[bus]` keys are checked by name.
#[test]
fn bus_config_refuses_unknown_keys() {
    let source = munity_platform::config::ConfigSource::from_toml_str(
        "[bus]\nbackend = \"redis\"\nredis_ur = \"redis://x\"\n",
    );
    let error = BusConfig::load(&source).unwrap_err().to_string();
    assert!(error.contains("redis_ur"), "{error}");
    let source = munity_platform::config::ConfigSource::from_toml_str("");
    assert_eq!(BusConfig::load(&source).unwrap(), BusConfig::default());
}

/// `munity dev` restarted: what its consumers had been handed but not yet
/// acknowledged when it stopped is handed out again at once, not after the
/// idle time (the file is one process's, so its old consumers are gone):
/// as pending deliveries to claim when the group acknowledged anything
/// since (its position and pending entries are saved with each
/// acknowledgement), else from the group's saved position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_log_reopened_redelivers_what_was_pending_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Any payload will do: the envelope's own type.
    let event = |_n: i64| munity_bus::event("test", "a", vec![], &DomainEvent::default());
    let reopen = || async {
        // Reopened once the first copy's last background flush has let go.
        let started = Instant::now();
        loop {
            match munity_bus::EmbeddedLog::open(dir.path(), 1000) {
                Ok(log) => break log,
                Err(error) => {
                    assert!(started.elapsed() < Duration::from_secs(5), "{error}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    {
        let log = munity_bus::EmbeddedLog::open(dir.path(), 1000).unwrap();
        log.append(&[event(1), event(2), event(3)]).await.unwrap();
        let mut before = log.join("g", "before-restart").await.unwrap();
        let handed = before.next(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(handed.len(), 3);
        before.ack(&[handed[0].id.clone()]).await.unwrap();
        // Handed out after the last acknowledgement, never acknowledged.
        log.append(&[event(4)]).await.unwrap();
        let handed = before.next(10, Duration::from_millis(10)).await.unwrap();
        assert_eq!(handed.len(), 1);
    }
    let log = reopen().await;
    let mut after = log.join("g", "after-restart").await.unwrap();
    let again = after
        .claim_stale(Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        2,
        "pending at the last acknowledgement: claimable at once, an hour's idle time or not"
    );
    let again = after.next(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(again.len(), 1, "handed out since: handed out again");
    let ids: Vec<String> = [&again[..]].concat().iter().map(|d| d.id.clone()).collect();
    after.ack(&ids).await.unwrap();
    // A live consumer's deliveries are not taken from it.
    log.append(&[event(5)]).await.unwrap();
    let mut live = log.join("g", "live").await.unwrap();
    assert_eq!(
        live.next(10, Duration::from_millis(10))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        after
            .claim_stale(Duration::from_secs(3600), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

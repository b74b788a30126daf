//! One contract, both inboxes: redb, and CQL on the test server
//! (`MUNITY_TEST_CQL`; required under CI=true).

use std::sync::Arc;

use munity_store::now_millis;
use notify_svc::{
    hub::Notification,
    inbox::{Inbox, InboxLimits, ItemKey, cql::CqlInbox, embedded::EmbeddedInbox},
};
use uuid::Uuid;

const LIMITS: InboxLimits = InboxLimits {
    ttl_secs: 3600,
    count_cap: 50,
};

async fn embedded() -> Option<(Arc<dyn Inbox>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let inbox = EmbeddedInbox::open(dir.path(), LIMITS).unwrap();
    Some((Arc::new(inbox), dir))
}

async fn cql() -> Option<(Arc<dyn Inbox>, ())> {
    let config = munity_testkit::cql_config("notify_inbox")?;
    let _schema = munity_testkit::schema_lock().await;
    let inbox = CqlInbox::connect(&config, LIMITS).await.unwrap();
    Some((Arc::new(inbox), ()))
}

/// A notification on `user`'s topic, `ago_ms` before now.
fn note(user: Uuid, n: u64, ago_ms: i64) -> Notification {
    Notification {
        topic: format!("user:{user}"),
        epoch: "e1".to_owned(),
        offset: n,
        at: now_millis() - ago_ms,
        kind: "munity.test.Thing".to_owned(),
        id: format!("id-{n}"),
        payload: format!("payload {n}").into_bytes(),
    }
}

fn ids(items: &[notify_svc::inbox::InboxItem]) -> Vec<String> {
    items.iter().map(|i| i.notification.id.clone()).collect()
}

mod cases {
    use super::*;

    pub async fn newest_first_in_pages_and_a_redelivery_changes_nothing(inbox: Arc<dyn Inbox>) {
        let (user, other) = (Uuid::now_v7(), Uuid::now_v7());
        // id-3 and id-4 share a millisecond: ordered by id, descending.
        let base = now_millis() - 10_000;
        let mut notes = Vec::new();
        for (n, at) in [
            (1, base),
            (2, base + 1),
            (3, base + 2),
            (4, base + 2),
            (5, base + 3),
        ] {
            let mut note = note(user, n, 0);
            note.at = at;
            inbox.add(user, &note).await.unwrap();
            notes.push(note);
        }
        inbox.add(other, &note(other, 9, 0)).await.unwrap();

        let all = inbox.list(user, None, 10, false).await.unwrap();
        assert_eq!(ids(&all), ["id-5", "id-4", "id-3", "id-2", "id-1"]);
        assert_eq!(all[0].notification, notes[4], "stored as published");
        assert!(all.iter().all(|i| i.read_at.is_none()));

        let first = inbox.list(user, None, 2, false).await.unwrap();
        assert_eq!(ids(&first), ["id-5", "id-4"]);
        let second = inbox
            .list(user, Some(&first[1].key), 2, false)
            .await
            .unwrap();
        assert_eq!(ids(&second), ["id-3", "id-2"]);
        let third = inbox
            .list(user, Some(&second[1].key), 2, false)
            .await
            .unwrap();
        assert_eq!(ids(&third), ["id-1"]);

        // Read, then delivered again: still read, still one item.
        inbox
            .mark_read(user, &[all[0].key.clone()], now_millis())
            .await
            .unwrap();
        inbox.add(user, &notes[4]).await.unwrap();
        let again = inbox.list(user, None, 10, false).await.unwrap();
        assert_eq!(again.len(), 5);
        assert!(
            again[0].read_at.is_some(),
            "a redelivery keeps the read mark"
        );
        assert_eq!(
            ids(&inbox.list(other, None, 10, false).await.unwrap()),
            ["id-9"]
        );
    }

    pub async fn read_marks_and_unread_counts(inbox: Arc<dyn Inbox>) {
        let user = Uuid::now_v7();
        for n in 1..=6 {
            inbox
                .add(user, &note(user, n, 60_000 - n as i64 * 1000))
                .await
                .unwrap();
        }
        assert_eq!(inbox.unread(user).await.unwrap(), 6);
        let all = inbox.list(user, None, 10, false).await.unwrap();
        let read_at = now_millis();
        let unknown = ItemKey {
            at: all[0].key.at,
            id: "not-there".to_owned(),
        };
        inbox
            .mark_read(
                user,
                &[all[1].key.clone(), all[3].key.clone(), unknown.clone()],
                read_at,
            )
            .await
            .unwrap();
        assert_eq!(inbox.unread(user).await.unwrap(), 4);
        let unread = inbox.list(user, None, 10, true).await.unwrap();
        assert_eq!(ids(&unread), ["id-6", "id-4", "id-2", "id-1"]);
        let unread_page = inbox
            .list(user, Some(&unread[1].key), 1, true)
            .await
            .unwrap();
        assert_eq!(ids(&unread_page), ["id-2"]);
        let listed = inbox.list(user, None, 10, false).await.unwrap();
        assert_eq!(listed.len(), 6, "an unknown id made no item");
        assert_eq!(listed[1].read_at, Some(read_at));

        // Marking again keeps the first time.
        inbox
            .mark_read(user, &[all[1].key.clone()], read_at + 5)
            .await
            .unwrap();
        assert_eq!(
            inbox.list(user, None, 10, false).await.unwrap()[1].read_at,
            Some(read_at)
        );

        inbox.mark_all_read(user, read_at + 10).await.unwrap();
        assert_eq!(inbox.unread(user).await.unwrap(), 0);
        assert!(inbox.list(user, None, 10, true).await.unwrap().is_empty());
        // Another user's marks are their own.
        let other = Uuid::now_v7();
        inbox.add(other, &note(other, 1, 0)).await.unwrap();
        inbox
            .mark_read(other, &[all[0].key.clone()], read_at)
            .await
            .unwrap();
        assert_eq!(inbox.unread(other).await.unwrap(), 1);
    }

    pub async fn expired_items_are_neither_listed_nor_counted(inbox: Arc<dyn Inbox>) {
        let user = Uuid::now_v7();
        inbox
            .add(user, &note(user, 1, 2 * 3600 * 1000))
            .await
            .unwrap();
        inbox.add(user, &note(user, 2, 1000)).await.unwrap();
        assert_eq!(
            ids(&inbox.list(user, None, 10, false).await.unwrap()),
            ["id-2"]
        );
        assert_eq!(inbox.unread(user).await.unwrap(), 1);
    }

    pub async fn unread_counts_stop_at_the_cap(inbox: Arc<dyn Inbox>) {
        let user = Uuid::now_v7();
        for n in 1..=(LIMITS.count_cap as u64 + 5) {
            inbox
                .add(user, &note(user, n, 100_000 - n as i64))
                .await
                .unwrap();
        }
        assert_eq!(inbox.unread(user).await.unwrap(), LIMITS.count_cap as u64);
        inbox.mark_all_read(user, now_millis()).await.unwrap();
        assert_eq!(
            inbox.unread(user).await.unwrap(),
            0,
            "all means all, past the cap too"
        );
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_inbox => embedded(), cql_inbox => cql() },
    tests: [
        newest_first_in_pages_and_a_redelivery_changes_nothing,
        read_marks_and_unread_counts,
        expired_items_are_neither_listed_nor_counted,
        unread_counts_stop_at_the_cap,
    ],
}

/// The embedded inbox keeps items and marks across a restart (the CQL one
/// is a server's).
#[tokio::test]
async fn the_embedded_inbox_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let user = Uuid::now_v7();
    {
        let inbox = EmbeddedInbox::open(dir.path(), LIMITS).unwrap();
        inbox.add(user, &note(user, 1, 2000)).await.unwrap();
        inbox.add(user, &note(user, 2, 1000)).await.unwrap();
        let items = inbox.list(user, None, 1, false).await.unwrap();
        inbox
            .mark_read(user, &[items[0].key.clone()], now_millis())
            .await
            .unwrap();
    }
    let inbox = EmbeddedInbox::open(dir.path(), LIMITS).unwrap();
    let items = inbox.list(user, None, 10, false).await.unwrap();
    assert_eq!(ids(&items), ["id-2", "id-1"]);
    assert!(items[0].read_at.is_some() && items[1].read_at.is_none());
    assert_eq!(inbox.unread(user).await.unwrap(), 1);
}

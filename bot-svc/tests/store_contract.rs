//! One contract for the bot's store, on the embedded backend and on a real
//! CQL server (`MUNITY_TEST_CQL`; with `CI=true` a missing one fails).

use std::sync::Arc;

use bot_svc::store::{BotStore, Outgoing, Position, cql::CqlStore, embedded::EmbeddedStore};
use uuid::Uuid;

type Store = Arc<dyn BotStore>;

async fn embedded() -> Option<(Store, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    Some((Arc::new(EmbeddedStore::open(dir.path()).unwrap()), dir))
}

/// A fresh keyspace per case: the queue is one per keyspace.
async fn cql() -> Option<(Store, ())> {
    let mut config = munity_testkit::cql_config("bot_contract")?;
    // The time's digits and random ones of a v7 id: unique per case.
    config.keyspace = format!(
        "bot_contract_{}",
        &Uuid::now_v7().simple().to_string()[8..32]
    );
    let _schema = munity_testkit::schema_lock().await;
    Some((Arc::new(CqlStore::connect(&config).await.unwrap()), ()))
}

fn message(chat_id: i64, text: &str) -> Outgoing {
    Outgoing {
        chat_id,
        text: text.to_owned(),
        buttons: Vec::new(),
    }
}

mod cases {
    use super::*;

    pub async fn links_bind_rebind_and_go(store: Store) {
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(store.get_link(5).await.unwrap(), None);
        store.put_link(5, ada).await.unwrap();
        store.put_link(-7, ada).await.unwrap();
        store.put_link(9, ada).await.unwrap();
        assert_eq!(store.chats_of(ada).await.unwrap(), vec![-7, 5, 9]);
        store.put_link(5, bob).await.unwrap();
        assert_eq!(store.get_link(5).await.unwrap(), Some(bob));
        assert_eq!(
            store.list_links().await.unwrap(),
            vec![(-7, ada), (5, bob), (9, ada)]
        );
        assert_eq!(store.chats_of(ada).await.unwrap(), vec![-7, 9]);
        assert_eq!(store.chats_of(bob).await.unwrap(), vec![5]);
        assert!(store.remove_link(5).await.unwrap());
        assert!(!store.remove_link(5).await.unwrap());
        assert!(store.remove_link(9).await.unwrap());
        assert_eq!(store.list_links().await.unwrap(), vec![(-7, ada)]);
        assert_eq!(store.chats_of(ada).await.unwrap(), vec![-7]);
        assert_eq!(store.chats_of(bob).await.unwrap(), Vec::<i64>::new());
    }

    /// A chat unlinked and linked again at once, or rebound between two
    /// users racing: whoever the link names finally, its index lists the
    /// chat (followers find a user's chats by the index).
    pub async fn racing_links_leave_the_index_right(store: Store) {
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        for round in 0..40i64 {
            let chat = 1_000 + round;
            store.put_link(chat, ada).await.unwrap();
            let (a, b) = (store.clone(), store.clone());
            if round % 2 == 0 {
                let (removed, linked) = tokio::join!(a.remove_link(chat), b.put_link(chat, ada));
                removed.unwrap();
                linked.unwrap();
            } else {
                let (to_bob, to_ada) = tokio::join!(a.put_link(chat, bob), b.put_link(chat, ada));
                to_bob.unwrap();
                to_ada.unwrap();
            }
            for user in [ada, bob] {
                let owns = store.get_link(chat).await.unwrap() == Some(user);
                let listed = store.chats_of(user).await.unwrap().contains(&chat);
                assert_eq!(owns, listed, "round {round}: chat {chat}, user {user}");
            }
        }
    }

    pub async fn offsets_and_positions_are_kept(store: Store) {
        assert_eq!(store.update_offset().await.unwrap(), 0);
        store.set_update_offset(42).await.unwrap();
        assert_eq!(store.update_offset().await.unwrap(), 42);
        let user = Uuid::now_v7();
        let topic = format!("user:{user}");
        assert_eq!(store.position(user, &topic).await.unwrap(), None);
        let position = Position {
            epoch: "e1".to_owned(),
            offset: 17,
        };
        store.set_position(user, &topic, &position).await.unwrap();
        assert_eq!(
            store.position(user, &topic).await.unwrap(),
            Some(position.clone())
        );
        assert_eq!(store.position(user, "event:x").await.unwrap(), None);
        let other = Position {
            epoch: "e2".to_owned(),
            offset: 3,
        };
        store.set_position(user, "event:x", &other).await.unwrap();
        assert_eq!(store.position(user, "event:x").await.unwrap(), Some(other));
        assert_eq!(store.position(user, &topic).await.unwrap(), Some(position));
    }

    pub async fn the_queue_keeps_order_and_dedups_notifications(store: Store) {
        assert!(store.enqueue(&message(1, "a"), None).await.unwrap());
        assert!(store.enqueue(&message(2, "b"), Some("n1")).await.unwrap());
        // The same notification for the same chat: never queued twice.
        assert!(!store.enqueue(&message(2, "b"), Some("n1")).await.unwrap());
        // For another chat it is another entry.
        assert!(store.enqueue(&message(3, "b"), Some("n1")).await.unwrap());
        let mut keyed = message(1, "c");
        keyed.buttons = vec![vec![("Join".to_owned(), "j:x".to_owned())]];
        assert!(store.enqueue(&keyed, None).await.unwrap());
        assert_eq!(store.queue_len().await.unwrap(), 4);
        let pending = store.pending(10).await.unwrap();
        let texts: Vec<(i64, &str)> = pending
            .iter()
            .map(|q| (q.message.chat_id, q.message.text.as_str()))
            .collect();
        assert_eq!(texts, vec![(1, "a"), (2, "b"), (3, "b"), (1, "c")]);
        assert_eq!(pending[3].message, keyed);
        assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
        assert!(pending.iter().all(|q| !q.attempted));
        // A send begun is reported as attempted (what a restart finds after
        // a crash mid-send); abandoned, it is not; acknowledged, it is gone.
        store.begin_send(pending[2].seq).await.unwrap();
        store.begin_send(pending[3].seq).await.unwrap();
        store.abandon_send(pending[3].seq).await.unwrap();
        let marked: Vec<bool> = store
            .pending(10)
            .await
            .unwrap()
            .iter()
            .map(|q| q.attempted)
            .collect();
        assert_eq!(marked, [false, false, true, false]);
        store.begin_send(pending[0].seq).await.unwrap();
        store.ack(pending[0].seq).await.unwrap();
        store.ack(pending[0].seq).await.unwrap();
        let rest = store.pending(2).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].seq, pending[1].seq);
        // Sent and gone: still never queued again.
        store.ack(pending[1].seq).await.unwrap();
        assert!(!store.enqueue(&message(2, "b"), Some("n1")).await.unwrap());
        assert_eq!(store.queue_len().await.unwrap(), 2);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        links_bind_rebind_and_go,
        racing_links_leave_the_index_right,
        offsets_and_positions_are_kept,
        the_queue_keeps_order_and_dedups_notifications,
    ],
}

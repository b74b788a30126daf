//! The `ProfileChanged` backfill (`migrations.rs`): accounts written before
//! users-svc published `ProfileChanged` announce their display names once
//! per store, and the membership view then finds them by name. Accounts
//! "from before" are made by writing them and dropping the
//! `ProfileChanged` each write staged from the outbox, unrelayed: what an
//! older release left. Both backends; the CQL one against the real server
//! (`MUNITY_TEST_CQL`).

use std::{collections::HashMap, sync::Arc, time::Duration};

use munity_bus::{
    membership::{self, EmbeddedMemberships, MembershipView},
    outbox::Outbox,
};
use munity_platform::{
    auth::AuthConfig,
    config::{BusConfig, StorageConfig},
    service::ServiceConfig,
    shutdown::ShutdownToken,
};
use munity_proto::users::v1 as pb;
use munity_store::embedded::EmbeddedDb;
use prost::Message;
use users_svc::{
    UsersConfig,
    domain::{CommunityRecord, MemberRole, MembershipRecord, Role, UserRecord, now_millis},
    migrations::{self, Backfill, PROFILE_BACKFILL},
    passwords::Hashing,
    store::{Opened, embedded::EmbeddedStore},
};
use uuid::Uuid;

const PROFILE_CHANGED: &str = "munity.users.v1.ProfileChanged";

mod common;

async fn embedded() -> Option<(Opened, tempfile::TempDir)> {
    common::embedded().await
}

/// A keyspace of this test process's own: the backfill's record is the
/// keyspace's, so no earlier run has made it.
async fn cql() -> Option<(Opened, ())> {
    common::cql("users_backfill").await
}

fn account(name: &str) -> UserRecord {
    let id = Uuid::now_v7();
    UserRecord {
        id,
        email: format!("backfill-{}@example.com", id.simple()),
        display_name: name.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        roles: vec![Role::User],
        created_at: now_millis(),
    }
}

/// Every `ProfileChanged` staged in `outbox`, by user: (name, changed at).
async fn staged_profiles(outbox: &dyn Outbox) -> HashMap<Uuid, Vec<(String, i64)>> {
    let mut found: HashMap<Uuid, Vec<(String, i64)>> = HashMap::new();
    for (_, event) in outbox.oldest(100_000).await.unwrap() {
        if event.r#type != PROFILE_CHANGED {
            continue;
        }
        let e = pb::ProfileChanged::decode(event.payload.as_slice()).unwrap();
        found
            .entry(e.user_id.parse().unwrap())
            .or_default()
            .push((e.display_name, e.changed_at_ms));
    }
    found
}

/// Drops from `outbox` every `ProfileChanged` staged for `users`,
/// unrelayed (their accounts are then as an older release left them);
/// how many.
async fn forget_profiles(outbox: &dyn Outbox, users: &[Uuid]) -> usize {
    let ids: Vec<String> = users.iter().map(Uuid::to_string).collect();
    let keys: Vec<_> = outbox
        .oldest(100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, e)| e.r#type == PROFILE_CHANGED && ids.contains(&e.aggregate_id))
        .map(|(key, _)| key)
        .collect();
    outbox.relayed(&keys).await.unwrap();
    keys.len()
}

/// Opens the embedded store in `dir` once it is free (a store just
/// dropped may still be held by its last flush for a moment).
async fn open_when_free(dir: &std::path::Path) -> EmbeddedStore {
    let started = std::time::Instant::now();
    loop {
        match EmbeddedStore::open(dir) {
            Ok(store) => return store,
            Err(error) if started.elapsed() > Duration::from_secs(10) => panic!("{error:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

mod cases {
    use super::*;

    /// Every account gets one `ProfileChanged` with its current name and
    /// its creation as the time; the backfill is then recorded, and a
    /// second run stages nothing.
    pub async fn accounts_from_before_profile_changed_are_announced_once(opened: Opened) {
        let Opened { repo, publishing } = opened;
        let outbox = publishing.outbox;
        let mut old = Vec::new();
        for name in [
            "Ada Lovelace",
            "Grace Hopper",
            "Edsger Dijkstra",
            "Alan Turing",
            "Kay",
        ] {
            let user = account(name);
            repo.create_user(&user).await.unwrap();
            old.push(user);
        }
        // Renamed in the old days: announced by its current name.
        let renamed = UserRecord {
            display_name: "Katherine Johnson".to_owned(),
            ..old[4].clone()
        };
        repo.update_user(&renamed).await.unwrap();
        old[4] = renamed;
        let ids: Vec<Uuid> = old.iter().map(|u| u.id).collect();
        // Five creates and an update.
        assert_eq!(forget_profiles(outbox.as_ref(), &ids).await, 6);
        let before = staged_profiles(outbox.as_ref()).await;
        assert!(ids.iter().all(|id| !before.contains_key(id)));
        assert!(!repo.migration_done(PROFILE_BACKFILL).await.unwrap());

        // Pages of 2: three pages at least.
        let mut after = None;
        let ran = migrations::backfill_profiles_in_pages(repo.as_ref(), 2, &mut after)
            .await
            .unwrap();
        let Backfill::Done { accounts } = ran else {
            panic!("the first run walks: {ran:?}");
        };
        assert!(accounts >= old.len() as u64, "{accounts} accounts");
        assert!(repo.migration_done(PROFILE_BACKFILL).await.unwrap());
        let staged = staged_profiles(outbox.as_ref()).await;
        for user in &old {
            assert_eq!(
                staged.get(&user.id),
                Some(&vec![(user.display_name.clone(), user.created_at)]),
                "{}",
                user.display_name
            );
        }
        // Every account the store holds, once each.
        assert_eq!(staged.len() as u64, accounts);
        assert!(staged.values().all(|names| names.len() == 1));

        // Recorded: a second run (a restart, another replica) does nothing.
        assert_eq!(
            migrations::backfill_profiles(repo.as_ref()).await.unwrap(),
            Backfill::AlreadyDone
        );
        assert_eq!(staged_profiles(outbox.as_ref()).await, staged);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [accounts_from_before_profile_changed_are_announced_once],
}

fn view(dir: &std::path::Path) -> Arc<dyn MembershipView> {
    let db = EmbeddedDb::open(dir, "view", |_| Ok(())).unwrap();
    EmbeddedMemberships::open(db)
}

/// The backfill's time is the account's creation: a real rename, at or
/// after it, wins in the view whichever arrives first, even one made just
/// before the backfill's event was (a page read before the rename, its
/// events built after: a stale name).
#[tokio::test]
async fn a_rename_wins_over_the_backfill_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let view = view(dir.path());
    for created_at in [now_millis() - 60_000, 0] {
        let user = UserRecord {
            created_at,
            ..account("Old Name")
        };
        let renamed = users_svc::events::profile_changed(
            &UserRecord {
                display_name: "New Name".to_owned(),
                ..user.clone()
            },
            now_millis() - 1_000,
        );
        let backfilled =
            users_svc::events::profile_changed(&user, migrations::backfill_changed_at(&user));
        for order in [[&backfilled, &renamed], [&renamed, &backfilled]] {
            for event in order {
                membership::apply(view.as_ref(), event).await.unwrap();
            }
            assert_eq!(
                view.display_name(user.id).await.unwrap().as_deref(),
                Some("New Name"),
                "created at {created_at}"
            );
        }
        // With nothing before it, the backfill's name is the one kept.
        let quiet = account("Quiet One");
        let event =
            users_svc::events::profile_changed(&quiet, migrations::backfill_changed_at(&quiet));
        membership::apply(view.as_ref(), &event).await.unwrap();
        assert_eq!(
            view.display_name(quiet.id).await.unwrap().as_deref(),
            Some("Quiet One")
        );
    }
}

/// End to end: a data dir an older release left (a member of a community
/// whose name was never announced), users-svc started on it, its events
/// read off the event log into a membership view as discuss-svc keeps one:
/// the member is found by name (what `@Grace Hopper` looks up), and the
/// store records the backfill done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_service_announces_old_accounts_so_mentions_find_them() {
    let data = tempfile::tempdir().unwrap();
    let grace = account("Grace Hopper");
    let community = CommunityRecord {
        id: Uuid::now_v7(),
        name: "Compilers".to_owned(),
        description: String::new(),
        owner_id: grace.id,
        created_at: now_millis(),
    };
    {
        let store = EmbeddedStore::open(data.path()).unwrap();
        use users_svc::store::UsersRepository;
        store.create_user(&grace).await.unwrap();
        store
            .create_community(
                &community,
                &MembershipRecord {
                    community_id: community.id,
                    user_id: grace.id,
                    role: MemberRole::Owner,
                    joined_at: now_millis(),
                },
            )
            .await
            .unwrap();
        let outbox = store.publishing().outbox;
        assert_eq!(forget_profiles(outbox.as_ref(), &[grace.id]).await, 1);
    }
    // Closed, for the service to open.
    drop(open_when_free(data.path()).await);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bus = BusConfig {
        path: data.path().join("bus"),
        ..Default::default()
    };
    let config = ServiceConfig {
        listen: listener.local_addr().unwrap(),
        shutdown_grace_secs: 1,
        storage: StorageConfig::Embedded {
            path: data.path().to_owned(),
        },
        bus: bus.clone(),
        own: UsersConfig::default(),
    };
    let shutdown = ShutdownToken::new();
    let hashing = Hashing::new(&config.own.passwords).unwrap();
    let server = tokio::spawn(users_svc::run_with_hashing(
        config,
        AuthConfig::default(),
        listener,
        shutdown.clone(),
        hashing,
    ));

    let view_dir = tempfile::tempdir().unwrap();
    let view = view(view_dir.path());
    let log = munity_bus::open(&bus).await.unwrap();
    let mut reader = log.read_from(0).await.unwrap();
    let key = membership::name_key("Grace  HOPPER");
    let started = std::time::Instant::now();
    let mut profiles = 0;
    loop {
        for delivery in reader.next(100, Duration::from_millis(200)).await.unwrap() {
            profiles += usize::from(delivery.event.r#type == PROFILE_CHANGED);
            membership::apply(view.as_ref(), &delivery.event)
                .await
                .unwrap();
        }
        let named = view
            .members_named(community.id, std::slice::from_ref(&key), 10)
            .await
            .unwrap();
        if named.is_some() {
            assert_eq!(named, Some((key.clone(), vec![grace.id])));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Grace is never found by name"
        );
    }
    assert_eq!(profiles, 1, "one ProfileChanged for the one account");
    shutdown.cancel();
    server.await.unwrap().unwrap();

    // Recorded: the next start walks nothing.
    let store = open_when_free(data.path()).await;
    use users_svc::store::UsersRepository;
    assert!(store.migration_done(PROFILE_BACKFILL).await.unwrap());
}

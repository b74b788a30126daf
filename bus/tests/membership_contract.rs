//! The shared membership view (`munity_bus::membership`), one contract on
//! every backend: a redb file, and the real CQL server (`MUNITY_TEST_CQL`;
//! required under CI=true). Fed by users-svc's events as the log delivers
//! them, redeliveries included.

use std::sync::Arc;

use munity_bus::{
    DomainEvent,
    membership::{self, CqlMemberships, EmbeddedMemberships, MemberRole, MembershipView},
};
use munity_proto::users::v1 as users;
use munity_store::{cql::CqlStore, embedded::EmbeddedDb};
use prost::Message;
use uuid::Uuid;

type View = Arc<dyn MembershipView>;

async fn embedded() -> Option<(View, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    // A service's file with tables of its own; the view adds its tables.
    let db = EmbeddedDb::open(dir.path(), "svc", |txn| {
        txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("own"))?;
        Ok(())
    })
    .unwrap();
    Some((EmbeddedMemberships::open(db), dir))
}

/// The view of a store in a file it shares with another store that has a
/// view too (`munity dev`'s one file): its tables are its own.
async fn embedded_in_a_shared_file() -> Option<(View, (View, tempfile::TempDir))> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.redb");
    let db = EmbeddedDb::open(&file, "svc", |_| Ok(())).unwrap();
    let other = EmbeddedMemberships::open(EmbeddedDb::open(&file, "other", |_| Ok(())).unwrap());
    // The other store's view holds every user the cases could ask about
    // in a community of its own, so a shared table would show.
    other
        .set_member(Uuid::nil(), Uuid::nil(), Some(MemberRole::Owner))
        .await
        .unwrap();
    Some((EmbeddedMemberships::open(db), (other, dir)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_views_in_one_file_are_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.redb");
    let view = |name| EmbeddedMemberships::open(EmbeddedDb::open(&file, name, |_| Ok(())).unwrap());
    let (events, discuss) = (view("events"), view("discuss"));
    let (community, user) = (Uuid::now_v7(), Uuid::now_v7());
    events
        .set_member(community, user, Some(MemberRole::Member))
        .await
        .unwrap();
    discuss.set_display_name(user, "Ann", 1).await.unwrap();
    assert_eq!(
        events.role(community, user).await.unwrap(),
        Some(MemberRole::Member)
    );
    assert_eq!(discuss.role(community, user).await.unwrap(), None);
    assert!(discuss.communities_of(user).await.unwrap().is_empty());
    assert_eq!(events.display_name(user).await.unwrap(), None);
    assert_eq!(
        discuss.display_name(user).await.unwrap().as_deref(),
        Some("Ann")
    );
}

async fn cql() -> Option<(View, ())> {
    let config = munity_testkit::cql_config("bus_membership")?;
    let store = {
        let _lock = munity_testkit::schema_lock().await;
        Arc::new(
            CqlStore::connect(&config, membership::CQL_SCHEMA)
                .await
                .expect("connect to the CQL test server"),
        )
    };
    Some((CqlMemberships::prepare(store).await.unwrap(), ()))
}

fn event<M: Message>(kind: &str, message: M) -> DomainEvent {
    DomainEvent {
        id: Uuid::now_v7().to_string(),
        r#type: format!("munity.users.v1.{kind}"),
        payload: message.encode_to_vec(),
        ..Default::default()
    }
}

mod cases {
    use super::*;

    pub async fn roles_are_set_changed_and_removed(view: View) {
        let (community, user) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(view.role(community, user).await.unwrap(), None);
        assert!(view.communities_of(user).await.unwrap().is_empty());
        view.set_member(community, user, Some(MemberRole::Member))
            .await
            .unwrap();
        view.set_member(community, user, Some(MemberRole::Moderator))
            .await
            .unwrap();
        assert_eq!(
            view.role(community, user).await.unwrap(),
            Some(MemberRole::Moderator)
        );
        assert_eq!(
            view.communities_of(user).await.unwrap(),
            [(community, MemberRole::Moderator)]
        );
        view.set_member(community, user, None).await.unwrap();
        assert_eq!(view.role(community, user).await.unwrap(), None);
        assert!(view.communities_of(user).await.unwrap().is_empty());
        // Removing what is not there is no error (a redelivered MemberLeft).
        view.set_member(community, user, None).await.unwrap();
    }

    pub async fn a_users_communities_are_theirs_alone(view: View) {
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut hers: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for community in &hers {
            view.set_member(*community, alice, Some(MemberRole::Member))
                .await
                .unwrap();
        }
        let shared = hers[2];
        view.set_member(shared, bob, Some(MemberRole::Owner))
            .await
            .unwrap();
        let mut listed: Vec<Uuid> = view
            .communities_of(alice)
            .await
            .unwrap()
            .into_iter()
            .map(|(c, role)| {
                assert_eq!(role, MemberRole::Member);
                c
            })
            .collect();
        listed.sort();
        hers.sort();
        assert_eq!(listed, hers);
        assert_eq!(
            view.communities_of(bob).await.unwrap(),
            [(shared, MemberRole::Owner)]
        );
    }

    /// A community's members by user id, as many as asked for.
    pub async fn a_communitys_members_are_listed_up_to_a_limit(view: View) {
        let community = Uuid::now_v7();
        let mut members: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for user in &members {
            view.set_member(community, *user, Some(MemberRole::Member))
                .await
                .unwrap();
        }
        // Someone else's community is not listed.
        view.set_member(Uuid::now_v7(), members[0], Some(MemberRole::Owner))
            .await
            .unwrap();
        members.sort();
        assert_eq!(view.members_of(community, 10).await.unwrap(), members);
        assert_eq!(view.members_of(community, 3).await.unwrap(), members[..3]);
        view.set_member(community, members[1], None).await.unwrap();
        let left: Vec<Uuid> = members
            .iter()
            .copied()
            .filter(|u| *u != members[1])
            .collect();
        assert_eq!(view.members_of(community, 10).await.unwrap(), left);
        assert!(
            view.members_of(Uuid::now_v7(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    pub async fn users_events_are_applied_and_redeliveries_are_harmless(view: View) {
        let (community, user) = (Uuid::now_v7(), Uuid::now_v7());
        let (c, u) = (community.to_string(), user.to_string());
        let joined = event(
            "MemberJoined",
            users::MemberJoined {
                community_id: c.clone(),
                user_id: u.clone(),
                role: users::MemberRole::Member as i32,
                ..Default::default()
            },
        );
        let promoted = event(
            "MemberRoleChanged",
            users::MemberRoleChanged {
                community_id: c.clone(),
                user_id: u.clone(),
                role: users::MemberRole::Moderator as i32,
            },
        );
        let left = event(
            "MemberLeft",
            users::MemberLeft {
                community_id: c,
                user_id: u,
            },
        );
        for e in [&joined, &joined, &promoted, &promoted] {
            membership::apply(view.as_ref(), e).await.unwrap();
        }
        assert_eq!(
            view.role(community, user).await.unwrap(),
            Some(MemberRole::Moderator)
        );
        membership::apply(view.as_ref(), &left).await.unwrap();
        membership::apply(view.as_ref(), &left).await.unwrap();
        assert_eq!(view.role(community, user).await.unwrap(), None);
        // Someone else's events pass by; a broken one is an error (the
        // consumer leaves it pending rather than acknowledging it).
        let other = event("UserRegistered", users::MemberLeft::default());
        membership::apply(view.as_ref(), &other).await.unwrap();
        let broken = DomainEvent {
            payload: vec![0xff, 0xff],
            ..joined.clone()
        };
        assert!(membership::apply(view.as_ref(), &broken).await.is_err());
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| membership::name_key(n)).collect()
    }

    fn profile(user: Uuid, name: &str, at_ms: i64) -> DomainEvent {
        event(
            "ProfileChanged",
            users::ProfileChanged {
                user_id: user.to_string(),
                display_name: name.to_owned(),
                changed_at_ms: at_ms,
            },
        )
    }

    /// Members by display name: the longest key that names a member wins,
    /// namesakes come together, and only members of that community count;
    /// whether the name or the membership arrived first.
    pub async fn members_are_found_by_their_display_names(view: View) {
        let community = Uuid::now_v7();
        let (ann, ann_lee, other_ann, outsider) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        // Names before memberships, and memberships before names.
        membership::apply(view.as_ref(), &profile(ann, "Ann", 1))
            .await
            .unwrap();
        view.set_member(community, ann, Some(MemberRole::Member))
            .await
            .unwrap();
        view.set_member(community, ann_lee, Some(MemberRole::Owner))
            .await
            .unwrap();
        membership::apply(view.as_ref(), &profile(ann_lee, "Ann  LEE", 1))
            .await
            .unwrap();
        view.set_member(community, other_ann, Some(MemberRole::Member))
            .await
            .unwrap();
        view.set_display_name(other_ann, "ann", 1).await.unwrap();
        // Someone of the same name elsewhere is none of this community's.
        view.set_display_name(outsider, "Ann Lee", 1).await.unwrap();
        view.set_member(Uuid::now_v7(), outsider, Some(MemberRole::Member))
            .await
            .unwrap();
        assert_eq!(
            view.display_name(ann_lee).await.unwrap().as_deref(),
            Some("Ann  LEE")
        );

        let named = |k: &[&str], limit| {
            let (view, k) = (view.clone(), keys(k));
            async move { view.members_named(community, &k, limit).await.unwrap() }
        };
        assert_eq!(
            named(&["Ann Lee, hi", "Ann Lee,", "Ann Lee", "Ann"], 10).await,
            Some(("ann lee".to_owned(), vec![ann_lee]))
        );
        let mut namesakes = vec![ann, other_ann];
        namesakes.sort();
        assert_eq!(
            named(&["Ann is", "Ann"], 10).await,
            Some(("ann".to_owned(), namesakes.clone()))
        );
        assert_eq!(
            named(&["Ann"], 1).await,
            Some(("ann".to_owned(), namesakes[..1].to_vec()))
        );
        assert_eq!(named(&["Annabel"], 10).await, None);
        assert_eq!(named(&[], 10).await, None);

        // A rename moves the member; an older name arriving late is ignored.
        membership::apply(view.as_ref(), &profile(ann_lee, "Lee", 3))
            .await
            .unwrap();
        membership::apply(view.as_ref(), &profile(ann_lee, "Ann Lee", 2))
            .await
            .unwrap();
        assert_eq!(
            view.display_name(ann_lee).await.unwrap().as_deref(),
            Some("Lee")
        );
        assert_eq!(
            named(&["Ann Lee", "Ann"], 10).await,
            Some(("ann".to_owned(), namesakes.clone()))
        );
        assert_eq!(
            named(&["Lee"], 10).await,
            Some(("lee".to_owned(), vec![ann_lee]))
        );
        // Leaving ends it; the same name again changes nothing.
        view.set_member(community, other_ann, None).await.unwrap();
        view.set_display_name(ann, "Ann", 1).await.unwrap();
        assert_eq!(
            named(&["Ann"], 10).await,
            Some(("ann".to_owned(), vec![ann]))
        );
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: {
        embedded_view => embedded(),
        shared_file_view => embedded_in_a_shared_file(),
        cql_view => cql(),
    },
    tests: [
        roles_are_set_changed_and_removed,
        a_users_communities_are_theirs_alone,
        a_communitys_members_are_listed_up_to_a_limit,
        users_events_are_applied_and_redeliveries_are_harmless,
        members_are_found_by_their_display_names,
    ],
}

//! users-svc publishes community and membership changes as domain events:
//! each change stages its event with it (embedded: same write transaction;
//! CQL: tentative around the lightweight transaction, confirmed once
//! applied), a change that did not happen stages nothing, and on CQL the
//! relay's check tells an unconfirmed event whose change happened from one
//! whose change did not. Both backends; the CQL one against the real server.

use munity_bus::outbox::{Outbox, StagedKey};
use munity_platform::config::StorageConfig;
use munity_proto::users::v1 as pb;
use prost::Message;
use users_svc::{
    domain::{CommunityRecord, MemberRole, MembershipRecord, now_millis},
    store::{self, Opened},
};
use uuid::Uuid;

async fn embedded() -> Option<(Opened, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig::Embedded {
        path: dir.path().to_owned(),
    };
    Some((store::open(&storage).await.unwrap(), dir))
}

async fn cql() -> Option<(Opened, ())> {
    let config = munity_testkit::cql_config("users_events")?;
    let _schema = munity_testkit::schema_lock().await;
    Some((store::open(&StorageConfig::Cql(config)).await.unwrap(), ()))
}

mod cases {
    use super::*;

    fn membership(community: Uuid, user: Uuid, role: MemberRole) -> MembershipRecord {
        MembershipRecord {
            community_id: community,
            user_id: user,
            role,
            joined_at: now_millis(),
        }
    }

    /// The staged events of `community`, oldest first: (type, user) pairs;
    /// every one confirmed (none tentative).
    async fn staged(outbox: &dyn Outbox, community: Uuid) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (key, event) in outbox.oldest(1000).await.unwrap() {
            if event.aggregate_id != community.to_string() {
                continue;
            }
            assert!(
                !matches!(
                    key,
                    StagedKey::Cql {
                        tentative: true,
                        ..
                    }
                ),
                "{} left tentative",
                event.r#type
            );
            let user = event.subject_ids.get(1).cloned().unwrap_or_default();
            found.push((
                event
                    .r#type
                    .trim_start_matches("munity.users.v1.")
                    .to_owned(),
                user,
            ));
        }
        found
    }

    pub async fn every_change_stages_its_event_and_no_other(opened: Opened) {
        let Opened { repo, publishing } = opened;
        let outbox = publishing.outbox;
        let (owner, member) = (Uuid::now_v7(), Uuid::now_v7());
        let community = CommunityRecord {
            id: Uuid::now_v7(),
            name: "Chess club".to_owned(),
            description: String::new(),
            owner_id: owner,
            created_at: now_millis(),
        };
        let id = community.id;
        repo.create_community(&community, &membership(id, owner, MemberRole::Owner))
            .await
            .unwrap();
        let joined = membership(id, member, MemberRole::Member);
        repo.add_membership(&joined).await.unwrap();
        // Joining again changes nothing, and publishes nothing.
        repo.add_membership(&membership(id, member, MemberRole::Member))
            .await
            .unwrap();
        repo.update_membership(&MembershipRecord {
            role: MemberRole::Moderator,
            ..joined
        })
        .await
        .unwrap();
        assert!(repo.remove_membership(id, member).await.unwrap());
        assert!(!repo.remove_membership(id, member).await.unwrap());

        let (o, m) = (owner.to_string(), member.to_string());
        assert_eq!(
            staged(outbox.as_ref(), id).await,
            vec![
                ("CommunityCreated".to_owned(), o.clone()),
                ("MemberJoined".to_owned(), o),
                ("MemberJoined".to_owned(), m.clone()),
                ("MemberRoleChanged".to_owned(), m.clone()),
                ("MemberLeft".to_owned(), m),
            ]
        );
        // The payloads say what happened.
        let (_, joined_event) = outbox
            .oldest(1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.aggregate_id == id.to_string())
            .nth(2)
            .unwrap();
        let payload = pb::MemberJoined::decode(joined_event.payload.as_slice()).unwrap();
        assert_eq!(payload.user_id, member.to_string());
        assert_eq!(payload.role, pb::MemberRole::Member as i32);
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [every_change_stages_its_event_and_no_other],
}

/// CQL: the relay's check of unconfirmed events against the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_verify_tells_changes_that_happened_from_ones_that_did_not() {
    let Some((opened, ())) = cql().await else {
        return;
    };
    let verify = opened
        .publishing
        .verify
        .clone()
        .expect("the CQL backend verifies");
    let (community, user, stranger) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let member = MembershipRecord {
        community_id: community,
        user_id: user,
        role: MemberRole::Member,
        joined_at: now_millis(),
    };
    opened.repo.add_membership(&member).await.unwrap();
    let happened = |event| {
        let verify = verify.clone();
        async move { verify.happened(&event).await.unwrap() }
    };
    assert!(happened(users_svc::events::member_joined(&member)).await);
    let never = MembershipRecord {
        user_id: stranger,
        ..member.clone()
    };
    assert!(!happened(users_svc::events::member_joined(&never)).await);
    assert!(!happened(users_svc::events::member_left(community, user)).await);
    assert!(happened(users_svc::events::member_left(community, stranger)).await);
    let promoted = MembershipRecord {
        role: MemberRole::Moderator,
        ..member.clone()
    };
    assert!(!happened(users_svc::events::member_role_changed(&promoted)).await);
    assert!(happened(users_svc::events::member_role_changed(&member)).await);
}

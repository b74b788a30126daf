//! users-svc publishes community and membership changes as domain events:
//! each change stages its event with it (embedded: same write transaction;
//! CQL: tentative around the lightweight transaction, confirmed once
//! applied), a change that did not happen stages nothing, and on CQL the
//! relay's check tells an unconfirmed event whose change happened from one
//! whose change did not. Both backends; the CQL one against the real server.

use munity_bus::outbox::{Outbox, StagedKey};
use munity_proto::users::v1 as pb;
use prost::Message;
use users_svc::{
    domain::{CommunityRecord, MemberRole, MembershipRecord, Role, UserRecord, now_millis},
    store::Opened,
};
use uuid::Uuid;

mod common;

async fn embedded() -> Option<(Opened, tempfile::TempDir)> {
    common::embedded().await
}

async fn cql() -> Option<(Opened, ())> {
    common::cql("users_events").await
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

    fn account(name: &str) -> UserRecord {
        let id = Uuid::now_v7();
        UserRecord {
            id,
            email: format!("events-{}@example.com", id.simple()),
            display_name: name.to_owned(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
            roles: vec![Role::User],
            created_at: now_millis(),
        }
    }

    /// The display names staged for `user`, oldest first (confirmed).
    async fn staged_names(outbox: &dyn Outbox, user: Uuid) -> Vec<String> {
        let mut names = Vec::new();
        for (key, event) in outbox.oldest(1000).await.unwrap() {
            if event.aggregate_id != user.to_string() || !event.r#type.ends_with("ProfileChanged") {
                continue;
            }
            assert!(!matches!(
                key,
                StagedKey::Cql {
                    tentative: true,
                    ..
                }
            ));
            let e = pb::ProfileChanged::decode(event.payload.as_slice()).unwrap();
            assert_eq!(e.user_id, user.to_string());
            assert!(e.changed_at_ms > 0);
            names.push(e.display_name);
        }
        names
    }

    /// Registering and writing an account stage its display name (so
    /// services find members by name); writes that fail stage nothing.
    pub async fn accounts_stage_their_display_names(opened: Opened) {
        let Opened { repo, publishing } = opened;
        let outbox = publishing.outbox;
        let ada = account("Ada");
        repo.create_user(&ada).await.unwrap();
        repo.update_user(&UserRecord {
            display_name: "Ada Lovelace".to_owned(),
            ..ada.clone()
        })
        .await
        .unwrap();
        // The same email again: refused, nothing staged.
        let copy = UserRecord {
            id: Uuid::now_v7(),
            ..ada.clone()
        };
        assert!(repo.create_user(&copy).await.is_err());
        // No such account.
        let ghost = account("Ghost");
        assert!(repo.update_user(&ghost).await.is_err());
        assert_eq!(
            staged_names(outbox.as_ref(), ada.id).await,
            ["Ada", "Ada Lovelace"]
        );
        assert!(staged_names(outbox.as_ref(), copy.id).await.is_empty());
        assert!(staged_names(outbox.as_ref(), ghost.id).await.is_empty());
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        every_change_stages_its_event_and_no_other,
        accounts_stage_their_display_names,
    ],
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
    // A name is as the account says, or it was never written.
    let ada = UserRecord {
        id: Uuid::now_v7(),
        email: format!("verify-{}@example.com", Uuid::now_v7().simple()),
        display_name: "Ada".to_owned(),
        password_hash: "x".to_owned(),
        roles: vec![Role::User],
        created_at: now_millis(),
    };
    opened.repo.create_user(&ada).await.unwrap();
    assert!(happened(users_svc::events::profile_changed(&ada, 1)).await);
    let renamed = UserRecord {
        display_name: "Ada L.".to_owned(),
        ..ada.clone()
    };
    assert!(!happened(users_svc::events::profile_changed(&renamed, 2)).await);
}

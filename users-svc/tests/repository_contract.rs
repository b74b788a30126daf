//! One contract, every backend: the same cases run against the embedded
//! store and against a real CQL server (Apache Cassandra 5.0 in CI, standing
//! in for ScyllaDB; `scripts/cassandra.sh` starts it and `MUNITY_TEST_CQL`
//! says where it is). With `CI=true` a missing CQL server fails the CQL
//! cases instead of skipping them.

use std::{collections::HashSet, sync::Arc};

use users_svc::{
    domain::{
        ChatLinkRecord, CommunityRecord, LinkCodeRecord, MemberRole, MembershipRecord,
        RefreshTokenRecord, Role, ServiceAccountRecord, SessionRecord, SigningKeyRecord,
        UserRecord, now_millis,
    },
    store::{StoreError, UsersRepository, cql::CqlStore, embedded::EmbeddedStore},
};
use uuid::Uuid;

type Repo = Arc<dyn UsersRepository>;

async fn embedded() -> Option<(Repo, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Some((Arc::new(store), dir))
}

/// The CQL test server, one keyspace for this test process.
async fn cql() -> Option<(Repo, ())> {
    let config = munity_testkit::cql_config("users_contract")?;
    let _schema = munity_testkit::schema_lock().await;
    let store = CqlStore::connect(&config)
        .await
        .expect("connect to the CQL test server");
    Some((Arc::new(store), ()))
}

fn user(email_prefix: &str) -> UserRecord {
    let id = Uuid::now_v7();
    UserRecord {
        id,
        email: format!("{email_prefix}-{}@example.com", id.simple()),
        display_name: "Ada".to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        roles: vec![Role::User],
        created_at: now_millis(),
    }
}

fn community(owner: Uuid) -> (CommunityRecord, MembershipRecord) {
    let id = Uuid::now_v7();
    let now = now_millis();
    (
        CommunityRecord {
            id,
            name: "Rustaceans".to_owned(),
            description: "We meet on Tuesdays".to_owned(),
            owner_id: owner,
            created_at: now,
        },
        MembershipRecord {
            community_id: id,
            user_id: owner,
            role: MemberRole::Owner,
            joined_at: now,
        },
    )
}

/// A service account with a name no other run of the suite has used (the
/// CQL keyspace outlives test runs).
fn service_account(name_prefix: &str) -> ServiceAccountRecord {
    let id = Uuid::now_v7();
    let now = now_millis();
    ServiceAccountRecord {
        id,
        name: format!("{name_prefix}-{}", id.simple()),
        scopes: vec!["events:read".to_owned(), "notify.publish".to_owned()],
        secret_hash: format!("{:064x}", Uuid::now_v7().as_u128()),
        disabled: false,
        created_at: now,
        secret_rotated_at: now,
    }
}

mod cases {
    use super::*;

    pub async fn users_round_trip(repo: Repo) {
        let ada = user("ada");
        repo.create_user(&ada).await.unwrap();
        assert_eq!(repo.get_user(ada.id).await.unwrap(), Some(ada.clone()));
        assert_eq!(
            repo.get_user_by_email(&ada.email).await.unwrap(),
            Some(ada.clone())
        );
        assert_eq!(repo.get_user(Uuid::now_v7()).await.unwrap(), None);
        assert_eq!(
            repo.get_user_by_email("nobody@example.com").await.unwrap(),
            None
        );
    }

    pub async fn email_is_unique_even_under_races(repo: Repo) {
        let first = user("dup");
        repo.create_user(&first).await.unwrap();
        let mut second = user("dup2");
        second.email = first.email.clone();
        assert!(matches!(
            repo.create_user(&second).await,
            Err(StoreError::Conflict(_))
        ));
        // The loser's record must not have been written.
        assert_eq!(repo.get_user(second.id).await.unwrap(), None);

        let email = user("race").email;
        let attempts = (0..6).map(|_| {
            let repo = repo.clone();
            let mut candidate = user("race");
            candidate.email = email.clone();
            tokio::spawn(async move { repo.create_user(&candidate).await.is_ok() })
        });
        let winners = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(winners, 1, "exactly one concurrent registration wins");
    }

    pub async fn update_user_changes_name_and_roles_only(repo: Repo) {
        let mut ada = user("upd");
        repo.create_user(&ada).await.unwrap();
        ada.display_name = "Countess".to_owned();
        ada.set_role(Role::Admin, true);
        repo.update_user(&ada).await.unwrap();
        let stored = repo.get_user(ada.id).await.unwrap().unwrap();
        assert_eq!(stored.display_name, "Countess");
        assert_eq!(stored.roles, vec![Role::Admin, Role::User]);
        assert_eq!(stored.email, ada.email);

        let ghost = user("ghost");
        assert!(matches!(
            repo.update_user(&ghost).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn list_users_pages_cover_everything_once(repo: Repo) {
        let mut created = HashSet::new();
        for _ in 0..7 {
            let u = user("page");
            repo.create_user(&u).await.unwrap();
            created.insert(u.id);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo.list_users(after, 3).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items.iter().map(|u| u.id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let unique: HashSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "no user listed twice");
        assert!(created.is_subset(&unique), "every user listed");
    }

    pub async fn sessions_revoke_idempotently(repo: Repo) {
        let session = SessionRecord {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            created_at: now_millis(),
            revoked: false,
        };
        repo.create_session(&session).await.unwrap();
        assert_eq!(
            repo.get_session(session.id).await.unwrap(),
            Some(session.clone())
        );
        repo.revoke_session(session.id).await.unwrap();
        repo.revoke_session(session.id).await.unwrap();
        assert!(repo.get_session(session.id).await.unwrap().unwrap().revoked);
        repo.revoke_session(Uuid::now_v7()).await.unwrap();
        assert_eq!(repo.get_session(Uuid::now_v7()).await.unwrap(), None);
    }

    pub async fn accounts_disable_and_enable_idempotently(repo: Repo) {
        let user = user("disabled");
        repo.create_user(&user).await.unwrap();
        assert!(!repo.is_user_disabled(user.id).await.unwrap());
        repo.set_user_disabled(user.id, true).await.unwrap();
        repo.set_user_disabled(user.id, true).await.unwrap();
        assert!(repo.is_user_disabled(user.id).await.unwrap());
        repo.set_user_disabled(user.id, false).await.unwrap();
        repo.set_user_disabled(user.id, false).await.unwrap();
        assert!(!repo.is_user_disabled(user.id).await.unwrap());
        assert!(!repo.is_user_disabled(Uuid::now_v7()).await.unwrap());
    }

    pub async fn refresh_tokens_are_consumed_exactly_once(repo: Repo) {
        let token = RefreshTokenRecord {
            token_hash: format!("{:064x}", Uuid::now_v7().as_u128()),
            session_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            expires_at: now_millis() + 3_600_000,
            used: false,
        };
        repo.insert_refresh_token(&token).await.unwrap();
        assert_eq!(
            repo.get_refresh_token(&token.token_hash).await.unwrap(),
            Some(token.clone())
        );

        let attempts = (0..6).map(|_| {
            let repo = repo.clone();
            let hash = token.token_hash.clone();
            tokio::spawn(async move { repo.consume_refresh_token(&hash).await.unwrap() })
        });
        let winners = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(winners, 1, "exactly one concurrent consume wins");
        assert!(
            repo.get_refresh_token(&token.token_hash)
                .await
                .unwrap()
                .unwrap()
                .used
        );
        assert!(!repo.consume_refresh_token("unknown").await.unwrap());
        assert_eq!(repo.get_refresh_token("unknown").await.unwrap(), None);
    }

    pub async fn signing_keys_insert_once_and_retire(repo: Repo) {
        let key = |kid: &str| SigningKeyRecord {
            kid: format!("{kid}-{}", Uuid::now_v7().simple()),
            secret: vec![7; 32],
            created_at: now_millis(),
            retired_at: None,
        };
        let (old, new) = (key("old"), key("new"));
        repo.insert_signing_key(&old).await.unwrap();
        assert!(matches!(
            repo.insert_signing_key(&old).await,
            Err(StoreError::Conflict(_))
        ));
        repo.insert_signing_key(&new).await.unwrap();
        let at = now_millis();
        repo.retire_signing_keys_except(&new.kid, at).await.unwrap();
        let keys = repo.list_signing_keys().await.unwrap();
        let find = |kid: &str| keys.iter().find(|k| k.kid == kid).cloned().unwrap();
        assert_eq!(find(&old.kid).retired_at, Some(at));
        assert_eq!(find(&new.kid).retired_at, None);
        assert_eq!(find(&new.kid).secret, vec![7; 32]);
    }

    pub async fn communities_round_trip_and_page(repo: Repo) {
        let owner = Uuid::now_v7();
        let mut created = HashSet::new();
        for _ in 0..5 {
            let (c, m) = community(owner);
            repo.create_community(&c, &m).await.unwrap();
            assert_eq!(repo.get_community(c.id).await.unwrap(), Some(c.clone()));
            assert_eq!(repo.get_membership(c.id, owner).await.unwrap(), Some(m));
            created.insert(c.id);
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo.list_communities(after, 2).await.unwrap();
            seen.extend(page.items.iter().map(|c| c.id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let unique: HashSet<Uuid> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len());
        assert!(created.is_subset(&unique));
        assert_eq!(repo.get_community(Uuid::now_v7()).await.unwrap(), None);
    }

    pub async fn memberships_join_once_change_and_leave(repo: Repo) {
        let owner = Uuid::now_v7();
        let (c, m) = community(owner);
        repo.create_community(&c, &m).await.unwrap();

        let member = MembershipRecord {
            community_id: c.id,
            user_id: Uuid::now_v7(),
            role: MemberRole::Member,
            joined_at: now_millis(),
        };
        assert_eq!(repo.add_membership(&member).await.unwrap(), member);
        // Joining again keeps the first membership (role, join time).
        let again = MembershipRecord {
            role: MemberRole::Moderator,
            joined_at: member.joined_at + 5,
            ..member.clone()
        };
        assert_eq!(repo.add_membership(&again).await.unwrap(), member);

        let promoted = MembershipRecord {
            role: MemberRole::Moderator,
            ..member.clone()
        };
        repo.update_membership(&promoted).await.unwrap();
        assert_eq!(
            repo.get_membership(c.id, member.user_id).await.unwrap(),
            Some(promoted.clone())
        );
        let stranger = MembershipRecord {
            user_id: Uuid::now_v7(),
            ..member.clone()
        };
        assert!(matches!(
            repo.update_membership(&stranger).await,
            Err(StoreError::NotFound(_))
        ));

        let mut expected: HashSet<Uuid> = [owner, member.user_id].into();
        for _ in 0..4 {
            let extra = MembershipRecord {
                user_id: Uuid::now_v7(),
                ..member.clone()
            };
            repo.add_membership(&extra).await.unwrap();
            expected.insert(extra.user_id);
        }
        // Another community's members must not leak into this listing.
        let (other, other_owner) = community(Uuid::now_v7());
        repo.create_community(&other, &other_owner).await.unwrap();

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = repo.list_members(c.id, after, 4).await.unwrap();
            assert!(page.items.iter().all(|m| m.community_id == c.id));
            seen.extend(page.items.iter().map(|m| m.user_id));
            match page.next_after {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), expected.len());
        assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), expected);

        assert!(repo.remove_membership(c.id, member.user_id).await.unwrap());
        assert!(!repo.remove_membership(c.id, member.user_id).await.unwrap());
        assert_eq!(
            repo.get_membership(c.id, member.user_id).await.unwrap(),
            None
        );
    }

    pub async fn service_accounts_round_trip_and_list_oldest_first(repo: Repo) {
        let first = service_account("bot");
        repo.create_service_account(&first).await.unwrap();
        let mut second = service_account("relay");
        second.created_at = first.created_at + 1;
        second.secret_rotated_at = second.created_at;
        second.scopes = vec!["notify.publish".to_owned()];
        repo.create_service_account(&second).await.unwrap();

        assert_eq!(
            repo.get_service_account(first.id).await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            repo.get_service_account(second.id).await.unwrap(),
            Some(second.clone())
        );
        assert_eq!(
            repo.get_service_account(Uuid::now_v7()).await.unwrap(),
            None
        );

        let listed = repo.list_service_accounts().await.unwrap();
        let position = |id: Uuid| listed.iter().position(|a| a.id == id).unwrap();
        assert!(position(first.id) < position(second.id), "oldest first");
        assert_eq!(listed[position(first.id)], first);
        assert!(
            listed
                .windows(2)
                .all(|w| (w[0].created_at, w[0].id) <= (w[1].created_at, w[1].id))
        );
    }

    pub async fn service_account_names_are_unique_even_under_races(repo: Repo) {
        let first = service_account("dup");
        repo.create_service_account(&first).await.unwrap();
        // Another case of the same name is the same name.
        let mut second = service_account("dup2");
        second.name = first.name.to_uppercase();
        assert!(matches!(
            repo.create_service_account(&second).await,
            Err(StoreError::Conflict("service account name"))
        ));
        // The loser's record must not have been written.
        assert_eq!(repo.get_service_account(second.id).await.unwrap(), None);

        let name = service_account("race").name;
        let attempts = (0..6).map(|_| {
            let repo = repo.clone();
            let mut candidate = service_account("race");
            candidate.name = name.clone();
            tokio::spawn(async move {
                let outcome = repo.create_service_account(&candidate).await;
                let stored = repo.get_service_account(candidate.id).await.unwrap();
                match outcome {
                    Ok(()) => {
                        assert_eq!(stored, Some(candidate));
                        true
                    }
                    Err(StoreError::Conflict(_)) => {
                        assert_eq!(stored, None, "a loser's record was written");
                        false
                    }
                    Err(error) => panic!("{error}"),
                }
            })
        });
        let winners = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|won| *won.as_ref().unwrap())
            .count();
        assert_eq!(winners, 1, "exactly one concurrent creation wins");
    }

    pub async fn service_account_changes_touch_only_their_fields(repo: Repo) {
        let account = service_account("change");
        repo.create_service_account(&account).await.unwrap();

        let new_hash = format!("{:064x}", Uuid::now_v7().as_u128());
        let rotated_at = account.created_at + 1000;
        let rotated = repo
            .set_service_secret(account.id, &new_hash, rotated_at)
            .await
            .unwrap();
        let expected = ServiceAccountRecord {
            secret_hash: new_hash.clone(),
            secret_rotated_at: rotated_at,
            ..account.clone()
        };
        assert_eq!(rotated, expected);
        assert_eq!(
            repo.get_service_account(account.id).await.unwrap(),
            Some(expected.clone())
        );

        let disabled = repo
            .set_service_account_disabled(account.id, true)
            .await
            .unwrap();
        assert_eq!(
            disabled,
            ServiceAccountRecord {
                disabled: true,
                ..expected.clone()
            }
        );
        let enabled = repo
            .set_service_account_disabled(account.id, false)
            .await
            .unwrap();
        assert_eq!(enabled, expected);

        let ghost = Uuid::now_v7();
        assert!(matches!(
            repo.set_service_secret(ghost, &new_hash, rotated_at).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            repo.set_service_account_disabled(ghost, true).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(repo.get_service_account(ghost).await.unwrap(), None);

        // A rotation and a disable at once: neither undoes the other.
        let last_hash = format!("{:064x}", Uuid::now_v7().as_u128());
        let (rotation, disabling) = tokio::join!(
            repo.set_service_secret(account.id, &last_hash, rotated_at + 1),
            repo.set_service_account_disabled(account.id, true),
        );
        rotation.unwrap();
        disabling.unwrap();
        let stored = repo.get_service_account(account.id).await.unwrap().unwrap();
        assert_eq!(stored.secret_hash, last_hash);
        assert_eq!(stored.secret_rotated_at, rotated_at + 1);
        assert!(stored.disabled);
        assert_eq!(stored.name, account.name);
        assert_eq!(stored.scopes, account.scopes);
    }

    fn chat_id() -> i64 {
        // Distinct per case and run on a shared CQL keyspace; negative ones
        // (group chats) too.
        let n = (Uuid::now_v7().as_u128() & 0xffff_ffff_ffff) as i64;
        if n % 2 == 0 { -n - 1 } else { n }
    }

    pub async fn link_codes_are_taken_once_and_expire(repo: Repo) {
        let user = Uuid::now_v7();
        let now = now_millis();
        let code = LinkCodeRecord {
            code_hash: format!("{:064x}", Uuid::now_v7().as_u128()),
            user_id: user,
            expires_at: now + 60_000,
        };
        repo.insert_link_code(&code).await.unwrap();
        assert!(matches!(
            repo.insert_link_code(&code).await,
            Err(StoreError::Conflict("link code"))
        ));
        // Two redemptions racing: one gets it.
        let (a, b) = tokio::join!(
            repo.take_link_code(&code.code_hash, now),
            repo.take_link_code(&code.code_hash, now)
        );
        let winners: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert_eq!(winners, vec![code.clone()]);
        assert_eq!(
            repo.take_link_code(&code.code_hash, now).await.unwrap(),
            None
        );
        assert_eq!(
            repo.take_link_code("0000", now).await.unwrap(),
            None,
            "unknown"
        );

        // Expired (by the caller's clock): refused, and used up all the same.
        let late = LinkCodeRecord {
            code_hash: format!("{:064x}", Uuid::now_v7().as_u128()),
            user_id: user,
            expires_at: now + 60_000,
        };
        repo.insert_link_code(&late).await.unwrap();
        assert_eq!(
            repo.take_link_code(&late.code_hash, now + 60_000)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            repo.take_link_code(&late.code_hash, now).await.unwrap(),
            None
        );
    }

    pub async fn link_failures_count_within_their_window(repo: Repo) {
        let chat = chat_id();
        let now = now_millis();
        let window = 60_000;
        assert_eq!(repo.link_failures(chat, now, window).await.unwrap(), 0);
        for i in 0..3 {
            repo.record_link_failure(chat, now - 40_000 + i, window)
                .await
                .unwrap();
        }
        repo.record_link_failure(chat, now, window).await.unwrap();
        assert_eq!(repo.link_failures(chat, now, window).await.unwrap(), 4);
        // 30 s later the first three are out of the window.
        assert_eq!(
            repo.link_failures(chat, now + 30_000, window)
                .await
                .unwrap(),
            1
        );
        assert_eq!(repo.link_failures(chat_id(), now, window).await.unwrap(), 0);
    }

    pub async fn chat_links_bind_relink_list_and_unlink(repo: Repo) {
        let ada = Uuid::now_v7();
        let bob = Uuid::now_v7();
        let (one, two) = (chat_id(), chat_id());
        let now = now_millis();
        let link = |chat_id, user_id| ChatLinkRecord {
            chat_id,
            user_id,
            linked_at: now,
        };
        assert_eq!(repo.get_chat_link(one).await.unwrap(), None);
        repo.put_chat_link(&link(one, ada)).await.unwrap();
        repo.put_chat_link(&link(two, ada)).await.unwrap();
        assert_eq!(repo.get_chat_link(one).await.unwrap(), Some(link(one, ada)));
        let mut expected = vec![link(one, ada), link(two, ada)];
        expected.sort_by_key(|l| l.chat_id);
        assert_eq!(repo.list_chat_links(ada).await.unwrap(), expected);

        // Relinking a chat to someone else moves it.
        repo.put_chat_link(&link(two, bob)).await.unwrap();
        assert_eq!(
            repo.list_chat_links(ada).await.unwrap(),
            vec![link(one, ada)]
        );
        assert_eq!(
            repo.list_chat_links(bob).await.unwrap(),
            vec![link(two, bob)]
        );

        // A user unlinks only their own chats; the bot any.
        assert!(!repo.delete_chat_link(two, Some(ada)).await.unwrap());
        assert!(repo.delete_chat_link(one, Some(ada)).await.unwrap());
        assert!(!repo.delete_chat_link(one, Some(ada)).await.unwrap());
        assert!(repo.delete_chat_link(two, None).await.unwrap());
        assert!(!repo.delete_chat_link(two, None).await.unwrap());
        assert_eq!(repo.get_chat_link(one).await.unwrap(), None);
        assert!(repo.list_chat_links(ada).await.unwrap().is_empty());
        assert!(repo.list_chat_links(bob).await.unwrap().is_empty());
    }

    /// A data migration is not done until recorded; recording it again is
    /// no error; each name on its own.
    pub async fn migrations_are_recorded_by_name(repo: Repo) {
        // A name of this run's own (the keyspace is shared by the cases).
        let (name, other) = (
            format!("test_migration_{}", Uuid::now_v7().simple()),
            format!("test_migration_{}", Uuid::now_v7().simple()),
        );
        assert!(!repo.migration_done(&name).await.unwrap());
        repo.record_migration(&name, now_millis()).await.unwrap();
        repo.record_migration(&name, now_millis()).await.unwrap();
        assert!(repo.migration_done(&name).await.unwrap());
        assert!(!repo.migration_done(&other).await.unwrap());
    }
}

munity_testkit::contract_suite! {
    cases: cases,
    backends: { embedded_store => embedded(), cql_store => cql() },
    tests: [
        users_round_trip,
        email_is_unique_even_under_races,
        update_user_changes_name_and_roles_only,
        list_users_pages_cover_everything_once,
        sessions_revoke_idempotently,
        accounts_disable_and_enable_idempotently,
        refresh_tokens_are_consumed_exactly_once,
        signing_keys_insert_once_and_retire,
        communities_round_trip_and_page,
        memberships_join_once_change_and_leave,
        service_accounts_round_trip_and_list_oldest_first,
        service_account_names_are_unique_even_under_races,
        service_account_changes_touch_only_their_fields,
        link_codes_are_taken_once_and_expire,
        link_failures_count_within_their_window,
        chat_links_bind_relink_list_and_unlink,
        migrations_are_recorded_by_name,
    ],
}

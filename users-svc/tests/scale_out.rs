//! Scale-out mode for real: two `users-svc` processes, configured only
//! through `MUNITY_*` environment variables, sharing one keyspace on a real
//! CQL server (Cassandra 5.0 here, for ScyllaDB). An account made on one
//! replica logs in on the other; tokens signed by one verify on the other; a
//! refresh token used on one cannot be reused on the other; a key rotated on
//! one is honoured by the other without a restart; a service account made on
//! one gets tokens from the other, and a secret rotated on one is refused by
//! the other at once.

use std::{process::Command, time::Duration};

use munity_platform::auth::with_bearer;
use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tonic::{Code, transport::Channel};

struct Replica {
    _process: munity_testkit::Ready,
    client: UsersClient<Channel>,
}

async fn replica(nodes: &str, keyspace: &str) -> Replica {
    let mut command = Command::new(env!("CARGO_BIN_EXE_users-svc"));
    command
        .env("MUNITY_USERS__LISTEN", "127.0.0.1:0")
        .env("MUNITY_USERS__STORAGE__BACKEND", "cql")
        .env("MUNITY_USERS__STORAGE__NODES", format!("[{nodes}]"))
        .env("MUNITY_USERS__STORAGE__KEYSPACE", keyspace)
        .env("MUNITY_USERS__STORAGE__REQUEST_TIMEOUT_MS", "20000")
        .env("MUNITY_USERS__ADMIN_EMAILS", "[ops@example.com]")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    let ready = munity_testkit::spawn_ready(command, Duration::from_secs(60)).await;
    let channel = Channel::from_shared(format!("http://{}", ready.address("users")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Replica {
        _process: ready,
        client: UsersClient::new(channel),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_accounts_sessions_and_keys() {
    let Some(cql) = munity_testkit::cql_config("users_scale") else {
        return;
    };
    let nodes = cql.nodes.join(",");
    let keyspace = cql.keyspace;
    // Start one first so the keyspace and first key are made once.
    let mut a = replica(&nodes, &keyspace).await;
    let mut b = replica(&nodes, &keyspace).await;

    let registered = a
        .client
        .register(pb::RegisterRequest {
            email: "ops@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Ops".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let duplicate = b
        .client
        .register(pb::RegisterRequest {
            email: "OPS@example.com".to_owned(),
            password: "correct horse".to_owned(),
            display_name: "Ops again".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    // A's token verifies on B; B's login works with A's account.
    let me = b
        .client
        .get_me(with_bearer(pb::GetMeRequest {}, &registered.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, registered.user.as_ref().unwrap().id);
    let login = b
        .client
        .login(pb::LoginRequest {
            email: "ops@example.com".to_owned(),
            password: "correct horse".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();

    // Refresh on A, replay on B: theft is detected across replicas.
    let rotated = a
        .client
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let replay = b
        .client
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    let killed = a
        .client
        .refresh(pb::RefreshRequest {
            refresh_token: rotated.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(killed.code(), Code::Unauthenticated);

    // Rotate on A; B verifies A's new tokens (unknown kid → reload), and
    // signs with the new key after its periodic reload or a fetch.
    let rotated_kid = a
        .client
        .rotate_signing_key(with_bearer(
            pb::RotateSigningKeyRequest {},
            &registered.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .active_kid;
    let fresh = a
        .client
        .login(pb::LoginRequest {
            email: "ops@example.com".to_owned(),
            password: "correct horse".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        jsonwebtoken::decode_header(&fresh.access_token)
            .unwrap()
            .kid
            .as_deref(),
        Some(rotated_kid.as_str())
    );
    b.client
        .get_me(with_bearer(pb::GetMeRequest {}, &fresh.access_token))
        .await
        .unwrap();
    // The old token (old key, now retired but still published) still works.
    b.client
        .get_me(with_bearer(pb::GetMeRequest {}, &registered.access_token))
        .await
        .unwrap();
    let jwks = b
        .client
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    assert!(jwks.contains(&rotated_kid), "{jwks}");

    // Service accounts: made on A, a token from B; the name is taken on B
    // too; a secret rotated on B is refused on A at once.
    let created = a
        .client
        .create_service_account(with_bearer(
            pb::CreateServiceAccountRequest {
                name: "relay".to_owned(),
                scopes: vec!["notify.publish".to_owned()],
            },
            &registered.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = created.account.unwrap().id;
    let issue = |secret: &str| pb::IssueServiceTokenRequest {
        client_id: id.clone(),
        client_secret: secret.to_owned(),
    };
    let service = b
        .client
        .issue_service_token(issue(&created.client_secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(service.scopes, ["notify.publish"]);
    let taken = b
        .client
        .create_service_account(with_bearer(
            pb::CreateServiceAccountRequest {
                name: "Relay".to_owned(),
                scopes: vec!["x".to_owned()],
            },
            &registered.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let rotated = b
        .client
        .rotate_service_secret(with_bearer(
            pb::RotateServiceSecretRequest { id: id.clone() },
            &registered.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let old = a
        .client
        .issue_service_token(issue(&created.client_secret))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated);
    a.client
        .issue_service_token(issue(&rotated.client_secret))
        .await
        .unwrap();
    // B's service token is no user on A either.
    let me = a
        .client
        .get_me(with_bearer(pb::GetMeRequest {}, &service.access_token))
        .await
        .unwrap_err();
    assert_eq!(me.code(), Code::PermissionDenied);
}

//! users-svc over real gRPC: the service runs in-process on port 0 with its
//! embedded store in a temporary directory, and a tonic client calls it as
//! any other client would.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use munity_platform::service::ServiceConfig;
use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::StorageConfig,
    shutdown::ShutdownToken,
};
use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;
use users_svc::{UsersConfig, config::PasswordsConfig, passwords::Hashing};

const ADMIN_EMAIL: &str = "root@example.com";

struct TestApp {
    address: SocketAddr,
    client: UsersClient<Channel>,
    shutdown: ShutdownToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The service's password-hashing bound, to watch.
    hashing: Hashing,
    /// Where the service's domain events go (`[bus]`).
    bus: munity_platform::config::BusConfig,
    _data: tempfile::TempDir,
}

impl TestApp {
    async fn spawn() -> Self {
        Self::spawn_with(|_, _| {}).await
    }

    async fn spawn_with(
        adjust: impl FnOnce(&mut ServiceConfig<UsersConfig>, &mut AuthConfig),
    ) -> Self {
        let data = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = ServiceConfig {
            listen: listener.local_addr().unwrap(),
            shutdown_grace_secs: 5,
            storage: StorageConfig::Embedded {
                path: data.path().to_path_buf(),
            },
            bus: munity_platform::config::BusConfig {
                path: data.path().join("bus"),
                ..Default::default()
            },
            own: UsersConfig {
                admin_emails: vec![ADMIN_EMAIL.to_owned()],
                ..UsersConfig::default()
            },
        };
        let mut auth = AuthConfig::default();
        adjust(&mut config, &mut auth);
        let address = config.listen;
        let bus = config.bus.clone();
        let shutdown = ShutdownToken::new();
        let hashing = Hashing::new(&config.own.passwords).unwrap();
        let server = tokio::spawn(users_svc::run_with_hashing(
            config,
            auth,
            listener,
            shutdown.clone(),
            hashing.clone(),
        ));
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestApp {
            address,
            client: UsersClient::new(channel),
            shutdown,
            server,
            hashing,
            bus,
            _data: data,
        }
    }

    async fn register(&self, email: &str, password: &str) -> Result<pb::AuthResponse, Status> {
        self.client
            .clone()
            .register(pb::RegisterRequest {
                email: email.to_owned(),
                password: password.to_owned(),
                display_name: "Ada Lovelace".to_owned(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

fn unique_email(name: &str) -> String {
    format!("{name}-{}@example.com", uuid::Uuid::now_v7().simple())
}

fn fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn register_login_me_refresh_logout() {
    let app = TestApp::spawn().await;
    let email = unique_email("ada");
    let registered = app
        .register(&email.to_uppercase(), "correct horse")
        .await
        .unwrap();
    let user = registered.user.unwrap();
    assert_eq!(user.email, email, "emails are stored lower-cased");
    assert_eq!(user.roles, vec![pb::Role::User as i32]);

    let mut client = app.client.clone();
    let login = client
        .login(pb::LoginRequest {
            email: email.clone(),
            password: "correct horse".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let me = client
        .get_me(with_bearer(pb::GetMeRequest {}, &login.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user.id);

    let refreshed = client
        .refresh(pb::RefreshRequest {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(refreshed.refresh_token, login.refresh_token);
    client
        .get_me(with_bearer(pb::GetMeRequest {}, &refreshed.access_token))
        .await
        .unwrap();

    client
        .logout(pb::LogoutRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap();
    let after_logout = client
        .refresh(pb::RefreshRequest {
            refresh_token: refreshed.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(after_logout.code(), Code::Unauthenticated);

    // The registration's own session is separate and still alive.
    client
        .refresh(pb::RefreshRequest {
            refresh_token: registered.refresh_token,
        })
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn reused_refresh_token_revokes_the_whole_session() {
    let app = TestApp::spawn().await;
    let first = app
        .register(&unique_email("victim"), "correct horse")
        .await
        .unwrap();
    let mut client = app.client.clone();
    let second = client
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // An attacker replays the first (already used) token...
    let reuse = client
        .refresh(pb::RefreshRequest {
            refresh_token: first.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), Code::Unauthenticated);
    assert!(
        reuse.message().contains("already used"),
        "{}",
        reuse.message()
    );

    // ...and the legitimate newer token dies with the session.
    let legit = client
        .refresh(pb::RefreshRequest {
            refresh_token: second.refresh_token,
        })
        .await
        .unwrap_err();
    assert_eq!(legit.code(), Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_with_field_details() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let status = client
        .register(pb::RegisterRequest {
            email: "not-an-email".to_owned(),
            password: "short".to_owned(),
            display_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["email", "password", "display_name"]);

    let long_password = app
        .register(&unique_email("long"), &"x".repeat(129))
        .await
        .unwrap_err();
    assert_eq!(long_password.code(), Code::InvalidArgument);
    assert_eq!(fields(&long_password), ["password"]);

    let exactly_limits = app
        .register(&unique_email("limits"), &"x".repeat(128))
        .await;
    assert!(exactly_limits.is_ok(), "128 characters is allowed");
    app.register(&unique_email("eight"), "12345678")
        .await
        .unwrap();

    let name = client
        .register(pb::RegisterRequest {
            email: unique_email("name"),
            password: "correct horse".to_owned(),
            display_name: "n".repeat(65),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&name), ["display_name"]);

    // Far past the size limit: refused by the transport, not a crash.
    let huge = client
        .register(pb::RegisterRequest {
            email: unique_email("huge"),
            password: "correct horse".to_owned(),
            display_name: "n".repeat(200_000),
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");

    let email = unique_email("dup");
    app.register(&email, "correct horse").await.unwrap();
    let duplicate = app.register(&email, "another horse").await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    for (email, password) in [
        (email.as_str(), "wrong horse"),
        ("nobody@example.com", "whatever1"),
    ] {
        let status = client
            .login(pb::LoginRequest {
                email: email.to_owned(),
                password: password.to_owned(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "wrong email or password");
    }

    let empty_refresh = client
        .refresh(pb::RefreshRequest::default())
        .await
        .unwrap_err();
    assert_eq!(fields(&empty_refresh), ["refresh_token"]);
    let bogus_refresh = client
        .refresh(pb::RefreshRequest {
            refresh_token: "mrt_bogus".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(bogus_refresh.code(), Code::Unauthenticated);

    let token = app
        .register(&unique_email("q"), "correct horse")
        .await
        .unwrap()
        .access_token;
    let bad_id = client
        .get_user(with_bearer(
            pb::GetUserRequest {
                user_id: "42".to_owned(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad_id), ["user_id"]);
    let unknown = client
        .get_user(with_bearer(
            pb::GetUserRequest {
                user_id: uuid::Uuid::now_v7().to_string(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_page = client
        .list_communities(with_bearer(
            pb::ListCommunitiesRequest {
                page_size: 5,
                page_token: "garbage".to_owned(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&bad_page), ["page_token"]);
    app.stop().await;
}

fn forge(header: serde_json::Value, claims: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[tokio::test]
async fn forged_and_missing_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let session = app
        .register(&unique_email("mallory"), "correct horse")
        .await
        .unwrap();
    let parts: Vec<&str> = session.access_token.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();

    let jwks: serde_json::Value = serde_json::from_str(
        &client
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .jwks_json,
    )
    .unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();

    claims["roles"] = serde_json::json!(["user", "admin"]);
    let alg_none = forge(
        serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid}),
        &claims,
        b"",
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
        )
        .unwrap()
    };
    let unknown_kid = {
        let mut other = header.clone();
        other["kid"] = serde_json::json!("no-such-key");
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(other.to_string()),
            parts[1],
            parts[2]
        )
    };

    for (name, token) in [
        ("alg none", alg_none.as_str()),
        ("tampered payload", tampered.as_str()),
        ("HS256 with the public key", hs256.as_str()),
        ("unknown kid", unknown_kid.as_str()),
        ("garbage", "not.a.jwt"),
    ] {
        let status = client
            .get_me(with_bearer(pb::GetMeRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }
    let missing = client.get_me(pb::GetMeRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("missing bearer"),
        "{}",
        missing.message()
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    let app = TestApp::spawn_with(|users, auth| {
        users.own.tokens.access_ttl_secs = 1;
        auth.leeway_secs = 0;
    })
    .await;
    let session = app
        .register(&unique_email("late"), "correct horse")
        .await
        .unwrap();
    let mut client = app.client.clone();
    client
        .get_me(with_bearer(pb::GetMeRequest {}, &session.access_token))
        .await
        .unwrap();
    // That call left the token in the verified-token cache, which must
    // still honour its expiry. exp is in whole seconds, so wait past the
    // next second boundary.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = client
        .get_me(with_bearer(pb::GetMeRequest {}, &session.access_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    app.stop().await;
}

#[tokio::test]
async fn admins_list_users_set_roles_and_rotate_keys() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let admin = app.register(ADMIN_EMAIL, "correct horse").await.unwrap();
    assert!(
        admin
            .user
            .as_ref()
            .unwrap()
            .roles
            .contains(&(pb::Role::Admin as i32))
    );
    let plain = app
        .register(&unique_email("plain"), "correct horse")
        .await
        .unwrap();

    let denied = client
        .list_users(with_bearer(
            pb::ListUsersRequest::default(),
            &plain.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    for i in 0..5 {
        app.register(&unique_email(&format!("u{i}")), "correct horse")
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_users(with_bearer(
                pb::ListUsersRequest {
                    page_size: 3,
                    page_token: page_token.clone(),
                },
                &admin.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.into_iter().map(|u| u.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 7);

    let plain_id = plain.user.unwrap().id;
    let promoted = client
        .set_role(with_bearer(
            pb::SetRoleRequest {
                user_id: plain_id.clone(),
                role: pb::Role::Admin as i32,
                granted: true,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.roles.contains(&(pb::Role::Admin as i32)));
    // Tokens carry roles, so those issued before the change are revoked
    // (within the follower's read of the event log); a refreshed one says
    // admin, and admin checks read storage anyway.
    let started = std::time::Instant::now();
    loop {
        let code = client
            .get_me(with_bearer(pb::GetMeRequest {}, &plain.access_token))
            .await
            .err()
            .map(|status| status.code());
        if code == Some(Code::Unauthenticated) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a token from before the role change still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refreshed = client
        .refresh(pb::RefreshRequest {
            refresh_token: plain.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .list_users(with_bearer(
            pb::ListUsersRequest::default(),
            &refreshed.access_token,
        ))
        .await
        .unwrap();
    let self_demote = client
        .set_role(with_bearer(
            pb::SetRoleRequest {
                user_id: admin.user.as_ref().unwrap().id.clone(),
                role: pb::Role::Admin as i32,
                granted: false,
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(self_demote.code(), Code::FailedPrecondition);

    // Rotation: old tokens keep working, new ones carry the new kid, and the
    // JWKS publishes both keys.
    let rotated = client
        .rotate_signing_key(with_bearer(
            pb::RotateSigningKeyRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    client
        .get_me(with_bearer(pb::GetMeRequest {}, &admin.access_token))
        .await
        .unwrap();
    let fresh = client
        .login(pb::LoginRequest {
            email: ADMIN_EMAIL.to_owned(),
            password: "correct horse".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let header = jsonwebtoken::decode_header(&fresh.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(rotated.active_kid.as_str()));
    client
        .get_me(with_bearer(pb::GetMeRequest {}, &fresh.access_token))
        .await
        .unwrap();

    let jwks = http_get(app.address, "/.well-known/jwks.json").await;
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&rotated.active_kid.as_str()));
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kty"] == "OKP" && k["alg"] == "EdDSA")
    );
    app.stop().await;
}

/// A bare HTTP/1.1 GET, returning the body.
async fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test]
async fn communities_owners_moderators_and_members() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let owner = app
        .register(&unique_email("owner"), "correct horse")
        .await
        .unwrap();
    let moderator = app
        .register(&unique_email("mod"), "correct horse")
        .await
        .unwrap();
    let member = app
        .register(&unique_email("member"), "correct horse")
        .await
        .unwrap();
    let id_of = |s: &pb::AuthResponse| s.user.as_ref().unwrap().id.clone();

    let community = client
        .create_community(with_bearer(
            pb::CreateCommunityRequest {
                name: "  Rust Meetup  ".to_owned(),
                description: "Tuesdays".to_owned(),
            },
            &owner.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(community.name, "Rust Meetup");
    assert_eq!(community.owner_id, id_of(&owner));

    for session in [&moderator, &member, &member] {
        let joined = client
            .join_community(with_bearer(
                pb::JoinCommunityRequest {
                    community_id: community.id.clone(),
                },
                &session.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(joined.role, pb::MemberRole::Member as i32);
    }

    // Only the owner appoints moderators.
    let set_mod = |token: String, user_id: String| {
        let mut client = client.clone();
        let community_id = community.id.clone();
        async move {
            client
                .set_member_role(with_bearer(
                    pb::SetMemberRoleRequest {
                        community_id,
                        user_id,
                        role: pb::MemberRole::Moderator as i32,
                    },
                    &token,
                ))
                .await
        }
    };
    let denied = set_mod(member.access_token.clone(), id_of(&member))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    set_mod(owner.access_token.clone(), id_of(&moderator))
        .await
        .unwrap();

    let remove = |token: String, user_id: String| {
        let mut client = client.clone();
        let community_id = community.id.clone();
        async move {
            client
                .remove_member(with_bearer(
                    pb::RemoveMemberRequest {
                        community_id,
                        user_id,
                    },
                    &token,
                ))
                .await
        }
    };
    let cannot_remove_owner = remove(moderator.access_token.clone(), id_of(&owner))
        .await
        .unwrap_err();
    assert_eq!(cannot_remove_owner.code(), Code::PermissionDenied);
    let member_cannot_remove = remove(member.access_token.clone(), id_of(&moderator))
        .await
        .unwrap_err();
    assert_eq!(member_cannot_remove.code(), Code::PermissionDenied);
    remove(moderator.access_token.clone(), id_of(&member))
        .await
        .unwrap();
    let gone = remove(moderator.access_token.clone(), id_of(&member))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    let members = client
        .list_members(with_bearer(
            pb::ListMembersRequest {
                community_id: community.id.clone(),
                page_size: 0,
                page_token: String::new(),
            },
            &member.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut roles: Vec<i32> = members.members.iter().map(|m| m.role).collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            pb::MemberRole::Moderator as i32,
            pb::MemberRole::Owner as i32
        ]
    );

    let owner_leaves = client
        .leave_community(with_bearer(
            pb::LeaveCommunityRequest {
                community_id: community.id.clone(),
            },
            &owner.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(owner_leaves.code(), Code::FailedPrecondition);
    client
        .leave_community(with_bearer(
            pb::LeaveCommunityRequest {
                community_id: community.id.clone(),
            },
            &moderator.access_token,
        ))
        .await
        .unwrap();

    let unknown = client
        .get_community(with_bearer(
            pb::GetCommunityRequest {
                community_id: uuid::Uuid::now_v7().to_string(),
            },
            &member.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let too_long = client
        .create_community(with_bearer(
            pb::CreateCommunityRequest {
                name: "x".repeat(101),
                description: "d".repeat(2001),
            },
            &owner.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(fields(&too_long), ["name", "description"]);
    app.stop().await;
}

/// A server stream (a health Watch never ends by itself) must not keep the
/// service from stopping, nor be cut without a word: its watchers hear
/// NOT_SERVING, then, halfway through the grace period, the stream ends
/// with UNAVAILABLE (reconnect elsewhere), and the server returns.
#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = TestApp::spawn_with(|users, _| users.shutdown_grace_secs = 2).await;
    let mut watch = HealthClient::new(client_channel(app.address).await)
        .watch(HealthCheckRequest {
            service: "munity.users.v1.Users".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1); // SERVING

    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server still ran 10 s after shutdown began");
    let not_serving = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("watchers hear NOT_SERVING")
        .unwrap()
        .unwrap();
    assert_eq!(not_serving.status, 2);
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the stream ended with a status, not left open")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("shutting down"), "{end:?}");
}

/// Operators see every service, not only the edge: the service's own port
/// answers `GET /metrics` with its calls by method and status code, how long
/// they took, and the streams open now.
#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = TestApp::spawn().await;
    let email = unique_email("metrics");
    app.register(&email, "correct horse").await.unwrap();
    app.register(&email, "correct horse").await.unwrap_err(); // ALREADY_EXISTS
    let mut client = app.client.clone();
    client.get_me(pb::GetMeRequest {}).await.unwrap_err(); // UNAUTHENTICATED
    let mut watch = HealthClient::new(client_channel(app.address).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();

    http_get(app.address, "/.well-known/jwks.json").await;
    http_get(app.address, "/metrics").await;
    let text = http_get(app.address, "/metrics").await;
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let requests = "munity_grpc_server_requests_total";
    let users = r#"service="munity.users.v1.Users""#;
    assert!(
        line(&format!(
            r#"{requests}{{code="0",method="Register",{users}}}"#
        )) >= 1.0
    );
    assert!(
        line(&format!(
            r#"{requests}{{code="6",method="Register",{users}}}"#
        )) >= 1.0
    );
    assert!(
        line(&format!(
            r#"{requests}{{code="16",method="GetMe",{users}}}"#
        )) >= 1.0
    );
    assert!(
        line(&format!(
            r#"munity_grpc_server_request_duration_seconds_count{{method="Register",{users}}}"#
        )) >= 2.0
    );
    assert_eq!(
        line(
            r#"munity_grpc_server_calls_in_flight{kind="server_streaming",service="grpc.health.v1.Health"}"#
        ),
        1.0,
        "the open Watch"
    );
    assert!(
        !text.contains("jwks.json") && !text.contains(r#"method="metrics""#),
        "plain HTTP routes are not gRPC calls:\n{text}"
    );
    drop(watch);
    app.stop().await;
}

/// A login storm beyond the hashing bound (one hash at a time, one call
/// waiting): the calls that find no slot and no place in the queue, or wait
/// too long, are refused with RESOURCE_EXHAUSTED without hashing; none
/// hangs; and the account is intact afterwards.
#[tokio::test]
async fn a_login_storm_beyond_the_hashing_bound_is_refused_not_queued() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let app = TestApp::spawn_with(|users, _| {
            users.own.passwords = PasswordsConfig {
                max_concurrent_hashes: NonZeroUsize::new(1),
                max_queued_hashes: Some(1),
                queue_timeout_ms: 300,
            };
        })
        .await;
        let email = unique_email("storm");
        let registered = app.register(&email, "correct horse").await.unwrap();
        let hashes_before = app.hashing.stats().hashes;

        let logins = (0..20).map(|_| login(&app, &email, "correct horse"));
        let (mut succeeded, mut refused) = (0, 0);
        for result in futures::future::join_all(logins).await {
            match result {
                Ok(_) => succeeded += 1,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert_eq!(
                        status.message(),
                        "too many password checks in progress; retry shortly"
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            succeeded >= 1 && refused >= 1,
            "{succeeded} succeeded, {refused} refused"
        );
        let stats = app.hashing.stats();
        assert_eq!(
            stats.hashes - hashes_before,
            succeeded,
            "a refused call hashes nothing"
        );
        assert_eq!(stats.refused, refused);
        assert_eq!((stats.max_running, stats.threads), (1, 1));
        assert_eq!((stats.running, stats.queued), (0, 0));

        // The storm left the account as it was.
        let after = login(&app, &email, "correct horse").await.unwrap();
        let me = app
            .client
            .clone()
            .get_me(with_bearer(pb::GetMeRequest {}, &after.access_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(Some(me), registered.user);
        app.stop().await;
    })
    .await
    .expect("a Login hung");
}

/// However many Logins come at once (right and wrong passwords, unknown
/// emails and their dummy hash), and also after callers gave up mid-hash
/// (the hash runs on, and keeps its slot), no more hashes run at once than
/// `max_concurrent_hashes`. Without the bound the 50 calls all hash at once
/// on tokio's blocking pool.
#[tokio::test]
async fn no_more_hashes_run_at_once_than_the_bound() {
    const LIMIT: usize = 2;
    tokio::time::timeout(Duration::from_secs(120), async {
        let app = TestApp::spawn_with(|users, _| {
            users.own.passwords = PasswordsConfig {
                max_concurrent_hashes: NonZeroUsize::new(LIMIT),
                max_queued_hashes: Some(100),
                queue_timeout_ms: 1500,
            };
        })
        .await;
        let email = unique_email("bound");
        app.register(&email, "correct horse").await.unwrap();
        let hashes_before = app.hashing.stats().hashes;

        // Callers who give up mid-hash: their hashes run on, and must keep
        // their slots until they end.
        let quitters: Vec<_> = (0..2 * LIMIT)
            .map(|_| tokio::spawn(login(&app, &email, "correct horse")))
            .collect();
        while app.hashing.stats().running < LIMIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for quitter in &quitters {
            quitter.abort();
        }

        let calls = (0..50).map(|i| match i % 3 {
            0 => login(&app, &email, "correct horse"),
            1 => login(&app, &email, "wrong horse"),
            _ => login(&app, "nobody@example.com", "correct horse"),
        });
        for result in futures::future::join_all(calls).await {
            if let Err(status) = result {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unauthenticated | Code::ResourceExhausted
                    ),
                    "{status:?}"
                );
            }
        }
        // Hashes whose callers left still run to their end.
        while app.hashing.stats().running > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = app.hashing.stats();
        assert!(stats.hashes > hashes_before, "{stats:?}");
        assert!(
            stats.max_running <= LIMIT,
            "{} hashes ran at once, over the bound of {LIMIT}",
            stats.max_running
        );
        assert_eq!(stats.max_running, LIMIT, "50 calls at once fill every slot");
        assert!(stats.threads <= LIMIT, "{stats:?}");
        assert_eq!(stats.queued, 0);
        app.stop().await;
    })
    .await
    .expect("a Login hung");
}

fn login(
    app: &TestApp,
    email: &str,
    password: &str,
) -> impl std::future::Future<Output = Result<pb::AuthResponse, Status>> + use<> {
    let mut client = app.client.clone();
    let request = pb::LoginRequest {
        email: email.to_owned(),
        password: password.to_owned(),
    };
    async move { client.login(request).await.map(|r| r.into_inner()) }
}

async fn client_channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A typo in a service's section is refused at start-up by its full key,
/// whether it is one of the shared keys' neighbours or the service's own.
#[test]
fn unknown_keys_in_the_section_are_refused_by_name() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_users-svc"))
        .env("MUNITY_USERS__LISTN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("users.listn: unknown key"), "{stderr}");
}

/// `[users.passwords]` from the environment: a bound that would refuse every
/// password (no slot at all) is refused with the config's other errors, by
/// its key, and so is a typo in the subsection.
#[test]
fn bad_password_hashing_bounds_are_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    for (key, value, expected) in [
        (
            "MUNITY_USERS__PASSWORDS__MAX_CONCURRENT_HASHES",
            "0",
            "users.passwords.max_concurrent_hashes: invalid value",
        ),
        (
            "MUNITY_USERS__PASSWORDS__MAX_CONCURRENT",
            "4",
            "users.passwords.max_concurrent: unknown field",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_users-svc"))
            .env("MUNITY_USERS__LISTEN", "127.0.0.1:0")
            .env("MUNITY_USERS__STORAGE__BACKEND", "embedded")
            .env("MUNITY_USERS__STORAGE__PATH", data.path())
            .env(key, value)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{key}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{key}={value}: {stderr}");
    }
}

/// Community changes made over gRPC reach other services: a consumer group
/// on the event log receives CommunityCreated and each MemberJoined, once,
/// in order (relayed from users-svc's outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn community_changes_are_published_on_the_event_log() {
    use prost::Message;
    let app = TestApp::spawn().await;
    let owner = app
        .register(&unique_email("owner"), "correct horse")
        .await
        .unwrap();
    let member = app
        .register(&unique_email("member"), "correct horse")
        .await
        .unwrap();
    let mut client = app.client.clone();
    let community = client
        .create_community(with_bearer(
            pb::CreateCommunityRequest {
                name: "Go club".to_owned(),
                description: String::new(),
            },
            &owner.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        client
            .join_community(with_bearer(
                pb::JoinCommunityRequest {
                    community_id: community.id.clone(),
                },
                &member.access_token,
            ))
            .await
            .unwrap();
    }

    let log = munity_bus::open(&app.bus).await.unwrap();
    let mut consumer = log.join("test", "c").await.unwrap();
    let mut received = Vec::new();
    let started = std::time::Instant::now();
    while received.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        // Registering publishes each account's ProfileChanged (the names
        // mentions resolve); this test is about the community's events.
        received.extend(
            consumer
                .next(10, Duration::from_millis(500))
                .await
                .unwrap()
                .into_iter()
                .filter(|d| d.event.r#type != "munity.users.v1.ProfileChanged"),
        );
    }
    println!(
        "3 events on the log {:?} after the reader started",
        started.elapsed()
    );
    let types: Vec<&str> = received.iter().map(|d| d.event.r#type.as_str()).collect();
    assert_eq!(
        types,
        [
            "munity.users.v1.CommunityCreated",
            "munity.users.v1.MemberJoined",
            "munity.users.v1.MemberJoined"
        ]
    );
    let joined = pb::MemberJoined::decode(received[2].event.payload.as_slice()).unwrap();
    assert_eq!(joined.user_id, member.user.unwrap().id);
    assert_eq!(joined.community_id, community.id);
    assert!(
        consumer
            .next(10, Duration::from_millis(700))
            .await
            .unwrap()
            .is_empty(),
        "joining twice publishes once"
    );
    app.stop().await;
}

/// An admin's session and a service account made by it, with its secret.
async fn admin_and_service_account(
    app: &TestApp,
    name: &str,
    scopes: &[&str],
) -> (pb::AuthResponse, pb::ServiceAccountSecret) {
    let admin = app.register(ADMIN_EMAIL, "correct horse").await.unwrap();
    let created = app
        .client
        .clone()
        .create_service_account(with_bearer(
            pb::CreateServiceAccountRequest {
                name: name.to_owned(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    (admin, created)
}

async fn issue(app: &TestApp, client_id: &str, secret: &str) -> Result<pb::ServiceToken, Status> {
    app.client
        .clone()
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: client_id.to_owned(),
            client_secret: secret.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}

/// What any service holding users-svc's JWKS URL makes of a token.
async fn verify_remotely(
    app: &TestApp,
    token: &str,
) -> Result<std::sync::Arc<munity_platform::auth::Claims>, munity_platform::auth::AuthError> {
    let verifier = munity_platform::auth::TokenVerifier::remote(&AuthConfig {
        jwks_url: format!("http://{}", app.address),
        ..AuthConfig::default()
    })
    .unwrap();
    verifier.verify(token).await
}

#[tokio::test]
async fn service_accounts_get_tokens_that_verify_with_the_jwks() {
    let app = TestApp::spawn().await;
    let (admin, created) = admin_and_service_account(
        &app,
        "telegram-bot",
        &["notify.publish", "events:read", "notify.publish"],
    )
    .await;
    let account = created.account.unwrap();
    assert!(created.client_secret.starts_with("mss_"));
    // 32 random bytes, base64url without padding.
    assert_eq!(created.client_secret.len(), 4 + 43);
    assert!(uuid::Uuid::parse_str(&account.id).is_ok());
    assert_eq!(account.name, "telegram-bot");
    assert_eq!(account.scopes, ["events:read", "notify.publish"]);
    assert!(!account.disabled);
    assert_eq!(account.created_at, account.secret_rotated_at);

    let listed = app
        .client
        .clone()
        .list_service_accounts(with_bearer(
            pb::ListServiceAccountsRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts, std::slice::from_ref(&account));

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = issue(&app, &account.id, &created.client_secret)
        .await
        .unwrap();
    assert_eq!(token.scopes, ["events:read", "notify.publish"]);
    let claims = verify_remotely(&app, &token.access_token).await.unwrap();
    assert_eq!(claims.sub.to_string(), account.id);
    assert_eq!(claims.roles, ["service"]);
    assert_eq!(claims.scope, "events:read notify.publish");
    assert!(claims.has_scope("notify.publish") && claims.has_scope("events:read"));
    assert!(!claims.has_scope("notify"));
    assert_eq!(claims.sid, format!("service:{}", account.id));
    // users.service_token_ttl_secs: 600 by default.
    assert_eq!(claims.exp - claims.iat, 600);
    assert!((before..=before + 2).contains(&claims.iat));
    assert_eq!(token.expires_at.unwrap().seconds, claims.exp);
    app.stop().await;
}

#[tokio::test]
async fn service_token_ttl_comes_from_the_config() {
    let app = TestApp::spawn_with(|config, _| config.own.service_token_ttl_secs = 90).await;
    let (_, created) = admin_and_service_account(&app, "short-lived", &["a"]).await;
    let token = issue(&app, &created.account.unwrap().id, &created.client_secret)
        .await
        .unwrap();
    let claims = verify_remotely(&app, &token.access_token).await.unwrap();
    assert_eq!(claims.exp - claims.iat, 90);
    app.stop().await;
}

#[tokio::test]
async fn every_refused_service_token_looks_the_same() {
    let app = TestApp::spawn().await;
    let (admin, created) = admin_and_service_account(&app, "relay", &["notify.publish"]).await;
    let account = created.account.unwrap();
    let secret = created.client_secret;
    let mut client = app.client.clone();

    let mut wrong_secret = secret.clone();
    wrong_secret.pop();
    wrong_secret.push(if secret.ends_with('A') { 'B' } else { 'A' });
    let unknown_id = uuid::Uuid::now_v7().to_string();
    let refused = |status: Status, case: &str| {
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(
            status.message(),
            "unknown client or wrong secret",
            "{case}: every failure gives the same message"
        );
    };
    for (case, id, presented) in [
        ("wrong secret", account.id.as_str(), wrong_secret.as_str()),
        ("empty secret", account.id.as_str(), ""),
        ("huge secret", account.id.as_str(), &"x".repeat(10_000)),
        ("malformed id", "not-a-uuid", secret.as_str()),
        ("empty id", "", secret.as_str()),
        ("unknown id", unknown_id.as_str(), secret.as_str()),
    ] {
        refused(issue(&app, id, presented).await.unwrap_err(), case);
    }

    // Disabled: refused alike; enabled again: works.
    let disabled = client
        .set_service_account_disabled(with_bearer(
            pb::SetServiceAccountDisabledRequest {
                id: account.id.clone(),
                disabled: true,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.disabled);
    refused(
        issue(&app, &account.id, &secret).await.unwrap_err(),
        "disabled",
    );
    let enabled = client
        .set_service_account_disabled(with_bearer(
            pb::SetServiceAccountDisabledRequest {
                id: account.id.clone(),
                disabled: false,
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!enabled.disabled);
    let before_rotation = issue(&app, &account.id, &secret).await.unwrap();

    // Rotation: the old secret stops at once, the new one works; a token
    // already issued lives out its lifetime.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rotated = client
        .rotate_service_secret(with_bearer(
            pb::RotateServiceSecretRequest {
                id: account.id.clone(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.client_secret, secret);
    assert!(rotated.client_secret.starts_with("mss_"));
    let rotated_account = rotated.account.unwrap();
    assert_eq!(rotated_account.created_at, account.created_at);
    assert!(
        prost_time(&rotated_account.secret_rotated_at) > prost_time(&account.secret_rotated_at)
    );
    refused(
        issue(&app, &account.id, &secret).await.unwrap_err(),
        "old secret after rotation",
    );
    issue(&app, &account.id, &rotated.client_secret)
        .await
        .unwrap();
    verify_remotely(&app, &before_rotation.access_token)
        .await
        .unwrap();
    app.stop().await;
}

fn prost_time(timestamp: &Option<prost_types::Timestamp>) -> (i64, i32) {
    let t = timestamp.as_ref().unwrap();
    (t.seconds, t.nanos)
}

#[tokio::test]
async fn service_accounts_are_for_admins_and_service_tokens_are_not_users() {
    let app = TestApp::spawn().await;
    let (admin, created) = admin_and_service_account(&app, "robot", &["notify.publish"]).await;
    let account = created.account.unwrap();
    let plain = app
        .register(&unique_email("plain"), "correct horse")
        .await
        .unwrap();
    let service = issue(&app, &account.id, &created.client_secret)
        .await
        .unwrap()
        .access_token;
    let mut client = app.client.clone();

    // Neither a user without the admin role nor a service token may manage
    // service accounts.
    for (who, token) in [("plain user", &plain.access_token), ("service", &service)] {
        let create = client
            .create_service_account(with_bearer(
                pb::CreateServiceAccountRequest {
                    name: "sneaky".to_owned(),
                    scopes: vec!["admin".to_owned()],
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(create.code(), Code::PermissionDenied, "{who}: {create:?}");
        let list = client
            .list_service_accounts(with_bearer(pb::ListServiceAccountsRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(list.code(), Code::PermissionDenied, "{who}: {list:?}");
        let rotate = client
            .rotate_service_secret(with_bearer(
                pb::RotateServiceSecretRequest {
                    id: account.id.clone(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(rotate.code(), Code::PermissionDenied, "{who}: {rotate:?}");
        let disable = client
            .set_service_account_disabled(with_bearer(
                pb::SetServiceAccountDisabledRequest {
                    id: account.id.clone(),
                    disabled: true,
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(disable.code(), Code::PermissionDenied, "{who}: {disable:?}");
        let users = client
            .list_users(with_bearer(pb::ListUsersRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(users.code(), Code::PermissionDenied, "{who}: {users:?}");
    }
    let anonymous = client
        .create_service_account(pb::CreateServiceAccountRequest {
            name: "anon".to_owned(),
            scopes: vec!["a".to_owned()],
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // A service token names no user: it cannot act as one.
    let me = client
        .get_me(with_bearer(pb::GetMeRequest {}, &service))
        .await
        .unwrap_err();
    assert_eq!(me.code(), Code::PermissionDenied, "{me:?}");
    assert!(me.message().contains("service account"), "{}", me.message());
    let profile = client
        .update_profile(with_bearer(
            pb::UpdateProfileRequest {
                display_name: "Robot".to_owned(),
            },
            &service,
        ))
        .await
        .unwrap_err();
    assert_eq!(profile.code(), Code::PermissionDenied);
    let community = client
        .create_community(with_bearer(
            pb::CreateCommunityRequest {
                name: "Bots only".to_owned(),
                description: String::new(),
            },
            &service,
        ))
        .await
        .unwrap_err();
    assert_eq!(community.code(), Code::PermissionDenied);

    // Still usable by the admin: the account was not disabled above.
    issue(&app, &account.id, &created.client_secret)
        .await
        .unwrap();
    let listed = client
        .list_service_accounts(with_bearer(
            pb::ListServiceAccountsRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1);
    assert!(!listed.accounts[0].disabled);
    app.stop().await;
}

#[tokio::test]
async fn service_account_input_is_checked() {
    let app = TestApp::spawn().await;
    let (admin, created) = admin_and_service_account(&app, "Notify.Svc_1", &["a"]).await;
    let mut client = app.client.clone();
    let create = |name: &str, scopes: &[&str]| {
        let mut client = app.client.clone();
        let request = with_bearer(
            pb::CreateServiceAccountRequest {
                name: name.to_owned(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
            &admin.access_token,
        );
        async move { client.create_service_account(request).await }
    };

    let too_many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let long_name = "n".repeat(65);
    let long_scope = "s".repeat(65);
    for (name, scopes, expected) in [
        ("", &["a"][..], &["name"][..]),
        ("has space", &["a"], &["name"]),
        ("slash/name", &["a"], &["name"]),
        (long_name.as_str(), &["a"], &["name"]),
        ("ok", &[], &["scopes"]),
        ("ok", &too_many, &["scopes"]),
        ("ok", &["fine", "Upper"], &["scopes[1]"]),
        ("ok", &["with space"], &["scopes[0]"]),
        ("ok", &[""], &["scopes[0]"]),
        ("ok", &[long_scope.as_str()], &["scopes[0]"]),
        ("", &[], &["name", "scopes"]),
    ] {
        let status = create(name, scopes).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?} {scopes:?}");
        assert_eq!(fields(&status), expected, "{name:?} {scopes:?}");
    }

    // Names are unique, ignoring case.
    let taken = create("notify.svc_1", &["b"]).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");

    // Unknown and malformed ids.
    let ghost = uuid::Uuid::now_v7().to_string();
    let status = client
        .rotate_service_secret(with_bearer(
            pb::RotateServiceSecretRequest { id: ghost.clone() },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .set_service_account_disabled(with_bearer(
            pb::SetServiceAccountDisabledRequest {
                id: ghost,
                disabled: true,
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .rotate_service_secret(with_bearer(
            pb::RotateServiceSecretRequest {
                id: "nope".to_owned(),
            },
            &admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields(&status), ["id"]);

    // Nothing refused was stored.
    let listed = client
        .list_service_accounts(with_bearer(
            pb::ListServiceAccountsRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts, [created.account.unwrap()]);
    app.stop().await;
}

/// Linking a chat (the Telegram bot): a user's one-time code, redeemed by
/// the bot's service token; reuse, guessing and unlinking from both sides
/// refused as the proto says; the exchanged token is the user's, names the
/// bot as actor and is never an admin's.
#[tokio::test]
async fn chats_link_by_one_time_codes_and_the_bot_acts_as_the_user() {
    let app = TestApp::spawn().await;
    let (admin, bot) =
        admin_and_service_account(&app, "telegram-bot", &["bot.link", "bot.act"]).await;
    let bot_id = bot.account.as_ref().unwrap().id.clone();
    let bot_token = issue(&app, &bot_id, &bot.client_secret)
        .await
        .unwrap()
        .access_token;
    let ada = app
        .register(&unique_email("ada"), "correct horse")
        .await
        .unwrap();
    let mut client = app.client.clone();
    let chat = 4242_i64;

    // Only users make codes; a service token is refused at the door.
    let refused = client
        .create_link_code(with_bearer(pb::CreateLinkCodeRequest {}, &bot_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let code = client
        .create_link_code(with_bearer(pb::CreateLinkCodeRequest {}, &ada.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code.code.len(), 8);

    // Not linked yet: no token for the chat.
    let exchange = |chat_id| {
        let mut client = app.client.clone();
        let bot_token = bot_token.clone();
        async move {
            client
                .exchange_token(with_bearer(
                    pb::ExchangeTokenRequest { chat_id },
                    &bot_token,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(exchange(chat).await.unwrap_err().code(), Code::NotFound);

    // Users cannot redeem (the bot's door only).
    let redeem = |code: &str, chat_id, token: &str| {
        let mut client = app.client.clone();
        let request = with_bearer(
            pb::RedeemLinkCodeRequest {
                code: code.to_owned(),
                chat_id,
            },
            token,
        );
        async move {
            client
                .redeem_link_code(request)
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_eq!(
        redeem(&code.code, chat, &ada.access_token)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // Typed in lower case with a space: still the code.
    let typed = format!("{} {}", &code.code[..4].to_lowercase(), &code.code[4..]);
    let link = redeem(&typed, chat, &bot_token).await.unwrap();
    assert_eq!(link.user_id, ada.user.as_ref().unwrap().id);
    assert_eq!(link.chat_id, chat);
    // Single use: another chat cannot take it again.
    assert_eq!(
        redeem(&code.code, 777, &bot_token)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // The exchanged token: the user as subject, the bot as actor.
    let exchanged = exchange(chat).await.unwrap();
    assert_eq!(exchanged.user_id, link.user_id);
    let claims = verify_remotely(&app, &exchanged.access_token)
        .await
        .unwrap();
    assert_eq!(claims.sub.to_string(), link.user_id);
    assert_eq!(claims.act.as_ref().unwrap().sub, bot_id);
    assert_eq!(claims.roles, vec!["user".to_owned()]);
    let me = client
        .get_me(with_bearer(pb::GetMeRequest {}, &exchanged.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, link.user_id);
    // A delegated token makes no link codes.
    assert_eq!(
        client
            .create_link_code(with_bearer(
                pb::CreateLinkCodeRequest {},
                &exchanged.access_token
            ))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    // Acting for an admin gives the admin's ordinary rights only.
    let code = client
        .create_link_code(with_bearer(
            pb::CreateLinkCodeRequest {},
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    redeem(&code.code, 31337, &bot_token).await.unwrap();
    let for_admin = exchange(31337).await.unwrap();
    let refused = client
        .list_users(with_bearer(
            pb::ListUsersRequest::default(),
            &for_admin.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    client
        .list_users(with_bearer(
            pb::ListUsersRequest::default(),
            &admin.access_token,
        ))
        .await
        .unwrap();

    let listed = client
        .list_chat_links(with_bearer(pb::ListChatLinksRequest {}, &ada.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.links, vec![link.clone()]);

    // The bot needs bot.act to exchange and bot.link to redeem.
    let (_, linker) = {
        let created = client
            .create_service_account(with_bearer(
                pb::CreateServiceAccountRequest {
                    name: "linker-only".to_owned(),
                    scopes: vec!["bot.link".to_owned()],
                },
                &admin.access_token,
            ))
            .await
            .unwrap()
            .into_inner();
        ((), created)
    };
    let linker_token = issue(
        &app,
        &linker.account.as_ref().unwrap().id,
        &linker.client_secret,
    )
    .await
    .unwrap()
    .access_token;
    assert_eq!(
        client
            .exchange_token(with_bearer(
                pb::ExchangeTokenRequest { chat_id: chat },
                &linker_token
            ))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    // Unlinked from the account side: the bot gets nothing more.
    let unlinked = client
        .unlink(with_bearer(
            pb::UnlinkRequest { chat_id: 0 },
            &ada.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unlinked.unlinked, 1);
    assert_eq!(exchange(chat).await.unwrap_err().code(), Code::NotFound);

    // Linked again, then unlinked by the bot (`/unlink`).
    let code = client
        .create_link_code(with_bearer(pb::CreateLinkCodeRequest {}, &ada.access_token))
        .await
        .unwrap()
        .into_inner();
    redeem(&code.code, chat, &bot_token).await.unwrap();
    let unlinked = client
        .unlink_chat(with_bearer(
            pb::UnlinkChatRequest { chat_id: chat },
            &bot_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unlinked.unlinked, 1);
    assert_eq!(exchange(chat).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn guessing_link_codes_is_cut_off_per_chat() {
    let app = TestApp::spawn().await;
    let (_, bot) = admin_and_service_account(&app, "guess-bot", &["bot.link"]).await;
    let bot_token = issue(&app, &bot.account.as_ref().unwrap().id, &bot.client_secret)
        .await
        .unwrap()
        .access_token;
    let ada = app
        .register(&unique_email("ada"), "correct horse")
        .await
        .unwrap();
    let mut client = app.client.clone();
    let real = client
        .create_link_code(with_bearer(pb::CreateLinkCodeRequest {}, &ada.access_token))
        .await
        .unwrap()
        .into_inner()
        .code;
    let guesser = -100_123_i64;
    let redeem = |code: String, chat_id| {
        let mut client = app.client.clone();
        let request = with_bearer(pb::RedeemLinkCodeRequest { code, chat_id }, &bot_token);
        async move { client.redeem_link_code(request).await }
    };
    for guess in ["AAAAAAAA", "BBBBBBBB", "CCCCCCCC", "DDDDDDDD", "short"] {
        let refused = redeem(guess.to_owned(), guesser).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{guess}");
    }
    // The sixth try is refused before any code is looked at, even the right
    // one, which stays usable from another chat.
    let refused = redeem(real.clone(), guesser).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("try again in"), "{refused:?}");
    redeem(real, 555).await.unwrap();
    // Missing fields are the codec's INVALID_ARGUMENT.
    let refused = redeem(String::new(), 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(fields(&refused), ["code", "chat_id"]);
}

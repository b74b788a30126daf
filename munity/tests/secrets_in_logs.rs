//! No secret reaches a log. A whole story runs through `munity dev` at
//! `RUST_LOG=trace` (every service and the gateway in one process, so one
//! log): registering, logging in (and failing to), refreshing, logging out,
//! a service account's secret and token, publishing, following a stream
//! over HTTP, ingesting, and calls with a bad and a revoked token. Then the
//! log is searched for every password, access token, refresh token and
//! client secret that was sent or issued: none may appear, whole or as its
//! signature or random part.

use munity_platform::auth::with_bearer;
use munity_proto::{
    notify::v1 as notify,
    users::v1::{self as users, users_client::UsersClient},
    warehouse::v1 as wh,
};
use munity_testkit::{ADMIN_EMAIL, start_dev_logging};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_secret_is_logged() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("munity.log");
    let (mut ready, gateway) = start_dev_logging(
        env!("CARGO_BIN_EXE_munity"),
        data.path(),
        Some((&log, "trace")),
    )
    .await;
    let base = format!("http://{}", ready.address("gateway"));
    let mut secrets: Vec<(&str, String)> = Vec::new();
    let mut client = UsersClient::new(gateway.clone());

    let admin_password = "Adm1n-pa55word-grep-me";
    let admin = client
        .register(users::RegisterRequest {
            email: ADMIN_EMAIL.into(),
            password: admin_password.into(),
            display_name: "Admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(("admin password", admin_password.into()));
    secrets.push(("admin access token", admin.access_token.clone()));
    secrets.push(("admin refresh token", admin.refresh_token.clone()));

    let password = "Us3r-pa55word-grep-me";
    client
        .register(users::RegisterRequest {
            email: "grep@example.com".into(),
            password: password.into(),
            display_name: "Grep".into(),
        })
        .await
        .unwrap();
    secrets.push(("user password", password.into()));
    let wrong = "Wr0ng-pa55word-grep-me";
    let refused = client
        .login(users::LoginRequest {
            email: "grep@example.com".into(),
            password: wrong.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    secrets.push(("wrong password", wrong.into()));
    let session = client
        .login(users::LoginRequest {
            email: "grep@example.com".into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(("login access token", session.access_token.clone()));
    secrets.push(("login refresh token", session.refresh_token.clone()));
    let refreshed = client
        .refresh(users::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(("refreshed access token", refreshed.access_token.clone()));
    secrets.push(("refreshed refresh token", refreshed.refresh_token.clone()));
    // Reusing a spent refresh token revokes the session (theft detection).
    let reuse = client
        .refresh(users::RefreshRequest {
            refresh_token: session.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reuse.code(), tonic::Code::Unauthenticated);
    let token = client
        .login(users::LoginRequest {
            email: "grep@example.com".into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner();
    secrets.push(("second access token", token.access_token.clone()));
    secrets.push(("second refresh token", token.refresh_token.clone()));

    // A service account: its client secret and its token.
    let account = client
        .create_service_account(with_bearer(
            users::CreateServiceAccountRequest {
                name: "grep-bot".into(),
                scopes: vec!["notify.publish".into(), "warehouse.produce".into()],
            },
            &admin.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(("client secret", account.client_secret.clone()));
    let service = client
        .issue_service_token(users::IssueServiceTokenRequest {
            client_id: account.account.unwrap().id,
            client_secret: account.client_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    secrets.push(("service token", service.clone()));

    // Calls carrying them: gRPC, HTTP/JSON, a stream over SSE.
    let me = client
        .get_me(with_bearer(users::GetMeRequest {}, &token.access_token))
        .await
        .unwrap()
        .into_inner();
    let (status, body) = munity_testkit::curl(&[
        "-H",
        &format!("authorization: Bearer {}", token.access_token),
        &format!("{base}/v1/me"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    // Followed over SSE for two seconds (curl ends it: exit 28, expected).
    let sse = std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", "accept: text/event-stream"])
        .args([
            "-H",
            &format!("authorization: Bearer {}", token.access_token),
        ])
        .arg(format!(
            "{base}/v1/notifications/stream?topics=user:{}",
            me.id
        ))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&sse.stdout), "200", "{sse:?}");
    munity_proto::notify::v1::notify_client::NotifyClient::new(gateway.clone())
        .publish(with_bearer(
            notify::PublishRequest {
                topic: format!("user:{}", me.id),
                id: "grep-1".into(),
                payload: Some(prost_types::Any {
                    type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
                    value: prost::Message::encode_to_vec(&"hello".to_owned()),
                }),
            },
            &service,
        ))
        .await
        .unwrap();
    munity_proto::warehouse::v1::warehouse_client::WarehouseClient::new(gateway.clone())
        .ingest(with_bearer(
            wh::IngestRequest {
                records: vec![wh::Record {
                    source: "grep.readings".into(),
                    ..Default::default()
                }],
            },
            &service,
        ))
        .await
        .unwrap();
    // Logged out, then used: refused, and the refusal logs no token.
    client
        .logout(users::LogoutRequest {
            refresh_token: token.refresh_token.clone(),
        })
        .await
        .unwrap();
    let after = client
        .refresh(users::RefreshRequest {
            refresh_token: token.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(after.code(), tonic::Code::Unauthenticated);
    let bad = client
        .get_me(with_bearer(
            users::GetMeRequest {},
            &format!("{}x", token.access_token),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);

    // Stop, so every line is written, then search.
    ready.process.terminate();
    ready
        .process
        .wait_exit(std::time::Duration::from_secs(20))
        .await
        .expect("munity exits after SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 20,
        "the debug log is nearly empty: {text}"
    );
    let mut found = Vec::new();
    for (what, secret) in &secrets {
        for part in parts(secret) {
            if let Some(line) = text.lines().find(|line| line.contains(part)) {
                let at = line.find(part).unwrap_or(0);
                let context = &line[..at];
                found.push(format!(
                    "{what} ({part:.12}…) after: {}",
                    &context[context.len().saturating_sub(300)..]
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "secrets in the log ({} lines): {found:#?}",
        text.lines().count()
    );
    println!(
        "{} secrets, none in {} log lines",
        secrets.len(),
        text.lines().count()
    );
}

/// A secret and the parts of it that identify it on their own: a JWT's
/// signature, a prefixed token's random part.
fn parts(secret: &str) -> Vec<&str> {
    let mut parts = vec![secret];
    if let Some(signature) = secret
        .rsplit('.')
        .next()
        .filter(|_| secret.matches('.').count() == 2)
    {
        parts.push(signature);
    }
    if let Some((_, random)) = secret
        .split_once('_')
        .filter(|(prefix, _)| prefix.len() <= 4)
    {
        parts.push(random);
    }
    parts
}

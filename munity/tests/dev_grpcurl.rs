//! `munity dev` as a user meets it: a real process on free ports, driven by
//! grpcurl (a client nobody here wrote) through the gateway, using server
//! reflection, with no .proto files. Also checks that accounts and signing keys survive a
//! restart, since the embedded store is on disk.

use std::{path::Path, process::Command, time::Duration};

use munity_testkit::{Ready, grpcurl, spawn_ready};
use serde_json::{Value, json};

struct Munity {
    ready: Ready,
    address: String,
}

impl Munity {
    async fn start(data_dir: &Path) -> Munity {
        let mut command = Command::new(env!("CARGO_BIN_EXE_munity"));
        command
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .env("MUNITY_DEV__ANY_PORT", "true")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null());
        let ready = spawn_ready(command, Duration::from_secs(60)).await;
        // Every call goes through the gateway, as a newcomer's would.
        let address = ready.address("gateway").to_owned();
        Munity { ready, address }
    }

    /// SIGTERM, as Kubernetes or Ctrl-C would; waits for a clean exit.
    async fn stop(mut self) {
        self.ready.process.terminate();
        let exit = self
            .ready
            .process
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("munity exits after SIGTERM");
        assert!(exit.success(), "munity exited with {exit}");
    }

    /// Calls `method` with grpcurl; Ok(JSON response) or Err(grpcurl's error
    /// text, which includes the gRPC code and message).
    fn call(&self, method: &str, body: Value, token: Option<&str>) -> Result<Value, String> {
        let mut command = Command::new(grpcurl().unwrap());
        command.args(["-plaintext", "-max-time", "20", "-d", &body.to_string()]);
        if let Some(token) = token {
            command.args(["-H", &format!("authorization: Bearer {token}")]);
        }
        let output = command.arg(&self.address).arg(method).output().unwrap();
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).unwrap_or(Value::Null))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

#[tokio::test]
async fn register_login_me_refresh_logout_and_restart_with_grpcurl() {
    if grpcurl().is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let munity = Munity::start(data.path()).await;

    // Reflection lists the service; health says it is serving.
    let listed = Command::new(grpcurl().unwrap())
        .args(["-plaintext", &munity.address, "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("munity.users.v1.Users"), "{listed}");
    let health = munity
        .call(
            "grpc.health.v1.Health/Check",
            json!({"service": "munity.users.v1.Users"}),
            None,
        )
        .unwrap();
    assert_eq!(health["status"], "SERVING");

    // Operators see every replica from the start, zeros included.
    let admin = munity.ready.address("gateway_admin").to_owned();
    let metrics = http_get(&admin, "/metrics").await;
    for line in [
        "munity_gateway_upstream_ejections_total{route=\"users\"} 0",
        "munity_gateway_upstream_healthy{route=\"users\",",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }

    let credentials = json!({"email": "grace@example.com", "password": "correct horse"});
    let registered = munity
        .call(
            "munity.users.v1.Users/Register",
            json!({"email": "Grace@Example.com", "password": "correct horse", "displayName": "Grace Hopper"}),
            None,
        )
        .unwrap();
    let user_id = registered["user"]["id"].as_str().unwrap().to_owned();

    let login = munity
        .call("munity.users.v1.Users/Login", credentials.clone(), None)
        .unwrap();
    let access = login["accessToken"].as_str().unwrap();
    let me = munity
        .call("munity.users.v1.Users/GetMe", json!({}), Some(access))
        .unwrap();
    assert_eq!(me["id"], user_id.as_str());
    assert_eq!(me["email"], "grace@example.com");

    let no_token = munity
        .call("munity.users.v1.Users/GetMe", json!({}), None)
        .unwrap_err();
    assert!(no_token.contains("Unauthenticated"), "{no_token}");

    let first_refresh = login["refreshToken"].as_str().unwrap();
    let refreshed = munity
        .call(
            "munity.users.v1.Users/Refresh",
            json!({"refreshToken": first_refresh}),
            None,
        )
        .unwrap();
    let second_refresh = refreshed["refreshToken"].as_str().unwrap();
    munity
        .call(
            "munity.users.v1.Users/GetMe",
            json!({}),
            Some(refreshed["accessToken"].as_str().unwrap()),
        )
        .unwrap();

    // Reusing the rotated token is refused and kills its whole family.
    let reuse = munity
        .call(
            "munity.users.v1.Users/Refresh",
            json!({"refreshToken": first_refresh}),
            None,
        )
        .unwrap_err();
    assert!(
        reuse.contains("Unauthenticated") && reuse.contains("already used"),
        "{reuse}"
    );
    let family = munity
        .call(
            "munity.users.v1.Users/Refresh",
            json!({"refreshToken": second_refresh}),
            None,
        )
        .unwrap_err();
    assert!(family.contains("Unauthenticated"), "{family}");

    // Logout ends the registration's own session.
    let register_refresh = registered["refreshToken"].as_str().unwrap();
    munity
        .call(
            "munity.users.v1.Users/Logout",
            json!({"refreshToken": register_refresh}),
            None,
        )
        .unwrap();
    let after_logout = munity
        .call(
            "munity.users.v1.Users/Refresh",
            json!({"refreshToken": register_refresh}),
            None,
        )
        .unwrap_err();
    assert!(after_logout.contains("Unauthenticated"), "{after_logout}");

    let bad = munity
        .call(
            "munity.users.v1.Users/Register",
            json!({"email": "nope", "password": "short", "displayName": "x"}),
            None,
        )
        .unwrap_err();
    assert!(
        bad.contains("InvalidArgument") && bad.contains("email"),
        "{bad}"
    );
    // Reflection serves the google.rpc error details, so grpcurl decodes the
    // BadRequest detail instead of "google.rpc.BadRequest is not recognized".
    assert!(
        bad.contains("fieldViolations") && bad.contains("\"field\": \"password\""),
        "{bad}"
    );

    // `access` was the reused refresh token's session's: revoked with it.
    // A session still open keeps working across the restart.
    let revoked_access = access.to_owned();
    let open = munity
        .call("munity.users.v1.Users/Login", credentials.clone(), None)
        .unwrap();
    let old_access = open["accessToken"].as_str().unwrap().to_owned();
    munity.stop().await;

    // Same data directory: the account and the signing key are still there.
    let munity = Munity::start(data.path()).await;
    let login = munity
        .call("munity.users.v1.Users/Login", credentials, None)
        .unwrap();
    assert_eq!(login["user"]["id"], user_id.as_str());
    let me = munity
        .call("munity.users.v1.Users/GetMe", json!({}), Some(&old_access))
        .unwrap();
    assert_eq!(
        me["id"],
        user_id.as_str(),
        "a token from before the restart still verifies"
    );
    let revoked = munity
        .call(
            "munity.users.v1.Users/GetMe",
            json!({}),
            Some(&revoked_access),
        )
        .unwrap_err();
    assert!(
        revoked.contains("Unauthenticated") && revoked.contains("revoked"),
        "a revoked session's token stays refused after the restart: {revoked}"
    );
    munity.stop().await;
}

/// A bare HTTP/1.1 GET; the body.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

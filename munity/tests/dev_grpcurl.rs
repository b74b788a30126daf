//! `munity dev` as a user meets it: a real process on free ports, driven by
//! grpcurl (a client nobody here wrote) through the gateway, using server
//! reflection, with no .proto files. Also checks that accounts and signing keys survive a
//! restart, since the embedded store is on disk.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};

/// grpcurl from `$GRPCURL`, `~/go/bin` (where `go install` puts it) or PATH.
fn grpcurl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return Some(PathBuf::from(path));
    }
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join("go/bin/grpcurl"));
    if let Some(path) = home_bin.filter(|p| p.exists()) {
        return Some(path);
    }
    Command::new("grpcurl")
        .arg("-version")
        .output()
        .ok()
        .map(|_| PathBuf::from("grpcurl"))
}

struct Munity {
    child: Child,
    address: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Munity {
    /// A failed assertion must not leave the server running (it would hold
    /// the test harness's stdout open).
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Munity {
    fn start(data_dir: &Path) -> Munity {
        let mut child = Command::new(env!("CARGO_BIN_EXE_munity"))
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .env("MUNITY_USERS__LISTEN", "127.0.0.1:0")
            .env("MUNITY_GATEWAY__LISTEN", "127.0.0.1:0")
            .env("MUNITY_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start munity");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut address = None;
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("munity printed its addresses");
            // Every call goes through the gateway, as a newcomer's would.
            if let Some(rest) = line.strip_prefix("munity: gateway") {
                let url = rest.split_whitespace().next().unwrap();
                address = Some(url.trim_start_matches("grpc://").to_owned());
            }
            if line.starts_with("munity: ready") {
                break;
            }
        }
        Munity {
            child,
            address: address.expect("gateway address printed"),
            lines,
        }
    }

    /// SIGTERM, as Kubernetes or Ctrl-C would; waits for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "munity exited with {exit}");
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert!(rest.iter().any(|l| l == "munity: stopped"), "{rest:?}");
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

#[test]
fn register_login_me_refresh_logout_and_restart_with_grpcurl() {
    if grpcurl().is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "grpcurl is missing; CI installs it with `go install`"
        );
        eprintln!("skipping: grpcurl not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let munity = Munity::start(data.path());

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

    let old_access = access.to_owned();
    munity.stop();

    // Same data directory: the account and the signing key are still there.
    let munity = Munity::start(data.path());
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
    munity.stop();
}

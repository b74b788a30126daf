//! A port clash is a clear start-up error, not a server that says "ready"
//! while another program answers on its port.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

#[tokio::test]
async fn munity_dev_refuses_a_gateway_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_munity"));
    // Every other listener on a free port: a service's default port held
    // by a test running beside this one must not be the clash reported.
    for section in ["USERS", "EVENTS", "NOTIFY", "WAREHOUSE", "DISCUSS", "BOT"] {
        command.env(format!("MUNITY_{section}__LISTEN"), "127.0.0.1:0");
    }
    let child = command
        .args(["dev", "--data-dir"])
        .arg(data.path())
        .env("MUNITY_GATEWAY__LISTEN", address.to_string())
        .env("MUNITY_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that started anyway would never exit: bounded, then killed.
    let mut munity = munity_testkit::Process::new(child);
    let status = munity
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("munity dev exits at once when a port is taken");
    assert!(!status.success());
    let child = munity.child_mut();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on gateway.listen {address}")),
        "{stderr}"
    );
    assert!(!stdout.contains("munity: ready"), "{stdout}");
}

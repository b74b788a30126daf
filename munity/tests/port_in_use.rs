//! A port clash is a clear start-up error, not a server that says "ready"
//! while another program answers on its port.

use std::process::Command;

#[test]
fn munity_dev_refuses_a_gateway_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_munity"))
        .args(["dev", "--data-dir"])
        .arg(data.path())
        .env("MUNITY_USERS__LISTEN", "127.0.0.1:0")
        .env("MUNITY_GATEWAY__LISTEN", address.to_string())
        .env("MUNITY_GATEWAY__ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on gateway.listen {address}")),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("munity: ready"), "{stdout}");
}

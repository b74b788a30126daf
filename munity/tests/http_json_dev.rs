//! HTTP/JSON against the whole of `munity dev` (every service behind its
//! gateway): notify's Subscribe read as NDJSON and as Server-Sent Events
//! that resume from `Last-Event-ID` (`stream_client.py`, Python requests and
//! sseclient-py), and schemathesis run against the served `/openapi.json`:
//! no 5xx, every answer matching its schema.

use munity_testkit::{ADMIN_EMAIL, python, python_script, register, register_as, start_dev};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_as_ndjson_and_resumable_sse() {
    let Some(python) = python() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
    let (admin, _) = register_as(&channel, "Admin", ADMIN_EMAIL).await;
    let service =
        munity_testkit::service_token(&channel, &admin, "http-publisher", &["notify.publish"])
            .await;
    let (token, user_id) = register(&channel, "Streamer").await;
    python_script(
        &python,
        "stream_client.py",
        vec![
            format!("http://{}", ready.address("gateway")),
            token,
            user_id,
            service,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_schema() {
    let Some(python) = python() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let (ready, channel) = start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
    let (token, _) = register(&channel, "Fuzzer").await;
    let base = format!("http://{}", ready.address("gateway"));
    let schemathesis = python.with_file_name("schemathesis");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis)
            .arg("run")
            .arg(format!("{base}/openapi.json"))
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
                // Endless by design: covered by server_streams_as_ndjson_and_resumable_sse.
                "--exclude-path-regex",
                "/stream$",
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--workers",
                "2",
                "--request-timeout",
                "10",
                "--no-color",
            ])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(std::env::temp_dir())
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
}

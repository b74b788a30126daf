//! The observability stack against a running `munity dev`, with the real
//! backends (both started by this test on free ports of 127.0.0.1):
//!
//! - Prometheus (Debian's `prometheus`) scrapes it with the project's own
//!   scrape config and rules (observability/prometheus), and its HTTP API
//!   answers the RED series of the Vote just made;
//! - Jaeger v2 (built from its Go module by scripts/jaeger.sh, in-memory)
//!   receives its spans over OTLP, and its query API returns the Vote's
//!   trace by id: the gateway's span, events-svc's, the storage write, the
//!   outbox relay and notify-svc's consumer, each the child of the one
//!   before; and the JSON log lines of the call carry the same trace id.
//!
//! A missing `prometheus` or Jaeger binary skips the test (and fails it in
//! CI): `MUNITY_TEST_PROMETHEUS` / `MUNITY_TEST_JAEGER` name them, else
//! `prometheus` on the PATH and `~/.cache/munity-tools/bin/jaeger-v1.76.0`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use munity_platform::auth::with_bearer;
use munity_proto::events::v1::{self as events, events_client::EventsClient};
use munity_testkit::{Process, curl, free_port, in_ci, register, spawn_ready, start_dev};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `env` names a binary, else the first of `candidates` that exists; skips
/// (or panics in CI) when none does.
fn binary(env: &str, candidates: &[PathBuf], hint: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env)
        .map(PathBuf::from)
        .into_iter()
        .chain(candidates.iter().cloned())
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(!in_ci(), "{env}: no binary in CI ({hint})");
        eprintln!("skipping: no binary ({env}; {hint})");
    }
    found
}

fn on_path(name: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default()
}

async fn get_json(url: &str) -> Value {
    let (status, body) = curl(&[url]).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// Waits until `url` answers 200.
async fn wait_http(url: &str, what: &str) {
    let started = Instant::now();
    loop {
        let answered = Command::new("curl")
            .args(["-sf", "--max-time", "1", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if answered {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A meeting by Alice and Bob's vote on it, through the gateway; the vote
/// sent with `traceparent` when given.
async fn vote(channel: &tonic::transport::Channel, traceparent: Option<&str>) -> String {
    let (alice, _) = register(channel, "Alice").await;
    let (bob, _) = register(channel, "Bob").await;
    let mut client = EventsClient::new(channel.clone());
    let event = client
        .create_event(with_bearer(
            munity_testkit::meeting_request("observed"),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut request = with_bearer(
        events::VoteRequest {
            event_id: event.id.clone(),
            option_id: 1,
        },
        &bob,
    );
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    client.vote(request).await.unwrap();
    event.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_munity_dev_with_the_project_config() {
    let Some(prometheus) = binary(
        "MUNITY_TEST_PROMETHEUS",
        &on_path("prometheus"),
        "apt-get install prometheus; scripts/check-deploy.sh does",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let (munity, channel) = start_dev(env!("CARGO_BIN_EXE_munity"), &dir.path().join("data")).await;

    // The project's config and rules; targets from munity dev's ready file.
    let config = dir.path().join("prometheus");
    std::fs::create_dir_all(config.join("rules")).unwrap();
    std::fs::create_dir_all(config.join("targets")).unwrap();
    let source = repo().join("observability/prometheus");
    std::fs::copy(source.join("prometheus.yml"), config.join("prometheus.yml")).unwrap();
    for rule in std::fs::read_dir(source.join("rules")).unwrap() {
        let rule = rule.unwrap().path();
        std::fs::copy(&rule, config.join("rules").join(rule.file_name().unwrap())).unwrap();
    }
    for (file, address) in [
        ("gateway.json", munity.address("gateway_admin")),
        ("services.json", munity.address("users")),
    ] {
        std::fs::write(
            config.join("targets").join(file),
            serde_json::json!([{ "targets": [address] }]).to_string(),
        )
        .unwrap();
    }
    let port = free_port();
    let _prometheus = Process::new(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                config.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs"),
    );
    let api = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{api}/-/ready"), "prometheus").await;

    vote(&channel, None).await;

    // The RED series of that call, as Prometheus scraped them (every 5 s).
    let queries = [
        r#"munity_gateway_requests_total{job="munity-gateway",service="munity.events.v1.Events",method="Vote",code="0"}"#,
        r#"munity_gateway_request_duration_seconds_count{job="munity-gateway",method="Vote"}"#,
        r#"munity_grpc_server_requests_total{job="munity-services",service="munity.events.v1.Events",method="Vote",code="0"}"#,
        r#"munity_grpc_server_request_duration_seconds_count{job="munity-services",method="Vote"}"#,
        r#"up{job=~"munity-gateway|munity-services"}"#,
    ];
    let started = Instant::now();
    'queries: for query in queries {
        loop {
            let url = format!(
                "{api}/api/v1/query?query={}",
                query
                    .bytes()
                    .map(|b| if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    })
                    .collect::<String>()
            );
            let answer = get_json(&url).await;
            let results = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let values: Vec<&str> = results
                .iter()
                .map(|r| r["value"][1].as_str().unwrap())
                .collect();
            let expected = if query.starts_with("up") { 2 } else { 1 };
            if values.len() == expected && values.iter().all(|v| *v == "1") {
                continue 'queries;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{query}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The rules loaded, and evaluate without errors.
    let rules = get_json(&format!("{api}/api/v1/rules")).await;
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{rules}");
    for group in groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(rule["health"], "err", "{rule}");
        }
    }
}

/// Span `id` of a Jaeger trace, with its parent's id.
struct Span {
    id: String,
    parent: Option<String>,
    name: String,
}

fn spans(trace: &Value) -> Vec<Span> {
    trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|span| Span {
            id: span["spanID"].as_str().unwrap().to_owned(),
            parent: span["references"]
                .as_array()
                .and_then(|refs| refs.iter().find(|r| r["refType"] == "CHILD_OF"))
                .map(|r| r["spanID"].as_str().unwrap().to_owned()),
            name: span["operationName"].as_str().unwrap().to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_is_one_trace_in_jaeger() {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let Some(jaeger) = binary(
        "MUNITY_TEST_JAEGER",
        &[home.join(".cache/munity-tools/bin/jaeger-v1.76.0")],
        "bash scripts/jaeger.sh build",
    ) else {
        return;
    };
    let (otlp, query, query_grpc, health) = (free_port(), free_port(), free_port(), free_port());
    let _jaeger = Process::new(
        Command::new(&jaeger)
            .arg("--config")
            .arg(repo().join("observability/jaeger/jaeger.yml"))
            .env("JAEGER_OTLP_GRPC_PORT", otlp.to_string())
            .env("JAEGER_QUERY_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string())
            .env("JAEGER_HEALTH_PORT", health.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("jaeger runs"),
    );
    wait_http(&format!("http://127.0.0.1:{health}/status"), "jaeger").await;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("munity.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_munity"));
    command
        .args(["dev", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("MUNITY_DEV__ANY_PORT", "true")
        .env(
            "MUNITY_TELEMETRY__OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp}"),
        )
        .env("MUNITY_TELEMETRY__LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null());
    let munity = spawn_ready(command, Duration::from_secs(60)).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", munity.address("gateway")))
            .unwrap()
            .connect()
            .await
            .unwrap();

    let trace_id = format!("{:032x}", uuid::Uuid::now_v7().as_u128());
    let caller = "00f067aa0ba902b7";
    vote(&channel, Some(&format!("00-{trace_id}-{caller}-01"))).await;

    // Spans are exported in batches (every few seconds): wait for the chain.
    let url = format!("http://127.0.0.1:{query}/api/traces/{trace_id}");
    let started = Instant::now();
    let chain = loop {
        let (status, body) = curl(&[&url]).await;
        if status == 200 {
            let answer: Value = serde_json::from_str(&body).unwrap();
            if let Some(trace) = answer["data"].as_array().and_then(|d| d.first()) {
                let spans = spans(trace);
                let child_of = |parent: &str, name: &dyn Fn(&str) -> bool| {
                    spans
                        .iter()
                        .find(|s| s.parent.as_deref() == Some(parent) && name(&s.name))
                        .map(|s| s.id.clone())
                };
                let vote = |n: &str| n == "munity.events.v1.Events/Vote";
                let gateway = child_of(caller, &vote);
                let service = gateway.as_deref().and_then(|g| child_of(g, &vote));
                let storage = service
                    .as_deref()
                    .and_then(|s| child_of(s, &|n: &str| n == "store.write"));
                let relay = storage
                    .as_deref()
                    .and_then(|s| child_of(s, &|n: &str| n == "relay munity.events.v1.VoteCast"));
                let consumer = relay.as_deref().and_then(|r| {
                    child_of(r, &|n: &str| {
                        n == "consume notify-svc.sources munity.events.v1.VoteCast"
                    })
                });
                if let (Some(g), Some(s), Some(w), Some(r), Some(c)) =
                    (gateway, service, storage, relay, consumer)
                {
                    break [g, s, w, r, c];
                }
                assert!(
                    started.elapsed() < Duration::from_secs(40),
                    "the chain gateway > events-svc > store.write > relay > notify consumer is not in {}",
                    spans
                        .iter()
                        .map(|s| format!("\n  {} {} (parent {:?})", s.id, s.name, s.parent))
                        .collect::<String>()
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no trace {trace_id} in Jaeger: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(chain.len(), 5);

    // The call's JSON log lines carry the trace id (and a span id of it).
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["trace_id"] == trace_id.as_str())
        .collect();
    assert!(
        !lines.is_empty(),
        "no log line with trace_id {trace_id}:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line["message"] == "call" && line["method"] == "Vote"),
        "{lines:#?}"
    );
    for line in &lines {
        let span_id = line["span_id"].as_str().unwrap();
        assert_eq!(span_id.len(), 16, "{line}");
    }
}

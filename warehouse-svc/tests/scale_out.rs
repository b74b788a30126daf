//! The scale-out shape, for real: two `warehouse-svc` processes on one
//! Cassandra keyspace and the Redis event log, beside users-svc (in this
//! process, publishing its domain events on that log).
//! - A tail on replica b gets what is ingested on replica a.
//! - The same batch sent to both replicas is stored once.
//! - b stops: its tail ends UNAVAILABLE; records arrive on a meanwhile; b
//!   starts again and the viewer resumes there from its cursor with exactly
//!   those, then a live one.
//! - A domain event is stored once as activity, though both replicas are in
//!   the consumer group.

use std::{process::Command, time::Duration};

use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::{BusBackend, BusConfig},
};
use munity_proto::{
    users::v1::{self as users_pb, users_client::UsersClient},
    warehouse::v1::{self as pb, tail_response::Kind, warehouse_client::WarehouseClient},
};
use munity_testkit::Ready;
use tonic::transport::Channel;
use uuid::Uuid;

fn replica(
    cql: &munity_platform::config::CqlConfig,
    redis: &str,
    stream: &str,
    users: &str,
    dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warehouse-svc"));
    command
        .env("MUNITY_WAREHOUSE__LISTEN", "127.0.0.1:0")
        .env("MUNITY_WAREHOUSE__STORAGE__BACKEND", "cql")
        .env(
            "MUNITY_WAREHOUSE__STORAGE__NODES",
            format!("[{}]", cql.nodes.join(",")),
        )
        .env("MUNITY_WAREHOUSE__STORAGE__KEYSPACE", &cql.keyspace)
        .env("MUNITY_WAREHOUSE__STORAGE__REQUEST_TIMEOUT_MS", "20000")
        .env("MUNITY_WAREHOUSE__TAIL_SETTLE_MS", "300")
        .env("MUNITY_WAREHOUSE__TAIL_POLL_MS", "100")
        .env("MUNITY_BUS__BACKEND", "redis")
        .env("MUNITY_BUS__REDIS_URL", redis)
        .env("MUNITY_BUS__REDIS_KEY", stream)
        .env("MUNITY_AUTH__JWKS_URL", users)
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdout(std::process::Stdio::null());
    command
}

async fn client(replica: &Ready) -> WarehouseClient<Channel> {
    WarehouseClient::connect(format!("http://{}", replica.address("warehouse")))
        .await
        .unwrap()
}

fn record(source: &str, id: &str, minute: i64) -> pb::Record {
    pb::Record {
        id: id.to_owned(),
        source: source.to_owned(),
        time: Some(prost_types::Timestamp {
            seconds: 1_767_225_600 + minute * 60,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn ingest(replica: &Ready, token: &str, records: Vec<pb::Record>) {
    client(replica)
        .await
        .ingest(with_bearer(pb::IngestRequest { records }, token))
        .await
        .unwrap();
}

async fn next_id(stream: &mut tonic::Streaming<pb::TailResponse>) -> (String, String) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("a record within 15 s")
            .unwrap()
            .expect("the tail goes on");
        if let Some(Kind::Record(tailed)) = message.kind {
            return (tailed.record.unwrap().id, tailed.cursor);
        }
    }
}

async fn tail(
    replica: &Ready,
    token: &str,
    source: &str,
    after: &str,
) -> tonic::Streaming<pb::TailResponse> {
    client(replica)
        .await
        .tail(with_bearer(
            pb::TailRequest {
                source: source.to_owned(),
                after: after.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn count(
    replica: &Ready,
    token: &str,
    source: &str,
    from_ms: i64,
    to_ms: i64,
) -> Vec<pb::Record> {
    client(replica)
        .await
        .query(with_bearer(
            pb::QueryRequest {
                source: source.to_owned(),
                from: Some(prost_types::Timestamp {
                    seconds: from_ms / 1000,
                    nanos: 0,
                }),
                to: Some(prost_types::Timestamp {
                    seconds: to_ms / 1000,
                    nanos: 0,
                }),
                page_size: 1000,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_records_tails_and_activity() {
    let Some(redis) = std::env::var("MUNITY_TEST_REDIS")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !munity_testkit::in_ci(),
            "MUNITY_TEST_REDIS is required under CI=true"
        );
        return;
    };
    let Some(cql) = munity_testkit::cql_config("warehouse_scale") else {
        return;
    };
    let run = Uuid::now_v7().simple().to_string();
    let stream = format!("munity:test:warehouse-scale:{run}:log");
    let dir = tempfile::tempdir().unwrap();
    let (users, _users) = munity_testkit::serve_in_process::<users_svc::UsersService>(
        users_svc::UsersConfig {
            admin_emails: vec!["ops@example.com".to_owned()],
            ..Default::default()
        },
        &dir.path().join("users"),
        BusConfig {
            backend: BusBackend::Redis,
            redis_url: redis.clone(),
            redis_key: stream.clone(),
            ..Default::default()
        },
        AuthConfig::default(),
    )
    .await;
    let users_channel = Channel::from_shared(users.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (admin, _) = munity_testkit::register_as(&users_channel, "Ops", "ops@example.com").await;
    let token = munity_testkit::service_token(
        &users_channel,
        &admin,
        "pipeline",
        &["warehouse.produce", "warehouse.read"],
    )
    .await;

    let command = |name: &str| {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        replica(&cql, &redis, &stream, &users, &dir)
    };
    let a = {
        let _schema = munity_testkit::schema_lock().await;
        munity_testkit::spawn_ready(command("a"), Duration::from_secs(60)).await
    };
    let mut b = munity_testkit::spawn_ready(command("b"), Duration::from_secs(60)).await;

    // A tail on b hears what a stores.
    let source = format!("sensors.{run}");
    let mut viewer = tail(&b, &token, &source, "").await;
    ingest(
        &a,
        &token,
        vec![record(&source, "x1", 0), record(&source, "x2", 1)],
    )
    .await;
    assert_eq!(next_id(&mut viewer).await.0, "x1");
    let (id, cursor) = next_id(&mut viewer).await;
    assert_eq!(id, "x2");

    // The same batch on both replicas: stored once.
    let batch: Vec<pb::Record> = (0..30)
        .map(|n| record(&source, &format!("d{n}"), 10 + n))
        .collect();
    ingest(&a, &token, batch.clone()).await;
    ingest(&b, &token, batch).await;
    let stored = count(
        &b,
        &token,
        &source,
        1_767_225_600_000,
        1_767_225_600_000 + 3_600_000,
    )
    .await;
    assert_eq!(stored.len(), 32, "x1, x2 and d0..d29, each once");

    // b stops: the viewer's tail ends UNAVAILABLE (reconnect), not silently.
    b.process.terminate();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), viewer.message())
            .await
            .expect("the tail ends within 15 s of SIGTERM")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the tail ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    b.process
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("b exits");

    // Meanwhile on a (after the duplicate batches, which the tail may show
    // again: the viewer skips to what it has not seen).
    ingest(&a, &token, vec![record(&source, "y1", 100)]).await;
    ingest(&a, &token, vec![record(&source, "y2", 101)]).await;
    let b = munity_testkit::spawn_ready(command("b"), Duration::from_secs(60)).await;
    let mut viewer = tail(&b, &token, &source, &cursor).await;
    let mut after_restart = Vec::new();
    while after_restart.len() < 2 {
        let (id, _) = next_id(&mut viewer).await;
        if !id.starts_with('d') {
            after_restart.push(id);
        }
    }
    assert_eq!(after_restart, ["y1", "y2"]);
    ingest(&a, &token, vec![record(&source, "z1", 102)]).await;
    assert_eq!(next_id(&mut viewer).await.0, "z1");

    // Activity: one domain event, stored once by the group of two.
    let before = munity_store::now_millis();
    UsersClient::new(users_channel.clone())
        .create_community(with_bearer(
            users_pb::CreateCommunityRequest {
                name: format!("Scale {run}"),
                description: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let activity = count(
            &a,
            &token,
            "domain.users",
            before - 60_000,
            before + 3_600_000,
        )
        .await;
        let created = activity
            .iter()
            .filter(|r| {
                r.attributes
                    .get("type")
                    .is_some_and(|t| t.ends_with("CommunityCreated"))
            })
            .count();
        if created > 0 {
            assert_eq!(created, 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "activity within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(a);
}

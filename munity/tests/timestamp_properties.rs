//! Properties over every google.protobuf.Timestamp and Duration a request
//! can carry, against a real `munity dev`: whatever a service accepts, no
//! later read of it fails, over gRPC or HTTP/JSON, and every time it hands
//! back is one protobuf's JSON mapping accepts.
//!
//! events-svc (CreateEvent's options and deadline, GetStats' window) and
//! warehouse-svc (a record's time, Query's range) take times; users-svc
//! and notify-svc take none, which the first test checks from the
//! descriptors so that a new time field there gets its property here.

use munity_platform::auth::with_bearer;
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    warehouse::v1::{self as wh, warehouse_client::WarehouseClient},
};
use munity_testkit::{ADMIN_EMAIL, Ready, register, register_as, start_dev};
use proptest::prelude::*;
use prost_reflect::{DescriptorPool, Kind};
use prost_types::Timestamp;
use tonic::transport::Channel;

const MIN_SECS: i64 = -62_135_596_800;
const MAX_SECS: i64 = 253_402_300_799;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Times near every edge that matters, and anything at all.
fn any_time() -> impl Strategy<Value = Timestamp> {
    let now = now();
    let seconds = prop_oneof![
        (MIN_SECS - 100..MIN_SECS + 100),
        (MAX_SECS - 100..MAX_SECS + 100),
        (now - 86_400 * 400..now + 86_400 * 4_000),
        (now + 3_000..now + 86_400 * 20),
        any::<i64>(),
    ];
    let nanos = prop_oneof![
        Just(0),
        (-2..2i32),
        (999_999_990..1_000_000_010i32),
        any::<i32>(),
    ];
    (seconds, nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

fn in_range(t: &Option<Timestamp>) -> bool {
    t.as_ref().is_none_or(|t| {
        (MIN_SECS..=MAX_SECS).contains(&t.seconds) && (0..=999_999_999).contains(&t.nanos)
    })
}

#[test]
fn only_events_and_warehouse_requests_carry_times() {
    let pool = DescriptorPool::decode(munity_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut carrying = std::collections::BTreeSet::new();
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("munity."))
    {
        for method in service.methods() {
            let mut stack = vec![method.input()];
            let mut seen = std::collections::HashSet::new();
            while let Some(message) = stack.pop() {
                if !seen.insert(message.full_name().to_owned()) {
                    continue;
                }
                for field in message.fields() {
                    if let Kind::Message(inner) = field.kind() {
                        match inner.full_name() {
                            "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                                carrying.insert(service.full_name().to_owned());
                            }
                            name if name.starts_with("munity.") => stack.push(inner),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        carrying.into_iter().collect::<Vec<_>>(),
        ["munity.events.v1.Events", "munity.warehouse.v1.Warehouse"],
        "a service's requests gained or lost a time field: give it a property here"
    );
}

struct Dev {
    ready: Ready,
    gateway: Channel,
    events_direct: Channel,
    owner: String,
    admin: String,
    _data: tempfile::TempDir,
}

async fn start() -> Dev {
    let data = tempfile::tempdir().unwrap();
    let (ready, gateway) = start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
    let (admin, _) = register_as(&gateway, "Admin", ADMIN_EMAIL).await;
    let (owner, _) = register(&gateway, "Prop").await;
    // CreateEvent has a quota of 30 a minute at the edge: straight to the
    // service for writes, reads through the gateway.
    let events_direct = Channel::from_shared(format!("http://{}", ready.address("events")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Dev {
        ready,
        gateway,
        events_direct,
        owner,
        admin,
        _data: data,
    }
}

async fn http_get(dev: &Dev, token: &str, path_and_query: &str) -> (u16, String) {
    munity_testkit::curl(&[
        "-H",
        &format!("authorization: Bearer {token}"),
        &format!("http://{}{path_and_query}", dev.ready.address("gateway")),
    ])
    .await
}

/// RFC 3339 for a query parameter (valid times only).
fn rfc3339(t: &Timestamp) -> String {
    // prost_types' Display writes RFC 3339 for in-range times.
    t.to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn whatever_events_svc_accepts_reads_back_over_grpc_and_json() {
    let rt = runtime();
    let dev = rt.block_on(start());
    let accepted = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(spoiled in 0usize..4, time in any_time(), window in (any_time(), any_time()))| {
        rt.block_on(async {
            let mut request = munity_testkit::meeting_request("Property");
            match spoiled {
                0 => request.options[0].start = Some(time),
                1 => request.options[1].end = Some(time),
                2 => request.voting_deadline = Some(time),
                _ => request.options[2] = events::TimeOptionInput {
                    start: Some(time),
                    end: Some(Timestamp { seconds: time.seconds.saturating_add(3600), nanos: time.nanos }),
                },
            }
            let created = EventsClient::new(dev.events_direct.clone())
                .create_event(with_bearer(request, &dev.owner))
                .await;
            if let Ok(event) = created {
                accepted.set(accepted.get() + 1);
                let event = event.into_inner();
                let read = EventsClient::new(dev.gateway.clone())
                    .get_event(with_bearer(events::GetEventRequest { event_id: event.id.clone() }, &dev.owner))
                    .await
                    .expect("an accepted event reads back over gRPC")
                    .into_inner();
                assert!(in_range(&read.voting_deadline) && in_range(&read.created_at));
                assert!(read.options.iter().all(|o| in_range(&o.start) && in_range(&o.end)), "{read:?}");
                let (status, body) = http_get(&dev, &dev.owner, &format!("/v1/events/{}", event.id)).await;
                assert_eq!(status, 200, "{body}");
                let (status, body) = http_get(&dev, &dev.owner, "/v1/events?filter=EVENT_FILTER_UPCOMING&pageSize=100").await;
                assert_eq!(status, 200, "{body}");
            } else if let Err(status) = created {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            }
            // GetStats' window: whatever is accepted answers, both ways.
            let (from, to) = window;
            let stats = EventsClient::new(dev.gateway.clone())
                .get_stats(with_bearer(
                    events::GetStatsRequest { from: Some(from), to: Some(to), ..Default::default() },
                    &dev.admin,
                ))
                .await;
            match stats {
                Ok(stats) => {
                    let stats = stats.into_inner();
                    assert!(in_range(&stats.from) && in_range(&stats.to), "{stats:?}");
                    let (status, body) = http_get(
                        &dev,
                        &dev.admin,
                        &format!("/v1/stats?from={}&to={}", rfc3339(&from), rfc3339(&to)),
                    )
                    .await;
                    assert_eq!(status, 200, "{body}");
                }
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
            }
        });
    });
    println!(
        "events-svc accepted {} of 48 generated meetings",
        accepted.get()
    );
    // Every stored event still lists, for everyone.
    let (status, body) = rt.block_on(http_get(
        &dev,
        &dev.owner,
        "/v1/events?filter=EVENT_FILTER_UPCOMING",
    ));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn whatever_warehouse_svc_accepts_reads_back_over_grpc_and_json() {
    let rt = runtime();
    let dev = rt.block_on(start());
    let accepted = std::cell::Cell::new(0u32);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(time in any_time(), from in any_time(), to in any_time())| {
        rt.block_on(async {
            let mut warehouse = WarehouseClient::new(dev.gateway.clone());
            let ingested = warehouse
                .ingest(with_bearer(
                    wh::IngestRequest {
                        records: vec![wh::Record {
                            source: "prop.times".into(),
                            time: Some(time),
                            ..Default::default()
                        }],
                    },
                    &dev.admin,
                ))
                .await;
            match ingested {
                Ok(_) => accepted.set(accepted.get() + 1),
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
            }
            let queried = warehouse
                .query(with_bearer(
                    wh::QueryRequest {
                        source: "prop.times".into(),
                        from: Some(from),
                        to: Some(to),
                        page_size: 1000,
                        ..Default::default()
                    },
                    &dev.admin,
                ))
                .await;
            match queried {
                Ok(page) => {
                    let page = page.into_inner();
                    assert!(page.records.iter().all(|r| in_range(&r.time) && in_range(&r.stored_at)));
                    let (status, body) = http_get(
                        &dev,
                        &dev.admin,
                        &format!(
                            "/v1/warehouse/sources/prop.times/records?from={}&to={}&pageSize=1000",
                            rfc3339(&from),
                            rfc3339(&to)
                        ),
                    )
                    .await;
                    assert_eq!(status, 200, "{body}");
                }
                Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
            }
        });
    });
    println!(
        "warehouse-svc accepted {} of 48 generated records",
        accepted.get()
    );
    // The whole history of the source still reads, both ways.
    let everything = rt.block_on(async {
        WarehouseClient::new(dev.gateway.clone())
            .query(with_bearer(
                wh::QueryRequest {
                    source: "prop.times".into(),
                    from: Some(Timestamp {
                        seconds: 0,
                        nanos: 0,
                    }),
                    to: Some(Timestamp {
                        seconds: MAX_SECS,
                        nanos: 0,
                    }),
                    page_size: 1000,
                    ..Default::default()
                },
                &dev.admin,
            ))
            .await
    });
    assert!(everything.is_ok(), "{everything:?}");
}

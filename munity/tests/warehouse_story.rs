//! The warehouse through `munity dev`'s gateway: a producer (a service
//! account) ingests unary and streaming; a reader pages a range while the
//! producer keeps ingesting and sees every record once; aggregates match a
//! brute-force count; a tail gets new records and resumes after a
//! disconnect with nothing missed; bad records are refused by index;
//! callers without the right scope are refused; domain events show up as
//! activity.

use std::{collections::HashSet, time::Duration};

use munity_platform::auth::with_bearer;
use munity_proto::{
    users::v1::{self as users, users_client::UsersClient},
    warehouse::v1::{
        self as wh, Record, TailResponse, tail_response::Kind, warehouse_client::WarehouseClient,
    },
};
use munity_testkit::{ADMIN_EMAIL, curl, register, register_as, service_token, start_dev};
use prost_types::Timestamp;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

const BASE_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn at(ms: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    })
}

fn reading(source: &str, id: &str, ms: i64, celsius: f64) -> Record {
    Record {
        id: id.to_owned(),
        source: source.to_owned(),
        time: at(ms),
        attributes: [("celsius".to_owned(), celsius.to_string())].into(),
        payload: Some(wh::record::Payload::Data(vec![b'x'; 100])),
        content_type: "application/octet-stream".to_owned(),
        stored_at: None,
    }
}

fn client(channel: &Channel) -> WarehouseClient<Channel> {
    WarehouseClient::new(channel.clone())
}

async fn ingest(channel: &Channel, token: &str, records: Vec<Record>) -> wh::IngestResponse {
    client(channel)
        .ingest(with_bearer(wh::IngestRequest { records }, token))
        .await
        .unwrap()
        .into_inner()
}

/// Every record of a range, page by page.
async fn query_all(
    channel: &Channel,
    token: &str,
    source: &str,
    from: i64,
    to: i64,
    page_size: u32,
) -> Vec<Record> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client(channel)
            .query(with_bearer(
                wh::QueryRequest {
                    source: source.to_owned(),
                    from: at(from),
                    to: at(to),
                    order: wh::Order::Ascending as i32,
                    page_size,
                    page_token: page_token.clone(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

async fn next_record(stream: &mut tonic::Streaming<TailResponse>) -> wh::TailRecord {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("a record within 15 s")
            .unwrap()
            .expect("the tail goes on");
        match message.kind {
            Some(Kind::Record(record)) => return record,
            Some(Kind::Heartbeat(_)) => continue,
            None => panic!("an empty tail message"),
        }
    }
}

async fn tail(
    channel: &Channel,
    token: &str,
    source: &str,
    after: &str,
) -> tonic::Streaming<TailResponse> {
    client(channel)
        .tail(with_bearer(
            wh::TailRequest {
                source: source.to_owned(),
                after: after.to_owned(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_warehouse_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let (munity, channel) = start_dev(env!("CARGO_BIN_EXE_munity"), dir.path()).await;
    let base = format!("http://{}", munity.address("gateway"));
    let (admin, _) = register_as(&channel, "Ops", ADMIN_EMAIL).await;
    let (user, _) = register(&channel, "Ann").await;
    let producer = service_token(&channel, &admin, "sensors", &["warehouse.produce"]).await;
    let berlin_only = service_token(
        &channel,
        &admin,
        "berlin",
        &["warehouse.produce:sensors.berlin"],
    )
    .await;
    let reader = service_token(&channel, &admin, "dashboards", &["warehouse.read"]).await;
    let source = "sensors.berlin";

    // --- unary ingest, idempotent -----------------------------------------
    let first: Vec<Record> = (0..50)
        .map(|n| reading(source, &format!("u{n}"), BASE_MS + n * 60_000, n as f64))
        .collect();
    let stored = ingest(&channel, &producer, first.clone()).await;
    assert_eq!(stored.accepted, 50);
    assert_eq!(stored.ids[7], "u7");
    ingest(&channel, &berlin_only, first.clone()).await; // the same batch again
    let all = query_all(
        &channel,
        &reader,
        source,
        BASE_MS,
        BASE_MS + 86_400_000,
        1000,
    )
    .await;
    assert_eq!(all.len(), 50, "a batch sent twice is stored once");

    // --- streaming ingest ---------------------------------------------------
    let batches: Vec<wh::IngestRequest> = (0..10)
        .map(|b| wh::IngestRequest {
            records: (0..20)
                .map(|n| {
                    let i = 50 + b * 20 + n;
                    reading(source, &format!("s{i}"), BASE_MS + i * 60_000, i as f64)
                })
                .collect(),
        })
        .collect();
    let streamed = client(&channel)
        .ingest_stream(with_bearer(tokio_stream::iter(batches), &producer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((streamed.batches, streamed.accepted), (10, 200));

    // --- bad records: refused with their index, nothing stored --------------
    let mut bad = vec![reading(source, "ok-1", BASE_MS, 1.0); 3];
    bad[1].source = "Not A Source".to_owned();
    bad[2].id = "spaces are not ids".to_owned();
    bad[0].id = "ok-1".to_owned();
    let refused = client(&channel)
        .ingest(with_bearer(wh::IngestRequest { records: bad }, &producer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let fields: Vec<String> = refused
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["records[1].source", "records[2].id"]);
    // A bad batch in a stream: the batches before it are stored, and the
    // status says so.
    let stream = vec![
        wh::IngestRequest {
            records: vec![reading("sensors.paris", "p1", BASE_MS, 1.0)],
        },
        wh::IngestRequest {
            records: vec![reading("sensors.paris", "p2", -5, 1.0)],
        },
    ];
    let refused = client(&channel)
        .ingest_stream(with_bearer(tokio_stream::iter(stream), &producer))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("the 1 batches before it were stored"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused.get_details_bad_request().unwrap().field_violations[0].field,
        "records[0].time"
    );

    // --- who may do what ------------------------------------------------------
    let denied = client(&channel)
        .ingest(with_bearer(
            wh::IngestRequest {
                records: vec![reading("sensors.paris", "x", BASE_MS, 1.0)],
            },
            &berlin_only,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    for token in [&user, &berlin_only] {
        let denied = client(&channel)
            .query(with_bearer(
                wh::QueryRequest {
                    source: source.to_owned(),
                    from: at(BASE_MS),
                    to: at(BASE_MS + 1),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
    let denied = client(&channel)
        .ingest(with_bearer(
            wh::IngestRequest {
                records: vec![reading("domain.users", "x", BASE_MS, 1.0)],
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "domain.* is the warehouse's own"
    );
    let unauthenticated = client(&channel)
        .ingest(wh::IngestRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    // --- pages while another client keeps ingesting -------------------------
    let existing: HashSet<String> = query_all(
        &channel,
        &reader,
        source,
        BASE_MS,
        BASE_MS + 86_400_000,
        1000,
    )
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    assert_eq!(existing.len(), 250);
    let writer = {
        let (channel, producer) = (channel.clone(), producer.clone());
        tokio::spawn(async move {
            for round in 0..40i64 {
                // Before, among and after what the reader pages through.
                let records = [1, 400, 1_200]
                    .iter()
                    .map(|minute| {
                        reading(
                            source,
                            &format!("late{round}-{minute}"),
                            BASE_MS + minute * 60_000 + round + 7,
                            0.0,
                        )
                    })
                    .collect();
                ingest(&channel, &producer, records).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let paged = query_all(&channel, &reader, source, BASE_MS, BASE_MS + 86_400_000, 9).await;
    writer.await.unwrap();
    let ids: Vec<&str> = paged.iter().map(|r| r.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no record twice across pages");
    assert!(
        existing.iter().all(|id| unique.contains(id.as_str())),
        "no record skipped"
    );

    // --- aggregates equal a brute-force count --------------------------------
    let everything = query_all(
        &channel,
        &reader,
        source,
        BASE_MS,
        BASE_MS + 86_400_000,
        1000,
    )
    .await;
    let aggregate = client(&channel)
        .aggregate(with_bearer(
            wh::AggregateRequest {
                source: source.to_owned(),
                from: at(BASE_MS),
                to: at(BASE_MS + 86_400_000),
                bucket: wh::BucketWidth::Hour as i32,
                attribute: "celsius".to_owned(),
            },
            &reader,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(aggregate.scanned, everything.len() as u64);
    let mut brute: std::collections::BTreeMap<i64, (u64, f64, f64, f64)> = Default::default();
    for record in &everything {
        let time = record.time.as_ref().unwrap();
        let hour = time.seconds.div_euclid(3600) * 3600;
        let value: f64 = record.attributes["celsius"].parse().unwrap();
        let entry = brute.entry(hour).or_insert((0, f64::MAX, f64::MIN, 0.0));
        entry.0 += 1;
        entry.1 = entry.1.min(value);
        entry.2 = entry.2.max(value);
        entry.3 += value;
    }
    assert_eq!(aggregate.buckets.len(), brute.len());
    for (bucket, (hour, (count, min, max, sum))) in aggregate.buckets.iter().zip(&brute) {
        assert_eq!(bucket.start.as_ref().unwrap().seconds, *hour);
        assert_eq!((bucket.count, bucket.values), (*count, *count));
        assert_eq!((bucket.min, bucket.max, bucket.sum), (*min, *max, *sum));
        assert!((bucket.avg - sum / *count as f64).abs() < 1e-9);
    }

    // --- export: the whole range on one stream -------------------------------
    let mut export = client(&channel)
        .export(with_bearer(
            wh::ExportRequest {
                source: source.to_owned(),
                from: at(BASE_MS),
                to: at(BASE_MS + 86_400_000),
                order: wh::Order::Descending as i32,
            },
            &reader,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(record) = export.message().await.unwrap() {
        exported.push(record.id);
    }
    let mut expected: Vec<String> = everything.iter().map(|r| r.id.clone()).collect();
    expected.reverse();
    assert_eq!(exported, expected);

    // --- tail: live, then resume after a disconnect --------------------------
    let live = "chat.general";
    let mut stream = tail(&channel, &reader, live, "").await;
    ingest(&channel, &producer, vec![reading(live, "m1", BASE_MS, 0.0)]).await;
    let m1 = next_record(&mut stream).await;
    assert_eq!(m1.record.as_ref().unwrap().id, "m1");
    ingest(
        &channel,
        &producer,
        vec![reading(live, "m2", BASE_MS - 5, 0.0)],
    )
    .await;
    let m2 = next_record(&mut stream).await;
    assert_eq!(
        m2.record.as_ref().unwrap().id,
        "m2",
        "arrival order, not event time"
    );
    drop(stream); // the viewer goes away ...
    for n in 3..=5 {
        ingest(
            &channel,
            &producer,
            vec![reading(live, &format!("m{n}"), BASE_MS, 0.0)],
        )
        .await;
    }
    // ... and comes back with its last cursor: exactly what it missed, then live.
    let mut stream = tail(&channel, &reader, live, &m2.cursor).await;
    for n in 3..=5 {
        assert_eq!(
            next_record(&mut stream).await.record.unwrap().id,
            format!("m{n}")
        );
    }
    ingest(&channel, &producer, vec![reading(live, "m6", BASE_MS, 0.0)]).await;
    assert_eq!(next_record(&mut stream).await.record.unwrap().id, "m6");
    let bad_cursor = client(&channel)
        .tail(with_bearer(
            wh::TailRequest {
                source: live.to_owned(),
                after: "not-a-cursor".to_owned(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_cursor.code(), Code::InvalidArgument);

    // --- over HTTP/JSON: a device posts readings with curl -------------------
    let bearer = format!("authorization: Bearer {producer}");
    let reading_bearer = format!("authorization: Bearer {reader}");
    let records_url = format!("{base}/v1/warehouse/records");
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        &bearer,
        "-d",
        r#"{"records":[{"source":"sensors.curl","id":"c1","time":"2026-01-01T00:00:00Z","attributes":{"celsius":"3.5"}},
                       {"source":"sensors.curl","id":"c2","time":"2026-01-01T00:01:00Z","attributes":{"celsius":"4.5"}}]}"#,
        &records_url,
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""accepted":"2""#), "{body}");
    let (status, body) = curl(&[
        "-H",
        &reading_bearer,
        &format!(
            "{base}/v1/warehouse/sources/sensors.curl/records?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&order=ORDER_DESCENDING&pageSize=1"
        ),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["records"][0]["id"], "c2");
    assert!(
        page["nextPageToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-d",
        r#"{"records":[{"source":"sensors.curl"},{"source":"BAD"}]}"#,
        &records_url,
    ])
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("records[1].source"), "{body}");
    // The same tail over NDJSON: a plain HTTP client follows the source.
    let url = format!(
        "{base}/v1/warehouse/sources/{live}/tail?after={}",
        m2.cursor
    );
    let body = tokio::task::spawn_blocking(move || {
        // Ends by curl's own time limit: the stream itself goes on.
        let output = std::process::Command::new("curl")
            .args(["-sS", "-N", "--max-time", "3", "-H", &reading_bearer, &url])
            .output()
            .expect("curl runs");
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap();
    let ids: Vec<String> = body
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| {
            event["result"]["record"]["record"]["id"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(ids, ["m3", "m4", "m5", "m6"]);

    // --- activity: domain events as records of domain.<service> -------------
    UsersClient::new(channel.clone())
        .create_community(with_bearer(
            users::CreateCommunityRequest {
                name: "Warehouse watchers".to_owned(),
                description: String::new(),
            },
            &user,
        ))
        .await
        .unwrap();
    let now = munity_store::now_millis();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let activity = query_all(
            &channel,
            &admin,
            "domain.users",
            now - 3_600_000,
            now + 3_600_000,
            100,
        )
        .await;
        if activity.iter().any(|r| {
            r.attributes
                .get("type")
                .is_some_and(|t| t.ends_with("CommunityCreated"))
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CommunityCreated in domain.users within 20 s; got {activity:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

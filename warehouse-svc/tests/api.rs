//! warehouse-svc's edges, in process (users-svc beside it for tokens):
//! pages of large records stay under clients' message limit; clients that
//! stop reading hold their own stream slot, not other callers' scans;
//! requests that cannot be answered get their status at once.

use std::time::Duration;

use munity_platform::{
    auth::{AuthConfig, with_bearer},
    config::BusConfig,
};
use munity_proto::warehouse::v1::{self as pb, warehouse_client::WarehouseClient};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;
use warehouse_svc::{WarehouseConfig, WarehouseService, domain::ArrivalCursor};

const BASE_S: i64 = 1_767_225_600;

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn query(source: &str, page_token: &str, page_size: u32) -> pb::QueryRequest {
    pb::QueryRequest {
        source: source.to_owned(),
        from: at(BASE_S),
        to: at(BASE_S + 3600),
        order: 0,
        page_size,
        page_token: page_token.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pages_stalled_streams_and_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (users, _users) = munity_testkit::serve_in_process::<users_svc::UsersService>(
        users_svc::UsersConfig {
            admin_emails: vec!["ops@example.com".to_owned()],
            ..Default::default()
        },
        &dir.path().join("users"),
        BusConfig {
            path: dir.path().join("users-bus"),
            ..Default::default()
        },
        AuthConfig::default(),
    )
    .await;
    let (warehouse, _warehouse) = munity_testkit::serve_in_process::<WarehouseService>(
        WarehouseConfig {
            max_streams: 2,
            max_scans: 1,
            ..WarehouseConfig::default()
        },
        &dir.path().join("warehouse"),
        BusConfig {
            path: dir.path().join("warehouse-bus"),
            ..Default::default()
        },
        AuthConfig {
            jwks_url: users.clone(),
            ..Default::default()
        },
    )
    .await;
    let users_channel = Channel::from_shared(users)
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
    let mut client = WarehouseClient::new(
        Channel::from_shared(warehouse)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );

    // 100 records of 60 KiB: 6 MB in all.
    let source = "blobs.large";
    for batch in 0..10 {
        let records = (0..10)
            .map(|n| pb::Record {
                id: format!("b{batch}-{n}"),
                source: source.to_owned(),
                time: at(BASE_S + batch * 10 + n),
                payload: Some(pb::record::Payload::Data(vec![7; 60 * 1024])),
                ..Default::default()
            })
            .collect();
        client
            .ingest(with_bearer(pb::IngestRequest { records }, &token))
            .await
            .unwrap();
    }
    // A page of 100 is cut under 4 MiB; the token goes on from there.
    let mut seen = Vec::new();
    let mut token_text = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .query(with_bearer(query(source, &token_text, 100), &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.records.len() < 100 || pages > 0, "cut by size");
        pages += 1;
        seen.extend(page.records.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token_text = page.next_page_token;
    }
    assert!(pages >= 2);
    assert_eq!(seen.len(), 100);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 100);

    // Two exports nobody reads fill this replica's stream slots (max 2) ...
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(
            client
                .export(with_bearer(
                    pb::ExportRequest {
                        source: source.to_owned(),
                        from: at(BASE_S),
                        to: at(BASE_S + 3600),
                        order: 0,
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = client
        .tail(with_bearer(
            pb::TailRequest {
                source: source.to_owned(),
                after: String::new(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // ... but hold no scan: an Aggregate (max_scans 1) still answers.
    let aggregate = tokio::time::timeout(
        Duration::from_secs(10),
        client.aggregate(with_bearer(
            pb::AggregateRequest {
                source: source.to_owned(),
                from: at(BASE_S),
                to: at(BASE_S + 3600),
                bucket: pb::BucketWidth::Minute as i32,
                attribute: String::new(),
            },
            &token,
        )),
    )
    .await
    .expect("an Aggregate beside stalled Exports answers")
    .unwrap()
    .into_inner();
    assert_eq!(aggregate.scanned, 100);
    assert_eq!(aggregate.buckets.iter().map(|b| b.count).sum::<u64>(), 100);
    drop(stalled);

    // Requests that cannot be answered: their status at once.
    let other_range = pb::QueryRequest {
        to: at(BASE_S + 7200),
        ..query(source, &token_text, 10)
    };
    let cases: Vec<(pb::QueryRequest, &str)> = vec![
        (query(source, "", 5000), "page_size"),
        (other_range, "page_token"),
        (
            pb::QueryRequest {
                to: at(BASE_S),
                ..query(source, "", 10)
            },
            "to",
        ),
        (
            pb::QueryRequest {
                from: None,
                ..query(source, "", 10)
            },
            "from",
        ),
        (query("NOT valid", "", 10), "source"),
    ];
    for (request, field) in cases {
        let status = client
            .query(with_bearer(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let no_bucket = client
        .aggregate(with_bearer(
            pb::AggregateRequest {
                source: source.to_owned(),
                from: at(BASE_S),
                to: at(BASE_S + 1),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(no_bucket.code(), Code::InvalidArgument);
    let ancient = ArrivalCursor {
        at: 1_000,
        batch: uuid::Uuid::nil(),
        index: 0,
    };
    let too_old = client
        .tail(with_bearer(
            pb::TailRequest {
                source: source.to_owned(),
                after: ancient.encode(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(too_old.code(), Code::OutOfRange, "{too_old:?}");
    let too_many = client
        .ingest(with_bearer(
            pb::IngestRequest {
                records: vec![
                    pb::Record {
                        source: source.to_owned(),
                        ..Default::default()
                    };
                    1001
                ],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let too_big = client
        .ingest(with_bearer(
            pb::IngestRequest {
                records: vec![pb::Record {
                    source: source.to_owned(),
                    payload: Some(pb::record::Payload::Data(vec![0; 64 * 1024 + 1])),
                    ..Default::default()
                }],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert!(too_big.message().contains("records[0].data"), "{too_big:?}");

    // IngestStream reads records off the wire and keeps those that need no
    // change as sent: what comes back is what the input rules make of
    // each, whichever way it was read.
    let mixed = "stream.mixed";
    let sent = |id: &str, n: i64| pb::Record {
        id: id.to_owned(),
        source: mixed.to_owned(),
        time: at(BASE_S + n),
        attributes: [("n".to_owned(), n.to_string())].into(),
        payload: Some(pb::record::Payload::Data(vec![n as u8; 10])),
        content_type: "application/octet-stream".to_owned(),
        ..Default::default()
    };
    let mut sub_ms = sent("c", 3);
    sub_ms.time.as_mut().unwrap().nanos = 1_500_000; // kept to the millisecond
    let mut with_stored_at = sent("d", 4);
    with_stored_at.stored_at = at(1); // output only: replaced
    let batches = vec![
        pb::IngestRequest {
            records: vec![sent("a", 1), sent("b", 2)],
        },
        pb::IngestRequest {
            records: vec![sub_ms, with_stored_at],
        },
    ];
    let answer = client
        .ingest_stream(with_bearer(tokio_stream::iter(batches), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.batches, answer.accepted), (2, 4));
    let page = client
        .query(with_bearer(query(mixed, "", 100), &token))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(page.len(), 4);
    for (n, mut record) in page.into_iter().enumerate() {
        let stored_at = record.stored_at.take().expect("stored_at");
        assert!(stored_at.seconds > BASE_S - 86_400 * 365, "{stored_at:?}");
        let mut expected = sent(["a", "b", "c", "d"][n], n as i64 + 1);
        if n == 2 {
            expected.time.as_mut().unwrap().nanos = 1_000_000;
        }
        assert_eq!(record, expected);
    }
    // A bad batch in a stream: the ones before it are stored, and its
    // violations are named as the rules name them (the declared field
    // rules first, then the warehouse's own).
    for (bad, field, told) in [
        (
            pb::Record {
                source: "Not A Source".to_owned(),
                ..sent("g", 7)
            },
            "records[1].source",
            "(1 batches were stored before it)",
        ),
        (
            pb::Record {
                time: at(-5),
                ..sent("g", 7)
            },
            "records[1].time",
            "the 1 batches before it were stored",
        ),
    ] {
        let batches = vec![
            pb::IngestRequest {
                records: vec![sent("e", 5)],
            },
            pb::IngestRequest {
                records: vec![sent("f", 6), bad],
            },
        ];
        let refused = client
            .ingest_stream(with_bearer(tokio_stream::iter(batches), &token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(told), "{refused:?}");
        let violations = refused.get_details_bad_request().expect("details");
        assert_eq!(violations.field_violations[0].field, field);
    }
    let domain = client
        .ingest_stream(with_bearer(
            tokio_stream::iter(vec![pb::IngestRequest {
                records: vec![pb::Record {
                    source: "domain.users".to_owned(),
                    ..sent("h", 8)
                }],
            }]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(domain.code(), Code::PermissionDenied, "{domain:?}");
}

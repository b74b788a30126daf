//! What the request checks cost beside decoding, on the largest request a
//! client sends: a warehouse batch of 1,000 records (each with a time,
//! attributes and a Struct payload the check skips), and on a small one.
//! Prints figures; asserts nothing (`cargo bench -p munity-proto`).

use std::time::Instant;

use munity_proto::{
    bad_request::FieldViolations,
    events::v1::{CreateEventRequest, TimeOptionInput},
    validate,
    warehouse::v1::{IngestRequest, Record, record},
};
use prost::{Message, Name};
use prost_types::{Struct, Timestamp, Value, value::Kind};

fn measure<M: Message + Name + Default>(label: &str, message: &M, rounds: u32) {
    let bytes = message.encode_to_vec();
    let check = validate::request_check(&M::full_name()).expect("a request type");
    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(M::decode(bytes.as_slice()).unwrap());
    }
    let decode = started.elapsed() / rounds;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut violations = FieldViolations::new();
        check.check(std::hint::black_box(&bytes), &mut violations);
        assert!(violations.is_empty(), "{violations}");
    }
    let checked = started.elapsed() / rounds;
    println!(
        "{label}: {} bytes, decode {decode:?}, check {checked:?} ({:.0}% of decode)",
        bytes.len(),
        100.0 * checked.as_secs_f64() / decode.as_secs_f64()
    );
}

fn main() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let payload = Struct {
        fields: [
            (
                "celsius".to_owned(),
                Value {
                    kind: Some(Kind::NumberValue(4.5)),
                },
            ),
            (
                "station".to_owned(),
                Value {
                    kind: Some(Kind::StringValue("berlin-7".into())),
                },
            ),
        ]
        .into(),
    };
    let batch = IngestRequest {
        records: (0..1000)
            .map(|i| Record {
                id: format!("r-{i}"),
                source: "sensors.berlin".into(),
                time: Some(Timestamp {
                    seconds: now - i,
                    nanos: 0,
                }),
                attributes: [
                    ("unit".to_owned(), "c".to_owned()),
                    ("floor".to_owned(), "3".to_owned()),
                ]
                .into(),
                payload: Some(record::Payload::Value(payload.clone())),
                ..Default::default()
            })
            .collect(),
    };
    measure("IngestRequest, 1,000 records", &batch, 200);
    let event = CreateEventRequest {
        title: "Ridge walk".into(),
        description: "Bring water".into(),
        options: (0..3)
            .map(|i| TimeOptionInput {
                start: Some(Timestamp {
                    seconds: now + 86_400 * (i + 1),
                    nanos: 0,
                }),
                end: Some(Timestamp {
                    seconds: now + 86_400 * (i + 1) + 3600,
                    nanos: 0,
                }),
            })
            .collect(),
        voting_deadline: Some(Timestamp {
            seconds: now + 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    measure("CreateEventRequest", &event, 200_000);
}

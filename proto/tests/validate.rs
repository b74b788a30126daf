//! The request checks the codec runs on every request message, read from
//! the descriptors: what they refuse, and the field path they name.

use munity_proto::{
    bad_request::FieldViolations,
    events::v1::{CreateEventRequest, GetStatsRequest, ListEventsRequest, TimeOptionInput},
    users::v1::RegisterRequest,
    validate,
    warehouse::v1::{IngestRequest, Record, record},
};
use prost::{Message, Name};
use prost_types::{Struct, Timestamp, Value, value::Kind};

fn violations<M: Message + Name>(message: &M) -> Vec<(String, String)> {
    let check = validate::request_check(&M::full_name()).expect("a request type");
    let mut violations = FieldViolations::new();
    check.check(&message.encode_to_vec(), &mut violations);
    violations
        .iter()
        .map(|(f, d)| (f.to_owned(), d.to_owned()))
        .collect()
}

fn fields<M: Message + Name>(message: &M) -> Vec<String> {
    violations(message).into_iter().map(|(f, _)| f).collect()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn good_event() -> CreateEventRequest {
    let start = now() + 86_400;
    CreateEventRequest {
        title: "Ridge walk".into(),
        options: vec![TimeOptionInput {
            start: at(start, 0),
            end: at(start + 3600, 0),
        }],
        voting_deadline: at(start - 3600, 0),
        ..Default::default()
    }
}

#[test]
fn a_good_request_passes() {
    assert_eq!(violations(&good_event()), []);
}

#[test]
fn timestamps_outside_protobufs_range_are_named() {
    let mut event = good_event();
    // Year 10000, the value that broke listings for everyone.
    event.options[0].start = at(253_402_300_800, 0);
    event.options.push(TimeOptionInput {
        start: at(now() + 100, -1),
        end: at(now() + 200, 2_000_000_000),
    });
    let found = violations(&event);
    let names: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        ["options[0].start", "options[1].start", "options[1].end"]
    );
    assert!(found[0].1.contains("9999-12-31"), "{found:?}");
    assert!(found[1].1.contains("nanos"), "{found:?}");
}

#[test]
fn a_meeting_more_than_ten_years_out_is_refused() {
    let mut event = good_event();
    event.voting_deadline = at(now() + 11 * 366 * 86_400, 0);
    assert_eq!(fields(&event), ["voting_deadline"]);
}

#[test]
fn required_fields_lengths_and_counts() {
    let event = CreateEventRequest {
        title: "x".repeat(201),
        community_id: "not-a-uuid".into(),
        ..Default::default()
    };
    assert_eq!(
        fields(&event),
        ["title", "community_id", "options", "voting_deadline"]
    );
    let register = RegisterRequest {
        email: "nope".into(),
        password: "short".into(),
        display_name: String::new(),
    };
    let found = violations(&register);
    assert_eq!(
        found,
        [
            (
                "email".to_owned(),
                "must be a valid email address like name@example.com".to_owned()
            ),
            (
                "password".to_owned(),
                "must be 8 to 128 characters (got 5)".to_owned()
            ),
            ("display_name".to_owned(), "is required".to_owned()),
        ]
    );
}

#[test]
fn integer_bounds_allow_zero_as_the_default() {
    let list = ListEventsRequest {
        filter: 4,
        page_size: 4_294_967_295,
        ..Default::default()
    };
    assert_eq!(fields(&list), ["page_size"]);
    let default_page = ListEventsRequest {
        filter: 4,
        ..Default::default()
    };
    assert_eq!(fields(&default_page), Vec::<String>::new());
    let stats = GetStatsRequest {
        top: 1_000_000,
        ..Default::default()
    };
    assert_eq!(fields(&stats), ["top"]);
}

#[test]
fn free_form_payloads_are_not_walked_but_record_times_are() {
    let nested = (0..20).fold(Value { kind: None }, |inner, _| Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [("a".to_owned(), inner)].into(),
        })),
    });
    let record = |seconds| Record {
        source: "sensors".into(),
        time: at(seconds, 0),
        payload: Some(record::Payload::Value(Struct {
            fields: [("deep".to_owned(), nested.clone())].into(),
        })),
        ..Default::default()
    };
    let batch = IngestRequest {
        records: vec![record(now()), record(-62_135_596_801)],
    };
    assert_eq!(fields(&batch), ["records[1].time"]);
}

#[test]
fn every_request_type_has_a_plan_and_no_response_type_is_checked() {
    assert!(validate::is_request("munity.events.v1.CreateEventRequest"));
    assert!(!validate::is_request("munity.events.v1.Event"));
    assert!(validate::request_check("munity.events.v1.Event").is_none());
}

#[test]
fn patterns_name_what_they_mean() {
    let record = |source: &str, id: &str| Record {
        source: source.into(),
        id: id.into(),
        time: at(now(), 0),
        ..Default::default()
    };
    let batch = IngestRequest {
        records: vec![
            record("sensors.berlin", "r-1"),
            record("Sensors Berlin", "r 2"),
        ],
    };
    let found = violations(&batch);
    let names: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(names, ["records[1].id", "records[1].source"]);
    assert!(found[1].1.starts_with("must be a source name"), "{found:?}");
    let blank = RegisterRequest {
        email: "ada@example.com".into(),
        password: "correct horse".into(),
        display_name: " \u{7}".into(),
    };
    assert_eq!(fields(&blank), ["display_name"]);
}

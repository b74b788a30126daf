//! Defects found from outside (issue 19), replayed against a real
//! `munity dev`, through its gateway unless said otherwise:
//!
//! - a service token acting as a user took the last seat of a meeting;
//! - a meeting time in the year 10000 was stored and broke listings;
//! - bytes that do not decode were INTERNAL instead of INVALID_ARGUMENT;
//! - bounds the protos state were not enforced.
//!
//! The last two are checked for every method and every bounded field the
//! descriptors hold, so a new method or a new bound is covered the day it
//! is declared.

use std::collections::BTreeMap;

use bytes::Bytes;
use munity_platform::{auth::with_bearer, policy::MethodPolicy};
use munity_proto::{
    events::v1::{self as events, events_client::EventsClient},
    validate::{FieldRules, Format},
};
use munity_testkit::{
    ADMIN_EMAIL, Ready, meeting_request, raw_grpc, register, register_as, start_dev,
};
use prost::Message;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// A running `munity dev` and the callers the tests need.
struct Dev {
    ready: Ready,
    gateway: Channel,
    admin: String,
    /// A service token holding every scope any method names.
    all_scopes: String,
    policy: MethodPolicy,
    _data: tempfile::TempDir,
}

impl Dev {
    async fn start() -> Dev {
        let data = tempfile::tempdir().unwrap();
        let (ready, gateway) = start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
        let (admin, _) = register_as(&gateway, "Admin", ADMIN_EMAIL).await;
        let policy =
            MethodPolicy::from_descriptor_sets(&[munity_proto::FILE_DESCRIPTOR_SET]).unwrap();
        let all_scopes = munity_testkit::service_token(
            &gateway,
            &admin,
            "all-scopes",
            &policy.declared_scopes(),
        )
        .await;
        Dev {
            ready,
            gateway,
            admin,
            all_scopes,
            policy,
            _data: data,
        }
    }

    /// Calls `path` as a caller it admits (anonymous for public methods,
    /// an admin, or a service with every scope when users may not call),
    /// through the gateway, or at the service directly for methods with a
    /// quota at the edge (Register's 5 a minute would stop a walk).
    async fn call_as_admitted(&self, path: &str, message: Bytes) -> Result<Bytes, tonic::Status> {
        let token = if self.policy.is_public(path) {
            None
        } else if self.policy.callers(path).users {
            Some(self.admin.as_str())
        } else {
            Some(self.all_scopes.as_str())
        };
        if self.policy.quotas().contains_key(path) {
            let upstream = self.upstream_of(path);
            let channel = Channel::from_shared(format!("http://{}", self.ready.address(&upstream)))
                .unwrap()
                .connect()
                .await
                .unwrap();
            return raw_grpc::call(&channel, path, token, message).await;
        }
        raw_grpc::call(&self.gateway, path, token, message).await
    }

    fn upstream_of(&self, path: &str) -> String {
        let service = path.trim_start_matches('/').split('/').next().unwrap();
        self.policy
            .services()
            .iter()
            .find(|s| s.name == service)
            .map(|s| s.upstream.clone())
            .unwrap_or_else(|| panic!("no upstream serves {service}"))
    }

    /// Every method of every Munity service: (path, request type).
    fn methods(&self) -> Vec<(String, MessageDescriptor)> {
        let pool = self.policy.pool();
        pool.services()
            .filter(|s| s.full_name().starts_with("munity."))
            .flat_map(|s| {
                s.methods()
                    .map(|m| (format!("/{}/{}", s.full_name(), m.name()), m.input()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_cannot_take_a_users_seat() {
    let dev = Dev::start().await;
    let (owner, _) = register(&dev.gateway, "Owner").await;
    let mut client = EventsClient::new(dev.gateway.clone());
    let mut request = meeting_request("One seat");
    request.capacity = 1;
    let event = client
        .create_event(with_bearer(request, &owner))
        .await
        .unwrap()
        .into_inner();
    // The finding's token: a service account whose one scope is a read.
    let reader =
        munity_testkit::service_token(&dev.gateway, &dev.admin, "reader", &["warehouse.read"])
            .await;
    let join = |token: &str| {
        with_bearer(
            events::JoinRequest {
                event_id: event.id.clone(),
            },
            token,
        )
    };
    let refused = client.join(join(&reader)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("never acts as a user"),
        "{refused:?}"
    );
    // And at events-svc itself, not only at the edge.
    let direct = Channel::from_shared(format!("http://{}", dev.ready.address("events")))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let refused = EventsClient::new(direct)
        .join(join(&reader))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // The seat is still there for the owner.
    client.join(join(&owner)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_times_outside_protobufs_range_or_sense_are_refused_by_field() {
    let dev = Dev::start().await;
    let (owner, _) = register(&dev.gateway, "Planner").await;
    let mut client = EventsClient::new(dev.gateway.clone());
    type Spoil = Box<dyn Fn(&mut events::CreateEventRequest)>;
    let cases: [(&str, Spoil); 4] = [
        (
            "options[0].start",
            Box::new(|r| r.options[0].start.as_mut().unwrap().seconds = 253_402_300_800),
        ),
        (
            "options[1].start",
            Box::new(|r| r.options[1].start.as_mut().unwrap().nanos = -1),
        ),
        (
            "options[2].end",
            Box::new(|r| r.options[2].end.as_mut().unwrap().nanos = 2_000_000_000),
        ),
        // A meeting 9,000 years out is within protobuf's range but not the
        // field's sense (the proto says: at most 3,660 days ahead).
        (
            "voting_deadline",
            Box::new(|r| r.voting_deadline.as_mut().unwrap().seconds = 253_402_000_000),
        ),
    ];
    for (field, spoil) in cases {
        let mut request = meeting_request("Far out");
        spoil(&mut request);
        let status = client
            .create_event(with_bearer(request, &owner))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    // Nothing was stored: the upcoming listing answers, over gRPC and JSON.
    let listed = client
        .list_events(with_bearer(
            events::ListEventsRequest {
                filter: events::EventFilter::Upcoming as i32,
                ..Default::default()
            },
            &owner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.events.is_empty(), "{listed:?}");
    let (status, body) = munity_testkit::curl(&[
        "-H",
        &format!("authorization: Bearer {owner}"),
        &format!(
            "http://{}/v1/events?filter=EVENT_FILTER_UPCOMING",
            dev.ready.address("gateway")
        ),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_decode_are_invalid_argument_everywhere() {
    let dev = Dev::start().await;
    let mut wrong = Vec::new();
    // Bytes that are no protobuf message at all, on every method.
    for (path, input) in dev.methods() {
        match dev
            .call_as_admitted(&path, Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]))
            .await
        {
            Err(status)
                if status.code() == Code::InvalidArgument
                    && status.message().starts_with(&format!(
                        "the request is not a valid {} message",
                        input.full_name()
                    )) => {}
            other => wrong.push(format!("{path}: {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A truncated field and a wrong wire type (CreateEvent's title is
    // field 1, a string), over gRPC and over gRPC-web.
    let create = "/munity.events.v1.Events/CreateEvent";
    for body in [&[0x0a, 0x05, b'a'][..], &[0x08, 0x01][..]] {
        let status = dev
            .call_as_admitted(create, Bytes::copy_from_slice(body))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(body);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &framed).unwrap();
        let (http, answer) = munity_testkit::curl(&[
            // Headers too: a trailers-only answer carries its status there.
            "-i",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            &format!("authorization: Bearer {}", dev.admin),
            "--data-binary",
            &format!("@{}", file.path().display()),
            &format!("http://{}{create}", dev.ready.address("gateway")),
        ])
        .await;
        assert_eq!(http, 200, "{answer}");
        let answer = answer
            .to_ascii_lowercase()
            .replace("grpc-status: ", "grpc-status:");
        assert!(
            answer.contains("grpc-status:3")
                && (answer.contains("is%20not%20a%20valid") || answer.contains("is not a valid")),
            "{answer:?}"
        );
    }

    // A record whose Struct payload nests deeper than the decoder allows
    // (warehouse.proto: 30 levels) is the caller's fault too.
    let ingest = "/munity.warehouse.v1.Warehouse/Ingest";
    let nested = |levels: usize| {
        use munity_proto::warehouse::v1 as wh;
        use prost_types::{Struct, Value, value::Kind};
        let value = (0..levels).fold(Value { kind: None }, |inner, _| Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("a".to_owned(), inner)].into(),
            })),
        });
        let Some(Kind::StructValue(top)) = value.kind else {
            unreachable!()
        };
        Bytes::from(
            wh::IngestRequest {
                records: vec![wh::Record {
                    source: "deep.nesting".into(),
                    payload: Some(wh::record::Payload::Value(top)),
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        )
    };
    dev.call_as_admitted(ingest, nested(30)).await.unwrap();
    let status = dev.call_as_admitted(ingest, nested(40)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// One way to break one declared rule of one field.
struct Case {
    path: String,
    /// The field as a violation names it, e.g. `options[0].start`.
    field: String,
    rule: String,
    message: DynamicMessage,
}

/// Fields with rules (or times) under `message`, as (segments, field).
fn ruled_fields(
    message: &MessageDescriptor,
    prefix: Vec<FieldDescriptor>,
    out: &mut Vec<Vec<FieldDescriptor>>,
) {
    for field in message.fields() {
        let mut segments = prefix.clone();
        segments.push(field.clone());
        let is_time = matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" || m.full_name() == "google.protobuf.Duration");
        if FieldRules::of(&field).is_some() || is_time {
            out.push(segments.clone());
        }
        if let Kind::Message(inner) = field.kind()
            && inner.full_name().starts_with("munity.")
            && !field.is_map()
            && segments.len() < 4
        {
            ruled_fields(&inner, segments, out);
        }
    }
}

/// The violating values of `field`'s rules (and of its type's range).
fn breaking_values(field: &FieldDescriptor) -> Vec<(String, Option<Value>)> {
    breaking_values_set(field)
        .into_iter()
        .map(|(rule, value)| {
            let value = (rule != "required").then_some(value);
            (rule, value)
        })
        .collect()
}

/// The values, a required field's "value" being ignored (left out).
fn breaking_values_set(field: &FieldDescriptor) -> Vec<(String, Value)> {
    let rules = FieldRules::of(field).unwrap_or_default();
    let mut values = Vec::new();
    let text = |n: u32| Value::String("a".repeat(n as usize));
    let timestamp = |seconds: i64| {
        let mut t = DynamicMessage::new(
            field
                .kind()
                .as_message()
                .expect("a timestamp field")
                .clone(),
        );
        t.set_field_by_name("seconds", Value::I64(seconds));
        Value::Message(t)
    };
    let is_timestamp =
        matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp");
    if is_timestamp {
        values.push(("protobuf range".to_owned(), timestamp(253_402_300_800)));
        if let Some(days) = rules.max_days_ahead {
            values.push((
                format!("max_days_ahead {days}"),
                timestamp(now_secs() + (i64::from(days) + 30) * 86_400),
            ));
        }
        if let Some(days) = rules.max_days_ago {
            values.push((
                format!("max_days_ago {days}"),
                timestamp(now_secs() - (i64::from(days) + 30) * 86_400),
            ));
        }
    }
    if field.is_list() || field.is_map() {
        let item = |i: u32| match field.kind() {
            Kind::String => Value::String(format!("x{i}")),
            Kind::Message(m) => Value::Message(DynamicMessage::new(m)),
            _ => Value::U32(i),
        };
        if let Some(max) = rules.max_len {
            if field.is_map() {
                let map = (0..=max)
                    .map(|i| (MapKey::String(format!("k{i}")), Value::String("v".into())))
                    .collect();
                values.push((format!("max_len {max}"), Value::Map(map)));
            } else {
                values.push((
                    format!("max_len {max}"),
                    Value::List((0..=max).map(item).collect()),
                ));
            }
        }
        if let Some(min) = rules.min_len.filter(|m| *m > 0) {
            values.push((format!("min_len {min}"), Value::List(Vec::new())));
        }
        if rules.format != Format::Any {
            values.push((
                format!("format {:?}", rules.format),
                Value::List(vec![Value::String("not-valid@".into())]),
            ));
        }
        if rules.required {
            values.push(("required".to_owned(), Value::List(Vec::new())));
        }
        return values;
    }
    match field.kind() {
        Kind::String => {
            if let Some(max) = rules.max_len {
                values.push((format!("max_len {max}"), text(max + 1)));
            }
            if let Some(min) = rules.min_len.filter(|m| *m > 1) {
                values.push((format!("min_len {min}"), text(min - 1)));
            }
            if rules.pattern.is_some() {
                // Upper case, a control character and punctuation: outside
                // every pattern the protos declare.
                values.push(("pattern".into(), Value::String("Bad\u{1}!".into())));
            }
            match rules.format {
                Format::Uuid => {
                    values.push(("format uuid".into(), Value::String("not-a-uuid".into())))
                }
                Format::Email => {
                    values.push(("format email".into(), Value::String("nope@".into())))
                }
                Format::Any => {}
            }
            if rules.required {
                values.push(("required".into(), Value::String(String::new())));
            }
        }
        Kind::Uint32 | Kind::Uint64 | Kind::Int32 | Kind::Int64 | Kind::Enum(_) => {
            let number = |n: i64| match field.kind() {
                Kind::Uint32 => Value::U32(n as u32),
                Kind::Uint64 => Value::U64(n as u64),
                Kind::Int32 => Value::I32(n as i32),
                Kind::Enum(_) => Value::EnumNumber(n as i32),
                _ => Value::I64(n),
            };
            if let Some(max) = rules.max {
                values.push((format!("max {max}"), number(max + 1)));
            }
            if let Some(min) = rules.min.filter(|m| *m - 1 != 0) {
                values.push((format!("min {min}"), number(min - 1)));
            }
            if rules.required {
                values.push(("required".into(), number(0)));
            }
        }
        Kind::Message(_) if rules.required => {
            values.push(("required".into(), Value::Bool(false)));
        }
        _ => {}
    }
    values
}

/// A request of type `input` whose field at `segments` holds `value`, or
/// is left out for `None` (a repeated message on the way holds one item).
fn message_with(
    input: &MessageDescriptor,
    segments: &[FieldDescriptor],
    value: Option<Value>,
) -> DynamicMessage {
    let mut message = DynamicMessage::new(input.clone());
    let (head, rest) = segments.split_first().unwrap();
    if rest.is_empty() {
        if let Some(value) = value {
            message.set_field(head, value);
        }
        return message;
    }
    let inner = message_with(head.kind().as_message().unwrap(), rest, value);
    if head.is_list() {
        message.set_field(head, Value::List(vec![Value::Message(inner)]));
    } else {
        message.set_field(head, Value::Message(inner));
    }
    message
}

fn field_name(segments: &[FieldDescriptor]) -> String {
    let mut name = String::new();
    for (i, field) in segments.iter().enumerate() {
        if i > 0 {
            name.push('.');
        }
        name.push_str(field.name());
        if field.is_list() && i + 1 < segments.len() {
            name.push_str("[0]");
        }
    }
    name
}

fn cases(methods: &[(String, MessageDescriptor)]) -> (Vec<Case>, Vec<String>) {
    let mut cases = Vec::new();
    let mut uncovered = Vec::new();
    for (path, input) in methods {
        let mut fields = Vec::new();
        ruled_fields(input, Vec::new(), &mut fields);
        for segments in fields {
            let field = segments.last().unwrap();
            let values = breaking_values(field);
            let name = field_name(&segments);
            let has_rules = FieldRules::of(field).is_some_and(|r| r != FieldRules::default());
            if values.is_empty() && has_rules {
                uncovered.push(format!("{path} {name}"));
            }
            for (rule, value) in values {
                let message = message_with(input, &segments, value);
                let field_label = if field.is_list()
                    && !rule.starts_with("max_len")
                    && !rule.starts_with("min_len")
                    && !rule.starts_with("required")
                {
                    format!("{name}[0]")
                } else {
                    name.clone()
                };
                cases.push(Case {
                    path: path.clone(),
                    field: field_label,
                    rule,
                    message,
                });
            }
        }
    }
    (cases, uncovered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_bound_is_enforced_naming_its_field() {
    let dev = Dev::start().await;
    let methods = dev.methods();
    let (cases, uncovered) = cases(&methods);
    assert!(
        uncovered.is_empty(),
        "bounded fields this test cannot break yet (teach breaking_values): {uncovered:?}"
    );
    let mut wrong = Vec::new();
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let answer = dev
            .call_as_admitted(&case.path, Bytes::from(case.message.encode_to_vec()))
            .await;
        match answer {
            Err(status)
                if status.code() == Code::InvalidArgument
                    && violated_fields(&status).contains(&case.field) =>
            {
                *by_rule
                    .entry(case.rule.split(' ').next().unwrap().to_owned())
                    .or_default() += 1;
            }
            other => wrong.push(format!(
                "{} {} ({}): {:?}",
                case.path,
                case.field,
                case.rule,
                other.map(|_| "OK")
            )),
        }
    }
    println!(
        "{} cases over {} methods: {by_rule:?}",
        cases.len(),
        methods.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} not refused as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // The findings themselves are among the cases.
    for (path, field) in [
        ("/munity.events.v1.Events/ListEvents", "page_size"),
        ("/munity.events.v1.Events/GetStats", "top"),
        ("/munity.events.v1.Events/CreateEvent", "options[0].start"),
    ] {
        assert!(
            cases.iter().any(|c| c.path == path && c.field == field),
            "{path} {field} not exercised"
        );
    }
}

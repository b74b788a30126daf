//! Answers the proto3 JSON mapping cannot write, made writable, so that one
//! bad stored value never fails a page or ends a stream:
//!
//! - a `google.protobuf.Timestamp` outside 0001-01-01T00:00:00Z ..=
//!   9999-12-31T23:59:59.999999999Z (or with nanos outside 0..=999999999)
//!   and a `google.protobuf.Duration` outside ±315576000000 s are clamped
//!   to the nearest value the mapping allows;
//! - a `google.protobuf.Any` whose type the gateway has no descriptor for
//!   (or whose bytes do not decode as it) is written as
//!   `{"@type": "<type URL>", "value": "<base64 of the bytes>"}`, a form
//!   protobuf's JSON mapping does not define (documented in the OpenAPI
//!   description). Payloads of known types are repaired inside too.
//!
//! [`complete_pool`] gives the transcoder's descriptor pool the well-known
//! types (a payload may be a `google.protobuf.StringValue` though no Munity
//! proto imports `wrappers.proto`) and the marker type [`repair`] rewrites
//! undescribed payloads to; [`unwrap_opaque`] turns the marker's JSON into
//! the form above.

use bytes::Bytes;
use munity_platform::wire::{TIMESTAMP_MAX_SECONDS, TIMESTAMP_MIN_SECONDS};
use prost::Message;
use prost_reflect::{DescriptorError, DescriptorPool, DynamicMessage, Kind, ReflectMessage, Value};
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use serde_json::Value as Json;

/// Longest Duration protobuf's JSON mapping writes (10 000 years).
pub use munity_proto::validate::MAX_DURATION_SECS as DURATION_MAX_SECONDS;
const MAX_NANOS: i32 = 999_999_999;

/// The marker an undescribed `Any` payload is rewritten to, only ever
/// inside the gateway (never sent to a service nor written as such).
const OPAQUE_ANY: &str = "munity.gateway.internal.OpaqueAny";
const OPAQUE_ANY_URL: &str = "type.googleapis.com/munity.gateway.internal.OpaqueAny";

/// What [`repair`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repairs {
    /// Timestamps clamped into protobuf's range.
    pub timestamps: u32,
    /// Durations clamped into protobuf's range.
    pub durations: u32,
    /// `Any` payloads of a type without descriptor (or undecodable).
    pub opaque: u32,
}

impl Repairs {
    pub fn is_empty(&self) -> bool {
        *self == Repairs::default()
    }
}

/// `pool` plus the well-known types (`google/protobuf/*.proto`: wrappers,
/// struct, timestamp, duration, empty, any, field_mask, …, as prost-reflect
/// bundles them; files already in `pool` are kept) and the opaque marker.
pub fn complete_pool(pool: &DescriptorPool) -> Result<DescriptorPool, DescriptorError> {
    let mut pool = pool.clone();
    pool.add_file_descriptor_protos(DescriptorPool::global().file_descriptor_protos().cloned())?;
    pool.add_file_descriptor_proto(opaque_any_file())?;
    Ok(pool)
}

fn opaque_any_file() -> FileDescriptorProto {
    let field = |name: &str, json_name: &str, number: i32, kind: Type| FieldDescriptorProto {
        name: Some(name.to_owned()),
        json_name: Some(json_name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(kind as i32),
        ..Default::default()
    };
    FileDescriptorProto {
        name: Some("munity/gateway/internal/opaque_any.proto".to_owned()),
        package: Some("munity.gateway.internal".to_owned()),
        syntax: Some("proto3".to_owned()),
        message_type: vec![DescriptorProto {
            name: Some("OpaqueAny".to_owned()),
            field: vec![
                field("type_url", "typeUrl", 1, Type::String),
                field("value", "value", 2, Type::Bytes),
            ],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Makes every value in `message` writable as JSON (see the module's
/// comment); what was changed.
pub fn repair(message: &mut DynamicMessage) -> Repairs {
    let mut repairs = Repairs::default();
    repair_into(message, &mut repairs);
    repairs
}

fn repair_into(message: &mut DynamicMessage, repairs: &mut Repairs) {
    let descriptor = message.descriptor();
    match descriptor.full_name() {
        "google.protobuf.Timestamp" => return clamp_timestamp(message, repairs),
        "google.protobuf.Duration" => return clamp_duration(message, repairs),
        "google.protobuf.Any" => return repair_any(message, repairs),
        _ => {}
    }
    for field in descriptor.fields() {
        let holds_messages = match field.kind() {
            Kind::Message(inner) => !field.is_map() || map_values_are_messages(&inner),
            _ => false,
        };
        if !holds_messages || !message.has_field(&field) {
            continue;
        }
        match message.get_field_mut(&field) {
            Value::Message(inner) => repair_into(inner, repairs),
            Value::List(items) => {
                for item in items {
                    if let Value::Message(inner) = item {
                        repair_into(inner, repairs);
                    }
                }
            }
            Value::Map(entries) => {
                for value in entries.values_mut() {
                    if let Value::Message(inner) = value {
                        repair_into(inner, repairs);
                    }
                }
            }
            _ => {}
        }
    }
}

fn map_values_are_messages(entry: &prost_reflect::MessageDescriptor) -> bool {
    matches!(entry.map_entry_value_field().kind(), Kind::Message(_))
}

fn int64(message: &DynamicMessage, name: &str) -> i64 {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_i64())
        .unwrap_or(0)
}

fn int32(message: &DynamicMessage, name: &str) -> i32 {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_i32())
        .unwrap_or(0)
}

fn set_seconds_nanos(message: &mut DynamicMessage, seconds: i64, nanos: i32) {
    message.set_field_by_name("seconds", Value::I64(seconds));
    message.set_field_by_name("nanos", Value::I32(nanos));
}

/// The nearest valid Timestamp to (`seconds`, `nanos`).
pub fn clamp_timestamp_parts(seconds: i64, nanos: i32) -> (i64, i32) {
    if seconds < TIMESTAMP_MIN_SECONDS {
        (TIMESTAMP_MIN_SECONDS, 0)
    } else if seconds > TIMESTAMP_MAX_SECONDS {
        (TIMESTAMP_MAX_SECONDS, MAX_NANOS)
    } else {
        (seconds, nanos.clamp(0, MAX_NANOS))
    }
}

/// The nearest valid Duration to (`seconds`, `nanos`) (nanos of the
/// seconds' sign).
pub fn clamp_duration_parts(seconds: i64, nanos: i32) -> (i64, i32) {
    if seconds > DURATION_MAX_SECONDS {
        return (DURATION_MAX_SECONDS, 0);
    }
    if seconds < -DURATION_MAX_SECONDS {
        return (-DURATION_MAX_SECONDS, 0);
    }
    let nanos = nanos.clamp(-MAX_NANOS, MAX_NANOS);
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        // E.g. 5 s and -0.2 s is 4.8 s: nanos take the seconds' sign.
        let mut duration = prost_types::Duration { seconds, nanos };
        duration.normalize();
        return (duration.seconds, duration.nanos);
    }
    (seconds, nanos)
}

fn clamp_timestamp(message: &mut DynamicMessage, repairs: &mut Repairs) {
    let (seconds, nanos) = (int64(message, "seconds"), int32(message, "nanos"));
    let clamped = clamp_timestamp_parts(seconds, nanos);
    if clamped != (seconds, nanos) {
        tracing::debug!(
            seconds,
            nanos,
            "a Timestamp outside protobuf's range was clamped for JSON"
        );
        set_seconds_nanos(message, clamped.0, clamped.1);
        repairs.timestamps += 1;
    }
}

fn clamp_duration(message: &mut DynamicMessage, repairs: &mut Repairs) {
    let (seconds, nanos) = (int64(message, "seconds"), int32(message, "nanos"));
    let clamped = clamp_duration_parts(seconds, nanos);
    if clamped != (seconds, nanos) {
        tracing::debug!(
            seconds,
            nanos,
            "a Duration outside protobuf's range was clamped for JSON"
        );
        set_seconds_nanos(message, clamped.0, clamped.1);
        repairs.durations += 1;
    }
}

fn repair_any(message: &mut DynamicMessage, repairs: &mut Repairs) {
    let type_url = message
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let value = message
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let pool = message.descriptor().parent_pool().clone();
    let described = type_url
        .rsplit_once('/')
        .and_then(|(_, name)| pool.get_message_by_name(name))
        .filter(|descriptor| descriptor.full_name() != OPAQUE_ANY);
    if let Some(descriptor) = described
        && let Ok(mut payload) = DynamicMessage::decode(descriptor, value.as_ref())
    {
        let before = *repairs;
        repair_into(&mut payload, repairs);
        if *repairs != before {
            message.set_field_by_name("value", Value::Bytes(payload.encode_to_vec().into()));
        }
        return;
    }
    let Some(marker) = pool.get_message_by_name(OPAQUE_ANY) else {
        return;
    };
    tracing::debug!(
        type_url,
        "an Any payload of a type without descriptor is written as its bytes"
    );
    let mut opaque = DynamicMessage::new(marker);
    opaque.set_field_by_name("type_url", Value::String(type_url));
    opaque.set_field_by_name("value", Value::Bytes(value));
    message.set_field_by_name("type_url", Value::String(OPAQUE_ANY_URL.to_owned()));
    message.set_field_by_name("value", Value::Bytes(Bytes::from(opaque.encode_to_vec())));
    repairs.opaque += 1;
}

/// Rewrites the JSON of every opaque marker [`repair`] made,
/// `{"@type": <marker>, "typeUrl": U, "value": B}`, to
/// `{"@type": U, "value": B}`.
pub fn unwrap_opaque(json: &mut Json) {
    match json {
        Json::Object(object) => {
            if object.get("@type").and_then(Json::as_str) == Some(OPAQUE_ANY_URL) {
                let type_url = object
                    .remove("typeUrl")
                    .unwrap_or_else(|| Json::String(String::new()));
                object.insert("@type".to_owned(), type_url);
                object
                    .entry("value")
                    .or_insert_with(|| Json::String(String::new()));
                return;
            }
            for value in object.values_mut() {
                unwrap_opaque(value);
            }
        }
        Json::Array(items) => {
            for item in items {
                unwrap_opaque(item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_json::call::message_json;

    fn pool() -> DescriptorPool {
        complete_pool(crate::config::policy().pool()).unwrap()
    }

    fn message(name: &str, json: Json) -> DynamicMessage {
        let descriptor = pool().get_message_by_name(name).unwrap();
        DynamicMessage::deserialize(descriptor, json).unwrap()
    }

    fn written(message: &DynamicMessage) -> Json {
        serde_json::from_slice(&message_json(message).expect("written as JSON")).unwrap()
    }

    fn timestamp_message(seconds: i64, nanos: i32) -> DynamicMessage {
        let descriptor = pool()
            .get_message_by_name("google.protobuf.Timestamp")
            .unwrap();
        let mut message = DynamicMessage::new(descriptor);
        set_seconds_nanos(&mut message, seconds, nanos);
        message
    }

    #[test]
    fn timestamps_and_durations_clamp_to_the_nearest_valid_value() {
        let max = (TIMESTAMP_MAX_SECONDS, MAX_NANOS);
        assert_eq!(clamp_timestamp_parts(253_402_300_800, 0), max);
        assert_eq!(clamp_timestamp_parts(i64::MAX, -5), max);
        assert_eq!(
            clamp_timestamp_parts(i64::MIN, 7),
            (TIMESTAMP_MIN_SECONDS, 0)
        );
        assert_eq!(clamp_timestamp_parts(10, -1), (10, 0));
        assert_eq!(clamp_timestamp_parts(10, 1_000_000_000), (10, MAX_NANOS));
        assert_eq!(clamp_timestamp_parts(10, 5), (10, 5));
        assert_eq!(
            clamp_duration_parts(DURATION_MAX_SECONDS + 1, 3),
            (DURATION_MAX_SECONDS, 0)
        );
        assert_eq!(
            clamp_duration_parts(i64::MIN, 0),
            (-DURATION_MAX_SECONDS, 0)
        );
        assert_eq!(clamp_duration_parts(5, -200_000_000), (4, 800_000_000));
        assert_eq!(clamp_duration_parts(-1, i32::MAX), (0, -1));
        assert_eq!(clamp_duration_parts(0, i32::MIN), (0, -MAX_NANOS));
        assert_eq!(clamp_duration_parts(-3, -4), (-3, -4));
    }

    #[test]
    fn a_year_10000_timestamp_is_written_as_the_last_valid_one() {
        // An event whose option starts in year 10000 (seconds
        // 253402300800), as events-svc stored them before refusing them.
        let mut event = message(
            "munity.events.v1.Event",
            serde_json::json!({"id": "e1", "title": "Far"}),
        );
        let options = event
            .descriptor()
            .get_field_by_name("options")
            .expect("Event has options");
        let Kind::Message(option) = options.kind() else {
            panic!("options are messages")
        };
        let mut item = DynamicMessage::new(option.clone());
        item.set_field_by_name(
            "start",
            Value::Message(timestamp_message(253_402_300_800, 0)),
        );
        item.set_field_by_name(
            "end",
            Value::Message(timestamp_message(253_402_304_400, -1)),
        );
        event.set_field(&options, Value::List(vec![Value::Message(item)]));
        let mut list = message("munity.events.v1.ListEventsResponse", serde_json::json!({}));
        list.set_field_by_name("events", Value::List(vec![Value::Message(event.clone())]));

        // prost-reflect alone refuses it (what answered 500 before).
        assert!(serde_json::to_vec(&list).is_err());
        let json = written(&list);
        let option = &json["events"][0]["options"][0];
        assert_eq!(option["start"], "9999-12-31T23:59:59.999999999Z");
        assert_eq!(option["end"], "9999-12-31T23:59:59.999999999Z");
        assert_eq!(json["events"][0]["title"], "Far");

        let mut repaired = list.clone();
        assert_eq!(
            repair(&mut repaired),
            Repairs {
                timestamps: 2,
                ..Repairs::default()
            }
        );
        assert!(
            repair(&mut repaired).is_empty(),
            "a second pass finds nothing"
        );
    }

    #[test]
    fn payloads_of_well_known_and_unknown_types_are_written() {
        let pool = pool();
        let any = |type_url: &str, value: Vec<u8>| prost_types::Any {
            type_url: type_url.to_owned(),
            value,
        };
        let inbox = munity_proto::notify::v1::ListInboxResponse {
            items: vec![
                munity_proto::notify::v1::InboxItem {
                    id: "1".into(),
                    notification: Some(munity_proto::notify::v1::Notification {
                        topic: "user:1".into(),
                        payload: Some(any(
                            "type.googleapis.com/google.protobuf.StringValue",
                            "Welcome".to_owned().encode_to_vec(),
                        )),
                        ..Default::default()
                    }),
                    read_at: None,
                },
                munity_proto::notify::v1::InboxItem {
                    id: "2".into(),
                    notification: Some(munity_proto::notify::v1::Notification {
                        topic: "user:1".into(),
                        payload: Some(any("type.googleapis.com/acme.Unknown", vec![1, 2, 3])),
                        ..Default::default()
                    }),
                    read_at: None,
                },
                munity_proto::notify::v1::InboxItem {
                    id: "3".into(),
                    notification: Some(munity_proto::notify::v1::Notification {
                        topic: "user:1".into(),
                        // A known type whose bytes are not that type.
                        payload: Some(any(
                            "type.googleapis.com/munity.notify.v1.TopicPosition",
                            vec![0xff, 0xff],
                        )),
                        ..Default::default()
                    }),
                    read_at: None,
                },
                munity_proto::notify::v1::InboxItem {
                    id: "4".into(),
                    notification: Some(munity_proto::notify::v1::Notification {
                        topic: "user:1".into(),
                        // A known type holding an out-of-range time.
                        payload: Some(any(
                            "type.googleapis.com/munity.notify.v1.Heartbeat",
                            munity_proto::notify::v1::Heartbeat {
                                at: Some(prost_types::Timestamp {
                                    seconds: 253_402_300_800,
                                    nanos: 0,
                                }),
                            }
                            .encode_to_vec(),
                        )),
                        ..Default::default()
                    }),
                    read_at: None,
                },
            ],
            ..Default::default()
        };
        let descriptor = pool
            .get_message_by_name("munity.notify.v1.ListInboxResponse")
            .unwrap();
        let message = DynamicMessage::decode(descriptor, inbox.encode_to_vec().as_slice()).unwrap();
        let json = written(&message);
        let payloads: Vec<&Json> = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| &item["notification"]["payload"])
            .collect();
        assert_eq!(
            payloads,
            [
                &serde_json::json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "Welcome"}),
                &serde_json::json!({"@type": "type.googleapis.com/acme.Unknown", "value": "AQID"}),
                &serde_json::json!({"@type": "type.googleapis.com/munity.notify.v1.TopicPosition", "value": "//8="}),
                &serde_json::json!({"@type": "type.googleapis.com/munity.notify.v1.Heartbeat", "at": "9999-12-31T23:59:59.999999999Z"}),
            ]
        );
        // The message itself is left as it was.
        assert_eq!(message.encode_to_vec(), inbox.encode_to_vec());
    }

    #[test]
    fn well_known_types_are_in_the_pool_and_requests_take_them() {
        let pool = pool();
        for name in [
            "google.protobuf.StringValue",
            "google.protobuf.Struct",
            "google.protobuf.Timestamp",
            "google.protobuf.Duration",
            "google.protobuf.Empty",
            "google.protobuf.Any",
            "google.protobuf.FieldMask",
            "munity.notify.v1.PublishRequest",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
        let publish = message(
            "munity.notify.v1.PublishRequest",
            serde_json::json!({"topic": "user:1", "payload": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": "Welcome to Munity",
            }}),
        );
        let any = publish.get_field_by_name("payload").unwrap();
        let any = any.as_message().unwrap();
        assert_eq!(
            any.get_field_by_name("value")
                .unwrap()
                .as_bytes()
                .unwrap()
                .as_ref(),
            "Welcome to Munity".to_owned().encode_to_vec()
        );
    }

    #[test]
    fn only_the_markers_json_is_unwrapped() {
        let mut json = serde_json::json!({"a": [{"@type": OPAQUE_ANY_URL, "typeUrl": "x/y", "value": "AA=="}],
                                          "b": {"@type": "x/z", "typeUrl": "kept"}});
        unwrap_opaque(&mut json);
        assert_eq!(
            json,
            serde_json::json!({"a": [{"@type": "x/y", "value": "AA=="}], "b": {"@type": "x/z", "typeUrl": "kept"}})
        );
    }
}

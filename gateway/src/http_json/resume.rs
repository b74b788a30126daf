//! Server-Sent Event ids for streams that resume, and `Last-Event-ID`
//! back into the request, for any method that declares a `resume_field`
//! (`munity.options.v1.method`): no per-service code.
//!
//! The resume field is a repeated message, the position type (notify's
//! `TopicPosition {topic, epoch, offset}`). Every message the stream sends
//! is searched for positions: a message of that type, or any message with
//! every one of its fields by name and kind (a `Notification` carries
//! topic, epoch and offset). The latest position per key (the type's first
//! field, the topic) is kept, and each event's `id:` is the request message
//! holding just those positions, encoded and base64url'd. An EventSource
//! that reconnects sends the last id as `Last-Event-ID`: decoded, its
//! positions become the request's resume field, and the service resumes.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};

use super::BadRequest;

/// Most positions an id carries (the service bounds topics per stream far
/// lower; this bounds what a stream could make the gateway keep).
const MAX_POSITIONS: usize = 64;
/// How deep messages are searched for positions.
const MAX_DEPTH: usize = 8;

/// The positions a stream has reported so far.
pub struct Positions {
    request: MessageDescriptor,
    field: FieldDescriptor,
    position: MessageDescriptor,
    latest: BTreeMap<String, DynamicMessage>,
}

impl Positions {
    /// For a method whose request's `field` takes positions.
    pub fn new(request: MessageDescriptor, field: FieldDescriptor) -> Option<Self> {
        let Kind::Message(position) = field.kind() else {
            return None;
        };
        position.fields().next()?;
        Some(Positions {
            request,
            field,
            position,
            latest: BTreeMap::new(),
        })
    }

    /// Takes note of the positions in one streamed message.
    pub fn observe(&mut self, message: &DynamicMessage) {
        self.search(message, 0);
    }

    fn search(&mut self, message: &DynamicMessage, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        if let Some(position) = self.as_position(message) {
            let key = self.position.fields().next().map(|key| {
                let value = position.get_field(&key);
                match value.as_str() {
                    Some(text) => text.to_owned(),
                    None => format!("{value:?}"),
                }
            });
            if let Some(key) = key
                && (self.latest.len() < MAX_POSITIONS || self.latest.contains_key(&key))
            {
                self.latest.insert(key, position);
            }
            return;
        }
        for (_, value) in message.fields() {
            match value {
                Value::Message(inner) => self.search(inner, depth + 1),
                Value::List(items) => {
                    for item in items {
                        if let Value::Message(inner) = item {
                            self.search(inner, depth + 1);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// `message` as a position, if it is one or has all of its fields.
    fn as_position(&self, message: &DynamicMessage) -> Option<DynamicMessage> {
        let descriptor = message.descriptor();
        if descriptor == self.position {
            return Some(message.clone());
        }
        let mut position = DynamicMessage::new(self.position.clone());
        for field in self.position.fields() {
            let theirs = descriptor.get_field_by_name(field.name())?;
            if theirs.kind() != field.kind() || theirs.is_list() != field.is_list() {
                return None;
            }
            position.set_field(&field, message.get_field(&theirs).into_owned());
        }
        Some(position)
    }

    /// The event id for the positions so far; `None` before any.
    pub fn event_id(&self) -> Option<String> {
        if self.latest.is_empty() {
            return None;
        }
        let mut request = DynamicMessage::new(self.request.clone());
        let list = self.latest.values().cloned().map(Value::Message).collect();
        request.set_field(&self.field, Value::List(list));
        Some(URL_SAFE_NO_PAD.encode(request.encode_to_vec()))
    }

    /// Sets the request's resume field from a `Last-Event-ID` this gateway
    /// issued, unless the client already set it itself.
    pub fn resume_from(
        request: &mut DynamicMessage,
        field: &FieldDescriptor,
        last_event_id: &str,
    ) -> Result<(), BadRequest> {
        let bad = || BadRequest("Last-Event-ID is not an id this gateway sent".into());
        if request.has_field(field) {
            return Ok(());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(last_event_id.trim())
            .map_err(|_| bad())?;
        let decoded =
            DynamicMessage::decode(request.descriptor(), bytes.as_slice()).map_err(|_| bad())?;
        let positions = decoded.get_field(field).into_owned();
        if matches!(&positions, Value::List(list) if list.len() <= MAX_POSITIONS) {
            request.set_field(field, positions);
            Ok(())
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_from_notify_messages_round_trip_through_the_id() {
        let policy = crate::config::policy();
        let pool = policy.pool();
        let request = pool
            .get_message_by_name("munity.notify.v1.SubscribeRequest")
            .unwrap();
        let field = request.get_field_by_name("resume").unwrap();
        let mut positions = Positions::new(request.clone(), field.clone()).unwrap();
        let response = pool
            .get_message_by_name("munity.notify.v1.SubscribeResponse")
            .unwrap();
        let subscribed: DynamicMessage = DynamicMessage::deserialize(
            response.clone(),
            serde_json::json!({"subscribed": {"positions": [
                {"topic": "user:1", "epoch": "e1", "offset": "4"},
                {"topic": "event:2", "epoch": "e2", "offset": "0"},
            ]}}),
        )
        .unwrap();
        positions.observe(&subscribed);
        let notification: DynamicMessage = DynamicMessage::deserialize(
            response,
            serde_json::json!({"notification": {"topic": "event:2", "epoch": "e2", "offset": "1", "kind": "x"}}),
        )
        .unwrap();
        positions.observe(&notification);
        let id = positions.event_id().unwrap();

        let mut fresh = DynamicMessage::new(request);
        Positions::resume_from(&mut fresh, &field, &id).unwrap();
        assert_eq!(
            serde_json::to_value(&fresh).unwrap(),
            serde_json::json!({"resume": [
                {"topic": "event:2", "epoch": "e2", "offset": "1"},
                {"topic": "user:1", "epoch": "e1", "offset": "4"},
            ]})
        );
        assert!(
            Positions::resume_from(&mut DynamicMessage::new(fresh.descriptor()), &field, "!!")
                .is_err()
        );
    }
}

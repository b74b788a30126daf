//! IngestStream without decoding every record into a `Record` and encoding
//! it again. Its messages are read by [`IngestCodec`]: each record whose
//! bytes already are what would be stored (an id, a time in whole
//! milliseconds, within the input rules, no `stored_at`, no field twice,
//! nothing unknown, data rather than a structured value) is kept as the
//! producer sent it, a slice of the message; the store appends
//! `stored_at` to it as one more field. Every other record is decoded and
//! goes through the input rules (`domain::prepare_record`) as before, so
//! answers and stored records are the same either way. The request is
//! still checked against its declared field rules, as every request is
//! (`munity_proto::codec`).
//!
//! The generated server serves every other method; [`WarehouseRoutes`]
//! hands it all but IngestStream.

use std::{
    convert::Infallible,
    ops::Range,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use munity_proto::{
    bad_request::{FieldViolations, invalid_argument},
    codec::undecodable_message,
    validate::{self, RequestCheck},
    warehouse::v1::{IngestRequest, IngestResponse, Record, warehouse_server::WarehouseServer},
};
use prost::{Message, Name, encoding::decode_varint};
use prost_types::Timestamp;
use tonic::{
    Status, Streaming,
    body::Body,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    server::NamedService,
};
use tower_service::Service;

use crate::{
    api::WarehouseApi,
    domain::{
        Limits, MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES,
        MAX_CONTENT_TYPE_BYTES, valid_id, valid_source, valid_time,
    },
    store::EncodedRecord,
};

const INGEST_STREAM: &str = "/munity.warehouse.v1.Warehouse/IngestStream";

/// A record of an ingest, before the input rules.
#[derive(Debug)]
pub enum Incoming {
    /// Its bytes, checked: valid, and stored as sent.
    Ready(EncodedRecord),
    /// Decoded: the input rules decide, and may set its id and time.
    Decoded(Record),
}

/// An IngestStream message as [`IngestCodec`] reads it.
#[derive(Debug)]
pub struct RawBatch(pub Vec<Incoming>);

/// A request's records, before the input rules.
pub trait Batched: Send + 'static {
    fn into_incoming(self) -> Vec<Incoming>;
}

impl Batched for IngestRequest {
    fn into_incoming(self) -> Vec<Incoming> {
        self.records.into_iter().map(Incoming::Decoded).collect()
    }
}

impl Batched for RawBatch {
    fn into_incoming(self) -> Vec<Incoming> {
        self.0
    }
}

/// A field's value, as far as records need.
enum Value {
    Varint(u64),
    /// Length-delimited: where its bytes lie in the message.
    Len(Range<usize>),
}

/// A message's fields in wire order; `None` for a field of another wire
/// type, or bytes that end early.
struct Fields<'a> {
    all: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(all: &'a [u8]) -> Self {
        Fields { all, rest: all }
    }

    fn field(&mut self) -> Option<(u64, Value)> {
        let key = decode_varint(&mut self.rest).ok()?;
        let number = key >> 3;
        if number == 0 {
            return None;
        }
        match key & 7 {
            0 => Some((number, Value::Varint(decode_varint(&mut self.rest).ok()?))),
            2 => {
                let len = usize::try_from(decode_varint(&mut self.rest).ok()?).ok()?;
                if len > self.rest.len() {
                    return None;
                }
                let start = self.all.len() - self.rest.len();
                self.rest = &self.rest[len..];
                Some((number, Value::Len(start..start + len)))
            }
            _ => None,
        }
    }
}

impl Iterator for Fields<'_> {
    type Item = Option<(u64, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        (!self.rest.is_empty()).then(|| self.field())
    }
}

/// A `Timestamp`'s milliseconds, when it is valid and in whole
/// milliseconds (as the input rules would leave it).
fn whole_millis(bytes: &[u8]) -> Option<i64> {
    let (mut seconds, mut nanos) = (None, None);
    for field in Fields::new(bytes) {
        match field? {
            // As prost reads int64 and int32.
            (1, Value::Varint(v)) if seconds.is_none() => seconds = Some(v as i64),
            (2, Value::Varint(v)) if nanos.is_none() => nanos = Some(v as i32),
            _ => return None,
        }
    }
    let timestamp = Timestamp {
        seconds: seconds.unwrap_or(0),
        nanos: nanos.unwrap_or(0),
    };
    let millis = valid_time(&timestamp).ok()?;
    (timestamp.nanos % 1_000_000 == 0).then_some(millis)
}

/// An attribute (a map entry): key and value, when each is there at most
/// once and nothing else is.
fn attribute(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut key, mut value) = (None, None);
    for field in Fields::new(bytes) {
        match field? {
            (1, Value::Len(r)) if key.is_none() => key = Some(&bytes[r]),
            (2, Value::Len(r)) if value.is_none() => value = Some(&bytes[r]),
            _ => return None,
        }
    }
    Some((key.unwrap_or_default(), value.unwrap_or_default()))
}

/// The record at `range` of `message`, when it can be stored as it is
/// (see the module docs); `None` sends it through the input rules.
fn ready(message: &Bytes, range: Range<usize>, limits: Limits) -> Option<EncodedRecord> {
    let record = &message[range.clone()];
    let (mut id, mut source, mut time, mut data, mut content_type) = (None, None, None, None, None);
    let mut keys: [&[u8]; MAX_ATTRIBUTES] = [&[]; MAX_ATTRIBUTES];
    let mut attributes = 0;
    for field in Fields::new(record) {
        match field? {
            (1, Value::Len(r)) if id.is_none() => id = Some(&record[r]),
            (2, Value::Len(r)) if source.is_none() => source = Some(&record[r]),
            (3, Value::Len(r)) if time.is_none() => time = Some(whole_millis(&record[r])?),
            (4, Value::Len(r)) => {
                let (key, value) = attribute(&record[r])?;
                let fits = attributes < MAX_ATTRIBUTES
                    && (1..=MAX_ATTRIBUTE_KEY_BYTES).contains(&key.len())
                    && value.len() <= MAX_ATTRIBUTE_VALUE_BYTES
                    && !keys[..attributes].contains(&key)
                    && std::str::from_utf8(key).is_ok()
                    && std::str::from_utf8(value).is_ok();
                if !fits {
                    return None;
                }
                keys[attributes] = key;
                attributes += 1;
            }
            (5, Value::Len(r)) if data.is_none() => data = Some(r.len()),
            (7, Value::Len(r)) if content_type.is_none() => content_type = Some(&record[r]),
            // A structured value (its size is its re-encoding's),
            // `stored_at`, a field twice, an unknown field.
            _ => return None,
        }
    }
    let id = std::str::from_utf8(id?).ok().filter(|id| valid_id(id))?;
    let source = std::str::from_utf8(source?)
        .ok()
        .filter(|s| valid_source(s))?;
    let content_type = content_type.unwrap_or_default();
    if data.unwrap_or(0) > limits.max_payload_bytes
        || content_type.len() > MAX_CONTENT_TYPE_BYTES
        || std::str::from_utf8(content_type).is_err()
    {
        return None;
    }
    Some(EncodedRecord {
        id: id.to_owned(),
        source: source.to_owned(),
        time: time?,
        encoded: message.slice(range),
    })
}

/// An `IngestRequest`'s records; `None` when the message is not read
/// here (prost decodes it instead, and tells what is wrong with it).
fn split(message: &Bytes, limits: Limits) -> Option<RawBatch> {
    let mut records = Vec::new();
    for field in Fields::new(message) {
        let (1, Value::Len(range)) = field? else {
            return None;
        };
        let record = match ready(message, range.clone(), limits) {
            Some(ready) => Incoming::Ready(ready),
            None => Incoming::Decoded(Record::decode(&message[range]).ok()?),
        };
        records.push(record);
    }
    Some(RawBatch(records))
}

/// IngestStream's codec: answers as prost encodes them, requests as
/// [`RawBatch`]es.
#[derive(Debug, Clone, Copy)]
pub struct IngestCodec {
    limits: Limits,
}

impl Codec for IngestCodec {
    type Encode = IngestResponse;
    type Decode = RawBatch;
    type Encoder = tonic_prost::ProstEncoder<IngestResponse>;
    type Decoder = IngestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        IngestDecoder {
            limits: self.limits,
            check: validate::request_check(&IngestRequest::full_name())
                .filter(RequestCheck::has_rules),
        }
    }
}

#[derive(Debug)]
pub struct IngestDecoder {
    limits: Limits,
    check: Option<RequestCheck>,
}

impl Decoder for IngestDecoder {
    type Item = RawBatch;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<RawBatch>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let batch = match split(&bytes, self.limits) {
            Some(batch) => batch,
            None => IngestRequest::decode(bytes.as_ref())
                .map(|request| RawBatch(request.into_incoming()))
                .map_err(|e| {
                    Status::invalid_argument(undecodable_message(&IngestRequest::full_name(), &e))
                })?,
        };
        if let Some(check) = self.check {
            let mut violations = FieldViolations::new();
            check.check(&bytes, &mut violations);
            if !violations.is_empty() {
                return Err(invalid_argument(&violations));
            }
        }
        Ok(Some(batch))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// warehouse-svc's gRPC service: IngestStream with [`IngestCodec`], every
/// other method by the generated server.
#[derive(Clone)]
pub struct WarehouseRoutes {
    api: Arc<WarehouseApi>,
    generated: WarehouseServer<WarehouseApi>,
    limits: Limits,
    max_request_bytes: usize,
}

impl WarehouseRoutes {
    pub fn new(api: WarehouseApi, limits: Limits, max_request_bytes: usize) -> Self {
        let api = Arc::new(api);
        WarehouseRoutes {
            generated: WarehouseServer::from_arc(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            limits,
            max_request_bytes,
        }
    }
}

impl NamedService for WarehouseRoutes {
    const NAME: &'static str = <WarehouseServer<WarehouseApi> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for WarehouseRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != INGEST_STREAM {
            return Box::pin(self.generated.call(request));
        }
        let api = self.api.clone();
        let codec = IngestCodec {
            limits: self.limits,
        };
        let max = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.client_streaming(RawIngest(api), request).await)
        })
    }
}

struct RawIngest(Arc<WarehouseApi>);

impl tonic::server::ClientStreamingService<RawBatch> for RawIngest {
    type Response = IngestResponse;
    type Future = BoxFuture<'static, Result<tonic::Response<IngestResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<RawBatch>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.ingest_batches(request).await })
    }
}

#[cfg(test)]
mod tests {
    use munity_proto::warehouse::v1::record::Payload;

    use super::*;
    use crate::domain::timestamp_of;

    const LIMITS: Limits = Limits {
        max_batch_records: 1_000,
        max_payload_bytes: 1_024,
    };

    fn record() -> Record {
        Record {
            id: "r1".into(),
            source: "sensors.berlin".into(),
            time: Some(timestamp_of(1_700_000_000_123)),
            attributes: [("unit".into(), "celsius".into()), ("v".into(), "2".into())].into(),
            payload: Some(Payload::Data(vec![1, 2, 3])),
            content_type: "application/octet-stream".into(),
            stored_at: None,
        }
    }

    fn read(records: &[Record]) -> Vec<Incoming> {
        let message = Bytes::from(
            IngestRequest {
                records: records.to_vec(),
            }
            .encode_to_vec(),
        );
        split(&message, LIMITS).expect("read").0
    }

    #[test]
    fn records_that_need_no_change_are_kept_as_sent() {
        let sent = record();
        let incoming: [Incoming; 1] = read(std::slice::from_ref(&sent)).try_into().unwrap();
        let [Incoming::Ready(ready)] = incoming else {
            panic!("not kept as sent");
        };
        assert_eq!(
            (ready.id.as_str(), ready.source.as_str(), ready.time),
            ("r1", "sensors.berlin", 1_700_000_000_123)
        );
        assert_eq!(Record::decode(ready.encoded).unwrap(), sent);
    }

    #[test]
    fn records_the_rules_would_change_or_refuse_are_decoded() {
        let mut cases: Vec<Record> = Vec::new();
        let mut push = |change: &dyn Fn(&mut Record)| {
            let mut r = record();
            change(&mut r);
            cases.push(r);
        };
        push(&|r| r.id.clear()); // an id to generate
        push(&|r| r.time = None); // a time to set
        push(&|r| {
            r.time = Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 1,
            })
        }); // to whole ms
        push(&|r| r.stored_at = Some(timestamp_of(1))); // output only
        push(&|r| r.source = "Bad Source".into());
        push(&|r| r.id = "no spaces".into());
        push(&|r| r.payload = Some(Payload::Data(vec![0; 1_025])));
        push(&|r| r.payload = Some(Payload::Value(Default::default())));
        push(&|r| r.content_type = "x".repeat(129));
        push(&|r| {
            r.attributes.insert(String::new(), "empty key".into());
        });
        push(&|r| {
            r.attributes.insert("big".into(), "x".repeat(1_025));
        });
        push(&|r| {
            r.attributes = (0..33).map(|n| (format!("k{n}"), String::new())).collect();
        });
        let incoming = read(&cases);
        assert_eq!(incoming.len(), cases.len());
        for (n, (item, sent)) in incoming.into_iter().zip(&cases).enumerate() {
            match item {
                Incoming::Decoded(decoded) => assert_eq!(&decoded, sent, "case {n}"),
                Incoming::Ready(_) => panic!("case {n} was kept as sent"),
            }
        }
    }

    #[test]
    fn a_field_twice_or_unknown_is_decoded_and_bad_bytes_are_not_read() {
        let mut twice = record().encode_to_vec();
        twice.extend_from_slice(
            &Record {
                id: "r2".into(),
                ..Record::default()
            }
            .encode_to_vec(),
        );
        let mut unknown = record().encode_to_vec();
        unknown.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1
        for bytes in [twice, unknown] {
            let mut message = vec![0x0a];
            prost::encoding::encode_varint(bytes.len() as u64, &mut message);
            message.extend_from_slice(&bytes);
            let batch = split(&Bytes::from(message), LIMITS).unwrap();
            assert!(matches!(batch.0.as_slice(), [Incoming::Decoded(_)]));
        }
        // A record cut short: left to prost, which says what is wrong.
        let bytes = record().encode_to_vec();
        let mut message = vec![0x0a];
        prost::encoding::encode_varint(bytes.len() as u64, &mut message);
        message.extend_from_slice(&bytes[..bytes.len() - 2]);
        prost::encoding::encode_varint(0, &mut message);
        assert!(split(&Bytes::from(message), LIMITS).is_none());
    }
}

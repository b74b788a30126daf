//! Records, their keys and cursors, and the input rules.
//!
//! A record's place is its key: (source, event time in milliseconds, id).
//! Storage orders a source's records by (time, id) on both backends, which
//! is what makes query pages stable: a page token is the last key handed
//! out, and the next page starts strictly after it.

use munity_platform::error::FieldViolations;
use munity_proto::warehouse::v1::{Record, record::Payload};
use munity_store::Millis;
use prost::Message;
use prost_types::Timestamp;

/// Times the warehouse accepts: 1970-01-01 up to 9999-12-31 (UTC).
pub const MAX_TIME_MS: Millis = 253_402_300_799_999;
/// Attributes one record may carry, and their sizes.
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_CONTENT_TYPE_BYTES: usize = 128;
/// Sources starting with this are written by the warehouse only (domain
/// events, see `activity.rs`).
pub const RESERVED_SOURCE_PREFIX: &str = "domain.";

/// Where a record sits within its source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub time: Millis,
    pub id: String,
}

impl RecordKey {
    /// The key of a stored (validated) record.
    pub fn of(record: &Record) -> Self {
        RecordKey {
            time: record.time.as_ref().map_or(0, millis_of),
            id: record.id.clone(),
        }
    }
}

/// A source's records with time in `[from, to)`, in (time, id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub source: String,
    pub from: Millis,
    pub to: Millis,
    pub descending: bool,
}

impl Range {
    /// Whether `key` lies in the range and past `after` (in the range's
    /// direction).
    pub fn admits(&self, key: &RecordKey, after: Option<&RecordKey>) -> bool {
        let in_range = key.time >= self.from && key.time < self.to;
        let past = match after {
            None => true,
            Some(after) if self.descending => key < after,
            Some(after) => key > after,
        };
        in_range && past
    }
}

/// Where a record sits in its source's arrival order (the tail's order):
/// the stored batch it came in (the time the batch was stored, and an id
/// that orders batches stored in the same millisecond), and its index in
/// that batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ArrivalCursor {
    pub at: Millis,
    pub batch: uuid::Uuid,
    pub index: u32,
}

impl ArrivalCursor {
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.at, self.batch.simple(), self.index)
    }

    /// `None` for anything [`ArrivalCursor::encode`] cannot have made.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let at: Millis = parts.next()?.parse().ok()?;
        let batch = parts.next()?;
        let index: u32 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(0..=MAX_TIME_MS).contains(&at) || batch.len() != 32 {
            return None;
        }
        Some(ArrivalCursor {
            at,
            batch: uuid::Uuid::try_parse(batch).ok()?,
            index,
        })
    }
}

/// A query's page token: the last key handed out, tied to the query it
/// came from (a token used with another source, range or order is refused
/// rather than silently misread).
pub fn encode_page_token(range: &Range, key: &RecordKey) -> String {
    format!("{}.{}.{}", key.time, range_tag(range), key.id)
}

pub fn decode_page_token(range: &Range, token: &str) -> Option<RecordKey> {
    let (time, rest) = token.split_once('.')?;
    let (tag, id) = rest.split_once('.')?;
    let time: Millis = time.parse().ok()?;
    let key = RecordKey {
        time,
        id: id.to_owned(),
    };
    (tag == range_tag(range) && valid_id(id) && range.admits(&key, None)).then_some(key)
}

/// A short fingerprint of a query's source, range and order (FNV-1a).
fn range_tag(range: &Range) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let text = format!(
        "{}|{}|{}|{}",
        range.source, range.from, range.to, range.descending
    );
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

pub fn millis_of(timestamp: &Timestamp) -> Millis {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(Millis::from(timestamp.nanos) / 1_000_000)
}

pub fn timestamp_of(millis: Millis) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A timestamp the warehouse can store, in milliseconds.
pub fn valid_time(timestamp: &Timestamp) -> Result<Millis, &'static str> {
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err("nanos must be within 0..1e9");
    }
    let millis = millis_of(timestamp);
    if timestamp.seconds < 0 || millis > MAX_TIME_MS {
        return Err("must be between 1970-01-01 and 9999-12-31");
    }
    Ok(millis)
}

/// Source names: 1 to 128 of `a-z 0-9 . - _`, starting with a letter or
/// digit.
pub fn valid_source(source: &str) -> bool {
    (1..=128).contains(&source.len())
        && source.as_bytes()[0].is_ascii_alphanumeric()
        && source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Record ids: 1 to 64 of letters, digits, `-`, `_`, `.`, `:`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Input limits the API enforces (from config).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_records: usize,
    pub max_payload_bytes: usize,
}

/// Checks a producer's batch and makes it ready to store: ids generated
/// where missing, times set (to `now` where missing, to whole
/// milliseconds), `stored_at` set to `now`. Every violation is reported,
/// as `records[<index>].<field>`.
pub fn prepare_batch(
    records: &mut [Record],
    limits: Limits,
    now: Millis,
) -> Result<(), FieldViolations> {
    let mut violations = check_batch_size(records.len(), limits)?;
    for (index, record) in records.iter_mut().enumerate() {
        prepare_record(index, record, limits, now, &mut violations);
    }
    violations.into_result()
}

/// A batch of `len` records: refused when too big (nothing else is then
/// worth checking); an empty one is a violation reported with the rest.
pub fn check_batch_size(len: usize, limits: Limits) -> Result<FieldViolations, FieldViolations> {
    let mut violations = FieldViolations::new();
    if len == 0 {
        violations.add("records", "must hold at least one record");
    }
    if len > limits.max_batch_records {
        violations.add(
            "records",
            format!("at most {} records per batch", limits.max_batch_records),
        );
        return Err(violations);
    }
    Ok(violations)
}

/// [`prepare_batch`]'s rules for the record at `index` of a batch (whose
/// size was checked).
pub fn prepare_record(
    index: usize,
    record: &mut Record,
    limits: Limits,
    now: Millis,
    violations: &mut FieldViolations,
) {
    let field = |name: &str| format!("records[{index}].{name}");
    if !valid_source(&record.source) {
        violations.add(
            field("source"),
            "must be 1 to 128 of a-z, 0-9, '.', '-', '_', starting with a letter or digit",
        );
    }
    if record.id.is_empty() {
        record.id = uuid::Uuid::now_v7().simple().to_string();
    } else if !valid_id(&record.id) {
        violations.add(
            field("id"),
            "must be 1 to 64 of letters, digits, '-', '_', '.', ':'",
        );
    }
    match record.time.as_ref().map(valid_time) {
        None => record.time = Some(timestamp_of(now)),
        Some(Ok(millis)) => record.time = Some(timestamp_of(millis)),
        Some(Err(why)) => violations.add(field("time"), why),
    }
    if record.attributes.len() > MAX_ATTRIBUTES {
        violations.add(
            field("attributes"),
            format!("at most {MAX_ATTRIBUTES} attributes"),
        );
    }
    for (key, value) in &record.attributes {
        if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY_BYTES {
            violations.add(
                field("attributes"),
                format!("keys must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"),
            );
            break;
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            violations.add(
                field(&format!("attributes[{key}]")),
                format!("at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
            );
        }
    }
    let payload_bytes = match &record.payload {
        None => 0,
        Some(Payload::Data(data)) => data.len(),
        Some(Payload::Value(value)) => value.encoded_len(),
    };
    if payload_bytes > limits.max_payload_bytes {
        let name = match record.payload {
            Some(Payload::Value(_)) => "value",
            _ => "data",
        };
        violations.add(
            field(name),
            format!("at most {} bytes", limits.max_payload_bytes),
        );
    }
    if record.content_type.len() > MAX_CONTENT_TYPE_BYTES {
        violations.add(
            field("content_type"),
            format!("at most {MAX_CONTENT_TYPE_BYTES} bytes"),
        );
    }
    record.stored_at = Some(timestamp_of(now));
}

/// Aggregation buckets (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketWidth {
    Minute,
    Hour,
    Day,
}

impl BucketWidth {
    pub fn millis(self) -> Millis {
        match self {
            BucketWidth::Minute => 60_000,
            BucketWidth::Hour => 3_600_000,
            BucketWidth::Day => 86_400_000,
        }
    }

    /// The start of the bucket `time` falls in.
    pub fn start_of(self, time: Millis) -> Millis {
        time - time.rem_euclid(self.millis())
    }
}

/// The numeric value of an attribute, if it is a finite number.
pub fn numeric(value: &str) -> Option<f64> {
    value.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range {
            source: "s".into(),
            from: 0,
            to: 100,
            descending: false,
        }
    }

    #[test]
    fn page_tokens_round_trip_only_for_their_own_query() {
        let key = RecordKey {
            time: 42,
            id: "a.b:c".into(),
        };
        let token = encode_page_token(&range(), &key);
        assert_eq!(decode_page_token(&range(), &token), Some(key.clone()));
        let other = Range {
            descending: true,
            ..range()
        };
        assert_eq!(decode_page_token(&other, &token), None);
        assert_eq!(decode_page_token(&range(), "garbage"), None);
        assert_eq!(decode_page_token(&range(), "999.x.y"), None);
    }

    #[test]
    fn arrival_cursors_round_trip() {
        let cursor = ArrivalCursor {
            at: 1_700_000_000_000,
            batch: uuid::Uuid::now_v7(),
            index: 7,
        };
        assert_eq!(ArrivalCursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "1.2.3",
            "-1.0000.1",
            "x.y.z",
            "1.00000000000000000000000000000000.1.2",
        ] {
            assert_eq!(ArrivalCursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_records_are_named_by_index_and_field() {
        let mut records = vec![
            Record {
                source: "ok.source".into(),
                ..Record::default()
            },
            Record {
                source: "Bad Source".into(),
                id: "no spaces allowed".into(),
                time: Some(Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Record::default()
            },
        ];
        let limits = Limits {
            max_batch_records: 10,
            max_payload_bytes: 10,
        };
        let violations = prepare_batch(&mut records, limits, 1_000).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["records[1].source", "records[1].id", "records[1].time"]
        );
        assert!(valid_id(&records[0].id), "an id was generated");
        assert_eq!(records[0].time, Some(timestamp_of(1_000)));
    }

    #[test]
    fn buckets_start_on_utc_boundaries() {
        assert_eq!(BucketWidth::Minute.start_of(61_500), 60_000);
        assert_eq!(BucketWidth::Day.start_of(86_400_000 + 5), 86_400_000);
        assert_eq!(numeric(" 2.5 "), Some(2.5));
        assert_eq!(numeric("NaN"), None);
        assert_eq!(numeric("abc"), None);
    }
}

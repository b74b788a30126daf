//! The checks every request passes before its handler runs, read from the
//! descriptors once: the `(munity.options.v1.field)` rules declared next to
//! the fields (required, integer bounds, lengths, how far a time may lie
//! ahead or back), and protobuf's own range for every
//! `google.protobuf.Timestamp` and `Duration`, whatever the field.
//!
//! The check walks the request's wire bytes, guided by a plan made per
//! message type from the descriptors, and descends only into fields that
//! can hold something to check (a record's free-form `Struct` payload is
//! skipped, not parsed twice). [`crate::codec::MunityCodec`] runs it on
//! every request message a server decodes, so no service can forget it,
//! and what it refuses names the field as the client wrote it
//! (`options[1].start`). Services keep the rules that need their state
//! (an option starting in the future, a known community).

use std::{
    collections::{HashMap, HashSet},
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use prost_reflect::{Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::bad_request::FieldViolations;

const FIELD_OPTION: &str = "munity.options.v1.field";
const TIMESTAMP: &str = "google.protobuf.Timestamp";
const DURATION: &str = "google.protobuf.Duration";

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in Unix seconds: the range
/// protobuf's JSON mapping (and so every other client) accepts.
pub const MIN_TIMESTAMP_SECS: i64 = -62_135_596_800;
pub const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;
/// ±10,000 years, protobuf's Duration range.
pub const MAX_DURATION_SECS: i64 = 315_576_000_000;
const DAY_SECS: i64 = 86_400;

/// A field's declared rules (`munity.options.v1.FieldRules`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldRules {
    pub required: bool,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub min_len: Option<u32>,
    pub max_len: Option<u32>,
    pub max_days_ahead: Option<u32>,
    pub max_days_ago: Option<u32>,
    pub format: Format,
    /// A regular expression the whole value must match (anchored).
    pub pattern: Option<String>,
    /// What the pattern means, for the violation.
    pub pattern_hint: Option<String>,
}

/// A string field's declared shape (`munity.options.v1.Format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Any,
    Uuid,
    Email,
}

impl Format {
    fn check(self, value: &str) -> Result<(), &'static str> {
        match self {
            Format::Any => Ok(()),
            Format::Uuid => {
                let ok = value.len() == 36
                    && value.char_indices().all(|(i, c)| match i {
                        8 | 13 | 18 | 23 => c == '-',
                        _ => c.is_ascii_hexdigit(),
                    });
                if ok {
                    Ok(())
                } else {
                    Err("must be a UUID like 0192e4c8-7b1a-7c3e-9f00-6d2b5a1e4f10")
                }
            }
            Format::Email => {
                let ok = value.split_once('@').is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }) && !value.chars().any(char::is_whitespace);
                if ok {
                    Ok(())
                } else {
                    Err("must be a valid email address like name@example.com")
                }
            }
        }
    }

    /// The OpenAPI `format` of the shape, if it has one.
    pub fn openapi(self) -> Option<&'static str> {
        match self {
            Format::Any => None,
            Format::Uuid => Some("uuid"),
            Format::Email => Some("email"),
        }
    }
}

impl FieldRules {
    /// The rules declared on `field`, if any.
    pub fn of(field: &FieldDescriptor) -> Option<FieldRules> {
        let pool = field.parent_pool();
        let ext = pool.get_extension_by_name(FIELD_OPTION)?;
        let options = field.options();
        if !options.has_extension(&ext) {
            return None;
        }
        let value = options.get_extension(&ext);
        let Value::Message(rules) = value.as_ref() else {
            return None;
        };
        let opt_i64 = |name: &str| {
            rules
                .has_field_by_name(name)
                .then(|| rules.get_field_by_name(name).and_then(|v| v.as_i64()))
                .flatten()
        };
        let opt_u32 = |name: &str| {
            rules
                .has_field_by_name(name)
                .then(|| rules.get_field_by_name(name).and_then(|v| v.as_u32()))
                .flatten()
        };
        let opt_string = |name: &str| {
            rules
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|s| !s.is_empty())
        };
        Some(FieldRules {
            required: rules
                .get_field_by_name("required")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            min: opt_i64("min"),
            max: opt_i64("max"),
            min_len: opt_u32("min_len"),
            max_len: opt_u32("max_len"),
            max_days_ahead: opt_u32("max_days_ahead"),
            max_days_ago: opt_u32("max_days_ago"),
            format: match rules
                .get_field_by_name("format")
                .and_then(|v| v.as_enum_number())
            {
                Some(1) => Format::Uuid,
                Some(2) => Format::Email,
                _ => Format::Any,
            },
            pattern: opt_string("pattern"),
            pattern_hint: opt_string("pattern_hint"),
        })
    }

    fn is_empty(&self) -> bool {
        *self == FieldRules::default()
    }
}

/// How a field's wire value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// int32/int64/uint32/uint64/enum/bool (varint), signed when `signed`.
    Varint {
        signed: bool,
        zigzag: bool,
    },
    Fixed32 {
        signed: bool,
    },
    Fixed64 {
        signed: bool,
    },
    /// float, double: nothing to check but presence.
    Float,
    Double,
    String,
    Bytes,
    Timestamp,
    Duration,
    /// Another message, by plan index.
    Message(usize),
}

#[derive(Debug, Clone)]
struct FieldPlan {
    number: u32,
    name: String,
    kind: ValueKind,
    repeated: bool,
    rules: FieldRules,
    /// `rules.pattern`, compiled once.
    pattern: Option<regex::Regex>,
    /// Whether the walk must look inside (rules, a time, or a message
    /// that holds something to check).
    walk: bool,
}

#[derive(Debug, Clone, Default)]
struct MessagePlan {
    fields: Vec<FieldPlan>,
    /// Whether anything in this message (or below it) is checked.
    interesting: bool,
}

impl MessagePlan {
    fn field(&self, number: u32) -> Option<(usize, &FieldPlan)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, f)| f.number == number)
    }
}

/// The plans of every message in a descriptor pool.
#[derive(Debug, Default)]
pub struct Validator {
    plans: Vec<MessagePlan>,
    by_name: HashMap<String, usize>,
    /// Messages that some method takes as its request.
    requests: HashSet<String>,
}

/// The plan of one request type, ready to check messages of that type.
#[derive(Debug, Clone, Copy)]
pub struct RequestCheck {
    validator: &'static Validator,
    plan: usize,
}

impl RequestCheck {
    /// Checks an encoded message (already known to decode) and records what
    /// breaks a rule.
    pub fn check(&self, bytes: &[u8], violations: &mut FieldViolations) {
        let now = unix_now();
        self.validator
            .walk(self.plan, bytes, None, now, 0, violations);
    }

    /// Whether messages of this type have anything to check.
    pub fn has_rules(&self) -> bool {
        self.validator.plans[self.plan].interesting
    }
}

/// The validator of Munity's own descriptors ([`crate::FILE_DESCRIPTOR_SET`]).
pub fn munity() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        Validator::new(&pool)
    })
}

/// The check of `full_name` when some Munity method takes it as a request
/// and it has something to check; `None` otherwise.
pub fn request_check(full_name: &str) -> Option<RequestCheck> {
    let validator = munity();
    if !validator.requests.contains(full_name) {
        return None;
    }
    let plan = *validator.by_name.get(full_name)?;
    Some(RequestCheck { validator, plan })
}

/// Whether some Munity method takes `full_name` as its request.
pub fn is_request(full_name: &str) -> bool {
    munity().requests.contains(full_name)
}

impl Validator {
    pub fn new(pool: &DescriptorPool) -> Validator {
        let mut validator = Validator::default();
        let messages: Vec<MessageDescriptor> = pool.all_messages().collect();
        for (index, message) in messages.iter().enumerate() {
            validator
                .by_name
                .insert(message.full_name().to_owned(), index);
        }
        for message in &messages {
            let fields = message
                .fields()
                .map(|field| {
                    let kind = match field.kind() {
                        Kind::Int32 | Kind::Int64 | Kind::Enum(_) => ValueKind::Varint {
                            signed: true,
                            zigzag: false,
                        },
                        Kind::Sint32 | Kind::Sint64 => ValueKind::Varint {
                            signed: true,
                            zigzag: true,
                        },
                        Kind::Uint32 | Kind::Uint64 | Kind::Bool => ValueKind::Varint {
                            signed: false,
                            zigzag: false,
                        },
                        Kind::Fixed32 => ValueKind::Fixed32 { signed: false },
                        Kind::Sfixed32 => ValueKind::Fixed32 { signed: true },
                        Kind::Fixed64 => ValueKind::Fixed64 { signed: false },
                        Kind::Sfixed64 => ValueKind::Fixed64 { signed: true },
                        Kind::Float => ValueKind::Float,
                        Kind::Double => ValueKind::Double,
                        Kind::String => ValueKind::String,
                        Kind::Bytes => ValueKind::Bytes,
                        Kind::Message(inner) => match inner.full_name() {
                            TIMESTAMP => ValueKind::Timestamp,
                            DURATION => ValueKind::Duration,
                            name => ValueKind::Message(validator.by_name[name]),
                        },
                    };
                    let rules = FieldRules::of(&field).unwrap_or_default();
                    let pattern = rules.pattern.as_deref().map(|pattern| {
                        regex::Regex::new(pattern).unwrap_or_else(|e| {
                            panic!(
                                "{}: pattern {pattern:?} is not a regular expression: {e}",
                                field.full_name()
                            )
                        })
                    });
                    FieldPlan {
                        pattern,
                        number: field.number(),
                        name: field.name().to_owned(),
                        kind,
                        repeated: field.cardinality() == Cardinality::Repeated,
                        walk: !rules.is_empty()
                            || matches!(kind, ValueKind::Timestamp | ValueKind::Duration),
                        rules,
                    }
                })
                .collect();
            validator.plans.push(MessagePlan {
                fields,
                interesting: false,
            });
        }
        // What is interesting, to a fixed point (messages may nest in cycles,
        // e.g. Struct and Value).
        loop {
            let mut changed = false;
            for index in 0..validator.plans.len() {
                let mut interesting = validator.plans[index].interesting;
                for f in 0..validator.plans[index].fields.len() {
                    let field = &validator.plans[index].fields[f];
                    let walk = field.walk
                        || matches!(field.kind, ValueKind::Message(m) if validator.plans[m].interesting);
                    interesting |= walk;
                    if walk && !field.walk {
                        validator.plans[index].fields[f].walk = true;
                        changed = true;
                    }
                }
                if interesting && !validator.plans[index].interesting {
                    validator.plans[index].interesting = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for service in pool.services() {
            for method in service.methods() {
                validator
                    .requests
                    .insert(method.input().full_name().to_owned());
            }
        }
        validator
    }

    fn walk(
        &self,
        plan_index: usize,
        mut bytes: &[u8],
        prefix: Option<&At<'_>>,
        now: i64,
        depth: u32,
        violations: &mut FieldViolations,
    ) {
        let plan = &self.plans[plan_index];
        if !plan.interesting || depth > 100 {
            return;
        }
        // Per field: items seen (repeated) or whether set, and the last
        // scalar (proto3: the last one wins).
        // On the stack for the messages Munity has (no allocation per
        // walked message); on the heap past that.
        const INLINE: usize = 16;
        let count = plan.fields.len();
        let (mut seen_inline, mut last_inline) = ([0usize; INLINE], [None::<Scalar>; INLINE]);
        let (mut seen_heap, mut last_heap) = (Vec::new(), Vec::new());
        let (seen, last): (&mut [usize], &mut [Option<Scalar>]) = if count <= INLINE {
            (&mut seen_inline[..count], &mut last_inline[..count])
        } else {
            seen_heap.resize(count, 0);
            last_heap.resize(count, None);
            (&mut seen_heap[..], &mut last_heap[..])
        };
        while !bytes.is_empty() {
            let Some(key) = read_varint(&mut bytes) else {
                return;
            };
            let number = (key >> 3) as u32;
            let wire_type = (key & 7) as u8;
            let field = plan.field(number);
            let value = match wire_type {
                0 => match read_varint(&mut bytes) {
                    Some(v) => Wire::Varint(v),
                    None => return,
                },
                1 => match take(&mut bytes, 8) {
                    Some(b) => Wire::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
                    None => return,
                },
                5 => match take(&mut bytes, 4) {
                    Some(b) => Wire::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))),
                    None => return,
                },
                2 => {
                    let Some(len) = read_varint(&mut bytes) else {
                        return;
                    };
                    match usize::try_from(len)
                        .ok()
                        .and_then(|len| take(&mut bytes, len))
                    {
                        Some(b) => Wire::Bytes(b),
                        None => return,
                    }
                }
                // Groups: nothing of ours uses them; stop rather than guess.
                _ => return,
            };
            let Some((index, field)) = field else {
                continue;
            };
            if !field.walk {
                continue;
            }
            let at = |i: usize| At {
                parent: prefix,
                name: &field.name,
                index: field.repeated.then_some(i),
            };
            match (field.kind, value) {
                (ValueKind::Message(inner), Wire::Bytes(b)) => {
                    let here = at(seen[index]);
                    seen[index] += 1;
                    self.walk(inner, b, Some(&here), now, depth + 1, violations);
                }
                (ValueKind::Timestamp, Wire::Bytes(b)) => {
                    let here = at(seen[index]);
                    seen[index] += 1;
                    check_timestamp(&here, b, &field.rules, now, violations);
                }
                (ValueKind::Duration, Wire::Bytes(b)) => {
                    let here = at(seen[index]);
                    seen[index] += 1;
                    check_duration(&here, b, violations);
                }
                (ValueKind::String, Wire::Bytes(b)) => {
                    let text = std::str::from_utf8(b).unwrap_or_default();
                    if field.repeated {
                        // A list's length rules count its items; the shape
                        // applies to each.
                        if !text.is_empty() {
                            check_format(&at(seen[index]), text, field.rules.format, violations);
                            check_pattern(&at(seen[index]), text, field, violations);
                        }
                        seen[index] += 1;
                    } else {
                        last[index] = Some(Scalar::Text(text));
                        seen[index] = 1;
                    }
                }
                (ValueKind::Bytes, Wire::Bytes(b)) => {
                    if field.repeated {
                        seen[index] += 1;
                    } else {
                        last[index] = Some(Scalar::Len(b.len()));
                        seen[index] = 1;
                    }
                }
                (_, Wire::Bytes(mut packed)) if field.repeated => {
                    // Packed scalars.
                    while !packed.is_empty() {
                        let item = match field.kind {
                            ValueKind::Fixed32 { .. } | ValueKind::Float => take(&mut packed, 4)
                                .map(|b| {
                                    Wire::Fixed32(u32::from_le_bytes(
                                        b.try_into().unwrap_or([0; 4]),
                                    ))
                                }),
                            ValueKind::Fixed64 { .. } | ValueKind::Double => take(&mut packed, 8)
                                .map(|b| {
                                    Wire::Fixed64(u64::from_le_bytes(
                                        b.try_into().unwrap_or([0; 8]),
                                    ))
                                }),
                            _ => read_varint(&mut packed).map(Wire::Varint),
                        };
                        let Some(item) = item else { break };
                        if let Some(n) = integer(field.kind, &item) {
                            check_int(&at(seen[index]), n, &field.rules, violations);
                        }
                        seen[index] += 1;
                    }
                }
                (kind, value) => {
                    let n = integer(kind, &value);
                    if field.repeated {
                        if let Some(n) = n {
                            check_int(&at(seen[index]), n, &field.rules, violations);
                        }
                        seen[index] += 1;
                    } else {
                        last[index] = n.map(Scalar::Int).or(Some(Scalar::Other));
                        seen[index] = 1;
                    }
                }
            }
        }
        // Whole-field rules: presence, lengths, single integers.
        for (index, field) in plan.fields.iter().enumerate() {
            let rules = &field.rules;
            if rules.is_empty() {
                continue;
            }
            let at = At {
                parent: prefix,
                name: &field.name,
                index: None,
            };
            if field.repeated {
                if rules.required && seen[index] == 0 {
                    violations.add(at.render(), "is required");
                } else {
                    check_len(&at, seen[index], rules, "items", violations);
                }
                continue;
            }
            // Zero, empty and absent are all "not given" in proto3: only
            // `required` refuses them; bounds apply to what was given.
            match (field.kind, last[index]) {
                (ValueKind::String | ValueKind::Bytes, last) => {
                    let len = match last {
                        Some(Scalar::Len(n)) => n,
                        Some(Scalar::Text(text)) => {
                            if !text.is_empty() {
                                check_format(&at, text, rules.format, violations);
                                check_pattern(&at, text, field, violations);
                            }
                            text.chars().count()
                        }
                        _ => 0,
                    };
                    let unit = if field.kind == ValueKind::String {
                        "characters"
                    } else {
                        "bytes"
                    };
                    if rules.required && len == 0 {
                        violations.add(at.render(), "is required");
                    } else if len > 0 {
                        check_len(&at, len, rules, unit, violations);
                    }
                }
                (ValueKind::Message(_) | ValueKind::Timestamp | ValueKind::Duration, _) => {
                    if rules.required && seen[index] == 0 {
                        violations.add(at.render(), "is required");
                    }
                }
                // A float or double that was sent: given, and no integer
                // bound applies to it.
                (_, Some(Scalar::Other)) => {}
                (_, last) => {
                    let n = match last {
                        Some(Scalar::Int(n)) => n,
                        _ => 0,
                    };
                    if rules.required && n == 0 {
                        violations.add(at.render(), "is required");
                    } else if n != 0 {
                        check_int(&at, n, rules, violations);
                    }
                }
            }
        }
    }
}

/// Where a field is, rendered (`options[1].start`) only for a violation.
struct At<'a> {
    parent: Option<&'a At<'a>>,
    name: &'a str,
    index: Option<usize>,
}

impl At<'_> {
    fn render(&self) -> String {
        let mut text = match self.parent {
            Some(parent) => parent.render() + ".",
            None => String::new(),
        };
        text.push_str(self.name);
        if let Some(index) = self.index {
            text.push_str(&format!("[{index}]"));
        }
        text
    }
}

#[derive(Debug, Clone, Copy)]
enum Scalar<'a> {
    Int(i128),
    Len(usize),
    Text(&'a str),
    Other,
}

fn check_pattern(at: &At<'_>, text: &str, field: &FieldPlan, violations: &mut FieldViolations) {
    if let Some(pattern) = &field.pattern
        && !pattern.is_match(text)
    {
        let why = match &field.rules.pattern_hint {
            Some(hint) => format!("must be {hint}"),
            None => format!("must match {}", pattern.as_str()),
        };
        violations.add(at.render(), why);
    }
}

fn check_format(at: &At<'_>, text: &str, format: Format, violations: &mut FieldViolations) {
    if let Err(why) = format.check(text) {
        violations.add(at.render(), why);
    }
}

enum Wire<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

fn integer(kind: ValueKind, value: &Wire<'_>) -> Option<i128> {
    match (kind, value) {
        (ValueKind::Varint { zigzag: true, .. }, Wire::Varint(v)) => {
            Some(i128::from(((*v >> 1) as i64) ^ -((*v & 1) as i64)))
        }
        (ValueKind::Varint { signed: true, .. }, Wire::Varint(v)) => Some(i128::from(*v as i64)),
        (ValueKind::Varint { signed: false, .. }, Wire::Varint(v)) => Some(i128::from(*v)),
        (ValueKind::Fixed32 { signed: true }, Wire::Fixed32(v)) => Some(i128::from(*v as i32)),
        (ValueKind::Fixed32 { signed: false }, Wire::Fixed32(v)) => Some(i128::from(*v)),
        (ValueKind::Fixed64 { signed: true }, Wire::Fixed64(v)) => Some(i128::from(*v as i64)),
        (ValueKind::Fixed64 { signed: false }, Wire::Fixed64(v)) => Some(i128::from(*v)),
        _ => None,
    }
}

fn check_int(at: &At<'_>, n: i128, rules: &FieldRules, violations: &mut FieldViolations) {
    let below = rules.min.is_some_and(|min| n < i128::from(min));
    let above = rules.max.is_some_and(|max| n > i128::from(max));
    if below || above {
        let range = match (rules.min, rules.max) {
            (Some(min), Some(max)) => format!("must be {min} to {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            (None, None) => unreachable!("a bound was broken"),
        };
        violations.add(at.render(), format!("{range} (got {n})"));
    }
}

fn check_len(
    at: &At<'_>,
    len: usize,
    rules: &FieldRules,
    unit: &str,
    violations: &mut FieldViolations,
) {
    let below = rules.min_len.is_some_and(|min| len < min as usize);
    let above = rules.max_len.is_some_and(|max| len > max as usize);
    if below || above {
        let range = match (rules.min_len, rules.max_len) {
            (Some(min), Some(max)) => format!("must be {min} to {max} {unit}"),
            (Some(min), None) => format!("must be at least {min} {unit}"),
            (None, Some(max)) => format!("must be at most {max} {unit}"),
            (None, None) => unreachable!("a bound was broken"),
        };
        violations.add(at.render(), format!("{range} (got {len})"));
    }
}

/// (seconds, nanos) of an encoded Timestamp or Duration.
fn seconds_and_nanos(mut bytes: &[u8]) -> (i64, i64) {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while !bytes.is_empty() {
        let Some(key) = read_varint(&mut bytes) else {
            break;
        };
        match key {
            0x08 => seconds = read_varint(&mut bytes).map_or(0, |v| v as i64),
            // int32 nanos, sign-extended to 64 bits on the wire.
            0x10 => nanos = read_varint(&mut bytes).map_or(0, |v| i64::from(v as i64 as i32)),
            _ => {
                if !skip(&mut bytes, (key & 7) as u8) {
                    break;
                }
            }
        }
    }
    (seconds, nanos)
}

fn check_timestamp(
    at: &At<'_>,
    bytes: &[u8],
    rules: &FieldRules,
    now: i64,
    violations: &mut FieldViolations,
) {
    let (seconds, nanos) = seconds_and_nanos(bytes);
    if !(0..=999_999_999).contains(&nanos) {
        violations.add(
            at.render(),
            format!("nanos must be 0 to 999999999 (got {nanos})"),
        );
    } else if !(MIN_TIMESTAMP_SECS..=MAX_TIMESTAMP_SECS).contains(&seconds) {
        violations.add(at.render(),
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z (protobuf's Timestamp range)",
        );
    } else if let Some(days) = rules.max_days_ahead
        && seconds > now.saturating_add(i64::from(days) * DAY_SECS)
    {
        violations.add(at.render(), format!("must be at most {days} days from now"));
    } else if let Some(days) = rules.max_days_ago
        && seconds < now.saturating_sub(i64::from(days) * DAY_SECS)
    {
        violations.add(at.render(), format!("must be at most {days} days ago"));
    }
}

fn check_duration(at: &At<'_>, bytes: &[u8], violations: &mut FieldViolations) {
    let (seconds, nanos) = seconds_and_nanos(bytes);
    let same_sign = seconds == 0 || nanos == 0 || (seconds < 0) == (nanos < 0);
    if !(-999_999_999..=999_999_999).contains(&nanos) || !same_sign {
        violations.add(
            at.render(),
            format!(
                "nanos must be -999999999 to 999999999, with the sign of seconds (got {nanos})"
            ),
        );
    } else if !(-MAX_DURATION_SECS..=MAX_DURATION_SECS).contains(&seconds) {
        violations.add(
            at.render(),
            "must be within ±10,000 years (protobuf's Duration range)",
        );
    }
}

fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Some(head)
}

fn skip(bytes: &mut &[u8], wire_type: u8) -> bool {
    match wire_type {
        0 => read_varint(bytes).is_some(),
        1 => take(bytes, 8).is_some(),
        5 => take(bytes, 4).is_some(),
        2 => read_varint(bytes)
            .and_then(|len| usize::try_from(len).ok())
            .and_then(|len| take(bytes, len))
            .is_some(),
        _ => false,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

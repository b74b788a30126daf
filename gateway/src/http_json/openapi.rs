//! The OpenAPI 3.1 document of every HTTP/JSON binding, derived from the
//! same bindings the gateway serves and from the protos' comments; served
//! at `/openapi.json`, with a human page at `/docs` (static, offline: it
//! renders the document with a few lines of script, no CDN), and written to
//! a file by `munity-gateway openapi` (`docs/openapi.json` in the repo).

use std::collections::BTreeMap;

use bytes::Bytes;
use munity_proto::validate::{FieldRules, Format};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use prost_reflect::{FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json, json};

use super::{BodyMapping, HttpRoute, Transcoder};

/// The error body every operation may answer with.
const STATUS_SCHEMA: &str = "munity.Status";

/// The OpenAPI document of every binding.
pub fn document(transcoder: &Transcoder) -> Json {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    let policy = crate::config::policy();
    let mut routes: Vec<_> = transcoder.routes().iter().collect();
    routes.sort_by(|a, b| a.grpc_path.cmp(&b.grpc_path));
    for route in routes {
        let base_id = route
            .grpc_path
            .trim_start_matches('/')
            .replace(['/', '.'], "_");
        let count = operation_ids.entry(base_id.clone()).or_insert(0);
        *count += 1;
        let operation_id = if *count == 1 {
            base_id
        } else {
            format!("{base_id}_{count}")
        };
        let public = policy.is_public(&route.grpc_path);
        let callers = (!public).then(|| policy.callers(&route.grpc_path).describe());
        let operation = operation(route, operation_id, public, callers, &mut schemas);
        paths
            .entry(route.template.openapi_path())
            .or_default()
            .insert(route.verb.as_str().to_ascii_lowercase(), operation);
    }
    schemas.insert(
        STATUS_SCHEMA.to_owned(),
        json!({
            "type": "object",
            "description": "A gRPC status (google.rpc.Status): the code, a message for developers, and details such as google.rpc.BadRequest's field violations.",
            "properties": {
                "code": {"type": "integer", "description": "The gRPC status code."},
                "message": {"type": "string"},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "@type": {"type": "string"},
                            "fieldViolations": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "field": {"type": "string"},
                                        "description": {"type": "string"}
                                    }
                                }
                            }
                        },
                        "required": ["@type"]
                    }
                }
            },
            "required": ["code", "message", "details"],
            "additionalProperties": false
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Munity HTTP/JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every method bound with google.api.http in the Munity protos, transcoded to gRPC by the gateway. Fields use the proto3 JSON mapping: camelCase names, 64-bit integers as strings, enums by name, timestamps in RFC 3339; default values are left out of answers; unknown fields are refused. Errors are {code, message, details} with the HTTP status of the gRPC code. Server streams are newline-delimited JSON, or Server-Sent Events with Accept: text/event-stream. Answers are always written: a stored time outside protobuf's range (years 1 to 9999) is written clamped to it, and a google.protobuf.Any payload of a type the gateway has no descriptor for as {\"@type\": \"<type URL>\", \"value\": \"<base64 of its bytes>\"} (a form protobuf's JSON mapping does not define).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "An access token from POST /v1/auth/login."}
            }
        }
    })
}

fn operation(
    route: &HttpRoute,
    operation_id: String,
    public: bool,
    callers: Option<String>,
    schemas: &mut BTreeMap<String, Json>,
) -> Json {
    let method = &route.method;
    let input = method.input();
    let comment = comments(&method.parent_file(), method.path()).unwrap_or_default();
    let summary = comment
        .split(['\n'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let who = callers.unwrap_or_else(|| "Callers: anyone; no access token needed.".to_owned());
    let description = if comment.is_empty() {
        who
    } else {
        format!("{comment}\n\n{who}")
    };
    let mut parameters = Vec::new();
    let path_fields: Vec<String> = route
        .template
        .variables()
        .iter()
        .map(|v| v.field_path.clone())
        .collect();
    for field_path in &path_fields {
        let field = super::resolve_field(&input, field_path).ok();
        parameters.push(json!({
            "name": field_path,
            "in": "path",
            "required": true,
            "schema": field.map_or(json!({"type": "string"}), |f| field_schema(&f, schemas)),
        }));
    }
    let bound = |field: &FieldDescriptor| {
        path_fields
            .iter()
            .any(|p| p == field.name() || p == field.json_name())
    };
    let request_body = match &route.body {
        BodyMapping::Whole => Some(body_schema(&input, &bound, schemas)),
        BodyMapping::Field(field) => Some(field_schema(field, schemas)),
        BodyMapping::None => None,
    };
    if !matches!(route.body, BodyMapping::Whole) {
        for field in input.fields() {
            let in_body = matches!(&route.body, BodyMapping::Field(b) if *b == field);
            if bound(&field) || in_body || field.is_map() || !super::is_scalar_like(&field) {
                continue;
            }
            let mut parameter = json!({
                "name": field.json_name(),
                "in": "query",
                "required": must_be_given(&field),
                "schema": field_schema(&field, schemas),
            });
            if let Some(text) = comments(&field.parent_file(), field.path()) {
                parameter["description"] = json!(text);
            }
            if field.is_list() {
                parameter["style"] = json!("form");
                parameter["explode"] = json!(true);
            }
            parameters.push(parameter);
        }
    }
    for name in &route.forward_headers {
        parameters.push(json!({
            "name": name.as_str(),
            "in": "header",
            "required": false,
            "description": "Passed on to the service as gRPC metadata (the method's forward_headers); the method's description says what it must hold.",
            "schema": {"type": "string"},
        }));
    }
    let output_ref = message_ref(&method.output(), schemas);
    let success = if method.is_server_streaming() {
        json!({
            "description": "A stream: one {\"result\": message} per line (application/x-ndjson), or one Server-Sent Event per message (text/event-stream; each event's id resumes the stream as Last-Event-ID where the method supports it). A failure ends it with {\"error\": status} (or an event named status).",
            "content": {
                "application/x-ndjson": {"schema": {
                    "type": "object",
                    "properties": {"result": output_ref, "error": {"$ref": format!("#/components/schemas/{STATUS_SCHEMA}")}}
                }},
                "text/event-stream": {"schema": {"type": "string"}}
            }
        })
    } else {
        json!({"description": "OK", "content": {"application/json": {"schema": output_ref}}})
    };
    let error = |description: &str| {
        json!({"description": description, "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{STATUS_SCHEMA}")}
        }}})
    };
    let mut responses = Map::new();
    responses.insert("200".into(), success);
    responses.insert("400".into(), error("Invalid request (INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE): field violations in details"));
    if !public {
        responses.insert(
            "401".into(),
            error("Missing or invalid access token (UNAUTHENTICATED)"),
        );
        responses.insert("403".into(), error("Not allowed (PERMISSION_DENIED)"));
    } else if !route.forward_headers.is_empty() {
        responses.insert(
            "401".into(),
            error("A header the service checks is missing or wrong (UNAUTHENTICATED)"),
        );
    }
    responses.insert("404".into(), error("Not found (NOT_FOUND)"));
    responses.insert("429".into(), {
        let mut limited = error("Rate limited (RESOURCE_EXHAUSTED)");
        limited["headers"] = json!({"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}});
        limited
    });
    responses.insert("503".into(), error("No replica available (UNAVAILABLE)"));
    responses.insert(
        "default".into(),
        error("Any other gRPC status, with its HTTP status"),
    );
    let service = route.service.rsplit('.').next().unwrap_or(&route.service);
    let mut operation = json!({
        "operationId": operation_id,
        "tags": [service],
        "summary": summary,
        "description": description,
        "parameters": parameters,
        "responses": responses,
        "security": if public { json!([]) } else { json!([{"bearer": []}]) },
        "x-grpc-method": route.grpc_path,
    });
    if let Some(schema) = request_body {
        let required = match &route.body {
            BodyMapping::Whole => input.fields().any(|f| !bound(&f) && must_be_given(&f)),
            BodyMapping::Field(field) => must_be_given(field),
            BodyMapping::None => false,
        };
        operation["requestBody"] = json!({
            "required": required,
            "content": {"application/json": {"schema": schema}}
        });
    }
    operation
}

/// The body schema of a `body: "*"` binding: the request message, less the
/// fields the path sets.
fn body_schema(
    input: &MessageDescriptor,
    bound: &dyn Fn(&FieldDescriptor) -> bool,
    schemas: &mut BTreeMap<String, Json>,
) -> Json {
    if !input.fields().any(|f| bound(&f)) {
        return message_ref(input, schemas);
    }
    let mut properties = Map::new();
    for field in input.fields().filter(|f| !bound(f)) {
        properties.insert(
            field.json_name().to_owned(),
            property_schema(&field, schemas),
        );
    }
    let mut schema =
        json!({"type": "object", "properties": properties, "additionalProperties": false});
    object_rules(&mut schema, input, bound);
    schema
}

/// `{"$ref": ...}` to a message's schema (or the inline JSON form of a
/// well-known type), adding it and what it refers to to `schemas`.
fn message_ref(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    if let Some(well_known) = well_known(message.full_name()) {
        return well_known;
    }
    let name = message.full_name().to_owned();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Json::Null); // breaks cycles
        let mut properties = Map::new();
        for field in message.fields() {
            let mut schema = property_schema(&field, schemas);
            if let Some(text) = comments(&field.parent_file(), field.path()) {
                schema = with_description(schema, text);
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        object_rules(&mut schema, message, &|_| false);
        if let Some(text) = comments(&message.parent_file(), message.path()) {
            schema["description"] = json!(text);
        }
        schemas.insert(name.clone(), schema);
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn with_description(schema: Json, text: String) -> Json {
    // Next to a $ref, OpenAPI 3.1 takes sibling keywords. A well-known
    // type's own description (google.protobuf.Any's) follows the field's.
    let mut schema = schema;
    if let Json::Object(object) = &mut schema {
        let text = match object.get("description").and_then(Json::as_str) {
            Some(own) => format!("{text}\n\n{own}"),
            None => text,
        };
        object.insert("description".into(), json!(text));
    }
    schema
}

/// A field's schema: its JSON form (proto3 JSON mapping), held to the
/// rules the proto declares for it (`munity.options.v1.field`), which
/// every request is checked against before its handler runs
/// (`munity_proto::validate`). Proto3 cannot tell a zero, empty or absent
/// value apart: bounds hold for what is given, and only `required`
/// refuses zero and empty (lists and maps are counted whatever their size).
fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    let rules = FieldRules::of(field).unwrap_or_default();
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let value = entry
            .get_field_by_name("value")
            .map_or(json!({}), |v| field_schema(&v, schemas));
        let mut schema = json!({"type": "object", "additionalProperties": value});
        if let Some(min) = min_count(&rules) {
            schema["minProperties"] = json!(min);
        }
        if let Some(max) = rules.max_len {
            schema["maxProperties"] = json!(max);
        }
        return schema;
    }
    let single = match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        // Written as a decimal string; read as a string or a number, as the
        // proto3 JSON mapping says parsers must.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
            "type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]{1,19}$",
            "minimum": i64::MIN, "maximum": i64::MAX,
        }),
        Kind::Uint64 | Kind::Fixed64 => json!({
            "type": ["string", "integer"], "format": "uint64", "pattern": "^[0-9]{1,20}$",
            "minimum": 0, "maximum": u64::MAX,
        }),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(enumeration) => {
            // A required enum refuses its zero value (`*_UNSPECIFIED`);
            // `min` and `max` bound the numbers of the others.
            let single = !field.is_list();
            let names: Vec<String> = enumeration
                .values()
                .filter(|v| {
                    let n = i64::from(v.number());
                    if single && n == 0 {
                        return !rules.required;
                    }
                    rules.min.is_none_or(|min| n >= min) && rules.max.is_none_or(|max| n <= max)
                })
                .map(|v| v.name().to_owned())
                .collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(message) => message_ref(&message, schemas),
    };
    if field.is_list() {
        // The length rules count the items; a shape holds for each
        // non-empty item, an integer bound for every item.
        let item_rules = FieldRules {
            required: false,
            min_len: None,
            max_len: None,
            ..rules.clone()
        };
        let mut list =
            json!({"type": "array", "items": value_rules(field, single, &item_rules, true)});
        if let Some(min) = min_count(&rules) {
            list["minItems"] = json!(min);
        }
        if let Some(max) = rules.max_len {
            list["maxItems"] = json!(max);
        }
        list
    } else {
        value_rules(field, single, &rules, false)
    }
}

/// A field's schema as an object's property. The proto3 JSON mapping
/// reads `null` as the field's default (as if left out): a field a
/// request need not give may be `null`.
fn property_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    let schema = field_schema(field, schemas);
    if must_be_given(field)
        || matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.Value")
    {
        return schema;
    }
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// The least number of items (or entries) a list (or map) field takes.
fn min_count(rules: &FieldRules) -> Option<u32> {
    let min = rules.min_len.unwrap_or(0).max(u32::from(rules.required));
    (min > 0).then_some(min)
}

/// Whether a request must give `field`: a required one, or a list or map
/// with a least length (absent is empty in proto3).
fn must_be_given(field: &FieldDescriptor) -> bool {
    FieldRules::of(field).is_some_and(|rules| {
        rules.required || ((field.is_list() || field.is_map()) && min_count(&rules).is_some())
    })
}

/// A message's `required` fields (less those `skip` says the path sets)
/// and its oneofs (at most one member given) in its object schema.
fn object_rules(
    schema: &mut Json,
    message: &MessageDescriptor,
    skip: &dyn Fn(&FieldDescriptor) -> bool,
) {
    let required: Vec<String> = message
        .fields()
        .filter(|f| !skip(f) && must_be_given(f))
        .map(|f| f.json_name().to_owned())
        .collect();
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    let mut exclusive = Vec::new();
    for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
        let members: Vec<String> = oneof
            .fields()
            .filter(|f| !skip(f))
            .map(|f| f.json_name().to_owned())
            .collect();
        for (i, a) in members.iter().enumerate() {
            for b in &members[i + 1..] {
                exclusive.push(json!({"not": {"required": [a, b]}}));
            }
        }
    }
    if !exclusive.is_empty() {
        schema["allOf"] = json!(exclusive);
    }
}

/// A UUID in its hyphenated text form, as `Format::Uuid` checks it
/// (JSON Schema's `uuid` format alone also takes other spellings).
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// An email address as `Format::Email` checks it: text without `@` or
/// white space, one `@`, and a domain with a dot neither first nor last
/// (JSON Schema's `email` format alone says less or more, by validator).
const EMAIL_PATTERN: &str = "^[^@\\s]+@[^@\\s.][^@\\s]*\\.[^@\\s]*[^@\\s.]$";
/// RFC 3339 as protobuf's JSON mapping takes it: `T` and `Z` upper case,
/// an offset with a colon, years 0001 to 9999.
const TIMESTAMP_PATTERN: &str = "^([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// `schema` (one value of `field`) with the value rules: lengths, shape,
/// integer bounds, presence of scalars, and what a time may be. `item`:
/// an item of a list, where zero and empty count as given.
fn value_rules(field: &FieldDescriptor, schema: Json, rules: &FieldRules, item: bool) -> Json {
    let mut schema = schema;
    let required = rules.required && !item;
    match field.kind() {
        Kind::String => {
            let format = rules.format.openapi();
            let min = rules.min_len.unwrap_or(0);
            let mut given = Map::new();
            if let Some(format) = format {
                given.insert("format".into(), json!(format));
                let pattern = match rules.format {
                    Format::Email => EMAIL_PATTERN,
                    _ => UUID_PATTERN,
                };
                given.insert("pattern".into(), json!(pattern));
            }
            if let Some(pattern) = &rules.pattern {
                given.insert("pattern".into(), json!(pattern));
            }
            if min > 0 {
                given.insert("minLength".into(), json!(min));
            }
            if let Some(max) = rules.max_len {
                given.insert("maxLength".into(), json!(max));
            }
            if required {
                // Empty is "not given": refused.
                if min == 0 {
                    given.insert("minLength".into(), json!(1));
                }
                extend(&mut schema, given);
            } else if format.is_some() || rules.pattern.is_some() || min > 0 {
                // Empty is "not given", and accepted; the rules hold
                // for anything else.
                let mut given = Json::Object(given);
                given["minLength"] = json!(min.max(1));
                schema["anyOf"] = json!([{"const": ""}, given]);
            } else {
                extend(&mut schema, given);
            }
        }
        Kind::Bytes => {
            if required {
                schema["minLength"] = json!(1);
            }
            let bounds = match (rules.min_len, rules.max_len) {
                (Some(min), Some(max)) => Some(format!("{min} to {max} bytes")),
                (Some(min), None) => Some(format!("at least {min} bytes")),
                (None, Some(max)) => Some(format!("at most {max} bytes")),
                (None, None) => None,
            };
            if let Some(bounds) = bounds {
                schema["description"] = json!(format!("When given: {bounds} (before base64)."));
            }
        }
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Enum(_)
            if rules.min.is_some() || rules.max.is_some() || required =>
        {
            if matches!(field.kind(), Kind::Enum(_)) {
                // Enums are written by name: the names above are those
                // the rules take.
                return schema;
            }
            let low = schema["minimum"].as_i64().unwrap_or(i64::MIN);
            let high = schema["maximum"].as_i64().unwrap_or(i64::MAX);
            let low = rules.min.map_or(low, |min| min.max(low));
            let high = rules.max.map_or(high, |max| max.min(high));
            schema["minimum"] = json!(low);
            schema["maximum"] = json!(high);
            let zero_in_range = low <= 0 && 0 <= high;
            if required && zero_in_range {
                // Zero is "not given": refused.
                schema["not"] = json!({"const": 0});
            } else if !required && !item && !zero_in_range {
                // Zero is "not given", and accepted; the bounds hold for
                // anything else.
                let bounded = json!({"minimum": low, "maximum": high});
                schema["minimum"] = json!(low.min(0));
                schema["maximum"] = json!(high.max(0));
                schema["anyOf"] = json!([{"const": 0}, bounded]);
            }
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            let bounds = match (rules.min, rules.max) {
                (Some(min), Some(max)) => Some(format!("{min} to {max}")),
                (Some(min), None) => Some(format!("at least {min}")),
                (None, Some(max)) => Some(format!("at most {max}")),
                (None, None) => None,
            };
            if let Some(bounds) = bounds {
                schema["description"] = json!(format!("When not 0: {bounds}."));
            }
            if required {
                schema["not"] = json!({"anyOf": [
                    {"type": "string", "pattern": "^-?0+$"},
                    {"const": 0},
                ]});
            }
        }
        Kind::Bool if required => {
            schema["const"] = json!(true);
        }
        Kind::Message(message) if message.full_name() == "google.protobuf.Timestamp" => {
            let mut limits =
                vec!["Between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.".to_owned()];
            if let Some(days) = rules.max_days_ahead {
                limits.push(format!("At most {days} days from now."));
            }
            if let Some(days) = rules.max_days_ago {
                limits.push(format!("At most {days} days ago."));
            }
            schema["pattern"] = json!(TIMESTAMP_PATTERN);
            schema["description"] = json!(limits.join(" "));
        }
        _ => {}
    }
    schema
}

fn extend(schema: &mut Json, keywords: Map<String, Json>) {
    if let Json::Object(object) = schema {
        object.extend(keywords);
    }
}

/// The JSON forms of the well-known types (proto3 JSON mapping).
fn well_known(name: &str) -> Option<Json> {
    let schema = match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
        }
        "google.protobuf.FieldMask" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "description": "A message of the type its @type URL names, by the proto3 JSON mapping: its fields beside @type, or {\"@type\", \"value\"} for a well-known type. A payload of a type the gateway has no descriptor for is {\"@type\": \"<type URL>\", \"value\": \"<base64 of its bytes>\"}.",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "pattern": "^-?[0-9]+$"})
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({"type": "number"}),
        _ => return None,
    };
    Some(schema)
}

/// The leading (else trailing) comment of the element at `path` in its
/// file, from the source info protox keeps.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location
        .leading_comments
        .as_deref()
        .or(location.trailing_comments.as_deref())?;
    let text = text
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

/// The document as published: pretty JSON and a final newline, the same
/// bytes `/openapi.json` serves and `munity-gateway openapi` writes.
pub fn document_text(transcoder: &Transcoder) -> String {
    let mut text = serde_json::to_string_pretty(&document(transcoder)).unwrap_or_default();
    text.push('\n');
    text
}

/// `/openapi.json` and `/docs`, rendered once.
pub struct Docs {
    openapi: Bytes,
}

/// The human page: renders `/openapi.json` in the browser with no library.
const DOCS_PAGE: &str = include_str!("docs.html");

impl Docs {
    pub fn new(transcoder: &Transcoder) -> Self {
        Docs {
            openapi: document_text(transcoder).into(),
        }
    }

    /// Answers `GET /openapi.json` and `GET /docs`; `false` for any other
    /// request.
    pub async fn serve(&self, session: &mut Session) -> pingora_core::Result<bool> {
        let request = session.req_header();
        if request.method != http::Method::GET && request.method != http::Method::HEAD {
            return Ok(false);
        }
        let (content_type, body) = match request.uri.path() {
            "/openapi.json" => ("application/json", self.openapi.clone()),
            "/docs" | "/docs/" => (
                "text/html; charset=utf-8",
                Bytes::from_static(DOCS_PAGE.as_bytes()),
            ),
            _ => return Ok(false),
        };
        let head_only = request.method == http::Method::HEAD;
        let mut response = ResponseHeader::build(200, Some(3))?;
        response.insert_header(http::header::CONTENT_TYPE, content_type)?;
        response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        response.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
        session
            .write_response_header(Box::new(response), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

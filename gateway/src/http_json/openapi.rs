//! The OpenAPI 3.1 document of every HTTP/JSON binding, derived from the
//! same bindings the gateway serves and from the protos' comments; served
//! at `/openapi.json`, with a human page at `/docs` (static, offline: it
//! renders the document with a few lines of script, no CDN), and written to
//! a file by `munity-gateway openapi` (`docs/openapi.json` in the repo).

use std::collections::BTreeMap;

use bytes::Bytes;
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
        let operation = operation(
            route,
            operation_id,
            policy.is_public(&route.grpc_path),
            &mut schemas,
        );
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
    schemas: &mut BTreeMap<String, Json>,
) -> Json {
    let method = &route.method;
    let input = method.input();
    let description = comments(&method.parent_file(), method.path()).unwrap_or_default();
    let summary = description
        .split(['\n'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
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
                "required": false,
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
        operation["requestBody"] = json!({
            "required": false,
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
        properties.insert(field.json_name().to_owned(), field_schema(&field, schemas));
    }
    json!({"type": "object", "properties": properties, "additionalProperties": false})
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
            let mut schema = field_schema(&field, schemas);
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

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Json>) -> Json {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let value = entry
            .get_field_by_name("value")
            .map_or(json!({}), |v| field_schema(&v, schemas));
        return json!({"type": "object", "additionalProperties": value});
    }
    let single = match field.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,19}$"})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": "^[0-9]{1,20}$"})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(enumeration) => {
            let names: Vec<String> = enumeration.values().map(|v| v.name().to_owned()).collect();
            json!({"type": "string", "enum": names})
        }
        Kind::Message(message) => message_ref(&message, schemas),
    };
    if field.is_list() {
        json!({"type": "array", "items": single})
    } else {
        single
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

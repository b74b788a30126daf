//! HTTP/JSON at the edge: every method a proto binds with
//! `option (google.api.http)` is reachable as plain HTTP with JSON bodies,
//! for clients that speak no gRPC (curl, webhooks, scripts, EventSource).
//!
//! - [`Transcoder`]: the bindings of every service in the descriptor set,
//!   matched against a request's verb and path (no per-service code).
//! - [`HttpRoute::request_message`]: path variables, the body (`*` or one
//!   field) and query parameters → the request message, by the proto3 JSON
//!   mapping (prost-reflect's serde support), unknown fields refused.
//! - [`error_body`] and [`http_status`]: a gRPC status as HTTP: the
//!   standard code table, and `{code, message, details}` keeping the
//!   `BadRequest` field violations.
//! - `call.rs`: the call itself, made by the gateway once the request has
//!   passed the same route, auth, limit and deadline steps as gRPC.
//! - `openapi.rs`: the OpenAPI 3.1 document, from the same bindings.
//! - `writable.rs`: answers the JSON mapping cannot write (a Timestamp out
//!   of range, an `Any` of a type without descriptor) made writable.

pub mod call;
pub mod openapi;
pub mod resume;
mod template;
pub mod writable;

use std::{collections::HashMap, sync::Arc};

use munity_platform::policy::MethodPolicy;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json};
use tonic::Code;

pub use call::{JsonCall, JsonError, Upstreams, respond_error};
pub use template::PathTemplate;

/// Most query parameters one request may carry.
pub const MAX_QUERY_PARAMS: usize = 64;
/// Longest request path (query included) accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone)]
pub enum BodyMapping {
    /// No body; fields come from the path and the query.
    None,
    /// `body: "*"`: every field not bound by the path.
    Whole,
    /// `body: "field"`: that one field; the query fills the others.
    Field(FieldDescriptor),
}

/// One binding of one method.
#[derive(Debug)]
pub struct HttpRoute {
    pub verb: http::Method,
    pub template: PathTemplate,
    /// `/package.Service/Method`.
    pub grpc_path: String,
    pub service: String,
    pub method: prost_reflect::MethodDescriptor,
    pub body: BodyMapping,
    /// The request's repeated field a resumable stream takes positions in.
    pub resume_field: Option<FieldDescriptor>,
    /// Request headers passed on as metadata beyond the ones every call
    /// passes (the method's `forward_headers`).
    pub forward_headers: Vec<http::HeaderName>,
}

/// A binding that matched, and its path variables' values (field path,
/// value).
pub type Matched = (Arc<HttpRoute>, Vec<(String, String)>);

/// Every binding in the descriptor set.
#[derive(Debug, Default)]
pub struct Transcoder {
    /// Most specific first, so `/v1/users/me` wins over `/v1/users/{id}`.
    routes: Vec<Arc<HttpRoute>>,
}

/// Why a binding in the protos cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("{0}: {1}")]
    Template(String, template::TemplateError),
    #[error("{method}: {reason}")]
    Field { method: String, reason: String },
    #[error("the well-known types do not fit the descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
}

impl Transcoder {
    /// The bindings of every method the policy's descriptors declare.
    pub fn new(policy: &MethodPolicy) -> Result<Self, BindingError> {
        let mut routes = Vec::new();
        // Requests and answers are built from this pool: an `Any` payload
        // may be any well-known type, imported by a Munity proto or not.
        let pool = writable::complete_pool(policy.pool())?;
        for binding in policy.http_bindings() {
            let Some((service, method_name)) = crate::grpc::split_path(&binding.grpc_path) else {
                continue;
            };
            let Some(method) = pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == method_name))
            else {
                continue;
            };
            let field_error = |reason: String| BindingError::Field {
                method: binding.grpc_path.clone(),
                reason,
            };
            if method.is_client_streaming() {
                return Err(field_error("client streams cannot be bound to HTTP".into()));
            }
            let template = PathTemplate::parse(&binding.template)
                .map_err(|e| BindingError::Template(binding.grpc_path.clone(), e))?;
            let input = method.input();
            for variable in template.variables() {
                let leaf = resolve_field(&input, &variable.field_path).map_err(&field_error)?;
                if leaf.is_list() || leaf.is_map() || !is_scalar_like(&leaf) {
                    return Err(field_error(format!(
                        "path variable {} must be a singular scalar field",
                        variable.field_path
                    )));
                }
            }
            let body = match binding.body.as_str() {
                "" => BodyMapping::None,
                "*" => BodyMapping::Whole,
                name => BodyMapping::Field(
                    input
                        .get_field_by_name(name)
                        .ok_or_else(|| field_error(format!("no body field {name}")))?,
                ),
            };
            let resume_field = match policy.resume_field(&binding.grpc_path) {
                Some(name) => {
                    let field = input
                        .get_field_by_name(name)
                        .filter(|f| f.is_list() && matches!(f.kind(), Kind::Message(_)))
                        .ok_or_else(|| {
                            field_error(format!(
                                "resume_field {name} is not a repeated message field"
                            ))
                        })?;
                    Some(field)
                }
                None => None,
            };
            let forward_headers = policy
                .forward_headers(&binding.grpc_path)
                .iter()
                .map(|name| {
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        field_error(format!("forward_headers: bad header name {name:?}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let verb = http::Method::from_bytes(binding.verb.as_bytes())
                .map_err(|_| field_error(format!("bad HTTP verb {}", binding.verb)))?;
            routes.push(Arc::new(HttpRoute {
                verb,
                template,
                grpc_path: binding.grpc_path.clone(),
                service: service.to_owned(),
                method,
                body,
                resume_field,
                forward_headers,
            }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
        Ok(Transcoder { routes })
    }

    /// The binding for `verb` and `path`, with the path variables' values;
    /// `Err(allowed verbs)` when the path matches only other verbs.
    pub fn find(&self, verb: &http::Method, path: &str) -> Result<Matched, Vec<http::Method>> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(values) = route.template.matches(path) {
                if route.verb == *verb {
                    let values = values
                        .into_iter()
                        .map(|(field, value)| (field.to_owned(), value))
                        .collect();
                    return Ok((route.clone(), values));
                }
                allowed.push(route.verb.clone());
            }
        }
        Err(allowed)
    }

    pub fn routes(&self) -> &[Arc<HttpRoute>] {
        &self.routes
    }
}

/// A request the gateway refuses before any upstream is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl HttpRoute {
    /// The request message from the path variables, the query string and
    /// the body (JSON, already read in full and bounded).
    pub fn request_message(
        &self,
        variables: &[(String, String)],
        query: Option<&str>,
        body: &[u8],
    ) -> Result<DynamicMessage, BadRequest> {
        let input = self.method.input();
        let mut fields = Map::new();
        let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
        match &self.body {
            BodyMapping::None if !body_is_empty => {
                return Err(BadRequest(format!(
                    "{} {} takes no request body",
                    self.verb,
                    self.template.openapi_path()
                )));
            }
            BodyMapping::None => {}
            BodyMapping::Whole if body_is_empty => {}
            BodyMapping::Whole => match parse_json(body)? {
                Json::Object(object) => fields = object,
                _ => return Err(BadRequest("the request body must be a JSON object".into())),
            },
            BodyMapping::Field(field) => {
                if !body_is_empty {
                    fields.insert(field.json_name().to_owned(), parse_json(body)?);
                }
            }
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            if matches!(self.body, BodyMapping::Whole) {
                return Err(BadRequest(
                    "this method takes every field in the body: no query parameters".into(),
                ));
            }
            let mut count = 0;
            for (key, value) in form_urlencoded::parse(query.as_bytes()) {
                count += 1;
                if count > MAX_QUERY_PARAMS {
                    return Err(BadRequest(format!(
                        "at most {MAX_QUERY_PARAMS} query parameters"
                    )));
                }
                let bound_elsewhere = variables.iter().any(|(v, _)| *v == key)
                    || matches!(&self.body, BodyMapping::Field(f)
                        if key == f.name() || key == f.json_name());
                if bound_elsewhere {
                    return Err(BadRequest(format!(
                        "query parameter {key} is already set by the path or the body"
                    )));
                }
                set_field(&input, &mut fields, &key, &value, true)?;
            }
        }
        for (field_path, value) in variables {
            set_field(&input, &mut fields, field_path, value, false)?;
        }
        let fields = Json::Object(fields);
        check_wide_integers(&input, &fields, "")?;
        DynamicMessage::deserialize(input.clone(), fields)
            .map_err(|e| BadRequest(format!("invalid {}: {e}", input.full_name())))
    }
}

/// The largest integer a JSON number (a double) holds exactly.
const EXACT_IN_A_DOUBLE: f64 = 9_007_199_254_740_992.0;

/// A 64-bit integer sent as a JSON number must arrive exactly: serde reads
/// one past the 64-bit range (or past 2^53 with a fraction or exponent) as
/// a double, which the protobuf mapping would round into range, silently
/// storing another number. Such a value is refused; the decimal string
/// form carries any 64-bit value.
fn check_wide_integers(
    message: &MessageDescriptor,
    value: &Json,
    path: &str,
) -> Result<(), BadRequest> {
    let Json::Object(object) = value else {
        return Ok(());
    };
    for (key, value) in object {
        let Some(field) = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
        else {
            continue;
        };
        let name = if path.is_empty() {
            field.json_name().to_owned()
        } else {
            format!("{path}.{}", field.json_name())
        };
        let kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        let values: Vec<&Json> = match value {
            Json::Array(items) if field.is_list() => items.iter().collect(),
            Json::Object(entries) if field.is_map() => entries.values().collect(),
            single => vec![single],
        };
        for value in values {
            match (&kind, value) {
                (Kind::Message(nested), Json::Object(_)) => {
                    check_wide_integers(nested, value, &name)?;
                }
                (
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64,
                    Json::Number(number),
                ) => {
                    let exact = number.is_i64()
                        || number.is_u64()
                        || number
                            .as_f64()
                            .is_some_and(|f| f.fract() == 0.0 && f.abs() < EXACT_IN_A_DOUBLE);
                    if !exact {
                        return Err(BadRequest(format!(
                            "{name}: {number} is not a 64-bit integer a JSON number holds exactly; send it as a decimal string"
                        )));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn parse_json(body: &[u8]) -> Result<Json, BadRequest> {
    serde_json::from_slice(body)
        .map_err(|e| BadRequest(format!("the request body is not valid JSON: {e}")))
}

/// Follows a dotted field path (proto or JSON names) to its last field.
fn resolve_field(message: &MessageDescriptor, path: &str) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(name) = parts.next() {
        let field = current
            .get_field_by_name(name)
            .or_else(|| current.get_field_by_json_name(name))
            .ok_or_else(|| format!("{} has no field {name}", current.full_name()))?;
        if parts.peek().is_none() {
            return Ok(field);
        }
        match field.kind() {
            Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
            _ => return Err(format!("{name} is not a message field")),
        }
    }
    Err("empty field path".into())
}

/// Fields a path segment or query parameter can carry: scalars, enums,
/// and well-known types whose JSON form is a string or number.
fn is_scalar_like(field: &FieldDescriptor) -> bool {
    match field.kind() {
        Kind::Message(message) => matches!(
            message.full_name(),
            "google.protobuf.Timestamp"
                | "google.protobuf.Duration"
                | "google.protobuf.FieldMask"
                | "google.protobuf.StringValue"
                | "google.protobuf.BoolValue"
                | "google.protobuf.Int32Value"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.UInt64Value"
                | "google.protobuf.FloatValue"
                | "google.protobuf.DoubleValue"
        ),
        _ => true,
    }
}

/// Sets `path` to the text `value` in the JSON object, typed as the field
/// wants it (proto3 JSON takes numbers, enums and well-known types as
/// strings; booleans must be booleans). Repeated fields collect values when
/// `repeatable` (query parameters).
fn set_field(
    message: &MessageDescriptor,
    object: &mut Map<String, Json>,
    path: &str,
    value: &str,
    repeatable: bool,
) -> Result<(), BadRequest> {
    let leaf = resolve_field(message, path).map_err(BadRequest)?;
    if leaf.is_map() || !is_scalar_like(&leaf) {
        return Err(BadRequest(format!(
            "{path} cannot be set from the path or the query"
        )));
    }
    let typed = match leaf.kind() {
        Kind::Bool => match value {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(BadRequest(format!("{path} must be true or false"))),
        },
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => match value {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(BadRequest(format!("{path} must be true or false"))),
        },
        _ => Json::String(value.to_owned()),
    };
    // Walk (creating) the nested objects, by the names the JSON mapping
    // accepts (the proto name or the JSON name, as given).
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = object;
    for part in &parts[..parts.len() - 1] {
        let entry = current
            .entry((*part).to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        current = match entry {
            Json::Object(inner) => inner,
            _ => return Err(BadRequest(format!("{path} conflicts with the body"))),
        };
    }
    let key = parts[parts.len() - 1].to_owned();
    if leaf.is_list() {
        if !repeatable {
            return Err(BadRequest(format!("{path} is a repeated field")));
        }
        match current
            .entry(key)
            .or_insert_with(|| Json::Array(Vec::new()))
        {
            Json::Array(items) => items.push(typed),
            _ => return Err(BadRequest(format!("{path} conflicts with the body"))),
        }
    } else {
        if repeatable && current.contains_key(&key) {
            return Err(BadRequest(format!("{path} is given twice")));
        }
        current.insert(key, typed);
    }
    Ok(())
}

/// The HTTP status for a gRPC code (the table grpc-gateway and Envoy use).
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

/// `{code, message, details}` (google.rpc.Status in JSON) for a status.
/// Details the gateway knows are written in full (`BadRequest` with its
/// field violations, `RetryInfo`, `ErrorInfo`); others keep their type URL.
pub fn error_body(code: Code, message: &str, details: &[u8]) -> Json {
    let mut rendered = Vec::new();
    if !details.is_empty()
        && let Ok(status) = <tonic_types::pb::Status as prost::Message>::decode(details)
    {
        for any in status.details {
            rendered.push(detail_json(&any));
        }
    }
    serde_json::json!({
        "code": code as i32,
        "message": message,
        "details": rendered,
    })
}

fn detail_json(any: &prost_types::Any) -> Json {
    use prost::Message;
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    match type_name {
        "google.rpc.BadRequest" => {
            if let Ok(bad) = tonic_types::pb::BadRequest::decode(any.value.as_slice()) {
                let violations: Vec<Json> = bad
                    .field_violations
                    .iter()
                    .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
                    .collect();
                return serde_json::json!({
                    "@type": any.type_url,
                    "fieldViolations": violations,
                });
            }
        }
        "google.rpc.RetryInfo" => {
            if let Ok(info) = tonic_types::pb::RetryInfo::decode(any.value.as_slice())
                && let Some(delay) = info.retry_delay
            {
                let delay = format!("{}s", delay.seconds as f64 + f64::from(delay.nanos) / 1e9);
                return serde_json::json!({"@type": any.type_url, "retryDelay": delay});
            }
        }
        "google.rpc.ErrorInfo" => {
            if let Ok(info) = tonic_types::pb::ErrorInfo::decode(any.value.as_slice()) {
                let metadata: HashMap<String, String> = info.metadata.into_iter().collect();
                return serde_json::json!({
                    "@type": any.type_url,
                    "reason": info.reason,
                    "domain": info.domain,
                    "metadata": metadata,
                });
            }
        }
        _ => {}
    }
    serde_json::json!({ "@type": any.type_url })
}

/// Seconds to wait before retrying, from a `RetryInfo` detail.
pub fn retry_after_from_details(details: &[u8]) -> Option<u64> {
    use prost::Message;
    let status = tonic_types::pb::Status::decode(details).ok()?;
    status.details.iter().find_map(|any| {
        any.type_url
            .ends_with("/google.rpc.RetryInfo")
            .then(|| tonic_types::pb::RetryInfo::decode(any.value.as_slice()).ok())
            .flatten()
            .and_then(|info| info.retry_delay)
            .map(|d| (d.seconds.max(0) as u64) + u64::from(d.nanos > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcoder() -> Transcoder {
        Transcoder::new(&crate::config::policy()).unwrap()
    }

    #[test]
    fn every_binding_in_the_protos_is_served() {
        let transcoder = transcoder();
        let (route, vars) = transcoder.find(&http::Method::GET, "/v1/me").unwrap();
        assert_eq!(route.grpc_path, "/munity.users.v1.Users/GetMe");
        assert!(vars.is_empty());
        let (route, vars) = transcoder
            .find(&http::Method::DELETE, "/v1/events/e1/votes/2")
            .unwrap();
        assert_eq!(route.grpc_path, "/munity.events.v1.Events/Unvote");
        assert_eq!(
            vars,
            [
                ("event_id".into(), "e1".into()),
                ("option_id".into(), "2".into())
            ]
        );
        assert_eq!(
            transcoder
                .find(&http::Method::DELETE, "/v1/me")
                .unwrap_err(),
            [http::Method::GET, http::Method::PATCH]
        );
        assert!(
            transcoder
                .find(&http::Method::GET, "/v2/nothing")
                .unwrap_err()
                .is_empty()
        );
    }

    #[test]
    fn requests_from_path_query_and_body() {
        let transcoder = transcoder();
        let (route, vars) = transcoder
            .find(&http::Method::GET, "/v1/communities/c1/members")
            .unwrap();
        let message = route
            .request_message(&vars, Some("pageSize=5&page_token=abc"), b"")
            .unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"communityId": "c1", "pageSize": 5, "pageToken": "abc"})
        );

        let (route, vars) = transcoder
            .find(&http::Method::POST, "/v1/auth/login")
            .unwrap();
        let message = route
            .request_message(&vars, None, br#"{"email": "a@b.c", "password": "x"}"#)
            .unwrap();
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            serde_json::json!({"email": "a@b.c", "password": "x"})
        );
        for (query, body) in [
            (None, &br#"{"email": "a@b.c", "nope": 1}"#[..]),
            (None, b"[1]"),
            (None, b"{"),
            (Some("email=x"), b"{}"),
        ] {
            assert!(
                route.request_message(&vars, query, body).is_err(),
                "{query:?}"
            );
        }

        let (route, vars) = transcoder
            .find(&http::Method::GET, "/v1/notifications/stream")
            .unwrap();
        let message = route
            .request_message(&vars, Some("topics=user:1&topics=event:2"), b"")
            .unwrap();
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            serde_json::json!({"topics": ["user:1", "event:2"]})
        );
        assert!(route.request_message(&vars, Some("nope=1"), b"").is_err());
        assert!(route.request_message(&vars, None, b"{}").is_err());
        let (route, vars) = transcoder.find(&http::Method::GET, "/v1/inbox").unwrap();
        assert!(
            route
                .request_message(&vars, Some("unreadOnly=yes"), b"")
                .is_err()
        );
        assert!(
            route
                .request_message(&vars, Some("pageSize=-1"), b"")
                .is_err()
        );
        assert!(
            route
                .request_message(&vars, Some("unreadOnly=true"), b"")
                .is_ok()
        );
    }

    #[test]
    fn statuses_and_bad_request_details() {
        use tonic_types::{ErrorDetails, StatusExt};
        assert_eq!(http_status(Code::ResourceExhausted), 429);
        assert_eq!(http_status(Code::Unauthenticated), 401);
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "bad input",
            ErrorDetails::with_bad_request_violation("email", "not an email"),
        );
        let body = error_body(status.code(), status.message(), status.details());
        assert_eq!(
            body,
            serde_json::json!({
                "code": 3,
                "message": "bad input",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "email", "description": "not an email"}],
                }],
            })
        );
    }
}

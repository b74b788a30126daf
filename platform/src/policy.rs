//! What the protos say about calling each method, read once from the
//! compiled descriptor set: which methods are public, their default quota,
//! which are server-streaming, and which upstream serves each service.
//!
//! The options are declared next to the methods in the `.proto` files
//! (`munity/options/v1/options.proto`):
//!
//! ```proto
//! rpc Login(LoginRequest) returns (AuthResponse) {
//!   option (munity.options.v1.method) = { public: true quota: { requests: 5, per_secs: 60, burst: 5 } };
//! }
//! ```
//!
//! HTTP/JSON bindings (`option (google.api.http)`) are read here too, and
//! the descriptor pool is kept, so the gateway transcodes from the same one
//! reading of the descriptors.
//!
//! The gateway and every service's [`GrpcHost`](crate::server::GrpcHost)
//! read the same [`MethodPolicy`], so the edge and the services cannot
//! disagree about what needs a token. Infrastructure services that every
//! server hosts (health, reflection) are always public.

use std::collections::{BTreeMap, HashSet};

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, Value};

/// Services every Munity server hosts that never need a token.
pub const ALWAYS_PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

const METHOD_OPTION: &str = "munity.options.v1.method";
const SERVICE_OPTION: &str = "munity.options.v1.service";
const HTTP_OPTION: &str = "google.api.http";

/// One HTTP binding of a method (`google.api.http`), as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBinding {
    /// The method's gRPC path, `/package.Service/Method`.
    pub grpc_path: String,
    /// The HTTP verb, upper case (`GET`, `POST`, ...).
    pub verb: String,
    /// The path template, e.g. `/v1/events/{event_id}`.
    pub template: String,
    /// The request field the body maps to: `*`, a field name, or empty
    /// (no body).
    pub body: String,
    /// The response field that is the body; empty for the whole message.
    pub response_body: String,
}

/// A default rate limit declared on a method: `requests` per `per_secs`
/// seconds, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeclaredQuota {
    pub requests: u32,
    pub per_secs: u64,
    pub burst: u32,
}

/// A Munity gRPC service and the deployable service that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedService {
    /// Full gRPC service name, e.g. `munity.users.v1.Users`.
    pub name: String,
    /// The upstream (service process) that serves it, e.g. `users`.
    pub upstream: String,
    /// Its port in the one-machine layout.
    pub default_port: u16,
}

/// Which verified callers a method accepts (`callers` and `scopes` in
/// `munity.options.v1.MethodPolicy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerRule {
    /// Users' tokens are accepted.
    pub users: bool,
    /// Service tokens holding one of `scopes` are accepted.
    pub services: bool,
    /// The scopes a service token needs, any one of them.
    pub scopes: Vec<String>,
    /// Whether the proto declares the rule (an undeclared method gets the
    /// narrowest one: users only).
    pub declared: bool,
}

impl Default for CallerRule {
    fn default() -> Self {
        CallerRule {
            users: true,
            services: false,
            scopes: Vec::new(),
            declared: false,
        }
    }
}

impl CallerRule {
    /// Whether `caller` may call the method; PERMISSION_DENIED's message
    /// when not. A token is a service's when it carries the role
    /// `service`, which users-svc gives service accounts only.
    pub fn admits(&self, caller: &crate::auth::Claims, method: &str) -> Result<(), String> {
        if caller.is_service() {
            if !self.services {
                return Err(format!(
                    "{method} is for users: a service account's token never acts as a user"
                ));
            }
            if !self
                .scopes
                .iter()
                .any(|scope| caller.has_scope_or_qualified(scope))
            {
                return Err(format!(
                    "{method} needs a service token with scope {}",
                    self.scopes.join(" or ")
                ));
            }
            Ok(())
        } else if self.users {
            Ok(())
        } else {
            Err(format!(
                "{method} is for service accounts with scope {}, not users",
                self.scopes.join(" or ")
            ))
        }
    }

    /// A line for documentation: who may call.
    pub fn describe(&self) -> String {
        let scopes = self.scopes.join(" or ");
        match (self.users, self.services) {
            (true, true) => {
                format!("Callers: signed-in users, and service tokens with scope {scopes}.")
            }
            (false, true) => format!("Callers: service tokens with scope {scopes} only."),
            _ => "Callers: signed-in users only (service tokens are refused).".to_owned(),
        }
    }
}

/// Why the descriptor set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the descriptor set cannot be decoded: {0}")]
    Decode(String),
    #[error("service {service} declares default_port {port}, which is not a TCP port")]
    BadPort { service: String, port: u32 },
}

/// The policy of every method in a descriptor set.
#[derive(Debug, Clone, Default)]
pub struct MethodPolicy {
    /// Full paths (`/package.Service/Method`) callable without a token.
    public: HashSet<String>,
    /// Declared default quotas, by full path.
    quotas: BTreeMap<String, DeclaredQuota>,
    /// Full paths of server-streaming methods.
    streaming: HashSet<String>,
    /// Full paths of methods that take one request message (unary and
    /// server-streaming).
    one_request: HashSet<String>,
    /// Full paths of client-streaming methods (e.g. continuous producers).
    client_streaming: HashSet<String>,
    /// Munity services that declare their upstream.
    services: Vec<RoutedService>,
    /// Every `google.api.http` binding, additional bindings included.
    http_bindings: Vec<HttpBinding>,
    /// Who may call each protected method, by full path.
    callers: BTreeMap<String, CallerRule>,
    /// Server streams that resume (`resume_field`), by full path.
    resume_fields: BTreeMap<String, String>,
    /// Headers passed on over HTTP/JSON (`forward_headers`), lower case,
    /// by full path.
    forward_headers: BTreeMap<String, Vec<String>>,
    /// The descriptors themselves (messages, fields, comments).
    pool: DescriptorPool,
}

impl MethodPolicy {
    /// Reads the policy from encoded `FileDescriptorSet`s (e.g. the compiled
    /// Munity protos plus `tonic_health`'s, for its streaming `Watch`).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, PolicyError> {
        let mut pool = DescriptorPool::new();
        for set in sets {
            pool.decode_file_descriptor_set(*set)
                .map_err(|e| PolicyError::Decode(e.to_string()))?;
        }
        let method_option = pool.get_extension_by_name(METHOD_OPTION);
        let service_option = pool.get_extension_by_name(SERVICE_OPTION);
        let http_option = pool.get_extension_by_name(HTTP_OPTION);
        let mut policy = MethodPolicy {
            pool: pool.clone(),
            ..MethodPolicy::default()
        };
        for service in pool.services() {
            let service_name = service.full_name().to_owned();
            if let Some(routing) = extension(&service.options(), service_option.as_ref()) {
                let port = u32_field(&routing, "default_port");
                policy.services.push(RoutedService {
                    name: service_name.clone(),
                    upstream: str_field(&routing, "upstream"),
                    default_port: u16::try_from(port).map_err(|_| PolicyError::BadPort {
                        service: service_name.clone(),
                        port,
                    })?,
                });
            }
            let always_public = ALWAYS_PUBLIC_SERVICES.contains(&service_name.as_str());
            for method in service.methods() {
                let path = format!("/{service_name}/{}", method.name());
                if method.is_server_streaming() {
                    policy.streaming.insert(path.clone());
                }
                if method.is_client_streaming() {
                    policy.client_streaming.insert(path.clone());
                } else {
                    policy.one_request.insert(path.clone());
                }
                let declared = extension(&method.options(), method_option.as_ref());
                let public = declared
                    .as_ref()
                    .and_then(|m| m.get_field_by_name("public"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if public || always_public {
                    policy.public.insert(path.clone());
                }
                if let Some(rule) = extension(&method.options(), http_option.as_ref()) {
                    http_bindings(&path, &rule, true, &mut policy.http_bindings);
                }
                let resume_field = declared
                    .as_ref()
                    .map(|m| str_field(m, "resume_field"))
                    .unwrap_or_default();
                if !resume_field.is_empty() {
                    policy.resume_fields.insert(path.clone(), resume_field);
                }
                let forward_headers = declared
                    .as_ref()
                    .map(|m| str_list(m, "forward_headers"))
                    .unwrap_or_default();
                if !forward_headers.is_empty() {
                    let lower = forward_headers
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect();
                    policy.forward_headers.insert(path.clone(), lower);
                }
                if !public && !always_public {
                    policy
                        .callers
                        .insert(path.clone(), caller_rule(declared.as_ref()));
                }
                if let Some(quota) = declared.as_ref().and_then(|m| message_field(m, "quota")) {
                    policy.quotas.insert(
                        path,
                        DeclaredQuota {
                            requests: u32_field(&quota, "requests"),
                            per_secs: quota
                                .get_field_by_name("per_secs")
                                .and_then(|v| v.as_u64())
                                .unwrap_or(0),
                            burst: u32_field(&quota, "burst"),
                        },
                    );
                }
            }
        }
        Ok(policy)
    }

    /// Whether `path` (`/package.Service/Method`) may be called without a
    /// token. A path no descriptor knows is not public.
    pub fn is_public(&self, path: &str) -> bool {
        self.public.contains(path)
            || path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .is_some_and(|(service, _)| ALWAYS_PUBLIC_SERVICES.contains(&service))
    }

    /// Who may call the protected method `path`. A path no descriptor knows
    /// gets the narrowest rule (users only).
    pub fn callers(&self, path: &str) -> CallerRule {
        self.callers.get(path).cloned().unwrap_or_default()
    }

    /// Every protected method's caller rule, by full path.
    pub fn caller_rules(&self) -> &BTreeMap<String, CallerRule> {
        &self.callers
    }

    /// Every scope some method names, sorted, once each.
    pub fn declared_scopes(&self) -> Vec<&str> {
        let scopes: std::collections::BTreeSet<&str> = self
            .callers
            .values()
            .flat_map(|rule| rule.scopes.iter().map(String::as_str))
            .collect();
        scopes.into_iter().collect()
    }

    /// Whether `path` is a server-streaming method (no default deadline).
    pub fn is_server_streaming(&self, path: &str) -> bool {
        self.streaming.contains(path)
    }

    /// Whether calls of `path` may rightly last as long as the client
    /// wants (server or client streaming): no default deadline at the edge.
    pub fn is_long_lived(&self, path: &str) -> bool {
        self.streaming.contains(path) || self.client_streaming.contains(path)
    }

    /// Whether `path` is a known method that takes exactly one request
    /// message (unary or server-streaming).
    pub fn takes_one_request(&self, path: &str) -> bool {
        self.one_request.contains(path)
    }

    /// Declared default quotas, by full path.
    pub fn quotas(&self) -> &BTreeMap<String, DeclaredQuota> {
        &self.quotas
    }

    /// The Munity services and the upstream serving each.
    pub fn services(&self) -> &[RoutedService] {
        &self.services
    }

    /// Every method's HTTP/JSON bindings, in declaration order.
    pub fn http_bindings(&self) -> &[HttpBinding] {
        &self.http_bindings
    }

    /// The request field a resumable server stream takes its positions in.
    pub fn resume_field(&self, path: &str) -> Option<&str> {
        self.resume_fields.get(path).map(String::as_str)
    }

    /// The request headers (lower case) `path`'s HTTP/JSON binding passes
    /// on as metadata, beyond those every call passes.
    pub fn forward_headers(&self, path: &str) -> &[String] {
        self.forward_headers.get(path).map_or(&[], Vec::as_slice)
    }

    /// The descriptor pool the policy was read from.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Services grouped by upstream name (`users` → [`munity.users.v1.Users`]),
    /// with the upstream's default port.
    pub fn upstreams(&self) -> BTreeMap<String, (u16, Vec<String>)> {
        let mut upstreams: BTreeMap<String, (u16, Vec<String>)> = BTreeMap::new();
        for service in &self.services {
            upstreams
                .entry(service.upstream.clone())
                .or_insert_with(|| (service.default_port, Vec::new()))
                .1
                .push(service.name.clone());
        }
        upstreams
    }
}

fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).as_ref() {
        Value::Message(message) => Some(message.clone()),
        _ => None,
    }
}

/// A `google.api.HttpRule` and (at the top level only, as the rule says)
/// its additional bindings. A rule without a pattern binds nothing.
fn http_bindings(path: &str, rule: &DynamicMessage, top: bool, into: &mut Vec<HttpBinding>) {
    let pattern = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find(|verb| rule.has_field_by_name(verb))
        .map(|verb| (verb.to_ascii_uppercase(), str_field(rule, verb)))
        .or_else(|| {
            message_field(rule, "custom")
                .map(|custom| (str_field(&custom, "kind"), str_field(&custom, "path")))
        });
    if let Some((verb, template)) = pattern {
        into.push(HttpBinding {
            grpc_path: path.to_owned(),
            verb,
            template,
            body: str_field(rule, "body"),
            response_body: str_field(rule, "response_body"),
        });
    }
    if top
        && let Some(Value::List(more)) = rule
            .get_field_by_name("additional_bindings")
            .map(|v| v.into_owned())
    {
        for binding in more {
            if let Value::Message(binding) = binding {
                http_bindings(path, &binding, false, into);
            }
        }
    }
}

/// The caller rule a method's options declare.
fn caller_rule(declared: Option<&DynamicMessage>) -> CallerRule {
    let Some(declared) = declared else {
        return CallerRule::default();
    };
    let callers = declared
        .get_field_by_name("callers")
        .and_then(|v| v.as_enum_number())
        .unwrap_or(0);
    let scopes = str_list(declared, "scopes");
    // munity.options.v1.Callers: 1 users, 2 services, 3 both.
    let (users, services, known) = match callers {
        1 => (true, false, true),
        2 => (false, true, true),
        3 => (true, true, true),
        _ => (true, false, false),
    };
    CallerRule {
        users,
        services,
        scopes,
        declared: known,
    }
}

fn message_field(message: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    if !message.has_field_by_name(name) {
        return None;
    }
    match message.get_field_by_name(name)?.as_ref() {
        Value::Message(inner) => Some(inner.clone()),
        _ => None,
    }
}

fn u32_field(message: &DynamicMessage, name: &str) -> u32 {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_u32())
        .unwrap_or(0)
}

fn str_list(message: &DynamicMessage, name: &str) -> Vec<String> {
    match message.get_field_by_name(name).map(|v| v.into_owned()) {
        Some(Value::List(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn str_field(message: &DynamicMessage, name: &str) -> String {
    message
        .get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> MethodPolicy {
        MethodPolicy::from_descriptor_sets(&[
            munity_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .unwrap()
    }

    #[test]
    fn public_methods_and_quotas_come_from_the_protos() {
        let policy = policy();
        assert!(policy.is_public("/munity.users.v1.Users/Login"));
        assert!(policy.is_public("/munity.users.v1.Users/GetJwks"));
        assert!(!policy.is_public("/munity.users.v1.Users/GetMe"));
        assert!(!policy.is_public("/munity.users.v1.Users/NoSuchMethod"));
        assert!(policy.is_public("/grpc.health.v1.Health/Check"));
        assert!(policy.is_public("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert_eq!(
            policy.quotas().get("/munity.users.v1.Users/Login"),
            Some(&DeclaredQuota {
                requests: 5,
                per_secs: 60,
                burst: 5
            })
        );
        assert_eq!(policy.quotas().get("/munity.users.v1.Users/GetMe"), None);
    }

    #[test]
    fn http_bindings_and_resume_fields_come_from_the_protos() {
        let policy = policy();
        let get_me = policy
            .http_bindings()
            .iter()
            .find(|b| b.grpc_path == "/munity.users.v1.Users/GetMe")
            .unwrap();
        assert_eq!(
            (get_me.verb.as_str(), get_me.template.as_str()),
            ("GET", "/v1/me")
        );
        let login = policy
            .http_bindings()
            .iter()
            .find(|b| b.grpc_path == "/munity.users.v1.Users/Login")
            .unwrap();
        assert_eq!((login.verb.as_str(), login.body.as_str()), ("POST", "*"));
        assert_eq!(
            policy.resume_field("/munity.notify.v1.Notify/Subscribe"),
            Some("resume")
        );
        assert!(
            policy
                .pool()
                .get_message_by_name("munity.users.v1.User")
                .is_some()
        );
        // Telegram's webhook proves itself with a header of its own, which
        // only that method is given.
        assert_eq!(
            policy.forward_headers("/munity.bot.v1.Bot/ReceiveUpdate"),
            ["x-telegram-bot-api-secret-token"]
        );
        assert!(
            policy
                .forward_headers("/munity.users.v1.Users/GetMe")
                .is_empty()
        );
    }

    #[test]
    fn streaming_methods_and_upstreams() {
        let policy = policy();
        assert!(policy.is_server_streaming("/grpc.health.v1.Health/Watch"));
        assert!(!policy.is_server_streaming("/grpc.health.v1.Health/Check"));
        assert!(!policy.is_server_streaming("/munity.users.v1.Users/Login"));
        assert!(policy.is_long_lived("/munity.warehouse.v1.Warehouse/IngestStream"));
        assert!(policy.is_long_lived("/munity.warehouse.v1.Warehouse/Tail"));
        assert!(!policy.is_long_lived("/munity.warehouse.v1.Warehouse/Ingest"));
        assert!(!policy.takes_one_request("/munity.warehouse.v1.Warehouse/IngestStream"));
        let upstreams = policy.upstreams();
        assert_eq!(
            upstreams.get("users"),
            Some(&(50051, vec!["munity.users.v1.Users".to_owned()]))
        );
    }
}

//! Access-token verification shared by every service.
//!
//! users-svc issues Ed25519-signed JWTs (`alg: EdDSA`, with a `kid`) and
//! publishes the public keys as a JWKS. [`TokenVerifier`] checks a token
//! against that key set, fetching it again when it meets a `kid` it does not
//! know (so rotating keys needs no restart). [`AuthLayer`] runs the check in
//! front of a gRPC server: protected methods without a valid token are
//! answered UNAUTHENTICATED before any handler runs, and the verified
//! [`Claims`] are put in the request's extensions for handlers to read with
//! [`caller`]. Services verify tokens themselves even behind the gateway: no
//! trust by network position. An Ed25519 check costs tens of microseconds,
//! more than the rest of a small call, so a verified token's claims are
//! remembered (bounded) until it expires: the check is paid once per token.
//! Revoked tokens ([`crate::revocation`]) are refused on every call, cache
//! hits included.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use dashmap::DashMap;
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

use crate::{policy::MethodPolicy, revocation::Revocations};

/// `[auth]`: what every service accepts as an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The `iss` claim users-svc writes and every verifier requires.
    pub issuer: String,
    /// The `aud` claim users-svc writes and every verifier requires.
    pub audience: String,
    /// Clock skew tolerated on expiry, in seconds.
    pub leeway_secs: u64,
    /// Verified tokens remembered until they expire (0: verify every call).
    pub token_cache_capacity: usize,
    /// Where services that do not issue tokens fetch the signing keys:
    /// users-svc's `/.well-known/jwks.json` (`munity dev` points it at its
    /// own users-svc).
    pub jwks_url: String,
    /// How far back in the event log a process reads revocations when it
    /// starts, in seconds: at least the longest access-token lifetime
    /// (users' and service accounts') plus the leeway, so a restart forgets
    /// no revocation whose token could still be used.
    pub revocation_replay_secs: u64,
    /// Revocations kept at most (each only until its tokens expire).
    pub revocation_capacity: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "munity".to_owned(),
            audience: "munity".to_owned(),
            leeway_secs: 30,
            token_cache_capacity: 10_000,
            jwks_url: "http://127.0.0.1:50051".to_owned(),
            revocation_replay_secs: 60 * 60,
            revocation_capacity: 1_000_000,
        }
    }
}

/// The role users-svc gives service accounts' tokens, and only theirs.
pub const SERVICE_ROLE: &str = "service";

/// The claims Munity puts in an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id (a token whose subject is not one does not verify).
    pub sub: Uuid,
    /// Who issued the token (`auth.issuer`).
    pub iss: String,
    /// Who the token is for (`auth.audience`).
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: i64,
    /// Unique token id; users-svc makes it a UUIDv7, whose time
    /// [`crate::revocation::issued_at_ms`] reads (finer than `iat`).
    pub jti: String,
    /// The login session (refresh-token family) the token was issued for.
    pub sid: String,
    /// Platform roles, e.g. `user`, `admin`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// What a service account's token may do (RFC 9068's `scope`:
    /// space-separated, e.g. `notify.publish`); empty on users' tokens.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// Who acts for the subject (RFC 8693's `act`): set on the tokens
    /// users-svc's ExchangeToken gives a service (the Telegram bot) for a
    /// linked user. Such a token is the user's for every service's own rules,
    /// and never an administrator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// The `act` claim: the acting party (RFC 8693 section 4.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// The acting service account's client id.
    pub sub: String,
}

impl Claims {
    /// The caller's user id.
    pub fn user_id(&self) -> Uuid {
        self.sub
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the token carries `scope` (only service accounts' do).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }

    /// Whether the token carries `scope` itself or a qualified form of it
    /// (`scope:<qualifier>`, e.g. `warehouse.produce:sensors`).
    pub fn has_scope_or_qualified(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| {
            s == scope
                || s.strip_prefix(scope)
                    .is_some_and(|rest| rest.starts_with(':') && rest.len() > 1)
        })
    }

    /// Whether this is a service account's token (role `service`): it acts
    /// as no user, ever.
    pub fn is_service(&self) -> bool {
        self.has_role(SERVICE_ROLE)
    }

    /// Whether someone else acts for the subject (an exchanged token).
    pub fn is_delegated(&self) -> bool {
        self.act.is_some()
    }
}

/// The verified caller of a protected RPC, or UNAUTHENTICATED when the
/// request carried no valid token (which [`AuthLayer`] already refuses for
/// protected methods, so handlers of those can rely on it).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Claims, Status> {
    request
        .extensions()
        .get::<Arc<Claims>>()
        .map(Arc::as_ref)
        .ok_or_else(|| Status::unauthenticated("this method needs a bearer access token"))
}

/// Runs a handler that needs the verified caller: the claims the
/// [`AuthLayer`] put on `request`, the message, and the handler's own error
/// type, which becomes the status (UNAUTHENTICATED when there is no
/// caller, which the layer only lets through for public methods):
///
/// ```text
/// munity_platform::authed!(request, EventsError, |claims, message| self.create(&claims, message))
/// ```
#[macro_export]
macro_rules! authed {
    ($request:ident, $error:ty, |$claims:ident, $message:ident| $body:expr) => {{
        let $claims = $crate::auth::caller(&$request)?.clone();
        let $message = $request.into_inner();
        let result: ::std::result::Result<_, $error> = $body.await;
        result
            .map(::tonic::Response::new)
            .map_err(::tonic::Status::from)
    }};
}

/// A request carrying `token` as `authorization: Bearer <token>`, for
/// clients calling protected methods (services calling each other on a
/// user's behalf, tests, tools).
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    match format!("Bearer {token}").parse() {
        Ok(value) => {
            request.metadata_mut().insert("authorization", value);
        }
        // A token with bytes a header cannot carry is no token: the call
        // goes out without one and is refused as unauthenticated.
        Err(_) => tracing::warn!("access token is not a valid header value; sending none"),
    }
    request
}

/// Where the verification keys come from: users-svc's key store in-process,
/// or its JWKS endpoint over the network.
#[async_trait::async_trait]
pub trait JwksSource: Send + Sync + 'static {
    async fn fetch_jwks(&self) -> anyhow::Result<JwkSet>;
}

/// Fetches the JWKS from users-svc's `GET /.well-known/jwks.json` (the
/// standard document, served on its gRPC port), for services and the gateway
/// that do not hold the keys themselves. Each replica given is tried in
/// turn until one answers. A connection is made per fetch: fetches are rare
/// (start-up, unknown `kid`) and this keeps the source independent of
/// whichever runtime calls it.
pub struct RemoteJwks {
    urls: Vec<http::Uri>,
}

/// A JWKS document larger than this is refused (a few keys are ~1 KB).
const MAX_JWKS_BYTES: usize = 1 << 20;

impl RemoteJwks {
    /// `endpoints` are users-svc replicas, e.g. `http://users:50051`.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> anyhow::Result<Self> {
        let mut urls = Vec::new();
        for endpoint in endpoints {
            let endpoint = endpoint.as_ref();
            let url = format!("{}/.well-known/jwks.json", endpoint.trim_end_matches('/'))
                .parse::<http::Uri>()
                .map_err(|e| anyhow::anyhow!("JWKS endpoint {endpoint:?} is not a URL: {e}"))?;
            if url.scheme_str() != Some("http") || url.host().is_none() {
                anyhow::bail!("JWKS endpoint {endpoint:?} must be http://host:port");
            }
            urls.push(url);
        }
        if urls.is_empty() {
            anyhow::bail!("no JWKS endpoint: name at least one users-svc replica");
        }
        Ok(RemoteJwks { urls })
    }

    async fn fetch_from(url: &http::Uri) -> anyhow::Result<JwkSet> {
        use http_body_util::{BodyExt, Empty, Limited};
        let host = url.host().unwrap_or_default();
        let port = url.port_u16().unwrap_or(80);
        let fetch = async {
            let stream = tokio::net::TcpStream::connect((host, port)).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = http::Request::get(url.path())
                .header(http::header::HOST, format!("{host}:{port}"))
                .body(Empty::<bytes::Bytes>::new())?;
            let response = sender.send_request(request).await?;
            if !response.status().is_success() {
                anyhow::bail!("{url} answered HTTP {}", response.status());
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
                .to_bytes();
            Ok(serde_json::from_slice::<JwkSet>(&body)?)
        };
        tokio::time::timeout(Duration::from_secs(5), fetch)
            .await
            .map_err(|_| anyhow::anyhow!("{url} did not answer within 5 s"))?
    }
}

#[async_trait::async_trait]
impl JwksSource for RemoteJwks {
    async fn fetch_jwks(&self) -> anyhow::Result<JwkSet> {
        let mut errors = Vec::new();
        for url in &self.urls {
            match Self::fetch_from(url).await {
                Ok(jwks) => return Ok(jwks),
                Err(error) => errors.push(format!("{url}: {error}")),
            }
        }
        anyhow::bail!("no JWKS endpoint answered: {}", errors.join("; "))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer access token")]
    Missing,
    /// Not a JWT at all, or not one of ours. The detail is for logs: clients
    /// get one wording whatever the parser said.
    #[error("malformed access token")]
    Malformed(String),
    #[error("access token algorithm {0} is not accepted; only EdDSA is")]
    WrongAlgorithm(String),
    #[error("access token signed with unknown key {0:?}")]
    UnknownKey(String),
    #[error("access token has expired")]
    Expired,
    /// Its session ended (logout, ...) or its subject's tokens were revoked.
    #[error("access token has been revoked; refresh it or sign in again")]
    Revoked,
    #[error("access token is invalid: {0}")]
    Invalid(String),
    #[error("verification keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The gRPC code a refused call gets, at the edge and in every service.
    pub fn code(&self) -> tonic::Code {
        match self {
            AuthError::KeysUnavailable(_) => tonic::Code::Unavailable,
            _ => tonic::Code::Unauthenticated,
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway: Duration,
    /// At most one key-set fetch per this interval, so a flood of tokens with
    /// made-up `kid`s cannot turn into a flood of fetches.
    pub min_refetch_interval: Duration,
    /// Verified tokens remembered until they expire; 0 turns the cache off.
    pub cache_capacity: usize,
}

/// Verifies access tokens against a cached JWKS.
pub struct TokenVerifier {
    source: Arc<dyn JwksSource>,
    validation: Validation,
    min_refetch_interval: Duration,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// token -> its claims, for tokens whose signature was checked.
    verified: DashMap<String, Arc<Claims>>,
    cache_capacity: usize,
    leeway_secs: i64,
    /// Tokens refused before they expire, checked on every call (cache
    /// hits included), when the process follows revocations.
    revocations: Option<Arc<Revocations>>,
}

impl TokenVerifier {
    /// The verifier of a service that does not issue tokens: it fetches
    /// users-svc's keys from `auth.jwks_url` (on first use, and again when
    /// a token names a key it has not seen, at most once a second).
    pub fn remote(auth: &AuthConfig) -> anyhow::Result<Arc<Self>> {
        Self::from_config(auth).map(Arc::new)
    }

    /// [`remote`](Self::remote), not yet shared: to add
    /// [`with_revocations`](Self::with_revocations).
    pub fn from_config(auth: &AuthConfig) -> anyhow::Result<Self> {
        let keys = RemoteJwks::new(std::slice::from_ref(&auth.jwks_url))
            .map_err(|e| anyhow::anyhow!("auth.jwks_url {:?}: {e}", auth.jwks_url))?;
        Ok(TokenVerifier::new(
            Arc::new(keys),
            VerifierSettings {
                issuer: auth.issuer.clone(),
                audience: auth.audience.clone(),
                leeway: std::time::Duration::from_secs(auth.leeway_secs),
                min_refetch_interval: std::time::Duration::from_secs(1),
                cache_capacity: auth.token_cache_capacity,
            },
        ))
    }

    pub fn new(source: Arc<dyn JwksSource>, settings: VerifierSettings) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[settings.issuer]);
        validation.set_audience(&[settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = settings.leeway.as_secs();
        TokenVerifier {
            source,
            validation,
            min_refetch_interval: settings.min_refetch_interval,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            verified: DashMap::new(),
            cache_capacity: settings.cache_capacity,
            leeway_secs: i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX),
            revocations: None,
        }
    }

    /// Also refuses tokens in `revocations` (kept current by the process's
    /// follower of the event log), and ends server streams opened with a
    /// token once it is revoked.
    pub fn with_revocations(mut self, revocations: Arc<Revocations>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The revocations this verifier refuses, if it follows them.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The clock skew tolerated on `exp` (`auth.leeway_secs`).
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Checks signature, algorithm, issuer, audience, expiry and
    /// revocation; a token already verified is only checked for expiry and
    /// revocation (so the cache never outlives a revocation).
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let claims = self.verify_unrevoked(token).await?;
        if self
            .revocations
            .as_ref()
            .is_some_and(|revoked| revoked.is_revoked(&claims))
        {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    async fn verify_unrevoked(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        if self.cache_capacity == 0 {
            return self.verify_signed(token).await.map(Arc::new);
        }
        let now = unix_now();
        if let Some(claims) = self.verified.get(token) {
            if claims.exp.saturating_add(self.leeway_secs) > now {
                return Ok(claims.clone());
            }
            drop(claims);
            self.verified.remove(token);
            return Err(AuthError::Expired);
        }
        let claims = Arc::new(self.verify_signed(token).await?);
        if self.verified.len() >= self.cache_capacity {
            // Expired entries go first; if it is still full (a flood of
            // distinct valid tokens), start over rather than grow.
            let leeway = self.leeway_secs;
            self.verified
                .retain(|_, c| c.exp.saturating_add(leeway) > now);
            if self.verified.len() >= self.cache_capacity {
                self.verified.clear();
            }
        }
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    /// The full check, signature included.
    async fn verify_signed(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::WrongAlgorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("the header has no kid".to_owned()))?;

        let (key, fetched) = match self.cached_key(&kid) {
            Some(key) => (key, false),
            None => {
                self.refetch().await?;
                let key = self
                    .cached_key(&kid)
                    .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?;
                (key, true)
            }
        };

        let mut decoded = jsonwebtoken::decode::<Claims>(token, &key, &self.validation);
        if !fetched
            && decoded
                .as_ref()
                .is_err_and(|e| matches!(e.kind(), ErrorKind::InvalidSignature))
        {
            // The issuer may hold another key under a kid cached here (its
            // store was made anew, e.g. its first key's fixed kid): check
            // against the current key set once (fetches stay rate-limited).
            self.refetch().await?;
            if let Some(current) = self.cached_key(&kid) {
                decoded = jsonwebtoken::decode::<Claims>(token, &current, &self.validation);
            }
        }
        decoded
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(format!("{error}")),
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthError::Malformed(error.to_string()),
                _ => AuthError::Invalid(error.to_string()),
            })
    }

    fn cached_key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(kid)
            .cloned()
    }

    /// Fetches the key set again, unless another fetch happened within the
    /// minimum interval (then the cache is as fresh as it may get).
    async fn refetch(&self) -> Result<(), AuthError> {
        let mut last_fetch = self.last_fetch.lock().await;
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refetch_interval) {
            return Ok(());
        }
        let jwks = self
            .source
            .fetch_jwks()
            .await
            .map_err(|e| AuthError::KeysUnavailable(e.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(error) => tracing::warn!(%kid, %error, "skipping unusable JWKS key"),
            }
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        *last_fetch = Some(Instant::now());
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When a server stream's caller token expires (its `exp` plus the
/// verifier's leeway): put in the response's extensions by [`AuthService`]
/// for server streams, for `GrpcHost` to end the stream then
/// (UNAUTHENTICATED; the client reconnects with a fresh token).
#[derive(Debug, Clone, Copy)]
pub struct TokenExpiry(pub SystemTime);

impl TokenExpiry {
    /// The time left until then (zero once passed).
    pub fn left(self) -> Duration {
        self.0
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// What ends a server stream when the token it was opened with is revoked:
/// put in the response's extensions by [`AuthService`] for server streams
/// when the verifier follows revocations, for `GrpcHost` to end the stream
/// then (UNAUTHENTICATED).
#[derive(Clone)]
pub struct RevocationWatch {
    pub revocations: Arc<Revocations>,
    pub claims: Arc<Claims>,
}

impl RevocationWatch {
    /// Resolves once the stream's token is revoked.
    pub fn revoked(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.revocations.until_revoked(self.claims)
    }
}

/// `Service/Method` of a gRPC path, for messages.
pub fn method_name(path: &str) -> &str {
    path.strip_prefix('/')
        .and_then(|p| p.rsplit_once('.').map(|(_, m)| m))
        .unwrap_or(path)
}

/// A tower layer that refuses protected gRPC methods without a valid bearer
/// token and attaches the verified [`Claims`] to the request. Which methods
/// are public comes from the protos ([`MethodPolicy`]).
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    policy: Arc<MethodPolicy>,
    /// Plain HTTP routes served beside gRPC (the JWKS document, metrics):
    /// public documents, not calls.
    http_paths: Arc<Vec<String>>,
}

impl AuthLayer {
    pub fn new(verifier: Arc<TokenVerifier>, policy: Arc<MethodPolicy>) -> Self {
        AuthLayer {
            verifier,
            policy,
            http_paths: Arc::new(Vec::new()),
        }
    }

    /// Lets these plain HTTP paths through without a token.
    pub fn with_http_paths(mut self, paths: Vec<String>) -> Self {
        self.http_paths = Arc::new(paths);
        self
    }

    fn is_public(&self, path: &str) -> bool {
        self.policy.is_public(path) || self.http_paths.iter().any(|p| p == path)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

/// The token in an `authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not text".to_owned()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthError::Malformed("expected `Bearer <token>`".to_owned()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed("expected `Bearer <token>`".to_owned()));
    }
    Ok(token.trim())
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if self.layer.is_public(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The clone takes over the readiness reserved by poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.layer.verifier.clone();
        let policy = self.layer.policy.clone();
        Box::pin(async move {
            let verified = match bearer_token(request.headers()) {
                Ok(token) => verifier.verify(token).await,
                Err(error) => Err(error),
            };
            match verified {
                Ok(claims) => {
                    let path = request.uri().path();
                    if let Err(message) = policy.callers(path).admits(&claims, method_name(path)) {
                        tracing::debug!(%path, %message, "refused a caller the method does not accept");
                        return Ok(Status::permission_denied(message).into_http());
                    }
                    // A server stream lives no longer than its token, nor
                    // past the token's revocation (its body ends then); a
                    // client stream neither (the call is answered
                    // UNAUTHENTICATED then, whatever the handler was doing).
                    let server_streaming = policy.is_server_streaming(path);
                    let client_streaming = !policy.takes_one_request(path);
                    let expiry = server_streaming.then(|| {
                        let exp = Duration::from_secs(u64::try_from(claims.exp).unwrap_or(0));
                        TokenExpiry(SystemTime::UNIX_EPOCH + exp + verifier.leeway())
                    });
                    let watch = verifier
                        .revocations()
                        .filter(|_| server_streaming || client_streaming)
                        .map(|revocations| RevocationWatch {
                            revocations: revocations.clone(),
                            claims: claims.clone(),
                        });
                    request.extensions_mut().insert(claims);
                    let call = inner.call(request);
                    let mut response = match watch.clone().filter(|_| client_streaming) {
                        Some(watch) => tokio::select! {
                            response = call => response?,
                            () = watch.revoked() => {
                                return Ok(Status::from(AuthError::Revoked).into_http());
                            }
                        },
                        None => call.await?,
                    };
                    if let Some(expiry) = expiry {
                        response.extensions_mut().insert(expiry);
                    }
                    if let Some(watch) = watch.filter(|_| server_streaming) {
                        response.extensions_mut().insert(watch);
                    }
                    Ok(response)
                }
                Err(error) => {
                    tracing::debug!(?error, path = %request.uri().path(), "refused unauthenticated call");
                    Ok(Status::from(error).into_http())
                }
            }
        })
    }
}

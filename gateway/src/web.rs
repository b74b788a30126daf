//! The web app (`web/`), served at `/` by the gateway itself: same origin as
//! the API, so the browser needs no CORS for its gRPC-web calls.
//!
//! The files are `web/dist/`, embedded at build time (`build.rs`), or read
//! from a directory (`[gateway.web] dir`, e.g. `vite build --watch`'s
//! output). Rules:
//! - only `GET`/`HEAD` of paths that are not the API's: never gRPC or
//!   gRPC-web (POST, `application/grpc*`, `/pkg.Service/Method`), never a
//!   path an HTTP/JSON binding takes (`/v1/...`), `/openapi.json`, `/docs`,
//!   `/metrics`, `/healthz` or `/.well-known/...`; those keep their own
//!   answers;
//! - `assets/*` (Vite's content-hashed names) are `immutable` for a year,
//!   everything else `no-cache` with an ETag;
//! - a path whose last segment has no dot and names no file is a client-side
//!   route: `index.html`; a missing file with a dot falls through to the
//!   gateway's usual 404;
//! - precompressed `.br`/`.gz` siblings are sent to clients that accept them;
//! - every answer carries a Content-Security-Policy of `'self'` only;
//! - the app's gRPC-web calls carry its own origin (`Origin` equal to the
//!   request's host): [`Web::cross_origin`] lets those pass without a CORS
//!   allowance, while the app is on.

use std::{collections::HashMap, hash::Hasher, path::PathBuf};

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::{Deserialize, Serialize};

use crate::{grpc, http_json::Transcoder};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// `[gateway.web]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the web app at `/` (`false`: those paths answer as any
    /// unknown path does).
    pub enabled: bool,
    /// Serve this directory instead of the files built into the binary
    /// (empty: the embedded `web/dist`).
    pub dir: String,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            dir: String::new(),
        }
    }
}

/// Only the app's own origin: no inline script or style, no other host.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Long-lived: Vite puts a hash of the content in every name under `assets/`.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

enum Files {
    Embedded(HashMap<&'static str, Bytes>),
    Dir(PathBuf),
}

impl Files {
    fn get(&self, name: &str) -> Option<Bytes> {
        match self {
            Files::Embedded(files) => files.get(name).cloned(),
            Files::Dir(root) => {
                let path = root.join(name);
                path.is_file()
                    .then(|| std::fs::read(path).ok().map(Bytes::from))
                    .flatten()
            }
        }
    }
}

/// The app's files, or nothing when turned off.
pub struct Web {
    files: Option<Files>,
}

impl Web {
    pub fn new(config: &WebConfig) -> Self {
        let files = if !config.enabled {
            None
        } else if !config.dir.is_empty() {
            Some(Files::Dir(PathBuf::from(&config.dir)))
        } else {
            Some(Files::Embedded(
                embedded::FILES
                    .iter()
                    .map(|(name, bytes)| (*name, Bytes::from_static(bytes)))
                    .collect(),
            ))
        };
        Web { files }
    }

    /// `origin`, unless it is the request's own (the app calling the API
    /// it was served with, which is no cross-origin call and needs no CORS
    /// allowance); unchanged when the app is turned off.
    pub fn cross_origin(&self, session: &Session, origin: Option<String>) -> Option<String> {
        let own = self.files.is_some()
            && origin.as_deref().is_some_and(|origin| {
                let request = session.req_header();
                let host = request.uri.authority().map(|a| a.as_str()).or_else(|| {
                    request
                        .headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                });
                let authority = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"));
                host.is_some_and(|host| authority.is_some_and(|a| a.eq_ignore_ascii_case(host)))
            });
        if own { None } else { origin }
    }

    /// How many files are built into this binary (0 without `web/dist`).
    pub fn embedded_files() -> usize {
        embedded::FILES.len()
    }

    /// Answers the request when it is the app's; `false` leaves it to the
    /// rest of the gateway untouched.
    pub async fn serve(
        &self,
        session: &mut Session,
        api: &Transcoder,
    ) -> pingora_core::Result<bool> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let request = session.req_header();
        let head_only = match request.method {
            http::Method::GET => false,
            http::Method::HEAD => true,
            _ => return Ok(false),
        };
        let header = |name: http::header::HeaderName| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if header(http::header::CONTENT_TYPE).starts_with("application/grpc") {
            return Ok(false);
        }
        let path = request.uri.path();
        if is_api_path(path) || api.find(&request.method, path).is_ok() {
            return Ok(false);
        }
        if let Err(allowed) = api.find(&request.method, path)
            && !allowed.is_empty()
        {
            return Ok(false);
        }
        let mut name = path.trim_start_matches('/');
        if name.is_empty() {
            name = "index.html";
        }
        if name
            .split('/')
            .any(|segment| segment == ".." || segment.contains('\\'))
        {
            return Ok(false);
        }
        let (name, body) = match files.get(name) {
            Some(body) => (name, body),
            None if !name.rsplit('/').next().unwrap_or("").contains('.') => {
                match files.get("index.html") {
                    Some(body) => ("index.html", body),
                    None => return Ok(false),
                }
            }
            None => return Ok(false),
        };

        let immutable = name.starts_with("assets/");
        let etag = (!immutable).then(|| etag(&body));
        if let Some(etag) = &etag
            && header(http::header::IF_NONE_MATCH)
                .split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        {
            let mut response = ResponseHeader::build(304, Some(4))?;
            common_headers(&mut response, name, immutable)?;
            response.insert_header(http::header::ETAG, etag.as_str())?;
            session
                .write_response_header(Box::new(response), true)
                .await?;
            return Ok(true);
        }

        let accepted = header(http::header::ACCEPT_ENCODING).to_owned();
        let mut encoding = None;
        let mut body = body;
        let mut compressed_variants = false;
        for (token, suffix) in [("br", "br"), ("gzip", "gz")] {
            if let Some(variant) = files.get(&format!("{name}.{suffix}")) {
                compressed_variants = true;
                if encoding.is_none() && accepts(&accepted, token) {
                    encoding = Some(token);
                    body = variant;
                }
            }
        }

        let mut response = ResponseHeader::build(200, Some(8))?;
        common_headers(&mut response, name, immutable)?;
        if let Some(etag) = &etag {
            response.insert_header(http::header::ETAG, etag.as_str())?;
        }
        if let Some(encoding) = encoding {
            response.insert_header(http::header::CONTENT_ENCODING, encoding)?;
        }
        if compressed_variants {
            response.insert_header(http::header::VARY, "accept-encoding")?;
        }
        response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        session
            .write_response_header(Box::new(response), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }
}

/// Paths that are the gateway's or the services', never the app's.
fn is_api_path(path: &str) -> bool {
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    under("/v1")
        || under("/docs")
        || under("/.well-known")
        || path == "/openapi.json"
        || path == "/metrics"
        || path == "/healthz"
        || grpc::split_path(path).is_some_and(|(service, _)| service.contains('.'))
}

fn accepts(accept_encoding: &str, token: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        name.eq_ignore_ascii_case(token) && !refused
    })
}

fn common_headers(
    response: &mut ResponseHeader,
    name: &str,
    immutable: bool,
) -> pingora_core::Result<()> {
    response.insert_header(http::header::CONTENT_TYPE, content_type(name))?;
    response.insert_header(
        http::header::CACHE_CONTROL,
        if immutable { IMMUTABLE } else { "no-cache" },
    )?;
    response.insert_header("content-security-policy", CONTENT_SECURITY_POLICY)?;
    response.insert_header("x-content-type-options", "nosniff")?;
    response.insert_header("referrer-policy", "same-origin")?;
    Ok(())
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A strong validator for the files that are not content-addressed
/// (FNV-1a of the bytes: stable across processes and replicas).
fn etag(body: &[u8]) -> String {
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    hasher.write(body);
    format!("\"{:016x}\"", hasher.finish())
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_never_the_apps() {
        for path in [
            "/v1",
            "/v1/me",
            "/openapi.json",
            "/docs",
            "/docs/",
            "/metrics",
            "/healthz",
            "/.well-known/jwks.json",
            "/munity.users.v1.Users/GetMe",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(is_api_path(path), "{path}");
        }
        for path in [
            "/",
            "/communities",
            "/meetings/abc",
            "/assets/index-x.js",
            "/v1x",
        ] {
            assert!(!is_api_path(path), "{path}");
        }
    }

    #[test]
    fn accept_encoding_tokens_and_refusals() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("gzip;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0", "gzip"));
        assert!(!accepts("identity", "gzip"));
    }
}

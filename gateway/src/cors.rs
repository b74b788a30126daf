//! CORS, so browsers may call the gateway (over gRPC-web) from configured
//! origins: preflights are answered here, calls from other origins are
//! refused, and answers to allowed ones say so and expose `grpc-status`,
//! `grpc-message` (and the rest of [`EXPOSED_HEADERS`]) to scripts.

use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Request headers a gRPC-web client sends, allowed in preflights.
const ALLOWED_HEADERS: &str =
    "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization, traceparent, tracestate";
/// Response headers scripts may read.
const EXPOSED_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, retry-after";

/// Which browser origins may call the gateway.
#[derive(Debug, Clone)]
pub struct Cors {
    allowed: Vec<String>,
}

impl Cors {
    /// `allowed` holds exact origins (`https://app.example.com`) or `*`.
    pub fn new(allowed: &[String]) -> Self {
        Cors {
            allowed: allowed.to_vec(),
        }
    }

    pub fn allows(&self, origin: &str) -> bool {
        self.allowed.iter().any(|a| a == "*" || a == origin)
    }

    /// Answers a preflight (`OPTIONS`): 204 with the grants for an allowed
    /// origin, 403 for any other.
    pub async fn preflight(
        &self,
        session: &mut Session,
        origin: Option<String>,
    ) -> pingora_core::Result<()> {
        let allowed = origin.filter(|o| self.allows(o));
        let mut response =
            ResponseHeader::build(if allowed.is_some() { 204 } else { 403 }, Some(6))?;
        if let Some(origin) = allowed {
            response.insert_header("access-control-allow-origin", origin)?;
            response.insert_header("access-control-allow-methods", "POST, OPTIONS")?;
            response.insert_header("access-control-allow-headers", ALLOWED_HEADERS)?;
            response.insert_header("access-control-expose-headers", EXPOSED_HEADERS)?;
            response.insert_header("access-control-max-age", "86400")?;
            response.insert_header("vary", "origin")?;
        }
        response.insert_header("content-length", "0")?;
        session
            .downstream_session
            .response_duplex_vec(vec![HttpTask::Header(Box::new(response), true)])
            .await?;
        Ok(())
    }
}

/// The headers every answer to a call from an allowed `origin` carries
/// (none without an origin).
pub fn response_headers(origin: Option<&str>) -> Vec<(&'static str, String)> {
    match origin {
        Some(origin) => vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("access-control-expose-headers", EXPOSED_HEADERS.to_owned()),
            ("vary", "origin".to_owned()),
        ],
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins() {
        let cors = Cors::new(&["https://app.example.com".to_owned()]);
        assert!(cors.allows("https://app.example.com"));
        assert!(!cors.allows("https://evil.example.com"));
        assert!(Cors::new(&["*".to_owned()]).allows("http://anything"));
    }
}

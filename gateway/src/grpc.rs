//! gRPC wire details the edge needs: parsing paths, answering with a
//! trailers-only status, and `grpc-timeout` values.

use std::time::Duration;

use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use tonic::Code;

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks: bytes
/// outside printable ASCII, and `%` itself.
pub fn encode_message(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Ends the call with `code` and `message` in a trailers-only response
/// (HTTP 200, status in the headers), which every gRPC client understands.
pub async fn respond_status(
    session: &mut Session,
    code: Code,
    message: &str,
    extra_headers: &[(&'static str, String)],
) -> pingora_core::Result<()> {
    let mut response = ResponseHeader::build(200, Some(4 + extra_headers.len()))?;
    let content_type = session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| ct.starts_with("application/grpc"))
        .unwrap_or("application/grpc")
        .to_owned();
    response.insert_header(http::header::CONTENT_TYPE, content_type)?;
    response.insert_header("grpc-status", (code as i32).to_string())?;
    response.insert_header("grpc-message", encode_message(message))?;
    for (name, value) in extra_headers {
        response.insert_header(*name, value.as_str())?;
    }
    // Read what the client is still sending before answering. Over HTTP/2
    // an answer that races ahead of the request body makes some clients
    // (hyper's) lose the whole connection instead of this call; over
    // HTTP/1.1 closing a socket with unread input resets it, and the reset
    // can destroy the answer in flight. Bounded: an HTTP/2 client may stream
    // forever, and a slow HTTP/1.1 upload is not worth more than a moment.
    let http2 = session.req_header().version == http::Version::HTTP_2;
    if !session.downstream_session.is_body_done() {
        let budget = Duration::from_millis(if http2 { 100 } else { 2_000 });
        let drain = session.downstream_session.drain_request_body();
        let _ = tokio::time::timeout(budget, drain).await;
    }
    if !http2 {
        // A delimited, empty answer on a connection that stays open: if the
        // body is still coming, Pingora reads and drops the rest.
        response.insert_header(http::header::CONTENT_LENGTH, "0")?;
        session
            .downstream_session
            .set_close_on_response_before_downstream_finish(false);
    }
    // One HEADERS frame with END_STREAM: a gRPC client reads a status only
    // from a header block that ends the stream (or from trailers).
    // `Session::write_response_header` never sets END_STREAM on HTTP/2.
    session
        .downstream_session
        .response_duplex_vec(vec![HttpTask::Header(Box::new(response), true)])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path("/munity.users.v1.Users/Login"),
            Some(("munity.users.v1.Users", "Login"))
        );
        assert_eq!(split_path("/"), None);
        assert_eq!(split_path("/svc/"), None);
        assert_eq!(split_path("/a/b/c"), None);
        assert_eq!(split_path("nope"), None);
    }

    #[test]
    fn messages() {
        assert_eq!(encode_message("no route: 100%"), "no route: 100%25");
        assert_eq!(encode_message("é"), "%C3%A9");
    }
}

//! The HTTP/JSON call itself: the body read in full (bounded in size and
//! time), the gRPC call made by the gateway to a replica of the route over
//! a shared HTTP/2 channel, and the answer written back as JSON, NDJSON or
//! Server-Sent Events.
//!
//! Why the gateway calls rather than letting Pingora proxy a rewritten
//! body: a `GET` has no request body, and Pingora sends an empty body's
//! END_STREAM with the headers, before any body filter runs; there is no
//! place to put the request message built from the path and query. Every
//! step before the call (route, auth, limits, deadline) and after it
//! (metrics, access log, passive ejection) is the proxy's own.

use std::{net::SocketAddr, sync::Arc, thread::ThreadId, time::Duration};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use super::{HttpRoute, error_body, http_status, resume::Positions, writable};

/// A request matched (or not) to an HTTP binding; kept in the call's
/// context so that refusals are answered in JSON.
#[derive(Debug, Default)]
pub struct JsonCall {
    /// `None` for a path no binding has: answered 404 (or 405).
    pub route: Option<Arc<HttpRoute>>,
    /// The path variables' values.
    pub variables: Vec<(String, String)>,
    /// Verbs the path takes, when it matched only under other verbs.
    pub allowed: Vec<http::Method>,
}

/// HTTP/2 channels to replicas, one per replica and proxy thread (each
/// thread runs its own runtime; a channel's connection lives on the
/// runtime that made it).
#[derive(Default)]
pub struct Upstreams {
    channels: DashMap<(ThreadId, SocketAddr), Channel>,
}

impl Upstreams {
    pub fn channel(&self, address: SocketAddr) -> Channel {
        let key = (std::thread::current().id(), address);
        self.channels
            .entry(key)
            .or_insert_with(|| {
                Channel::from_shared(format!("http://{address}"))
                    .expect("a socket address is a valid URI")
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .connect_lazy()
            })
            .clone()
    }
}

/// Encodes request messages and decodes responses by their descriptors.
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        DynamicCodec { output }
    }
}

pub struct DynamicEncoder;
pub struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("the service's answer does not decode: {e}")))
    }
}

/// An answer that is an error: HTTP status, and the gRPC status behind it.
#[derive(Debug, Clone)]
pub struct JsonError {
    pub http_status: u16,
    pub code: Code,
    pub message: String,
    /// `grpc-status-details-bin` (an encoded google.rpc.Status), if any.
    pub details: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

impl JsonError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        JsonError {
            http_status: http_status(code),
            code,
            message: message.into(),
            details: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub fn from_status(status: &Status) -> Self {
        let mut error = JsonError::new(status.code(), status.message());
        error.details = status.details().to_vec().into();
        if status.code() == Code::ResourceExhausted {
            let seconds = super::retry_after_from_details(status.details()).unwrap_or(1);
            error.headers.push(("retry-after", seconds.to_string()));
        }
        error
    }

    fn body(&self) -> serde_json::Value {
        error_body(self.code, &self.message, &self.details)
    }
}

/// Reads the whole request body: at most `limit` bytes, within `time`.
pub async fn read_body(
    session: &mut Session,
    limit: usize,
    time: Duration,
) -> Result<Bytes, JsonError> {
    let too_large = || {
        let mut error = JsonError::new(
            Code::InvalidArgument,
            format!("the request body is larger than {limit} bytes"),
        );
        error.http_status = 413;
        error
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut body = BytesMut::new();
        loop {
            let chunk = match session.downstream_session.read_request_body().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    // After a framing error (a bad chunk size) where the
                    // next request starts is unknown: answer 400 and close
                    // the connection rather than parse what follows
                    // (request smuggling).
                    session.downstream_session.set_keepalive(None);
                    return Err(JsonError::new(
                        Code::InvalidArgument,
                        format!("the request body could not be read: {e}"),
                    ));
                }
            };
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(time, read).await {
        Ok(result) => result,
        Err(_) => {
            let mut error =
                JsonError::new(Code::DeadlineExceeded, "the request body took too long");
            error.http_status = 408;
            Err(error)
        }
    }
}

/// Answers with a JSON body; `headers` besides the content type.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &[u8],
    headers: &[(&'static str, String)],
) -> pingora_core::Result<()> {
    let mut response = ResponseHeader::build(status, Some(3 + headers.len()))?;
    response.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    response.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in headers {
        response.insert_header(*name, value.as_str())?;
    }
    finish_request_body(session).await;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(Bytes::copy_from_slice(body)), true)
        .await
}

/// Answers with the error as `{code, message, details}`.
pub async fn respond_error(
    session: &mut Session,
    error: &JsonError,
    headers: &[(&'static str, String)],
) -> pingora_core::Result<()> {
    let mut all = error.headers.clone();
    all.extend_from_slice(headers);
    if error.code == Code::Unauthenticated {
        all.push(("www-authenticate", "Bearer".to_owned()));
    }
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    respond_json(session, error.http_status, &body, &all).await
}

/// Reads what the client is still sending before answering (bounded), as
/// the gRPC refusals do (`grpc::respond_status`): over HTTP/1.1 an answer
/// with unread input would reset the connection under it.
async fn finish_request_body(session: &mut Session) {
    if session.downstream_session.is_body_done() {
        return;
    }
    let http2 = session.req_header().version == http::Version::HTTP_2;
    let budget = Duration::from_millis(if http2 { 100 } else { 2_000 });
    let _ = tokio::time::timeout(budget, session.downstream_session.drain_request_body()).await;
    if !http2 {
        session
            .downstream_session
            .set_close_on_response_before_downstream_finish(false);
    }
}

/// Serialises a message by the proto3 JSON mapping (camelCase names,
/// 64-bit integers as strings, enums by name, well-known types in their
/// JSON forms, default values left out). What the mapping cannot write is
/// repaired first (`writable`: out-of-range times clamped, payloads of
/// unknown types as their bytes), so one bad stored value never fails a
/// page or ends a stream.
pub fn message_json(message: &DynamicMessage) -> Result<Vec<u8>, JsonError> {
    let options = prost_reflect::SerializeOptions::new();
    let mut out = Vec::with_capacity(256);
    let first = match message
        .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
    {
        Ok(()) => return Ok(out),
        Err(error) => error,
    };
    let cannot_write = |e: &dyn std::fmt::Display| {
        JsonError::new(
            Code::Internal,
            format!("the answer cannot be written as JSON: {e}"),
        )
    };
    let mut repaired = message.clone();
    let repairs = writable::repair(&mut repaired);
    if repairs.is_empty() {
        return Err(cannot_write(&first));
    }
    for (kind, count) in [
        ("timestamp", repairs.timestamps),
        ("duration", repairs.durations),
        ("any", repairs.opaque),
    ] {
        if count > 0 {
            crate::metrics::JSON_REPAIRS
                .with_label_values(&[kind])
                .inc_by(u64::from(count));
        }
    }
    tracing::debug!(
        message = prost_reflect::ReflectMessage::descriptor(&repaired).full_name(),
        ?repairs,
        error = %first,
        "an answer was repaired to be written as JSON"
    );
    let mut json = repaired
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| cannot_write(&e))?;
    if repairs.opaque > 0 {
        writable::unwrap_opaque(&mut json);
    }
    serde_json::to_vec(&json).map_err(|e| cannot_write(&e))
}

/// How a server stream is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// `application/x-ndjson`: one `{"result": message}` per line, and a
    /// last `{"error": status}` line if the stream fails.
    Ndjson,
    /// `text/event-stream`: one `data:` event per message (with `id:` when
    /// the stream resumes), and an `event: status` with the final status if
    /// it fails.
    Sse,
}

impl StreamFormat {
    pub fn for_accept(accept: Option<&str>) -> StreamFormat {
        if accept.is_some_and(|a| a.contains("text/event-stream")) {
            StreamFormat::Sse
        } else {
            StreamFormat::Ndjson
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            StreamFormat::Ndjson => "application/x-ndjson",
            StreamFormat::Sse => "text/event-stream",
        }
    }
}

/// Starts a streamed answer: 200 and the stream's content type.
pub async fn start_stream(
    session: &mut Session,
    format: StreamFormat,
    headers: &[(&'static str, String)],
) -> pingora_core::Result<()> {
    let mut response = ResponseHeader::build(200, Some(4 + headers.len()))?;
    response.insert_header(http::header::CONTENT_TYPE, format.content_type())?;
    response.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    // Proxies in front must not hold events back.
    response.insert_header("x-accel-buffering", "no")?;
    if session.req_header().version == http::Version::HTTP_11 {
        response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    for (name, value) in headers {
        response.insert_header(*name, value.as_str())?;
    }
    finish_request_body(session).await;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    if format == StreamFormat::Sse {
        // Reconnect after a second (the default is 3 s in most browsers).
        session
            .write_response_body(Some(Bytes::from_static(b"retry: 1000\n\n")), false)
            .await?;
    }
    Ok(())
}

/// One streamed message, framed for the format.
pub fn stream_item(
    format: StreamFormat,
    message: &DynamicMessage,
    positions: Option<&mut Positions>,
) -> Result<Bytes, JsonError> {
    let json = message_json(message)?;
    let mut out = Vec::with_capacity(json.len() + 32);
    match format {
        StreamFormat::Ndjson => {
            out.extend_from_slice(b"{\"result\":");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"}\n");
        }
        StreamFormat::Sse => {
            if let Some(positions) = positions {
                positions.observe(message);
                if let Some(id) = positions.event_id() {
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(id.as_bytes());
                    out.push(b'\n');
                }
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&json);
            out.extend_from_slice(b"\n\n");
        }
    }
    Ok(out.into())
}

/// The stream's final status, framed for the format.
pub fn stream_end(format: StreamFormat, error: &JsonError) -> Bytes {
    let body = error.body();
    let text = match format {
        StreamFormat::Ndjson => format!("{}\n", serde_json::json!({ "error": body })),
        StreamFormat::Sse => format!("event: status\ndata: {body}\n\n"),
    };
    text.into()
}

//! An admitted HTTP/JSON call (`request_filter` has routed, authenticated,
//! rate-limited it and set its deadline, as for gRPC): the request message
//! is built, the gateway calls a replica of the route, and the answer goes
//! back as JSON, NDJSON or Server-Sent Events. The call's context records
//! the replica and the status, so `logging` counts it, logs it and feeds
//! passive ejection like any proxied call.

use std::str::FromStr;

use http::uri::PathAndQuery;
use munity_platform::telemetry;
use pingora_proxy::Session;
use prost_reflect::DynamicMessage;
use tonic::{Code, Status, metadata::MetadataMap};

use super::{CallCtx, DRAINING_MESSAGE, Gateway, header_str};
use crate::{
    cors,
    http_json::{
        self, BadRequest, JsonError,
        call::{DynamicCodec, StreamFormat},
        resume::Positions,
    },
};

/// Request headers passed on to the service: the token (services verify
/// it themselves) and the trace context; a method's `forward_headers` add
/// their own (`HttpRoute::forward_headers`).
const FORWARDED_HEADERS: &[&str] = &["authorization", "traceparent", "tracestate"];

impl Gateway {
    pub(super) async fn serve_json(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
    ) -> pingora_core::Result<()> {
        let cors = cors::response_headers(ctx.origin.as_deref());
        match self.call_json(session, ctx, &cors).await {
            Ok(()) => Ok(()),
            Err(error) => {
                ctx.local_status.get_or_insert(error.code);
                http_json::respond_error(session, &error, &cors).await
            }
        }
    }

    /// Everything up to the answer; an `Err` is answered as a JSON error
    /// (nothing has been written to the client then).
    async fn call_json(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
        cors: &[(&'static str, String)],
    ) -> Result<(), JsonError> {
        let Some(route) = ctx.json.as_ref().and_then(|call| call.route.clone()) else {
            return Err(JsonError::new(Code::Internal, "no HTTP binding"));
        };
        let body =
            http_json::call::read_body(session, self.max_json_body_bytes, self.json_body_timeout)
                .await?;
        let variables = ctx
            .json
            .as_ref()
            .map(|call| call.variables.clone())
            .unwrap_or_default();
        let query = session.req_header().uri.query().map(str::to_owned);
        let bad_request = |BadRequest(message)| JsonError::new(Code::InvalidArgument, message);
        let mut message = route
            .request_message(&variables, query.as_deref(), &body)
            .map_err(bad_request)?;
        if let (Some(field), Some(last_id)) =
            (&route.resume_field, header_str(session, "last-event-id"))
        {
            Positions::resume_from(&mut message, field, &last_id).map_err(bad_request)?;
        }

        let mut headers = http::HeaderMap::new();
        for name in FORWARDED_HEADERS {
            if let Some(value) = session.req_header().headers.get(*name) {
                headers.insert(*name, value.clone());
            }
        }
        for name in &route.forward_headers {
            if let Some(value) = session.req_header().headers.get(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if !ctx.span.is_disabled() {
            ctx.span
                .in_scope(|| telemetry::inject_trace_context(&mut headers));
        }

        let path = PathAndQuery::from_str(&route.grpc_path)
            .map_err(|_| JsonError::new(Code::Internal, "bad method path"))?;
        let streaming = route.method.is_server_streaming();
        let format = StreamFormat::for_accept(header_str(session, "accept").as_deref());
        let outcome = loop {
            let address = self.pick_replica(ctx).map_err(|message| {
                ctx.local_status = Some(Code::Unavailable);
                JsonError::new(Code::Unavailable, message)
            })?;
            let mut grpc = tonic::client::Grpc::new(self.upstreams.channel(address));
            let mut request = tonic::Request::new(message.clone());
            *request.metadata_mut() = MetadataMap::from_headers(headers.clone());
            if let Some(deadline) = ctx.deadline {
                request.set_timeout(deadline);
            }
            let codec = DynamicCodec::new(route.method.output());
            let call = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(format!("upstream unreachable: {e}")))?;
                if streaming {
                    grpc.server_streaming(request, path.clone(), codec)
                        .await
                        .map(|response| Answer::Stream(response.into_inner()))
                } else {
                    grpc.unary(request, path.clone(), codec)
                        .await
                        .map(|response| Answer::Unary(response.into_inner()))
                }
            };
            let result = match ctx.deadline.filter(|_| !streaming) {
                Some(deadline) => tokio::time::timeout(deadline, call)
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("upstream timed out"))),
                None => call.await,
            };
            match result {
                Err(status) if never_reached(&status) => {
                    // Nothing reached the replica: another one may take it.
                    ctx.tried.push(address);
                    ctx.peer = None;
                    if let Some(upstream) = &ctx.route {
                        upstream
                            .outliers
                            .failure(address, &upstream.balancer, &upstream.name);
                    }
                    let replicas = ctx.route.as_ref().map_or(0, |r| r.config.upstreams.len());
                    if ctx.tried.len() >= replicas {
                        ctx.local_status = Some(Code::Unavailable);
                        return Err(JsonError::new(Code::Unavailable, "upstream unreachable"));
                    }
                }
                other => break other,
            }
        };
        let answer = outcome.map_err(|status| {
            let status = connection_failed(status);
            ctx.upstream_status = Some((status.code() as i32).to_string());
            JsonError::from_status(&status)
        })?;
        match answer {
            Answer::Unary(reply) => {
                let json = http_json::call::message_json(&reply)?;
                ctx.upstream_status = Some("0".to_owned());
                if let Err(error) = http_json::call::respond_json(session, 200, &json, cors).await {
                    tracing::debug!(%error, "could not send the answer to the client");
                }
            }
            Answer::Stream(stream) => {
                let positions = route
                    .resume_field
                    .clone()
                    .and_then(|field| Positions::new(route.method.input(), field));
                self.relay_stream(session, ctx, stream, format, positions, cors)
                    .await;
            }
        }
        Ok(())
    }

    /// Writes a server stream's messages as they come, until it ends, the
    /// client goes away, or the gateway drains (then UNAVAILABLE, so the
    /// client reconnects, and an EventSource resumes from its last id).
    async fn relay_stream(
        &self,
        session: &mut Session,
        ctx: &mut CallCtx,
        mut stream: tonic::Streaming<DynamicMessage>,
        format: StreamFormat,
        mut positions: Option<Positions>,
        cors: &[(&'static str, String)],
    ) {
        if let Err(error) = http_json::call::start_stream(session, format, cors).await {
            tracing::debug!(%error, "could not start the stream");
            ctx.local_status = Some(Code::Cancelled);
            return;
        }
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = self.drain.cancelled() => {
                    ctx.local_status = Some(Code::Unavailable);
                    Err(Status::unavailable(DRAINING_MESSAGE))
                }
            };
            let (chunk, end) = match next {
                Ok(Some(message)) => {
                    match http_json::call::stream_item(format, &message, positions.as_mut()) {
                        Ok(chunk) => (chunk, false),
                        Err(error) => {
                            ctx.local_status = Some(error.code);
                            (http_json::call::stream_end(format, &error), true)
                        }
                    }
                }
                Ok(None) => {
                    ctx.upstream_status = Some("0".to_owned());
                    (bytes::Bytes::new(), true)
                }
                Err(status) => {
                    let status = connection_failed(status);
                    ctx.upstream_status = Some((status.code() as i32).to_string());
                    let error = JsonError::from_status(&status);
                    (http_json::call::stream_end(format, &error), true)
                }
            };
            let chunk = (!chunk.is_empty()).then_some(chunk);
            if let Err(error) = session.write_response_body(chunk, end).await {
                // The client went away: dropping the stream cancels the call.
                tracing::debug!(%error, "stream client gone");
                ctx.local_status = Some(Code::Cancelled);
                return;
            }
            if end {
                return;
            }
        }
    }

    /// A healthy replica of the call's route not yet tried, as
    /// `upstream_peer` picks for proxied calls.
    fn pick_replica(&self, ctx: &mut CallCtx) -> Result<std::net::SocketAddr, String> {
        let route = ctx.route.as_ref().ok_or("no route")?;
        let tried = &ctx.tried;
        let backend = route
            .balancer
            .select_with(b"", 256, |backend, healthy| {
                healthy && backend.addr.as_inet().is_none_or(|a| !tried.contains(a))
            })
            .ok_or_else(|| format!("no healthy upstream for {}", ctx.service))?;
        let address = *backend.addr.as_inet().ok_or("not an inet upstream")?;
        ctx.peer = Some(address);
        Ok(address)
    }
}

enum Answer {
    Unary(DynamicMessage),
    Stream(tonic::Streaming<DynamicMessage>),
}

/// A status tonic made of the connection failing mid-call (the replica
/// died, the connection broke: such a status has the error as its source;
/// one a service sent has none). The service never answered, so to the
/// client that is UNAVAILABLE (retry), as the proxied gRPC path says it,
/// not UNKNOWN or INTERNAL. Nor CANCELLED: tonic says that when hyper
/// gives up a request because its connection closed under it (a replica
/// killed mid-call), but the client cancelled nothing (a client that
/// leaves drops this call instead), and HTTP 499 would blame it.
fn connection_failed(status: Status) -> Status {
    let from_transport = std::error::Error::source(&status).is_some();
    if from_transport
        && matches!(
            status.code(),
            Code::Unknown | Code::Internal | Code::Cancelled
        )
    {
        let mut message = format!("upstream failed: {}", status.message());
        let mut source = std::error::Error::source(&status);
        while let Some(error) = source {
            message.push_str(&format!(": {error}"));
            source = error.source();
        }
        Status::unavailable(message)
    } else {
        status
    }
}

/// Whether the call failed before reaching the replica (no connection),
/// so that trying another one cannot run it twice.
fn never_reached(status: &Status) -> bool {
    if status.code() != Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        let text = error.to_string();
        if text.contains("tcp connect")
            || text.contains("Connection refused")
            || text.contains("error trying to connect")
        {
            return true;
        }
        source = error.source();
    }
    status.message().starts_with("upstream unreachable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_lost_mid_call_is_unavailable_and_a_service_status_is_kept() {
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let lost = connection_failed(Status::from_error(Box::new(broken)));
        assert_eq!(lost.code(), Code::Unavailable);
        assert!(
            lost.message().contains("reset by peer"),
            "{}",
            lost.message()
        );
        // What tonic makes of hyper's `Canceled` (the connection closed
        // under a request): a status found in the error's chain.
        #[derive(Debug)]
        struct ConnectionClosed(Status);
        impl std::fmt::Display for ConnectionClosed {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("connection closed")
            }
        }
        impl std::error::Error for ConnectionClosed {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let closed = Status::from_error(Box::new(ConnectionClosed(Status::cancelled(
            "operation was canceled",
        ))));
        assert_eq!(closed.code(), Code::Cancelled, "as tonic reports it");
        assert_eq!(connection_failed(closed).code(), Code::Unavailable);
        for sent in [
            Status::unknown("the service's own"),
            Status::internal("the service's own"),
            Status::cancelled("the service's own"),
        ] {
            let code = sent.code();
            assert_eq!(connection_failed(sent).code(), code);
        }
    }
}

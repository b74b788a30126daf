//! `grpc.health.v1.Health`, answered by the gateway itself from what its
//! balancers know: a routed service is SERVING while at least one of its
//! replicas passes health checks and is not ejected, NOT_SERVING otherwise;
//! `""` is the gateway itself. A service replica only knows its own
//! services, and one replica's view is not the route's, so health calls are
//! never passed upstream.
//!
//! `Check` answers once; `Watch` sends the status, then every change (seen
//! within one health-check interval), until the client goes away. When the
//! gateway begins shutting down, everything turns NOT_SERVING, so watchers
//! move to another gateway replica before the streams are cut; a `Watch`
//! with a deadline ends with DEADLINE_EXCEEDED when it passes. Both speak
//! gRPC and gRPC-web (binary and text), like every other call.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use munity_platform::shutdown::ShutdownToken;
use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_load_balancing::{LoadBalancer, selection::RoundRobin};
use pingora_proxy::Session;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};

use crate::grpc_web::{Encoding, WebCall};

/// The health service's full name.
pub const SERVICE: &str = "grpc.health.v1.Health";

/// A health request is one short message; anything bigger is refused.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// How long a client may take to send that message.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What a health call could not get past.
#[derive(Debug)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
    /// The request body could not be read (bad HTTP/1.1 chunking, say):
    /// where the request ends is unknown, so the connection must close.
    pub unframed: bool,
}

impl Refusal {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            unframed: false,
        }
    }

    /// The request outgrew [`MAX_REQUEST_BYTES`] (either path's reader).
    pub fn too_large() -> Self {
        Refusal::new(
            Code::ResourceExhausted,
            format!("a health request is at most {MAX_REQUEST_BYTES} bytes"),
        )
    }

    /// The request did not arrive within [`REQUEST_READ_TIMEOUT`].
    pub fn too_slow() -> Self {
        Refusal::new(
            Code::DeadlineExceeded,
            "the request body did not arrive in time",
        )
    }
}

/// The gateway's health service (cheap to clone: watchers hold one).
#[derive(Clone)]
pub struct EdgeHealth {
    /// Routed gRPC service → the balancer of its replicas.
    balancers: Arc<HashMap<String, Arc<LoadBalancer<RoundRobin>>>>,
    /// How often `Watch` looks for a change (the health-check interval).
    interval: Duration,
    shutdown: ShutdownToken,
    /// Cancelled when open streams should end (half way through shutdown).
    drain: ShutdownToken,
}

impl EdgeHealth {
    pub fn new(
        balancers: HashMap<String, Arc<LoadBalancer<RoundRobin>>>,
        interval: Duration,
        shutdown: ShutdownToken,
        drain: ShutdownToken,
    ) -> Self {
        EdgeHealth {
            balancers: Arc::new(balancers),
            interval,
            shutdown,
            drain,
        }
    }

    /// The status of `service` as this gateway sees it; `None` for a
    /// service it does not route.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        let serving = if service.is_empty() {
            true
        } else {
            let balancer = self.balancers.get(service)?;
            let backends = balancer.backends();
            backends.get_backend().iter().any(|b| backends.ready(b))
        };
        Some(if serving && !self.shutdown.is_cancelled() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }

    /// `Check`'s answer: the status, or NOT_FOUND for a service not
    /// routed here.
    pub fn check(&self, request: &HealthCheckRequest) -> Result<ServingStatus, Refusal> {
        self.status(&request.service).ok_or_else(|| {
            Refusal::new(
                Code::NotFound,
                format!("unknown service {:?}", request.service),
            )
        })
    }

    /// Answers `Check` or `Watch` on `session`. `Err` is a refusal to send
    /// as a trailers-only status (nothing was written yet).
    pub async fn serve(
        &self,
        session: &mut Session,
        method: &str,
        web: Option<&mut WebCall>,
        extra_headers: &[(&'static str, String)],
        deadline: Option<Duration>,
    ) -> Result<(), Refusal> {
        let started = tokio::time::Instant::now();
        let watch = match method {
            "Check" => false,
            "Watch" => true,
            _ => {
                return Err(Refusal::new(
                    Code::Unimplemented,
                    format!("unknown method {method} of {SERVICE}"),
                ));
            }
        };
        let mut web = web;
        let request = read_request(session, web.as_deref_mut()).await?;
        let out = Writer {
            web: web.as_deref(),
            http2: session.req_header().version == http::Version::HTTP_2,
        };
        if !watch {
            let status = self.check(&request)?;
            let mut ok = http::HeaderMap::new();
            ok.insert("grpc-status", http::HeaderValue::from_static("0"));
            let tasks = vec![
                out.header(extra_headers),
                out.message(status),
                out.trailers(ok),
            ];
            let _ = session.downstream_session.response_duplex_vec(tasks).await;
            return Ok(());
        }

        // Watch: the current status, then each change.
        let mut watcher = self.watch(request.service, deadline.map(|d| started + d));
        let WatchEvent::Status(first) = watcher.next().await else {
            return Ok(());
        };
        let first = vec![out.header(extra_headers), out.message(first)];
        if session
            .downstream_session
            .response_duplex_vec(first)
            .await
            .is_err()
        {
            return Ok(());
        }
        loop {
            // Biased: at shutdown the connection's reads fail on purpose
            // (connections.rs) at the moment the drain fires; the stream
            // must end with its status, not as if the client had left.
            let task = tokio::select! {
                biased;
                event = watcher.next() => match event {
                    WatchEvent::Status(status) => out.message(status),
                    WatchEvent::Drained => {
                        out.trailers(munity_platform::deadline::draining_trailers())
                    }
                    WatchEvent::DeadlineExceeded => {
                        out.trailers(munity_platform::deadline::exceeded_trailers())
                    }
                },
                // Resolves when the client closes the stream or connection.
                _ = session.downstream_session.read_body_or_idle(true) => return Ok(()),
            };
            let end = matches!(task, HttpTask::Trailer(_) | HttpTask::Body(_, true));
            if session
                .downstream_session
                .response_duplex_vec(vec![task])
                .await
                .is_err()
                || end
            {
                return Ok(());
            }
        }
    }

    /// Follows the status of `service` for a `Watch`, until `deadline`.
    pub fn watch(&self, service: String, deadline: Option<Instant>) -> Watcher {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Watcher {
            health: self.clone(),
            service,
            last: None,
            ticker,
            expiry: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            drain: Box::pin(self.drain.clone().cancelled_owned()),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            shutdown_seen: false,
        }
    }
}

/// What a `Watch` says next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// The first status, or a change.
    Status(ServingStatus),
    /// The gateway drains: end with UNAVAILABLE.
    Drained,
    /// The client's deadline passed: end with DEADLINE_EXCEEDED.
    DeadlineExceeded,
}

/// One `Watch`: the current status, then each change (looked for every
/// health-check interval, and at once when shutdown begins). An unknown
/// service is SERVICE_UNKNOWN (it may be routed later), per the protocol.
pub struct Watcher {
    health: EdgeHealth,
    service: String,
    last: Option<ServingStatus>,
    ticker: tokio::time::Interval,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Once shutdown has begun the status is NOT_SERVING for good.
    shutdown_seen: bool,
}

impl Watcher {
    fn current(&self) -> ServingStatus {
        self.health
            .status(&self.service)
            .unwrap_or(ServingStatus::ServiceUnknown)
    }

    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<WatchEvent> {
        if self.last.is_none() {
            let now = self.current();
            self.last = Some(now);
            return Poll::Ready(WatchEvent::Status(now));
        }
        loop {
            if self.drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(WatchEvent::Drained);
            }
            if let Some(expiry) = self.expiry.as_mut()
                && expiry.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(WatchEvent::DeadlineExceeded);
            }
            let mut look = false;
            if !self.shutdown_seen && self.shutdown.as_mut().poll(cx).is_ready() {
                self.shutdown_seen = true;
                look = true;
            }
            if self.ticker.poll_tick(cx).is_ready() {
                look = true;
            }
            if !look {
                return Poll::Pending;
            }
            let now = self.current();
            if self.last != Some(now) {
                self.last = Some(now);
                return Poll::Ready(WatchEvent::Status(now));
            }
        }
    }

    pub async fn next(&mut self) -> WatchEvent {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// Reads the one request message (bounded in size and time).
async fn read_request(
    session: &mut Session,
    mut web: Option<&mut WebCall>,
) -> Result<HealthCheckRequest, Refusal> {
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .downstream_session
            .read_request_body()
            .await
            .map_err(|e| Refusal {
                unframed: true,
                ..Refusal::new(Code::InvalidArgument, format!("reading the request: {e}"))
            })?
        {
            let chunk = match web.as_deref_mut().filter(|w| w.encoding == Encoding::Text) {
                Some(web) => web
                    .decode_request(&chunk)
                    .map_err(|e| Refusal::new(Code::InvalidArgument, e.to_string()))?,
                None => chunk,
            };
            if body.len() + chunk.len() > MAX_REQUEST_BYTES {
                return Err(Refusal::too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let body = tokio::time::timeout(REQUEST_READ_TIMEOUT, read)
        .await
        .map_err(|_| Refusal::too_slow())??;
    parse_request(&body)
}

/// The one request message of a body.
pub fn parse_request(body: &[u8]) -> Result<HealthCheckRequest, Refusal> {
    let message = single_message(body).ok_or_else(|| {
        Refusal::new(
            Code::InvalidArgument,
            "expected exactly one uncompressed request message",
        )
    })?;
    HealthCheckRequest::decode(message).map_err(|e| {
        Refusal::new(
            Code::InvalidArgument,
            format!("bad HealthCheckRequest: {e}"),
        )
    })
}

/// The payload of a body holding exactly one uncompressed gRPC frame.
pub fn single_message(body: &[u8]) -> Option<&[u8]> {
    let (header, rest) = body.split_at_checked(5)?;
    let length = u32::from_be_bytes(header[1..5].try_into().ok()?) as usize;
    (header[0] == 0 && rest.len() == length).then_some(rest)
}

/// The answer's message, as one gRPC frame.
pub fn status_frame(status: ServingStatus) -> Bytes {
    let payload = HealthCheckResponse {
        status: status as i32,
    }
    .encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(payload.len() as u32);
    frame.put_slice(&payload);
    frame.freeze()
}

/// Frames the answer for the call's protocol.
struct Writer<'a> {
    web: Option<&'a WebCall>,
    http2: bool,
}

impl Writer<'_> {
    fn header(&self, extra_headers: &[(&'static str, String)]) -> HttpTask {
        let content_type = self
            .web
            .map_or("application/grpc", |w| w.encoding.response_content_type());
        let mut response =
            ResponseHeader::build(200, Some(3 + extra_headers.len())).expect("a 200 header builds");
        let _ = response.insert_header(http::header::CONTENT_TYPE, content_type);
        if !self.http2 {
            // gRPC-web over HTTP/1.1: the stream's length is not known.
            let _ = response.insert_header(http::header::TRANSFER_ENCODING, "chunked");
        }
        for (name, value) in extra_headers {
            let _ = response.insert_header(*name, value.as_str());
        }
        HttpTask::Header(Box::new(response), false)
    }

    fn message(&self, status: ServingStatus) -> HttpTask {
        HttpTask::Body(Some(self.encode(&status_frame(status))), false)
    }

    fn trailers(&self, trailers: http::HeaderMap) -> HttpTask {
        match self.web {
            // Browsers cannot read trailers: gRPC-web sends them as the last
            // body frame.
            Some(web) => HttpTask::Body(Some(web.trailers_frame(&trailers)), true),
            None => HttpTask::Trailer(Some(Box::new(trailers))),
        }
    }

    fn encode(&self, frame: &[u8]) -> Bytes {
        match self.web {
            Some(web) => web.encode_response(frame),
            None => Bytes::copy_from_slice(frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::single_message;

    #[test]
    fn exactly_one_frame() {
        assert_eq!(single_message(&[0, 0, 0, 0, 2, 10, 0]), Some(&[10, 0][..]));
        assert_eq!(single_message(&[0, 0, 0, 0, 0]), Some(&[][..]));
        assert_eq!(single_message(&[1, 0, 0, 0, 0]), None, "compressed");
        assert_eq!(single_message(&[0, 0, 0, 0, 1]), None, "short");
        assert_eq!(single_message(&[0, 0, 0, 0, 0, 9]), None, "two messages");
        assert_eq!(single_message(&[0, 0]), None);
    }
}

//! RED metrics for every service, recorded by [`GrpcHost`](crate::server::GrpcHost)
//! and served as Prometheus text at `GET /metrics` on the service's own port:
//!
//! - `munity_grpc_server_requests_total{service, method, code}`: finished
//!   calls by gRPC status code (the final one: for a stream, its trailers;
//!   `1`, CANCELLED, when the client went away before the end);
//! - `munity_grpc_server_request_duration_seconds{service, method}`: from
//!   request to the end of the response (a stream's whole life);
//! - `munity_grpc_server_calls_in_flight{service, kind}`: calls not finished
//!   yet, `unary` or `server_streaming` (the open streams).
//!
//! The registry is the platform's own, not the process default, so a service
//! exports its gRPC server metrics only (in `munity dev` every in-process
//! service shares it, told apart by the `service` label).

use std::{
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::policy::MethodPolicy;

struct ServerMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGaugeVec,
}

static METRICS: LazyLock<ServerMetrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "munity_grpc_server_requests_total",
            "Finished gRPC calls, by service, method and status code (1 when the client went away).",
        ),
        &["service", "method", "code"],
    )
    .expect("valid metric");
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "munity_grpc_server_request_duration_seconds",
            "Time from request to the end of the response, by service and method.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ]),
        &["service", "method"],
    )
    .expect("valid metric");
    let in_flight = IntGaugeVec::new(
        Opts::new(
            "munity_grpc_server_calls_in_flight",
            "Calls not finished yet, by service and kind (unary, server_streaming: the open streams).",
        ),
        &["service", "kind"],
    )
    .expect("valid metric");
    for collector in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(latency.clone()),
        Box::new(in_flight.clone()),
    ] {
        registry.register(collector).expect("registers once");
    }
    ServerMetrics {
        registry,
        requests,
        latency,
        in_flight,
    }
});

/// Adds metrics of another part of a service (the event log's outbox and
/// consumers, say) to what `GET /metrics` serves. Registering the same
/// metric twice is harmless (the second is ignored).
pub fn register(collector: Box<dyn prometheus::core::Collector>) {
    let _ = METRICS.registry.register(collector);
}

/// The Prometheus text exposition of the services' metrics.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// One call being measured: counted in flight from its start, recorded with
/// its final status when it ends, however it ends (dropped with the body).
pub(crate) struct CallRecord {
    service: String,
    method: String,
    started: Instant,
    in_flight: prometheus::IntGauge,
    code: Option<String>,
}

impl CallRecord {
    pub(crate) fn start(path: &str, policy: &MethodPolicy) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let kind = if policy.is_server_streaming(path) {
            "server_streaming"
        } else {
            "unary"
        };
        let in_flight = METRICS.in_flight.with_label_values(&[service, kind]);
        in_flight.inc();
        CallRecord {
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            in_flight,
            code: None,
        }
    }

    /// Notes the status from a header block (trailers-only answers, or the
    /// trailers ending a stream).
    pub(crate) fn observe(&mut self, headers: &http::HeaderMap) {
        if let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
            self.code = Some(code.to_owned());
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.in_flight.dec();
        let code = self.code.as_deref().unwrap_or("1");
        METRICS
            .requests
            .with_label_values(&[&self.service, &self.method, code])
            .inc();
        METRICS
            .latency
            .with_label_values(&[&self.service, &self.method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A response body that reports the call's end to its [`CallRecord`].
pub(crate) struct MeteredBody<B> {
    inner: B,
    record: Option<CallRecord>,
}

impl<B> MeteredBody<B> {
    /// `record` is `None` for requests that are not gRPC calls.
    pub(crate) fn new(inner: B, record: Option<CallRecord>) -> Self {
        MeteredBody { inner, record }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), &mut this.record) {
                    record.observe(trailers);
                }
            }
            // The end (or a broken body): record it now, not at drop.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.record.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

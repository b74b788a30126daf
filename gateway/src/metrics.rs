//! Prometheus metrics, served on the admin port.

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "munity_gateway_requests_total",
        "Calls through the gateway, by service, method and gRPC status code.",
        &["service", "method", "code"]
    )
    .expect("metric registers once")
});

pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "munity_gateway_request_duration_seconds",
        "Time from request to the end of the response, by service and method.",
        &["service", "method"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0
        ]
    )
    .expect("metric registers once")
});

pub static RATE_LIMIT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "munity_gateway_rate_limit_decisions_total",
        "Rate-limit decisions, by mode (local, global, or fallback: global mode deciding with this replica's share while Redis is unavailable) and outcome (allowed, refused).",
        &["mode", "outcome"]
    )
    .expect("metric registers once")
});

pub static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "munity_gateway_calls_in_flight",
        "Calls routed and not yet finished, by service and kind (unary, server_streaming): open streams are the server_streaming ones.",
        &["service", "kind"]
    )
    .expect("metric registers once")
});

/// Counts one routed call in [`IN_FLIGHT`] for as long as it lives (it goes
/// with the call's context, so every way a call ends is covered).
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    pub fn start(service: &str, streaming: bool) -> Self {
        let kind = if streaming {
            "server_streaming"
        } else {
            "unary"
        };
        let gauge = IN_FLIGHT.with_label_values(&[service, kind]);
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub static UPSTREAM_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "munity_gateway_upstream_healthy",
        "1 when the upstream replica passes gRPC health checks, 0 otherwise, by route (upstream name) and replica address.",
        &["route", "upstream"]
    )
    .expect("metric registers once")
});

pub static EJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "munity_gateway_upstream_ejections_total",
        "Replicas taken out of rotation after consecutive failed calls, by route (upstream name).",
        &["route"]
    )
    .expect("metric registers once")
});

pub static CONNECTIONS_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "munity_gateway_connections_open",
        "Client connections open now (bounded by gateway.max_connections, and per client IP by gateway.max_connections_per_ip)."
    )
    .expect("metric registers once")
});

pub static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "munity_gateway_connections_refused_total",
        "Client connections closed at accept, by reason (max_connections, max_connections_per_ip).",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static CONNECTIONS_TIMED_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "munity_gateway_connections_timed_out_total",
        "Client connections closed because no request arrived in time (gateway.request_header_timeout_ms: slow or idle clients)."
    )
    .expect("metric registers once")
});

pub static JSON_REPAIRS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "munity_gateway_json_repairs_total",
        "Values in answers the proto3 JSON mapping cannot write, repaired by the HTTP/JSON transcoder, by kind (timestamp or duration: clamped into protobuf's range; any: a payload of a type without descriptor, written as its bytes).",
        &["kind"]
    )
    .expect("metric registers once")
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    let _ = encoder.encode(&prometheus::gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

//! Logs and traces, set up once per process.
//!
//! Logs go to stdout as human-readable lines or JSON. When an OTLP endpoint is
//! configured, spans are also exported (gRPC/OTLP, e.g. to Grafana Tempo)
//! through tracing-opentelemetry. W3C trace context (`traceparent`,
//! `tracestate`) is read from incoming gRPC metadata by [`crate::server`]'s
//! trace layer and written to outgoing metadata by [`inject_trace_context`],
//! so one trace follows a request across services.

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// `[telemetry]` section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `pretty` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info,users_svc=debug`.
    /// `RUST_LOG`, when set, wins.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://tempo:4317`. Tracing export
    /// is off when empty.
    pub otlp_endpoint: Option<String>,
    /// `json` lines written inside a span carry its OpenTelemetry
    /// `trace_id` and `span_id` (hex), so a log store (Loki) links a line
    /// to its trace. Spans get ids even with no `otlp_endpoint`.
    pub log_trace_ids: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Pretty,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            log_trace_ids: true,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Keeps the trace exporter alive; flushes buffered spans when dropped, so
/// hold it until `main` returns.
#[must_use = "spans are flushed when the guard drops"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("munity: flushing traces failed: {error}");
        }
    }
}

/// Libraries whose debug logs write request headers whole, bearer tokens
/// included (Pingora's proxy logs each request it sends upstream): held at
/// `info` whatever the filter says, unless the filter names the library
/// itself, a deliberate choice for a debugging session on test data.
const HEADER_LOGGING_TARGETS: &[&str] = &["pingora_proxy"];

/// `directives` with [`HEADER_LOGGING_TARGETS`] capped at `info`.
pub fn with_secret_safe_levels(directives: &str) -> String {
    let mut directives = directives.trim().to_owned();
    for target in HEADER_LOGGING_TARGETS {
        if !directives.contains(target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(&format!("{target}=info"));
        }
    }
    directives
}

/// Installs the global subscriber for `service_name`. Calling it again in the
/// same process (tests that start several services) keeps the first setup.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());

    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| config.log_filter.clone());
    let filter = EnvFilter::try_new(with_secret_safe_levels(&directives))
        .map_err(|e| anyhow::anyhow!("telemetry.log_filter {directives:?}: {e}"))?;

    let fmt_layer = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json if config.log_trace_ids => tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonWithTraceIds(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            ))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let ids_in_logs = config.log_format == LogFormat::Json && config.log_trace_ids;

    let provider = match config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_owned())
                        .build(),
                )
                .build();
            global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        // Nothing exported, but spans get trace and span ids for the logs.
        None if ids_in_logs => Some(
            SdkTracerProvider::builder()
                .with_resource(
                    Resource::builder()
                        .with_service_name(service_name.to_owned())
                        .build(),
                )
                .build(),
        ),
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name.to_owned()))
    });

    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .is_ok();
    Ok(TelemetryGuard {
        provider: provider.filter(|_| installed),
    })
}

/// The JSON event format with the current span's OpenTelemetry ids added
/// (`trace_id`, `span_id`) when there is a valid one.
struct JsonWithTraceIds(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonWithTraceIds
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match current_trace_ids() {
            Some((trace_id, span_id)) if line.ends_with("}\n") => writeln!(
                writer,
                "{},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}",
                &line[..line.len() - 2]
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// The current span's (trace id, span id) in hex, if it has valid ones:
/// the OpenTelemetry context tracing-opentelemetry activates on entering a
/// span (a thread-local of OpenTelemetry's; `tracing::Span::current()` is
/// not available while the subscriber is formatting an event).
fn current_trace_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// Reads W3C trace context from request headers (gRPC metadata) and makes it
/// the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // Fails only when the span is disabled; nothing to link then.
    let _ = span.set_parent(parent);
}

/// The W3C `traceparent` of the current span, to store with work that
/// outlives the call (a domain event in the outbox); empty when tracing is
/// off.
pub fn current_traceparent() -> String {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`; empty when it has no valid context.
pub fn traceparent_of(span: &tracing::Span) -> String {
    let context = span.context();
    let mut carrier = std::collections::HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes the context of a stored `traceparent` (see
/// [`current_traceparent`]) the parent of `span`; nothing when it is empty.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() {
        return;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
    // Fails only when the span is disabled or already started.
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context into outgoing request headers, so
/// the callee's spans join this trace. Use it in client interceptors.
pub fn inject_trace_context(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A call that arrives with `traceparent` continues that trace, and a call
    /// made while serving it carries the same trace id onwards.
    #[test]
    fn trace_context_flows_from_incoming_to_outgoing_metadata() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let mut incoming = http::HeaderMap::new();
            incoming.insert(
                "traceparent",
                format!("00-{trace_id}-00f067aa0ba902b7-01")
                    .parse()
                    .unwrap(),
            );
            let span = tracing::info_span!("grpc.server");
            set_parent_from_headers(&span, &incoming);

            let mut outgoing = http::HeaderMap::new();
            span.in_scope(|| inject_trace_context(&mut outgoing));
            let traceparent = outgoing["traceparent"].to_str().unwrap();
            assert!(
                traceparent.starts_with(&format!("00-{trace_id}-")),
                "{traceparent}"
            );
            assert!(
                !traceparent.contains("00f067aa0ba902b7"),
                "a new span id for the hop"
            );
        });
    }

    /// `telemetry.log_format = "json"` lines inside a span carry its trace
    /// and span ids (the ones propagated in `traceparent`); lines outside
    /// any span carry none.
    #[test]
    fn json_lines_carry_the_span_trace_and_span_ids() {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let lines = Lines::default();
        let writer = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(JsonWithTraceIds(
                        tracing_subscriber::fmt::format()
                            .json()
                            .flatten_event(true)
                            .with_current_span(true),
                    ))
                    .with_writer(move || writer.clone()),
            );
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("grpc.server", method = "Vote");
            span.in_scope(|| tracing::info!(answer = 42, "inside"));
            let ids = {
                use opentelemetry::trace::TraceContextExt;
                let context = span.context();
                let span_context = context.span().span_context().clone();
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            };
            tracing::info!("outside");
            ids
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert_eq!(parsed[0]["message"], "inside");
        assert_eq!(parsed[0]["answer"], 42);
        assert_eq!(parsed[0]["span"]["method"], "Vote");
        assert_eq!(parsed[0]["trace_id"], trace_id.as_str());
        assert_eq!(parsed[0]["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(span_id.len(), 16);
        assert_eq!(parsed[1]["message"], "outside");
        assert!(parsed[1].get("trace_id").is_none(), "{text}");
    }
}

//! One trace across the edge: a call that arrives at `munity dev`'s gateway
//! with W3C `traceparent` produces a gateway span in the caller's trace, and
//! users-svc's span for the same call is that span's child. Both are exported
//! over OTLP/gRPC, as they would be to Grafana Tempo; the receiving end here
//! is an OTLP trace collector served by this test (Tempo cannot run here),
//! speaking the real protocol through opentelemetry-proto's generated server.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use munity_proto::users::v1::{GetJwksRequest, users_client::UsersClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_gateway_is_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_address = listener.local_addr().unwrap();
    let server = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(server))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
    });

    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_munity"));
    command
        .args(["dev", "--data-dir"])
        .arg(data.path())
        .env("MUNITY_DEV__ANY_PORT", "true")
        .env(
            "MUNITY_TELEMETRY__OTLP_ENDPOINT",
            format!("http://{collector_address}"),
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let mut munity = munity_testkit::spawn_ready(command, Duration::from_secs(60)).await;
    let gateway = format!("http://{}", munity.address("gateway"));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut client = UsersClient::connect(gateway).await.unwrap();
    let mut request = tonic::Request::new(GetJwksRequest {});
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    client.get_jwks(request).await.unwrap();

    // A clean stop flushes the batch exporter.
    munity.process.terminate();
    let exit = munity.process.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let spans = collector.spans.lock().unwrap().clone();
    let ours: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let gateway_span = ours
        .iter()
        .find(|s| {
            s.name == "munity.users.v1.Users/GetJwks" && hex(&s.parent_span_id) == caller_span
        })
        .unwrap_or_else(|| panic!("no gateway span continuing the caller's trace in {ours:#?}"));
    let service_span = ours
        .iter()
        .find(|s| s.parent_span_id == gateway_span.span_id)
        .unwrap_or_else(|| panic!("no users-svc span under the gateway's in {ours:#?}"));
    assert_eq!(service_span.name, "munity.users.v1.Users/GetJwks");
}

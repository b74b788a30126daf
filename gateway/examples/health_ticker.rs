//! A steady server-streaming upstream for `bench/gateway/run.sh --streams`.
//!
//! Serves `grpc.health.v1.Health` and flips the status of one service
//! (`munity.bench.Ticker`) between SERVING and NOT_SERVING at a fixed rate,
//! so every open `Health/Watch` stream on that service receives one message
//! per flip. That gives the streams benchmark a known offered load
//! (streams × flips per second) through a proxy, with a real tonic server
//! and no code of the benchmark's own on the message path.
//!
//! The same health service is also served as `munity.bench.v1.Ticker`
//! (`/munity.bench.v1.Ticker/Watch` is `/grpc.health.v1.Health/Watch` under
//! another name): munity-gateway answers `grpc.health.v1.Health` itself
//! and never proxies it, so the benchmark calls the ticker's stream by that
//! name through both proxies. The overall status (service `""`, which the
//! gateway's health checks of the ticker ask about) stays SERVING.
//!
//! ```sh
//! cargo run --release -p munity-gateway --example health_ticker -- --listen 127.0.0.1:0 --per-second 10
//! ```
//! prints `health-ticker: listening on grpc://ADDR` once it accepts calls.

use std::{
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use clap::Parser;
use tonic::{
    codegen::{Service, http},
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

/// The health service name whose status flips: what the streams watch.
const SERVICE: &str = "munity.bench.Ticker";
/// The gRPC service the health service is also served as.
const TICKER: &str = "munity.bench.v1.Ticker";
const HEALTH: &str = "grpc.health.v1.Health";

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Status flips per second (each open Watch stream gets one message per flip).
    #[arg(long, default_value_t = 10.0)]
    per_second: f64,
}

/// A gRPC service served as [`TICKER`]: `/munity.bench.v1.Ticker/M` is
/// passed on to the wrapped health service as `/grpc.health.v1.Health/M`.
#[derive(Clone)]
struct AsTicker<S>(S);

impl<S> NamedService for AsTicker<S> {
    const NAME: &'static str = TICKER;
}

impl<S, B> Service<http::Request<B>> for AsTicker<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // tonic's router only sends this service paths under /TICKER/.
        let method = request
            .uri()
            .path()
            .strip_prefix(&format!("/{TICKER}/"))
            .unwrap_or_default();
        if let Ok(path) = format!("/{HEALTH}/{method}").parse::<http::uri::PathAndQuery>() {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = Some(path);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        self.0.call(request)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.per_second > 0.0 && args.per_second <= 10_000.0,
        "--per-second must be in (0, 10000]"
    );
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    // A flip only when the previous one was sent keeps a steady rate; missed
    // ticks are skipped rather than bunched up.
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.per_second));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::spawn(async move {
        let mut serving = true;
        loop {
            ticks.tick().await;
            serving = !serving;
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(SERVICE, status).await;
        }
    });
    println!("health-ticker: listening on grpc://{address}");
    Server::builder()
        .max_concurrent_streams(Some(10_000))
        .add_service(AsTicker(health.clone()))
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

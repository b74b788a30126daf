//! A steady server-streaming upstream for `bench/gateway/run.sh --streams`.
//!
//! Serves `grpc.health.v1.Health` and flips the status of one service
//! (`munity.bench.Ticker`) between SERVING and NOT_SERVING at a fixed rate,
//! so every open `Health/Watch` stream on that service receives one message
//! per flip. That gives the streams benchmark a known offered load
//! (streams × flips per second) through a proxy, with a real tonic server
//! and no code of the benchmark's own on the message path.
//!
//! ```sh
//! cargo run --release -p munity-gateway --example health_ticker -- --listen 127.0.0.1:0 --per-second 10
//! ```
//! prints `health-ticker: listening on grpc://ADDR` once it accepts calls.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

const SERVICE: &str = "munity.bench.Ticker";

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Status flips per second (each open Watch stream gets one message per flip).
    #[arg(long, default_value_t = 10.0)]
    per_second: f64,
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
        .add_service(health)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await?;
    Ok(())
}

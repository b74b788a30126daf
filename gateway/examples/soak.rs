//! A bounded soak of a running gateway, on loopback only (`scripts/soak.sh`
//! starts users-svc and the gateway and runs this): idle connections that
//! never send a byte, slow-header connections that send one byte every few
//! seconds, hostile requests at a steady rate, and well-behaved clients
//! calling throughout. Prints the good clients' errors and latency
//! percentiles, what became of the hostile requests and the slow and idle
//! connections, and the gateway's RSS at the start and the end.
//!
//! The attackers connect from other loopback addresses than the good
//! clients (idle from 127.0.0.2, slow from 127.0.0.3, hostile requests from
//! 127.0.0.4), as they would from other hosts: the gateway caps connections
//! per client IP, and a cap shared with the attackers would refuse the good
//! clients too.
//!
//! ```text
//! soak --gateway 127.0.0.1:8080 --gateway-pid 1234 --seconds 300 \
//!      --idle 1000 --slow 50 --hostile-per-sec 5 --good 4
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use munity_proto::users::v1::{GetJwksRequest, users_client::UsersClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// A connection to `gateway` from the loopback address `source`.
async fn connect_from(source: [u8; 4], gateway: &str) -> std::io::Result<TcpStream> {
    let gateway: std::net::SocketAddr = gateway
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(source), 0).into())?;
    socket.connect(gateway).await
}

struct Args {
    gateway: String,
    gateway_pid: Option<u32>,
    seconds: u64,
    idle: usize,
    slow: usize,
    hostile_per_sec: u64,
    good: usize,
}

fn args() -> Args {
    let mut args = Args {
        gateway: "127.0.0.1:8080".to_owned(),
        gateway_pid: None,
        seconds: 300,
        idle: 1000,
        slow: 50,
        hostile_per_sec: 5,
        good: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--gateway" => args.gateway = value,
            "--gateway-pid" => args.gateway_pid = value.parse().ok(),
            "--seconds" => args.seconds = value.parse().expect("--seconds N"),
            "--idle" => args.idle = value.parse().expect("--idle N"),
            "--slow" => args.slow = value.parse().expect("--slow N"),
            "--hostile-per-sec" => {
                args.hostile_per_sec = value.parse().expect("--hostile-per-sec N")
            }
            "--good" => args.good = value.parse().expect("--good N"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[derive(Default)]
struct Counters {
    good_ok: AtomicU64,
    good_errors: AtomicU64,
    hostile_answered: AtomicU64,
    hostile_unanswered: AtomicU64,
    slow_closed_by_gateway: AtomicU64,
    idle_closed_by_gateway: AtomicU64,
    idle_refused: AtomicU64,
}

/// The hostile requests, in turn: a 64 KB header, bad base64 in a
/// gRPC-web-text body, a bad chunk size, a garbage token.
fn hostile_request(gateway: &str, n: u64) -> Vec<u8> {
    let head = |extra: &str, content_type: &str, body: &str, chunked: bool| {
        let length = if chunked {
            "transfer-encoding: chunked\r\n".to_owned()
        } else {
            format!("content-length: {}\r\n", body.len())
        };
        format!(
            "POST /munity.users.v1.Users/GetMe HTTP/1.1\r\nHost: {gateway}\r\n\
             content-type: {content_type}\r\nx-grpc-web: 1\r\n{length}connection: close\r\n{extra}\r\n{body}"
        )
        .into_bytes()
    };
    match n % 4 {
        0 => head(
            &format!("x-big: {}\r\n", "a".repeat(64 * 1024)),
            "application/grpc-web+proto",
            "\0\0\0\0\0",
            false,
        ),
        1 => head("", "application/grpc-web-text", "!!!!not*base64", false),
        2 => head(
            "",
            "application/grpc-web+proto",
            "zz\r\nnope\r\n0\r\n\r\n",
            true,
        ),
        _ => head(
            "authorization: Bearer not.a.jwt\r\n",
            "application/grpc-web+proto",
            "\0\0\0\0\0",
            false,
        ),
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rss_start = rss_kib(args.gateway_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);

    // Idle connections: connect, send nothing, reconnect when the gateway
    // closes them (it should, at its request header timeout).
    for _ in 0..args.idle {
        let (gateway, counters, stop) = (args.gateway.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_from([127, 0, 0, 2], &gateway).await else {
                    counters.idle_refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let mut byte = [0u8; 1];
                let opened = Instant::now();
                if let Ok(0) | Err(_) = stream.read(&mut byte).await {
                    // Closed at once: refused at the per-IP cap.
                    let counter = if opened.elapsed() < Duration::from_millis(100) {
                        &counters.idle_refused
                    } else {
                        &counters.idle_closed_by_gateway
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
    }

    // Slow headers: one byte every 5 s, reconnecting when cut off.
    for _ in 0..args.slow {
        let (gateway, counters, stop) = (args.gateway.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut stream) = connect_from([127, 0, 0, 3], &gateway).await else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let _ = stream
                    .write_all(b"POST /munity.users.v1.Users/GetJwks HTTP/1.1\r\nx-slow: ")
                    .await;
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if stop.load(Ordering::Relaxed) || stream.write_all(b"a").await.is_err() {
                        break;
                    }
                    let mut byte = [0u8; 1];
                    if let Ok(Ok(0)) =
                        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await
                    {
                        break;
                    }
                }
                counters
                    .slow_closed_by_gateway
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    // Hostile requests at a steady rate.
    {
        let (gateway, counters, stop) = (args.gateway.clone(), counters.clone(), stop.clone());
        let every = Duration::from_secs_f64(1.0 / args.hostile_per_sec.max(1) as f64);
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(every);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let request = hostile_request(&gateway, n);
                let (gateway, counters) = (gateway.clone(), counters.clone());
                tokio::spawn(async move {
                    let answered = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut stream = connect_from([127, 0, 0, 4], &gateway).await.ok()?;
                        stream.write_all(&request).await.ok()?;
                        let mut head = [0u8; 12];
                        stream.read_exact(&mut head).await.ok()?;
                        Some(())
                    })
                    .await;
                    let counter = match answered {
                        Ok(Some(())) => &counters.hostile_answered,
                        _ => &counters.hostile_unanswered,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    }

    // Well-behaved clients.
    let mut good = Vec::new();
    for _ in 0..args.good {
        let (gateway, counters) = (args.gateway.clone(), counters.clone());
        good.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let channel = tonic::transport::Channel::from_shared(format!("http://{gateway}"))
                .unwrap()
                .connect_lazy();
            let mut client = UsersClient::new(channel);
            while Instant::now() < deadline {
                let call = Instant::now();
                match client.get_jwks(GetJwksRequest {}).await {
                    Ok(_) => {
                        counters.good_ok.fetch_add(1, Ordering::Relaxed);
                        latencies.push(call.elapsed());
                    }
                    Err(status) => {
                        counters.good_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("good client error: {status:?}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for client in good {
        latencies.extend(client.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let rss_end = rss_kib(args.gateway_pid);
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or("-".to_owned(), |d| {
                format!("{:.2} ms", d.as_secs_f64() * 1000.0)
            })
    };
    let c = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!("soak: {} s against {}", args.seconds, args.gateway);
    println!(
        "good clients: {} calls OK, {} errors; p50 {}, p99 {}, max {}",
        c(&counters.good_ok),
        c(&counters.good_errors),
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    println!(
        "hostile requests: {} answered, {} unanswered within 5 s",
        c(&counters.hostile_answered),
        c(&counters.hostile_unanswered)
    );
    println!(
        "slow-header connections ({}): cut by the gateway {} times",
        args.slow,
        c(&counters.slow_closed_by_gateway)
    );
    println!(
        "idle connections ({}, reconnecting): {} refused at connect or accept, {} closed by the gateway",
        args.idle,
        c(&counters.idle_refused),
        c(&counters.idle_closed_by_gateway)
    );
    match (rss_start, rss_end) {
        (Some(start), Some(end)) => println!("gateway RSS: {start} KiB at start, {end} KiB at end"),
        _ => println!("gateway RSS: unknown (pass --gateway-pid)"),
    }
}

//! Two gateway processes share one rate-limit budget in a real Redis
//! (Debian's redis-server). The outage test starts its own server on a free
//! port so it can kill and restart it without disturbing anything else; the
//! lease test uses the one scripts/test.sh started (`MUNITY_TEST_REDIS`). Killing Redis
//! keeps both gateways answering with local shares; restarting it brings
//! back the shared budget. With limits disabled, global mode needs no Redis.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use munity_proto::users::v1::{self as pb, users_client::UsersClient};
use munity_testkit::Process;
use tonic::Code;

mod common;

use common::{Gateway, free_port, replica};

/// A Redis of the test's own, without persistence.
fn redis_server(port: u16) -> Process {
    munity_testkit::redis_server(
        port,
        &[
            "--save".as_ref(),
            "".as_ref(),
            "--appendonly".as_ref(),
            "no".as_ref(),
        ],
    )
    .expect("start redis-server")
}

/// A gateway in global mode, two replicas sharing: GetJwks 30 per minute
/// (a strict quota, checked in Redis on each call). The Redis timeout is
/// generous because this machine is shared by both gateways, the service and
/// the test: a slower answer would rightly fall back to local limits and
/// blur what this test measures.
async fn gateway(users: SocketAddr, redis_port: u16, prefix: &str, extra: &str) -> Gateway {
    let tables = format!(
        "[gateway.routes.users]\nupstreams = [\"{users}\"]\n\
         [gateway.rate_limits]\nmode = \"global\"\nredis_url = \"redis://127.0.0.1:{redis_port}\"\n\
         redis_key_prefix = \"{prefix}\"\nreplicas = 2\nredis_timeout_ms = 1000\n\
         [[gateway.rate_limits.rules]]\nmethod = \"/munity.users.v1.Users/GetJwks\"\n\
         requests = 30\nper_secs = 60\nburst = 30\n{extra}\n"
    );
    let gateway = Gateway::start(users, "", &tables);
    gateway.channel().await;
    gateway
}

async fn burst(gateways: &[&Gateway], calls: usize) -> usize {
    let mut channels = Vec::new();
    for gateway in gateways {
        channels.push(gateway.channel().await);
    }
    let tasks = (0..calls).map(|i| {
        let channel = channels[i % channels.len()].clone();
        tokio::spawn(async move {
            UsersClient::new(channel)
                .get_jwks(pb::GetJwksRequest {})
                .await
        })
    });
    let mut admitted = 0;
    for result in futures::future::join_all(tasks).await {
        match result.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_budget_and_survive_redis_outages() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "redis-server missing in CI"
        );
        eprintln!("skipping: redis-server not installed");
        return;
    }
    let redis_port = free_port();
    let redis = redis_server(redis_port);
    let users = replica().await;
    let prefix = format!("test:{}", uuid::Uuid::now_v7().simple());
    let a = gateway(users.address, redis_port, &prefix, "").await;
    let b = gateway(users.address, redis_port, &prefix, "").await;

    // 90 calls at once against a shared budget of 30: together the two
    // gateways admit 30 (the strict path has no tolerance to add).
    let admitted = burst(&[&a, &b], 90).await;
    eprintln!("strict quota 30: two gateways admitted {admitted} of 90");
    assert!(admitted <= 30, "admitted {admitted} > quota 30");
    assert!(admitted >= 28, "admitted only {admitted} of 30");
    assert!(
        a.metric("munity_gateway_rate_limit_decisions_total{mode=\"global\",outcome=\"refused\"}")
            .await
            > 0
    );

    // Redis dies: both gateways keep answering, each with its local share
    // (30 / 2 replicas = 15 each), and say so in their metrics.
    drop(redis);
    let admitted = burst(&[&a, &b], 60).await;
    eprintln!("Redis down: fallback shares admitted {admitted} of 60");
    assert!(
        admitted <= 30,
        "fallback admitted {admitted}: more than the two shares"
    );
    assert!(admitted >= 20, "fallback admitted only {admitted}");
    let fallback =
        "munity_gateway_rate_limit_decisions_total{mode=\"fallback\",outcome=\"allowed\"}";
    assert!(a.metric(fallback).await > 0);
    assert!(b.metric(fallback).await > 0);

    // Redis is back (empty, so the budget is full again): global mode
    // returns once the fallback window passes and the client reconnects.
    let _redis = redis_server(redis_port);
    let global = "munity_gateway_rate_limit_decisions_total{mode=\"global\",outcome=\"allowed\"}";
    let before = a.metric(global).await;
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = a.client().await.get_jwks(pb::GetJwksRequest {}).await;
        if a.metric(global).await > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "global mode never came back"
        );
    }
    users.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_rate_quotas_spend_leases_within_the_stated_tolerance() {
    // The Redis that scripts/test.sh started (MUNITY_TEST_REDIS), else one
    // of our own; keys carry a fresh prefix either way.
    let shared = std::env::var("MUNITY_TEST_REDIS")
        .ok()
        .and_then(|url| url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
    let (redis_port, _own_redis) = match shared {
        Some(port) => (port, None),
        None => {
            if Command::new("redis-server")
                .arg("--version")
                .output()
                .is_err()
            {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "no Redis in CI");
                return;
            }
            let port = free_port();
            (port, Some(redis_server(port)))
        }
    };
    let users = replica().await;
    let prefix = format!("test:{}", uuid::Uuid::now_v7().simple());
    // 200 calls/s with a burst of 100: leases of 10 tokens (50 ms of rate).
    let fast = "[gateway.rate_limits.default]\nrequests = 200\nper_secs = 1\nburst = 100";
    let a = gateway(users.address, redis_port, &prefix, fast).await;
    let b = gateway(users.address, redis_port, &prefix, fast).await;

    let channels = [a.channel().await, b.channel().await];
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..3 {
        let tasks = (0..200).map(|i| {
            let channel = channels[i % 2].clone();
            tokio::spawn(async move {
                UsersClient::new(channel)
                    .logout(pb::LogoutRequest::default())
                    .await
            })
        });
        for result in futures::future::join_all(tasks).await {
            match result.unwrap() {
                // Public, cheap, and refused by users-svc for the empty
                // token: INVALID_ARGUMENT means the limiter let it through.
                Err(status) if status.code() == Code::InvalidArgument => admitted += 1,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
                Ok(_) => unreachable!("Logout without a token cannot succeed"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Budget: the burst, plus what refilled meanwhile, plus one lease of
    // tolerance per replica.
    let bound = 100.0 + 200.0 * elapsed + 2.0 * 10.0;
    eprintln!("leased quota: admitted {admitted} of 600 in {elapsed:.2} s (bound {bound:.0})");
    assert!(
        (admitted as f64) <= bound,
        "admitted {admitted} in {elapsed:.2} s; bound {bound:.0}"
    );
    assert!(admitted >= 100, "admitted only {admitted}");
    let fallback = "munity_gateway_rate_limit_decisions_total{mode=\"fallback\"";
    assert_eq!(
        a.metric(fallback).await,
        0,
        "Redis was up: no fallback expected"
    );
    users.shutdown.cancel();
}

/// `enabled = false` turns rate limiting off in global mode too: no Redis
/// client is made (nothing listens at `redis_url` here), every call is
/// admitted, and no decision is counted, as a fallback or otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_limits_in_global_mode_never_ask_redis() {
    let users = replica().await;
    let no_redis = free_port();
    let tables = format!(
        "[gateway.routes.users]\nupstreams = [\"{}\"]\n\
         [gateway.rate_limits]\nenabled = false\nmode = \"global\"\n\
         redis_url = \"redis://127.0.0.1:{no_redis}\"\nreplicas = 2\n\
         [[gateway.rate_limits.rules]]\nmethod = \"/munity.users.v1.Users/GetJwks\"\n\
         requests = 30\nper_secs = 60\nburst = 30\n",
        users.address
    );
    let gateway = Gateway::start(users.address, "", &tables).serving().await;

    // Twice the quota, and four times this replica's fallback share.
    let admitted = burst(&[&gateway], 60).await;
    assert_eq!(admitted, 60, "limits are disabled: every call is admitted");
    let fallback = "munity_gateway_rate_limit_decisions_total{mode=\"fallback\"";
    assert_eq!(gateway.metric(fallback).await, 0, "no fallback decisions");
    let metrics = gateway.metrics().await;
    assert!(
        !metrics.contains("munity_gateway_rate_limit_decisions_total{"),
        "no limiter, so no decisions:\n{metrics}"
    );
    users.shutdown.cancel();
}

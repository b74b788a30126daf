//! Replicas found by DNS (a Kubernetes headless Service's A records): a
//! real DNS server (dnsmasq) answers for the route's name; replicas are
//! added to and removed from its records while calls run, and no call
//! fails: a newcomer gets calls only once healthy, a removed one drains.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

mod common;

use common::{Gateway, free_port};

const NAME: &str = "users.munity.test";

fn write_records(hosts: &Path, replicas: &[IpAddr]) {
    let lines: String = replicas.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    let partial = hosts.with_extension("partial");
    std::fs::write(&partial, lines).unwrap();
    std::fs::rename(&partial, hosts).unwrap();
}

/// Whether the gateway routes to `address` (joined and healthy).
async fn served(gateway: &Gateway, address: SocketAddr) -> bool {
    gateway.metrics().await.contains(&format!(
        "munity_gateway_upstream_healthy{{route=\"users\",upstream=\"{address}\"}} 1"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_added_and_removed_in_dns_fail_no_call() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    // One port, a loopback address per replica: as pods behind a headless
    // Service, which all listen on the same port.
    let port = free_port();
    let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
    let at = |n: u8| SocketAddr::new(ip(n), port);
    write_records(&hosts, &[ip(1), ip(2)]);
    let dns_port = free_port();
    let Some(_dns) = munity_testkit::dns_server(dns_port, &hosts) else {
        return;
    };
    let mut a = common::replica_at(at(1)).await;
    let b = common::replica_at(at(2)).await;

    let tables = format!(
        "[gateway.routes.users]\nupstreams = [\"{NAME}:{port}\"]\n\n\
         [gateway.rate_limits.default]\nrequests = 1000000\nper_secs = 1\nburst = 1000000\n"
    );
    let gateway = Gateway::start(
        a.address,
        &format!(
            "health_check_interval_ms = 200\ndns_refresh_ms = 200\ndns_servers = [\"127.0.0.1:{dns_port}\"]"
        ),
        &tables,
    )
    .serving()
    .await;

    let stop = munity_platform::shutdown::ShutdownToken::new();
    let load = common::jwks_load(&gateway, 4, stop.clone()).await;
    let wait = |what: &'static str| {
        let started = Instant::now();
        move || {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{what} within 15 s"
            );
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A name for a replica that is not up yet: listed in DNS, never called.
    write_records(&hosts, &[ip(1), ip(2), ip(3)]);
    _dns.reload();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !gateway.metrics().await.contains(&at(3).to_string()),
        "a replica in DNS that does not serve has not joined"
    );
    // It starts: it joins.
    let c = common::replica_at(at(3)).await;
    let check = wait("the new replica joins");
    while !served(&gateway, at(3)).await {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // a leaves DNS (its pod is terminating); once the gateway has dropped
    // it, it stops.
    write_records(&hosts, &[ip(2), ip(3)]);
    _dns.reload();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // ... and comes back as a new pod on the same address.
    a = common::replica_at(at(1)).await;
    write_records(&hosts, &[ip(1), ip(2), ip(3)]);
    _dns.reload();
    let check = wait("the returning replica joins");
    while !served(&gateway, at(1)).await {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();

    let common::Tally {
        ok,
        failed,
        key_sets,
    } = load.await;
    println!("DNS discovery: {ok} calls OK, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} of {} calls failed while replicas came and went, e.g. {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 100, "only {ok} calls");
    // a, b, the newcomer c and a's successor each answered calls: the
    // gateway balanced over what DNS said as it changed.
    assert_eq!(key_sets.len(), 4, "four replicas answered over the test");
    for replica in [a, b, c] {
        replica.shutdown.cancel();
    }
}

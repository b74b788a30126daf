//! bench/gateway's bare Pingora: a `ProxyHttp` that only picks an upstream
//! by path prefix, with the Pingora version and settings the gateway runs
//! (h2c in, HTTP/2 out with 128 calls per upstream connection, no
//! downstream modules, one worker thread unless told otherwise). What it
//! costs per call is Pingora's core; what the gateway costs beyond it is
//! the gateway's own work (JWT, limits, metrics, headers, routing).

#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use bench_proxies::{ProxyArgs, Routes};
use clap::Parser;
use pingora_core::{
    apps::HttpServerOptions,
    server::{Server, configuration::ServerConf},
    upstreams::peer::HttpPeer,
};
use pingora_proxy::{ProxyHttp, Session};

struct BareProxy {
    routes: Routes,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    /// As the gateway: Pingora's default response compression module,
    /// which compresses nothing at its default level, is left out.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let address = self.routes.upstream_for(session.req_header().uri.path());
        let mut peer = HttpPeer::new(address, false, String::new());
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = bench_proxies::STREAMS_PER_UPSTREAM_CONNECTION;
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        Ok(Box::new(peer))
    }
}

fn main() {
    let args = ProxyArgs::parse();
    let conf = ServerConf {
        threads: args.threads.max(1),
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(
        &server.configuration,
        BareProxy {
            routes: args.routes,
        },
    );
    let app = service
        .app_logic_mut()
        .expect("a fresh service has its app");
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    // The gateway's HTTP/2 settings (gateway/src/lib.rs): 1,000 streams per
    // client connection and a framing budget sized for many calls at once.
    let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(1000);
    h2.data_frame_budget(4 << 20);
    app.h2_options = Some(h2);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);
    println!("bare-pingora: listening on grpc://{}", args.listen);
    server.run_forever();
}

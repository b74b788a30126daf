//! Reference proxies for `bench/gateway/run.sh`, measured in the same rounds
//! as the gateway and nginx:
//!
//! - `bare-pingora` (`src/bin/bare_pingora.rs`): the gateway's proxy core,
//!   Pingora with the gateway's settings and none of its work, so a run
//!   separates the core's cost per call from the gateway's own.
//! - `bare-hyper` (`src/bin/bare_hyper.rs`): the alternative data path,
//!   hyper's HTTP/2 server handing each call to hyper's HTTP/2 client, the
//!   upstream's response body given to the client's stream as it is.
//!
//! Both route by path prefix (`--route /munity.bench.v1.Ticker/=ADDR`),
//! everything else to `--upstream`, and check nothing.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

/// Calls per upstream HTTP/2 connection, as the gateway's
/// (`gateway/src/upstream_streams.rs`).
pub const STREAMS_PER_UPSTREAM_CONNECTION: usize = 128;

/// What both proxies are told on their command line.
#[derive(clap::Parser, Debug)]
pub struct ProxyArgs {
    /// Where clients connect (h2c).
    #[arg(long)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub routes: Routes,
    /// Worker threads (the gateway's `threads`, nginx's
    /// `worker_processes`): 1 runs everything on one thread.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Where calls go: the first route whose prefix starts the path, else the
/// default upstream.
#[derive(clap::Args, Clone, Debug)]
pub struct Routes {
    /// The upstream for every path no `--route` takes.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// `PREFIX=ADDR`: paths starting with PREFIX go to ADDR.
    #[arg(long = "route", value_parser = parse_route)]
    pub routes: Vec<(String, SocketAddr)>,
}

impl Routes {
    pub fn upstream_for(&self, path: &str) -> SocketAddr {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map_or(self.upstream, |(_, address)| *address)
    }
}

fn parse_route(text: &str) -> Result<(String, SocketAddr), String> {
    let (prefix, address) = text
        .split_once('=')
        .ok_or_else(|| format!("expected PREFIX=ADDR, got {text:?}"))?;
    let address = address
        .parse()
        .map_err(|e| format!("{address:?} is not an address: {e}"))?;
    Ok((prefix.to_owned(), address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_the_paths_it_prefixes() {
        let routes = Routes {
            upstream: "127.0.0.1:1".parse().unwrap(),
            routes: vec![parse_route("/munity.bench.v1.Ticker/=127.0.0.1:2").unwrap()],
        };
        assert_eq!(
            routes.upstream_for("/munity.bench.v1.Ticker/Watch").port(),
            2
        );
        assert_eq!(
            routes.upstream_for("/munity.users.v1.Users/GetMe").port(),
            1
        );
        assert!(parse_route("no-address").is_err());
    }
}

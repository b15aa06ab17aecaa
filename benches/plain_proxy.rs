// Run: cargo run --release --example plain_proxy -- 127.0.0.1:18001 127.0.0.1:18000 [threads]
//
// The ceiling for benches/load.sh: a plain pingora HTTP proxy with no checks at all,
// forwarding every request to one upstream, built with the same pingora, features and
// server settings as portcullis. portcullis's overhead is measured against this.
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

struct Plain {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        // The same peer settings as portcullis's defaults (its 502/504 need the timeouts),
        // so the comparison measures the checks and nothing else.
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.write_timeout = Some(Duration::from_secs(30));
        Ok(Box::new(peer))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18001".into());
    let upstream: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18000".into())
        .parse()
        .expect("upstream must be addr:port");
    // Worker threads: as given (benches/load.sh gives portcullis's), else one per core.
    let threads = args
        .next()
        .map(|t| t.parse().expect("threads must be a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let conf = ServerConf {
        threads,
        // portcullis's default (no stealing), or as PLAIN_WORK_STEALING (1 or 0) says, as
        // benches/load.sh's LOAD_WORK_STEALING sets both.
        work_stealing: std::env::var("PLAIN_WORK_STEALING").is_ok_and(|v| v == "1"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Plain { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}

//! The client address (SPEC §5 step 5): the TCP peer, or — when the peer is a trusted
//! proxy — the rightmost `X-Forwarded-For` entry that is not a trusted proxy.
use std::net::{IpAddr, SocketAddr};

use crate::config::Settings;

/// Parses one `X-Forwarded-For` entry: an address, optionally with a port or brackets.
/// Anything that is not ASCII text is no address.
fn parse_entry(raw: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
        .map(|ip| ip.to_canonical())
}

/// The client address for a request from `peer` with these `X-Forwarded-For` values
/// (in header order, as raw bytes). An entry that does not parse — including one that is
/// not text — ends the walk: the hop that appended it is then the client, so a garbled
/// header never lets a caller choose its address, and no value is skipped.
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    settings: &Settings,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !settings.is_trusted_proxy(peer) {
        return peer;
    }
    let mut client = peer;
    for value in xff.rev() {
        for entry in value.rsplit(|b| *b == b',') {
            if entry.trim_ascii().is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !settings.is_trusted_proxy(ip) {
                return ip;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Environment, Settings};
    use std::time::Duration;

    fn settings(trusted: &[&str]) -> Settings {
        Settings {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            upstream: crate::config::UpstreamAddr::Resolved("127.0.0.1:1".parse().unwrap()),
            upstream_text: String::new(),
            environment: Environment::Sandbox,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            shutdown_grace: 10,
            upstream_timeout: Duration::from_secs(1),
            upstream_connect_timeout: Duration::from_secs(1),
            mode: crate::config::Mode::Enforce,
            tls: None,
            upstream_tls: None,
            credentials_file: Default::default(),
            management: None,
            store: Default::default(),
            threads: 1,
            work_stealing: false,
            per_credential_metrics: None,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("192.0.2.1"), ["203.0.113.9"].into_iter().map(str::as_bytes), &s), ip("192.0.2.1"));
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let s = settings(&["10.0.0.0/8"]);
        let c = client_ip(ip("10.0.0.1"), ["203.0.113.9, 198.51.100.1, 10.0.0.2"].into_iter().map(str::as_bytes), &s);
        assert_eq!(c, ip("198.51.100.1"));
        let c = client_ip(ip("10.0.0.1"), ["203.0.113.9", "10.1.1.1"].into_iter().map(str::as_bytes), &s);
        assert_eq!(c, ip("203.0.113.9"));
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), ["10.0.0.3, 10.0.0.2"].into_iter().map(str::as_bytes), &s), ip("10.0.0.3"));
        assert_eq!(client_ip(ip("10.0.0.1"), std::iter::empty::<&[u8]>(), &s), ip("10.0.0.1"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), ["203.0.113.9, nonsense"].into_iter().map(str::as_bytes), &s), ip("10.0.0.1"));
    }

    #[test]
    fn a_value_that_is_not_text_ends_the_walk() {
        // A caller's first line, then a line whose garbled start came from the caller and
        // whose end the trusted proxy appended: the real client is never skipped over.
        let s = settings(&["10.0.0.0/8"]);
        let values: [&[u8]; 2] = [b"203.0.113.9", b"\xff, 198.51.100.66"];
        assert_eq!(client_ip(ip("10.0.0.1"), values.into_iter(), &s), ip("198.51.100.66"));
        let values: [&[u8]; 2] = [b"203.0.113.9", b"\xff"];
        assert_eq!(client_ip(ip("10.0.0.1"), values.into_iter(), &s), ip("10.0.0.1"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let s = settings(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), ["203.0.113.9:4711"].into_iter().map(str::as_bytes), &s), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("10.0.0.1"), ["[2001:db8::1]"].into_iter().map(str::as_bytes), &s), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("::ffff:10.0.0.1"), ["::ffff:203.0.113.9"].into_iter().map(str::as_bytes), &s), ip("203.0.113.9"));
    }
}

//! Client-address resolution: `client_ip` over raw `X-Forwarded-For` values, with the
//! fixture's trusted proxies (10.0.0.0/8, 192.168.0.0/16, 2001:db8::/32, ::1).
//!
//! Input: byte 0 picks the peer (bit 0: IPv6 from the next 16 bytes, else IPv4 from the
//! next 4; bit 1: use a fixed trusted peer instead); the rest is XFF values split on `\n`.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::client_ip::client_ip;

fuzz_target!(|data: &[u8]| {
    let settings = &portcullis_fuzz::fixture().snap.settings;
    let Some((&mode, rest)) = data.split_first() else { return };
    let (peer, rest): (IpAddr, &[u8]) = if mode & 2 != 0 {
        let peer = if mode & 1 != 0 { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)) };
        (peer, rest)
    } else if mode & 1 != 0 {
        let Some(b) = rest.get(..16) else { return };
        let a: [u8; 16] = b.try_into().unwrap_or_default();
        (IpAddr::V6(Ipv6Addr::from(a)), &rest[16..])
    } else {
        let Some(b) = rest.get(..4) else { return };
        let a: [u8; 4] = b.try_into().unwrap_or_default();
        (IpAddr::V4(Ipv4Addr::from(a)), &rest[4..])
    };
    let values: Vec<&[u8]> = if rest.is_empty() { Vec::new() } else { rest.split(|b| *b == b'\n').collect() };
    let got = client_ip(peer, values.iter().copied(), settings);
    let canon = peer.to_canonical();
    if !settings.is_trusted_proxy(canon) {
        assert_eq!(got, canon, "an untrusted peer's XFF was believed");
    }
    // The answer is the peer or the (canonical) address of one entry of the header.
    if got != canon {
        let written = values
            .iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .filter_map(|e| std::str::from_utf8(e).ok())
            .map(str::trim)
            .filter_map(|s| {
                s.parse::<IpAddr>()
                    .ok()
                    .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
                    .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
            })
            .any(|ip| ip.to_canonical() == got);
        assert!(written, "client {got} is neither the peer nor an entry of {values:?}");
    }
});

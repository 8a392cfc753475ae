//! Where a connection comes from, for the limits that count per address (registrations).
//!
//! The address is the TCP peer's, unless that peer is a proxy the operator named
//! (`--trusted-proxy`): then it is the nearest address in `X-Forwarded-For` that is not itself
//! a trusted proxy. Entries further left are whatever the client wrote and are never read.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;

/// The client's address: the TCP peer, or what the trusted proxies in front of us say.
pub(crate) fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpAddr],
) -> Option<IpAddr> {
    let mut nearest = canonical(peer?.ip());
    if !trusted_proxies.contains(&nearest) {
        return Some(nearest);
    }
    // Each proxy appends the address it saw, so the list is read from the right. Several
    // header lines are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        // A hop that does not parse was not written by a proxy we trust: stop at the last
        // address one of them vouched for.
        let Some(address) = parse_hop(hop) else { break };
        nearest = canonical(address);
        if !trusted_proxies.contains(&nearest) {
            break;
        }
    }
    Some(nearest)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
}

/// An IPv4 address seen through an IPv6 socket is the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        IpAddr::V4(_) => address,
    }
}

/// What a per-address limit counts by: an IPv4 address, or an IPv6 address's /64 (one
/// subscriber usually holds a whole /64, and could otherwise take a fresh address per try).
pub(crate) fn limit_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip(text), 40_000))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claims = headers(&["203.0.113.9"]);
        assert_eq!(client_address(peer("198.51.100.7"), &claims, &[]), Some(ip("198.51.100.7")));
        let trusted = [ip("127.0.0.1")];
        assert_eq!(
            client_address(peer("198.51.100.7"), &claims, &trusted),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(client_address(None, &claims, &trusted), None);
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_counts() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.2")];
        // The client forged the leftmost entry; our two proxies appended the rest.
        let chain = headers(&["6.6.6.6, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(client_address(peer("127.0.0.1"), &chain, &trusted), Some(ip("198.51.100.7")));
        // Ports, brackets and an IPv4 peer seen as an IPv4-mapped IPv6 address.
        let chain = headers(&["[2001:db8::5]:443"]);
        assert_eq!(
            client_address(peer("::ffff:127.0.0.1"), &chain, &trusted),
            Some(ip("2001:db8::5"))
        );
        let chain = headers(&["198.51.100.7:5000"]);
        assert_eq!(client_address(peer("127.0.0.1"), &chain, &trusted), Some(ip("198.51.100.7")));
        // No header, or a hop that is not an address: the last address a trusted proxy gave.
        assert_eq!(
            client_address(peer("127.0.0.1"), &headers(&[]), &trusted),
            Some(ip("127.0.0.1"))
        );
        let chain = headers(&["198.51.100.7, unknown, 10.0.0.2"]);
        assert_eq!(client_address(peer("127.0.0.1"), &chain, &trusted), Some(ip("10.0.0.2")));
    }

    #[test]
    fn limits_count_ipv6_by_its_64() {
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(limit_key(ip("198.51.100.7")), ip("198.51.100.7"));
    }
}

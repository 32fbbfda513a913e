//! Who a request comes from, for the per-client limits: the one rule, in one place.
//!
//! The client is the TCP peer, unless that peer is one of `trusted_proxies`: then it is the
//! rightmost address of `X-Forwarded-For` that is not itself a trusted proxy. Entries left of
//! that one were written by the client, or by proxies nobody vouches for, so they are never
//! believed: a forged `X-Forwarded-For: 1.2.3.4, <real address>` is charged to the real address.
//! Without trusted proxies the header is ignored altogether.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// The parsed `trusted_proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs such as `"10.0.0.0/8"`; a bare address counts as a single host.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "signpost.trusted_proxies: {text:?} is not a CIDR such as \"10.0.0.0/8\" or an address"
                        )
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client of a request that came from the TCP peer `peer` with these
    /// `X-Forwarded-For` header values, in the order they appear.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        let mut client = canonical(peer);
        // Right to left, each hop added by the one after it: keep walking while the hop that
        // wrote an entry is trusted. An entry that is not an address ends the walk, at the last
        // hop that is known.
        let entries = forwarded_for.rev().flat_map(|value| value.rsplit(','));
        for entry in entries {
            if !self.trusts(client) {
                break;
            }
            match parse_entry(entry) {
                Some(address) => client = canonical(address),
                None => break,
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; they are the same client
/// as `a.b.c.d`.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client's limits are kept under: its IPv4 address, or its IPv6 /64. One IPv6
/// subscriber is given at least a /64 and can use any address in it, so counting single IPv6
/// addresses would let one client be billions.
pub fn limit_key(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Without trusted proxies the header changes nothing.
    #[test]
    fn an_untrusted_peer_is_the_client() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(ip("203.0.113.9"), ["198.51.100.1"].into_iter()),
            ip("203.0.113.9")
        );
    }

    /// Behind a trusted proxy, the rightmost untrusted entry is the client, whatever the client
    /// wrote to the left of it; all headers count, in order.
    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let trusted = TrustedProxies::parse(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).unwrap();
        let client = trusted.client_address(
            ip("127.0.0.1"),
            ["6.6.6.6, 198.51.100.7", "10.1.2.3"].into_iter(),
        );
        assert_eq!(client, ip("198.51.100.7"));
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), [].into_iter()),
            ip("127.0.0.1"),
            "no header: the proxy itself"
        );
        assert_eq!(
            trusted.client_address(ip("127.0.0.1"), ["6.6.6.6, garbage"].into_iter()),
            ip("127.0.0.1"),
            "an entry that is not an address stops the walk"
        );
        assert_eq!(
            trusted.client_address(ip("::ffff:127.0.0.1"), ["[2001:db8::1]:443"].into_iter()),
            ip("2001:db8::1")
        );
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    /// An IPv6 client is limited by its /64; IPv4, by its address.
    #[test]
    fn limit_keys_group_ipv6_by_64() {
        assert_eq!(
            limit_key(ip("2001:db8::1")),
            limit_key(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            limit_key(ip("2001:db8::1")),
            limit_key(ip("2001:db8:0:1::1"))
        );
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}

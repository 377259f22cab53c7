//! Who is asking: the address a request is counted under by the per-address limits, the
//! login throttle and the operators' bot-farm signals.
//!
//! The immediate peer (Spin's `spin-client-addr`) is the client unless it is one of the
//! operator's `trusted_proxies`; only then do `Forwarded` / `X-Forwarded-For` count, read
//! from the right (the hop nearest to us) past every trusted proxy. A header from anyone
//! else is ignored whole: it costs a bot nothing to write one.
//!
//! An IPv6 client is counted by its /64: one subscriber line gets a /64 (or more) and can
//! pick any address inside it, so counting single addresses would count nothing.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A network in CIDR notation: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits >> (width - prefix)
    }
}

/// An IPv4 address written as IPv6 (`::ffff:1.2.3.4`, as a dual-stack listener reports
/// it) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `trusted_proxies` variable: a comma-separated CIDR list; empty trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Cidr::parse(t).ok_or_else(|| format!("trusted_proxies: {t:?} is not a CIDR")))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// The address a request is counted under: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn of(ip: IpAddr) -> ClientAddr {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                ClientAddr(IpAddr::V6(Ipv6Addr::from(net)))
            }
            v4 => ClientAddr(v4),
        }
    }

    /// The client of a request, from the peer Spin reports and the forwarding headers (all
    /// lines of each joined with `,`). `None` when the host named no peer.
    pub fn resolve(
        peer: Option<&str>,
        forwarded: Option<&str>,
        x_forwarded_for: Option<&str>,
        trusted: &TrustedProxies,
    ) -> Option<ClientAddr> {
        let mut client = parse_host(peer?)?;
        if !trusted.contains(client) {
            return Some(ClientAddr::of(client));
        }
        // RFC 7239 says more than X-Forwarded-For (ports, obfuscation); a proxy that writes
        // it is the one to believe.
        let chain: Vec<&str> = match forwarded.map(forwarded_for).filter(|c| !c.is_empty()) {
            Some(chain) => chain,
            None => x_forwarded_for
                .map(|h| h.split(',').map(str::trim).collect())
                .unwrap_or_default(),
        };
        for hop in chain.iter().rev() {
            // "unknown", an obfuscated name or garbage: nobody beyond this hop can be
            // named, so the last proxy we trust is who we count.
            let Some(ip) = parse_host(hop) else { break };
            client = ip;
            if !trusted.contains(ip) {
                break;
            }
        }
        Some(ClientAddr::of(client))
    }

    /// A stable, non-reversible name for storing and showing to operators: the addresses
    /// behind it are personal data and an operator needs to group requests, not to read
    /// them. Keyed with a server secret so a table of every IPv4 hash cannot be built.
    pub fn hashed(&self, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"flashclaim client address v1\0");
        mac.update(self.to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How flashclaim stores and counts a client: its keyed hash ([`ClientAddr::hashed`]), or ""
/// when the host named no peer (such requests share every counter rather than escape it).
pub fn stored(addr: Option<ClientAddr>, secret: &[u8]) -> String {
    addr.map_or_else(String::new, |a| a.hashed(secret))
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// An address as peers and proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_host(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// The `for=` values of a `Forwarded` header, in order (quotes kept off).
fn forwarded_for(header: &str) -> Vec<&str> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"'))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn resolve(peer: &str, fwd: Option<&str>, xff: Option<&str>, list: &str) -> String {
        ClientAddr::resolve(Some(peer), fwd, xff, &trusted(list))
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            resolve("203.0.113.9:5555", Some("for=1.1.1.1"), Some("1.1.1.1"), ""),
            "203.0.113.9"
        );
        assert_eq!(
            resolve("203.0.113.9:5555", None, Some("1.1.1.1"), "10.0.0.0/8"),
            "203.0.113.9"
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_in_x_forwarded_for() {
        assert_eq!(
            resolve("10.0.0.2:40000", None, Some("198.51.100.7"), "10.0.0.0/8"),
            "198.51.100.7"
        );
    }

    #[test]
    fn a_forged_left_part_of_x_forwarded_for_is_not_believed() {
        // The client wrote "1.1.1.1" itself; our proxy appended the address it saw.
        assert_eq!(
            resolve(
                "10.0.0.2:1",
                None,
                Some("1.1.1.1, 198.51.100.7"),
                "10.0.0.0/8"
            ),
            "198.51.100.7"
        );
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_from_the_right() {
        assert_eq!(
            resolve(
                "10.0.0.2:1",
                None,
                Some("198.51.100.7, 10.1.1.1, 172.16.0.5"),
                "10.0.0.0/8, 172.16.0.0/12"
            ),
            "198.51.100.7"
        );
    }

    #[test]
    fn forwarded_is_preferred_to_x_forwarded_for_and_its_quoting_is_understood() {
        assert_eq!(
            resolve(
                "10.0.0.2:1",
                Some("for=192.0.2.43;proto=https, for=\"[2001:db8:cafe::17]:4711\""),
                Some("9.9.9.9"),
                "10.0.0.0/8"
            ),
            "2001:db8:cafe::/64"
        );
    }

    #[test]
    fn an_unknown_hop_stops_the_walk_at_the_last_trusted_proxy() {
        assert_eq!(
            resolve("10.0.0.2:1", Some("for=unknown"), None, "10.0.0.0/8"),
            "10.0.0.2"
        );
        assert_eq!(
            resolve(
                "10.0.0.2:1",
                None,
                Some("198.51.100.7, garbage"),
                "10.0.0.0/8"
            ),
            "10.0.0.2"
        );
    }

    #[test]
    fn a_trusted_proxy_without_forwarding_headers_is_itself_the_client() {
        assert_eq!(resolve("10.0.0.2:1", None, None, "10.0.0.0/8"), "10.0.0.2");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_slash_64() {
        let a = resolve("[2001:db8:1:2:aaaa::1]:443", None, None, "");
        let b = resolve("[2001:db8:1:2:ffff:ffff:ffff:ffff]:443", None, None, "");
        let other = resolve("[2001:db8:1:3::1]:443", None, None, "");
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b);
        assert_ne!(a, other);
    }

    #[test]
    fn an_ipv4_mapped_ipv6_peer_is_its_ipv4_address() {
        assert_eq!(
            resolve("[::ffff:198.51.100.7]:80", None, None, ""),
            "198.51.100.7"
        );
        assert_eq!(
            resolve(
                "[::ffff:10.0.0.2]:80",
                None,
                Some("198.51.100.8"),
                "10.0.0.0/8"
            ),
            "198.51.100.8"
        );
    }

    #[test]
    fn no_peer_means_no_address() {
        assert_eq!(
            ClientAddr::resolve(None, None, Some("1.2.3.4"), &trusted("0.0.0.0/0")),
            None
        );
    }

    #[test]
    fn trusted_proxies_refuses_what_is_not_a_cidr() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "::/129",
            "x",
            "10.0.0.0/",
            "10.0.0.0/-1",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            TrustedProxies::parse(" ").unwrap(),
            TrustedProxies::default()
        );
        let t = trusted("0.0.0.0/0");
        assert!(t.contains("8.8.8.8".parse().unwrap()));
        assert!(!t.contains("::1".parse().unwrap()));
    }

    #[test]
    fn the_stored_name_is_stable_keyed_and_says_nothing_of_the_address() {
        let a = ClientAddr::of("198.51.100.7".parse().unwrap());
        let h = a.hashed(b"secret");
        assert_eq!(h, a.hashed(b"secret"));
        assert_ne!(h, a.hashed(b"other secret"));
        assert_eq!(h.len(), 24);
        assert!(!h.contains("198"));
        let v6a = ClientAddr::of("2001:db8::1".parse().unwrap());
        let v6b = ClientAddr::of("2001:db8::2".parse().unwrap());
        assert_eq!(v6a.hashed(b"k"), v6b.hashed(b"k"));
    }
}

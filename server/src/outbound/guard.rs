//! Which addresses an outbound request may reach, checked where connections are made.
//!
//! Three checks together close the usual SSRF routes (DNS names pointing inside, DNS
//! rebinding, redirects, IP literals in their many spellings):
//!
//! - [`GuardedResolver`] is the client's DNS resolver. It drops disallowed addresses from every
//!   lookup, so the address that is checked is the address that is connected to: a name that
//!   answers "public" to a first lookup and "127.0.0.1" to the next (DNS rebinding) gains
//!   nothing, because there is no second lookup outside the resolver.
//! - reqwest connects to IP-literal hosts without calling the resolver, so [`check_target`]
//!   checks them before each request, and [`check_hop`] before each redirect is followed. The
//!   `url` crate has already normalised the odd spellings (`http://0x7f.1/`, `http://2130706433/`
//!   are `127.0.0.1` by then).
//! - [`blocked_range`] is the one list of what counts as internal, for both.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Why a URL, or the address it leads to, is refused. Travels through reqwest's error chain
/// (as the resolver's or the redirect policy's error) and is turned into an
/// [`super::OutboundError`] on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The scheme is not http or https.
    NotHttp { scheme: String },
    /// The URL has no host (`http:///x` parses, with an empty host, in some spellings).
    NoHost,
    /// The URL carries a user name or password.
    UserInfo,
    /// The host is, or resolves only to, an address in an internal range.
    Blocked { ip: IpAddr, range: &'static str },
    /// Following this redirect would exceed the limit.
    TooManyRedirects { max: usize },
    /// A redirect target was refused.
    Redirect { to: Url, refusal: Box<Refusal> },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotHttp { scheme } => write!(f, "scheme {scheme} is not http or https"),
            Refusal::NoHost => f.write_str("the URL has no host"),
            Refusal::UserInfo => f.write_str("the URL carries a user name or password"),
            Refusal::Blocked { ip, range } => write!(f, "{ip} is a {range} address"),
            Refusal::TooManyRedirects { max } => write!(f, "more than {max} redirects"),
            Refusal::Redirect { to, refusal } => write!(f, "redirect to {to}: {refusal}"),
        }
    }
}

impl Error for Refusal {}

/// The internal range `ip` falls in, named for an error message; `None` for an address
/// on the public internet.
///
/// IPv4: everything IANA lists as not globally reachable, plus multicast. IPv6: only global
/// unicast (2000::/3) passes, minus its documentation and protocol-assignment blocks; the
/// forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by that
/// address, since that is where the packets go.
pub(crate) fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => blocked_v4(ip),
        IpAddr::V6(ip) => blocked_v6(ip),
    }
}

/// IPv4 ranges that are not the public internet (IANA special-purpose registry).
const V4_BLOCKED: &[(u32, u8, &str)] = &[
    (0x0000_0000, 8, "\"this network\" (0.0.0.0/8)"),
    (0x0a00_0000, 8, "private (10/8)"),
    (0x6440_0000, 10, "shared CGNAT (100.64/10)"),
    (0x7f00_0000, 8, "loopback"),
    (0xa9fe_0000, 16, "link-local (169.254/16)"),
    (0xac10_0000, 12, "private (172.16/12)"),
    (0xc000_0000, 24, "IETF protocol (192.0.0/24)"),
    (0xc000_0200, 24, "documentation"),
    (0xc058_6300, 24, "6to4 relay"),
    (0xc0a8_0000, 16, "private (192.168/16)"),
    (0xc612_0000, 15, "benchmarking"),
    (0xc633_6400, 24, "documentation"),
    (0xcb00_7100, 24, "documentation"),
    (0xe000_0000, 4, "multicast"),
    (0xffff_ffff, 32, "broadcast"),
    (0xf000_0000, 4, "reserved (240/4)"),
];

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_BLOCKED
        .iter()
        .find(|&&(net, len, _)| bits >> (32 - len) == net >> (32 - len))
        .map(|&(_, _, range)| range)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let prefix = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated) reach a.b.c.d.
    if prefix(0xffff_0000_0000, 96) || prefix(0, 96) {
        return blocked_v4(low_v4);
    }
    // NAT64 (64:ff9b::/96) reaches the embedded address through the local gateway.
    if prefix(0x0064_ff9b << 96, 96) {
        return blocked_v4(low_v4);
    }
    // 6to4 (2002::/16) carries the relay's IPv4 address in bits 16..48.
    if prefix(0x2002 << 112, 16) {
        return blocked_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    if prefix(0xfc00 << 112, 7) {
        return Some("unique local (fc00::/7)");
    }
    if prefix(0xfe80 << 112, 10) {
        return Some("link-local (fe80::/10)");
    }
    if prefix(0xff00 << 112, 8) {
        return Some("multicast");
    }
    if !prefix(0x2000 << 112, 3) {
        // Outside global unicast: site-local fec0::/10, discard 100::/64, NAT64 local-use
        // 64:ff9b:1::/48, SRv6 5f00::/16 and whatever is assigned there later.
        return Some("reserved IPv6");
    }
    if prefix(0x2001_0db8 << 96, 32) || prefix(0x3fff << 112, 20) {
        return Some("documentation");
    }
    // 2001::/23 holds Teredo, benchmarking, ORCHID and other protocol assignments.
    if prefix(0x2001 << 112, 23) {
        return Some("IETF protocol (2001::/23)");
    }
    None
}

/// Checks what can be checked without a DNS lookup: scheme http or https, a host, no user
/// name or password, and, for an IP-literal host, its range unless `allow_private`.
pub(crate) fn check_target(url: &Url, allow_private: bool) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::NotHttp {
            scheme: url.scheme().to_owned(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::UserInfo);
    }
    let ip = match url.host() {
        None => return Err(Refusal::NoHost),
        Some(Host::Domain("")) => return Err(Refusal::NoHost),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    match blocked_range(ip) {
        Some(range) if !allow_private => Err(Refusal::Blocked { ip, range }),
        _ => Ok(()),
    }
}

/// Decides whether to follow a redirect to `next`, given reqwest's `previous` URLs (the
/// original request and the redirects already followed): at most `max` redirects, and the
/// target must pass [`check_target`]. Its host name, if any, is checked by the resolver when
/// the connection is made.
pub(crate) fn check_hop(
    next: &Url,
    previous: usize,
    max: usize,
    allow_private: bool,
) -> Result<(), Refusal> {
    if previous > max {
        return Err(Refusal::TooManyRedirects { max });
    }
    check_target(next, allow_private).map_err(|refusal| Refusal::Redirect {
        to: next.clone(),
        refusal: Box::new(refusal),
    })
}

/// The client's DNS resolver: the system resolver (through tokio), minus the addresses
/// [`blocked_range`] refuses. A name with nothing left fails with [`Refusal::Blocked`] for
/// the first refused address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow_private {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match blocked_range(addr.ip()) {
                    None => true,
                    Some(range) => {
                        refused.get_or_insert(Refusal::Blocked {
                            ip: addr.ip(),
                            range,
                        });
                        false
                    }
                })
                .collect();
            match refused {
                Some(refusal) if allowed.is_empty() => Err(refusal.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One named test per address: `blocked!(name, "ip", true_if_blocked)`.
    macro_rules! blocked {
        ($name:ident, $ip:literal, $blocked:literal) => {
            #[test]
            fn $name() {
                let ip: IpAddr = $ip.parse().unwrap();
                assert_eq!(
                    blocked_range(ip).is_some(),
                    $blocked,
                    "{ip}: {:?}",
                    blocked_range(ip)
                );
            }
        };
    }

    blocked!(v4_loopback, "127.0.0.1", true);
    blocked!(v4_loopback_high, "127.255.255.254", true);
    blocked!(v4_this_network, "0.0.0.0", true);
    blocked!(v4_this_network_other, "0.1.2.3", true);
    blocked!(v4_private_10, "10.1.2.3", true);
    blocked!(v4_private_172_low, "172.16.0.1", true);
    blocked!(v4_private_172_high, "172.31.255.255", true);
    blocked!(v4_public_172_32, "172.32.0.1", false);
    blocked!(v4_private_192_168, "192.168.1.1", true);
    blocked!(v4_public_192_169, "192.169.0.1", false);
    blocked!(v4_cgnat_low, "100.64.0.1", true);
    blocked!(v4_cgnat_high, "100.127.255.255", true);
    blocked!(v4_public_100_128, "100.128.0.1", false);
    blocked!(v4_metadata, "169.254.169.254", true);
    blocked!(v4_ietf, "192.0.0.8", true);
    blocked!(v4_documentation, "203.0.113.7", true);
    blocked!(v4_benchmarking, "198.19.0.1", true);
    blocked!(v4_multicast, "224.0.0.1", true);
    blocked!(v4_reserved, "240.0.0.1", true);
    blocked!(v4_broadcast, "255.255.255.255", true);
    blocked!(v4_public_dns, "8.8.8.8", false);
    blocked!(v4_public_one, "1.1.1.1", false);
    blocked!(v6_unspecified, "::", true);
    blocked!(v6_loopback, "::1", true);
    blocked!(v6_mapped_loopback, "::ffff:127.0.0.1", true);
    blocked!(v6_mapped_private, "::ffff:10.0.0.1", true);
    blocked!(v6_mapped_metadata, "::ffff:169.254.169.254", true);
    blocked!(v6_mapped_public, "::ffff:8.8.8.8", false);
    blocked!(v6_compatible_loopback, "::127.0.0.1", true);
    blocked!(v6_nat64_loopback, "64:ff9b::7f00:1", true);
    blocked!(v6_nat64_public, "64:ff9b::808:808", false);
    blocked!(v6_6to4_private, "2002:c0a8:101::1", true);
    blocked!(v6_6to4_public, "2002:808:808::1", false);
    blocked!(v6_ula, "fd12:3456::1", true);
    blocked!(v6_ula_fc, "fc00::1", true);
    blocked!(v6_link_local, "fe80::1", true);
    blocked!(v6_site_local, "fec0::1", true);
    blocked!(v6_multicast, "ff02::1", true);
    blocked!(v6_discard, "100::1", true);
    blocked!(v6_documentation, "2001:db8::1", true);
    blocked!(v6_teredo, "2001::1", true);
    blocked!(v6_public_cloudflare, "2606:4700:4700::1111", false);
    blocked!(v6_public_google, "2001:4860:4860::8888", false);

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn literal_spellings_are_normalised_before_the_check() {
        for s in [
            "http://127.1/",
            "http://0x7f.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0/",
        ] {
            assert!(
                matches!(check_target(&url(s), false), Err(Refusal::Blocked { .. })),
                "{s}"
            );
            assert_eq!(check_target(&url(s), true), Ok(()), "{s}");
        }
    }

    #[test]
    fn target_rules() {
        assert_eq!(
            check_target(&url("https://example.com/a.png"), false),
            Ok(())
        );
        assert_eq!(check_target(&url("http://8.8.8.8/a.png"), false), Ok(()));
        assert_eq!(
            check_target(&url("ftp://example.com/a.png"), true),
            Err(Refusal::NotHttp {
                scheme: "ftp".into()
            })
        );
        assert_eq!(
            check_target(&url("file:///etc/passwd"), true),
            Err(Refusal::NotHttp {
                scheme: "file".into()
            })
        );
        assert_eq!(
            check_target(&url("http://user:pw@example.com/"), true),
            Err(Refusal::UserInfo)
        );
    }

    #[test]
    fn hop_to_loopback_is_refused() {
        let next = url("http://127.0.0.1:8080/internal");
        assert_eq!(
            check_hop(&next, 1, 5, false),
            Err(Refusal::Redirect {
                to: next.clone(),
                refusal: Box::new(Refusal::Blocked {
                    ip: "127.0.0.1".parse().unwrap(),
                    range: "loopback"
                })
            })
        );
        assert_eq!(check_hop(&next, 1, 5, true), Ok(()));
    }

    #[test]
    fn hop_to_mapped_v6_loopback_and_other_schemes_are_refused() {
        assert!(check_hop(&url("http://[::ffff:127.0.0.1]/"), 1, 5, false).is_err());
        assert!(check_hop(&url("file:///etc/passwd"), 1, 5, true).is_err());
        assert_eq!(check_hop(&url("https://example.com/"), 1, 5, false), Ok(()));
    }

    #[test]
    fn hop_count_is_limited() {
        let next = url("https://example.com/");
        // `previous` holds the original URL too: the 5th redirect sees 5 of them.
        assert_eq!(check_hop(&next, 5, 5, false), Ok(()));
        assert_eq!(
            check_hop(&next, 6, 5, false),
            Err(Refusal::TooManyRedirects { max: 5 })
        );
        assert_eq!(
            check_hop(&next, 1, 0, false),
            Err(Refusal::TooManyRedirects { max: 0 })
        );
    }

    #[tokio::test]
    async fn resolver_drops_loopback() {
        let name: Name = "localhost".parse().unwrap();
        let err = match (GuardedResolver {
            allow_private: false,
        })
        .resolve(name)
        .await
        {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(err) => err,
        };
        let refusal = err.downcast_ref::<Refusal>().expect("a Refusal");
        assert!(
            matches!(
                refusal,
                Refusal::Blocked {
                    range: "loopback",
                    ..
                }
            ),
            "{refusal}"
        );

        let name: Name = "localhost".parse().unwrap();
        let addrs = (GuardedResolver {
            allow_private: true,
        })
        .resolve(name)
        .await
        .unwrap();
        assert!(addrs.into_iter().all(|addr| addr.ip().is_loopback()));
    }
}

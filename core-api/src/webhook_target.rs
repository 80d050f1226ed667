//! Which hosts webhooks may reach: public addresses only, so that a tenant cannot make
//! core-api send requests into the deployment's own network (SSRF).
//!
//! Refused: private, loopback, link-local (with the cloud metadata address
//! 169.254.169.254), unspecified, broadcast, multicast, shared (CGNAT, with
//! 100.100.100.200), documentation and reserved IPv4 ranges; IPv6 loopback, unspecified,
//! multicast, unique-local (with fd00:ec2::254), link- and site-local, documentation, and
//! the IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of refused IPv4 addresses.
//! `WEBHOOK_ALLOW_PRIVATE=true` (development) lifts all of it.
//!
//! Checked twice: when a webhook is created (`http::webhooks`, a literal address or a
//! name that resolves to a refused address is a 400) and at every delivery
//! (`crate::webhooks`): a literal address is checked before the request, a name is
//! resolved by [`PublicResolver`], which refuses the whole name if any of its addresses
//! is refused and hands the checked addresses to the HTTP client, which connects to
//! them without resolving again. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Longest wait for a name's addresses when a webhook is created.
pub const CREATE_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{host} is {addr}, which is not a public address")]
    NotPublic { host: String, addr: IpAddr },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

/// Whether webhooks may reach `ip` (see the module's list).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    let embedded_last =
        || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-compatible (deprecated) ::a.b.c.d.
    if s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(embedded_last());
    }
    // NAT64 64:ff9b::a.b.c.d.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_last());
    }
    // 6to4 2002:aabb:ccdd::.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
}

/// Refuses every address of `host` unless all are public.
fn check_all(host: &str, addrs: &[SocketAddr]) -> Result<(), TargetError> {
    match addrs.iter().find(|a| !is_public(a.ip())) {
        Some(a) => Err(TargetError::NotPublic {
            host: host.to_owned(),
            addr: a.ip(),
        }),
        None => Ok(()),
    }
}

/// Checks a URL's host when it is a literal address; a name is left to resolution.
pub fn check_literal(url: &Url) -> Result<(), TargetError> {
    let Some(ip) = literal_ip(url) else {
        return Ok(());
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(TargetError::NotPublic {
            host: ip.to_string(),
            addr: ip,
        })
    }
}

/// The URL's host when it is an address (IPv6 between brackets), not a name.
fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// The creation check: a literal address must be public, and so must every address a
/// name resolves to now. A name that does not resolve (yet) is accepted: every delivery
/// checks again.
pub async fn check_at_creation(url: &Url) -> Result<(), TargetError> {
    check_literal(url)?;
    let Some(host) = url.host_str().filter(|_| literal_ip(url).is_none()) else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(CREATE_RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => check_all(host, &addrs.collect::<Vec<_>>()),
        Ok(Err(_)) | Err(_) => Ok(()),
    }
}

/// The HTTP client's resolver for webhook deliveries: resolves once, refuses the name
/// unless every address is public, and returns the addresses it checked (the client
/// connects to those, with no second resolution).
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| TargetError::Resolve {
                    host: host.clone(),
                    reason: e.to_string(),
                })?
                .collect();
            check_all(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn refused_ranges() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "100.100.100.200",
            "::1",
            "::",
            "ff02::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!public(bad), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(public(good), "{good} is public");
        }
    }

    #[test]
    fn literal_hosts() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(check_literal(&url("http://127.0.0.1:9000/x")).is_err());
        assert!(check_literal(&url("http://[::ffff:7f00:1]/x")).is_err());
        // WHATWG parsing turns these spellings into 127.0.0.1 first.
        assert!(check_literal(&url("http://2130706433/x")).is_err());
        assert!(check_literal(&url("http://0x7f.1/x")).is_err());
        assert!(check_literal(&url("https://1.1.1.1/x")).is_ok());
        assert!(check_literal(&url("https://hooks.example.com/x")).is_ok());
    }
}

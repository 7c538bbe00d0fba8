//! The SSRF guard on its own: which addresses are refused, the `allow_hosts` list that lets
//! some through, the check of one URL, and the resolver the HTTP client connects through.
//!
//! The guard refuses hosts that are, or resolve to, loopback, private, link-local,
//! unique-local, CGNAT, unspecified, broadcast, multicast, documentation, benchmarking or
//! reserved addresses, IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64, 6to4), and the
//! cloud metadata addresses, unless the host is listed in `allow_hosts`. The fetcher applies
//! [`Guard::check`] to the URL and to every redirect hop, and the HTTP client resolves names
//! through [`GuardedResolver`], so the addresses actually connected to are the ones checked (no
//! DNS-rebinding window between check and connect).
//!
//! It is separate so the security policy can be read and reviewed without the transfer code.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::error::{FetchError, shown};

/// The SSRF guard of one fetcher. Cloning is cheap; clones share the allow list.
#[derive(Debug, Clone)]
pub(super) struct Guard {
    allow: Arc<AllowList>,
}

impl Guard {
    /// A guard that lets the hosts of `allow_hosts` through (see
    /// [`FetchSettings::allow_hosts`](super::FetchSettings::allow_hosts)).
    pub(super) fn new(allow_hosts: &[String]) -> Guard {
        Guard {
            allow: Arc::new(AllowList::parse(allow_hosts)),
        }
    }

    /// The resolver for the HTTP client: refuses names that resolve to refused addresses.
    pub(super) fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            allow: self.allow.clone(),
        })
    }

    /// The SSRF check of one URL: allow-listed hosts pass; IP literals are checked as they
    /// are; names are resolved and every address checked.
    pub(super) async fn check(&self, url: &Url) -> Result<(), Blocked> {
        let Some(host) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        if self.allow.allows(&host, port) {
            return Ok(());
        }
        let host_text = host_text(&host);
        match host {
            Host::Ipv4(ip) => check_addrs(&host_text, [IpAddr::V4(ip)]),
            Host::Ipv6(ip) => check_addrs(&host_text, [IpAddr::V6(ip)]),
            Host::Domain(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name, port))
                    .await
                    .map_err(|e| Blocked::Resolve {
                        host: host_text.clone(),
                        detail: e.to_string(),
                    })?
                    .map(|a| a.ip())
                    .collect();
                if addrs.is_empty() {
                    return Err(Blocked::Resolve {
                        host: host_text,
                        detail: "no addresses".to_owned(),
                    });
                }
                check_addrs(&host_text, addrs)
            }
        }
    }
}

/// Why the guard refused a URL.
#[derive(Debug)]
pub(super) enum Blocked {
    /// A refused address.
    Address {
        /// The host as written in the URL.
        host: String,
        /// The refused address.
        addr: IpAddr,
        /// e.g. "10.0.0.1 is a private address".
        detail: String,
    },
    /// The name did not resolve.
    Resolve {
        /// The host as written in the URL.
        host: String,
        /// The resolver's error.
        detail: String,
    },
}

impl Blocked {
    /// The error for fetching `url` (refused address: `PrivateAddress`; no address:
    /// `Unreachable`).
    pub(super) fn into_error(self, url: &Url) -> FetchError {
        match self {
            Blocked::Address { host, addr, detail } => FetchError::PrivateAddress {
                url: shown(url),
                host,
                addr,
                detail,
            },
            Blocked::Resolve { host, detail } => FetchError::Unreachable {
                url: shown(url),
                detail: format!("cannot resolve {host}: {detail}"),
            },
        }
    }
}

/// Refuses the first address of `addrs` the guard refuses; `host` is named in the detail.
fn check_addrs(host: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), Blocked> {
    for addr in addrs {
        if let Some(reason) = blocked_reason(addr) {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let detail = if literal.parse::<IpAddr>() == Ok(addr) {
                format!("{addr} is {reason}")
            } else {
                format!("{host} resolves to {addr}, {reason}")
            };
            return Err(Blocked::Address {
                host: host.to_owned(),
                addr,
                detail,
            });
        }
    }
    Ok(())
}

/// The error the resolver returns for a refused address; found again in the error chain.
#[derive(Debug)]
struct BlockedByResolver {
    host: String,
    addr: IpAddr,
    detail: String,
}

impl fmt::Display for BlockedByResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for BlockedByResolver {}

/// The `PrivateAddress` error for `url` when `err` (a client error) was caused by the
/// resolver refusing an address.
pub(super) fn refused_by_resolver(
    err: &(dyn std::error::Error + 'static),
    url: &Url,
) -> Option<FetchError> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(b) = e.downcast_ref::<BlockedByResolver>() {
            return Some(FetchError::PrivateAddress {
                url: shown(url),
                host: b.host.clone(),
                addr: b.addr,
                detail: b.detail.clone(),
            });
        }
        source = e.source();
    }
    None
}

/// The HTTP client's resolver: resolves with the system resolver, then refuses names whose
/// addresses the guard refuses (unless the name is allow-listed).
pub(super) struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow.allows_name(&host)
                && let Err(Blocked::Address { host, addr, detail }) =
                    check_addrs(&host, addrs.iter().map(SocketAddr::ip))
            {
                return Err(Box::new(BlockedByResolver { host, addr, detail }) as _);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Why an address is refused, as "a … address", or `None` when it is a public address.
fn blocked_reason(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let reason = if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "a cloud metadata address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_broadcast() {
        "a broadcast address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_private() {
        "a private address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "a carrier-grade NAT (shared) address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else if ip.is_documentation() {
        "a documentation address"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "a benchmarking address"
    } else if o[0] == 0 || (o[0] == 192 && o[1] == 0 && o[2] == 0) || o[0] >= 240 {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return blocked_v4(v4);
    }
    let reason = if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        "a cloud metadata address"
    } else if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if s[..6] == [0; 6] {
        // IPv4-compatible (deprecated): judge the embedded IPv4 address.
        return blocked_v4(embedded(s[6], s[7])).or(Some("a reserved address"));
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: reaches the embedded IPv4 address.
        return blocked_v4(embedded(s[6], s[7]));
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address is in the second and third segments.
        return blocked_v4(embedded(s[1], s[2]));
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a unique-local address"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "a link-local address"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "a site-local address"
    } else if (s[0] & 0xff00) == 0xff00 {
        "a multicast address"
    } else if (s[0] == 0x2001 && s[1] == 0xdb8) || (s[0] & 0xfff0) == 0x3ff0 {
        "a documentation address"
    } else if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || s[..4] == [0x100, 0, 0, 0] {
        "a reserved address"
    } else {
        return None;
    };
    Some(reason)
}

/// The parsed `allow_hosts`.
#[derive(Debug, Default)]
struct AllowList {
    entries: Vec<AllowEntry>,
}

#[derive(Debug, PartialEq)]
struct AllowEntry {
    host: AllowHost,
    port: Option<u16>,
}

#[derive(Debug, PartialEq)]
enum AllowHost {
    Ip(IpAddr),
    Name(String),
}

impl AllowList {
    fn parse(entries: &[String]) -> AllowList {
        AllowList {
            entries: entries
                .iter()
                .filter_map(|e| parse_allow_entry(e))
                .collect(),
        }
    }

    /// Whether `host` on `port` is allow-listed.
    fn allows(&self, host: &Host<&str>, port: u16) -> bool {
        self.entries.iter().any(|e| {
            let host_matches = match (&e.host, host) {
                (AllowHost::Ip(ip), Host::Ipv4(h)) => *ip == IpAddr::V4(*h),
                (AllowHost::Ip(ip), Host::Ipv6(h)) => *ip == IpAddr::V6(*h),
                (AllowHost::Name(name), Host::Domain(h)) => *name == normalize_name(h),
                _ => false,
            };
            host_matches && e.port.is_none_or(|p| p == port)
        })
    }

    /// Whether the name is allow-listed on some port (the resolver does not see the port;
    /// [`Guard::check`] checks it before).
    fn allows_name(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.entries.iter().any(|e| match &e.host {
            AllowHost::Name(n) => *n == name,
            AllowHost::Ip(ip) => name.parse::<IpAddr>() == Ok(*ip),
        })
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn parse_allow_entry(entry: &str) -> Option<AllowEntry> {
    let mut text = entry.trim().to_ascii_lowercase();
    if text.is_empty() {
        return None;
    }
    if text.contains("://")
        && let Ok(url) = Url::parse(&text)
        && let Some(host) = url.host_str()
    {
        text = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
    }
    let text = text.trim_end_matches('/');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(AllowEntry {
            host: AllowHost::Ip(ip),
            port: None,
        });
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(AllowEntry {
            host: AllowHost::Ip(sa.ip()),
            port: Some(sa.port()),
        });
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Some(AllowEntry {
            host: AllowHost::Ip(ip),
            port: None,
        });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port.parse::<u16>().ok()?)),
        _ => (text, None),
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => AllowHost::Ip(ip),
        Err(_) => AllowHost::Name(normalize_name(host)),
    };
    Some(AllowEntry { host, port })
}

/// The host as written in a URL (IPv6 in brackets).
fn host_text(host: &Host<&str>) -> String {
    match host {
        Host::Domain(d) => d.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => format!("[{ip}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_blocked_ranges() {
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ];
        for ip in blocked {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(blocked_reason(addr).is_some(), "{ip} should be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(blocked_reason(addr), None, "{ip} should be allowed");
        }
        assert_eq!(
            blocked_reason("169.254.169.254".parse().unwrap()),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn fetch_allow_list_parsing() {
        let list = AllowList::parse(&[
            "LocalHost".to_owned(),
            "comfy.internal:8188".to_owned(),
            "10.0.0.5".to_owned(),
            "[::1]:9000".to_owned(),
            "http://192.168.1.2:81/".to_owned(),
            "  ".to_owned(),
        ]);
        assert_eq!(list.entries.len(), 5);
        assert!(list.allows(&Host::Domain("localhost"), 1234));
        assert!(list.allows(&Host::Domain("comfy.internal"), 8188));
        assert!(!list.allows(&Host::Domain("comfy.internal"), 8189));
        assert!(list.allows(&Host::Ipv4("10.0.0.5".parse().unwrap()), 80));
        assert!(!list.allows(&Host::Ipv4("10.0.0.6".parse().unwrap()), 80));
        assert!(list.allows(&Host::Ipv6("::1".parse().unwrap()), 9000));
        assert!(!list.allows(&Host::Ipv6("::1".parse().unwrap()), 9001));
        assert!(list.allows(&Host::Ipv4("192.168.1.2".parse().unwrap()), 81));
        assert!(list.allows_name("LOCALHOST."));
        assert!(list.allows_name("comfy.internal"));
        assert!(!list.allows_name("example.com"));
    }
}

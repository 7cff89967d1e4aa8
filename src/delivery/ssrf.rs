//! The SSRF guard: a webhook URL may only lead to public addresses.
//!
//! Checked when a subscription is registered and again at every attempt. At
//! an attempt, the HTTP client resolves names only through
//! [`GuardedResolver`], which refuses the whole name if any address is not
//! public, so the connection goes to exactly the vetted addresses (no second
//! lookup an attacker could rebind). IP literals never reach a resolver, so
//! [`Guard::check_literal`] vets them before the request is made.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use url::{Host, Url};

/// Why a destination is refused. The text (`Display`) goes back to clients,
/// in 422 details and delivery logs, so it never names the address a host
/// resolved to: that would let a client map internal DNS. The address is
/// kept for the operator ([`Blocked::for_operator`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("only https URLs are allowed")]
    HttpsRequired,
    #[error("the URL has no host")]
    NoHost,
    #[error("resolves to a non-public address")]
    Address { ip: IpAddr, reason: &'static str },
    #[error("`{0}` names the local machine")]
    LocalName(String),
    #[error("the host `{host}` cannot be resolved: {message}")]
    Unresolvable { host: String, message: String },
    #[error("the host `{0}` resolves to no address")]
    NoAddresses(String),
}

impl Blocked {
    /// The refusal with the address and its range, for logs at debug level;
    /// never for a response.
    pub fn for_operator(&self) -> String {
        match self {
            Self::Address { ip, reason } => format!("{ip} is a {reason} address"),
            other => other.to_string(),
        }
    }
}

/// An IP network such as `127.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not a CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_match(a: u128, b: u128, prefix: u8) -> bool {
    prefix == 0 || (a ^ b) >> (128 - u32::from(prefix)) == 0
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    prefix_match(
        u128::from(u32::from(ip)) << 96,
        u128::from(u32::from(Ipv4Addr::from(net))) << 96,
        prefix,
    )
}

fn v6_in(ip: Ipv6Addr, net: [u16; 8], prefix: u8) -> bool {
    prefix_match(u128::from(ip), u128::from(Ipv6Addr::from(net)), prefix)
}

/// Why `ip` is not a public unicast address, or `None` if it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignment (192.0.0.0/24)",
        ),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        ([240, 0, 0, 0], 4, "reserved or broadcast (240.0.0.0/4)"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| v4_in(ip, *net, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    // Forms that carry an IPv4 address are judged by that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "IPv4-mapped non-public");
    }
    let segments = ip.segments();
    let embedded_v4 =
        |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if v6_in(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return v4_reason(embedded_v4(segments[6], segments[7])).map(|_| "NAT64 non-public");
    }
    if v6_in(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return v4_reason(embedded_v4(segments[1], segments[2])).map(|_| "6to4 non-public");
    }
    const RANGES: &[([u16; 8], u8, &str)] = &[
        ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified (::)"),
        ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback (::1)"),
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (::/96)"),
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            "local NAT64 (64:ff9b:1::/48)",
        ),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only (100::/64)"),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            23,
            "IETF protocol assignment (2001::/23)",
        ),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "documentation (2001:db8::/32)",
        ),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local (fc00::/7)"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local (fe80::/10)"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (fec0::/10)"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast (ff00::/8)"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| v6_in(ip, *net, *prefix))
        .map(|(_, _, reason)| *reason)
}

/// What destinations are allowed.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    /// Networks allowed even though not public (development and tests: loopback).
    pub allow: Vec<Cidr>,
    pub https_only: bool,
}

impl EgressPolicy {
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Blocked> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.allow.iter().any(|cidr| cidr.contains(ip)) {
            return Ok(());
        }
        match non_public_reason(ip) {
            Some(reason) => Err(Blocked::Address { ip, reason }),
            None => Ok(()),
        }
    }
}

type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name into addresses; swapped in tests.
pub trait Resolver: Send + Sync + fmt::Debug {
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver.
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// The policy plus the resolver it vets names with.
#[derive(Debug, Clone)]
pub struct Guard {
    policy: Arc<EgressPolicy>,
    resolver: Arc<dyn Resolver>,
}

/// Where a URL points, before any name is resolved.
enum Destination {
    Literal(IpAddr),
    Name(String),
}

impl Guard {
    pub fn new(policy: EgressPolicy, resolver: Arc<dyn Resolver>) -> Self {
        Self {
            policy: Arc::new(policy),
            resolver,
        }
    }

    fn destination(&self, url: &Url) -> Result<Destination, Blocked> {
        match url.scheme() {
            "https" => {}
            "http" if self.policy.https_only => return Err(Blocked::HttpsRequired),
            "http" => {}
            _ => return Err(Blocked::Scheme),
        }
        match url.host().ok_or(Blocked::NoHost)? {
            Host::Ipv4(ip) => Ok(Destination::Literal(IpAddr::V4(ip))),
            Host::Ipv6(ip) => Ok(Destination::Literal(IpAddr::V6(ip))),
            Host::Domain(name) => {
                let bare = name.trim_end_matches('.').to_ascii_lowercase();
                // RFC 6761: these never leave the machine, whatever DNS says.
                if bare == "localhost" || bare.ends_with(".localhost") {
                    return Err(Blocked::LocalName(name.to_owned()));
                }
                Ok(Destination::Name(name.to_owned()))
            }
        }
    }

    /// Checks scheme and, for an IP literal, the address: what must be
    /// checked before each request, since literals bypass the resolver.
    pub fn check_literal(&self, url: &Url) -> Result<(), Blocked> {
        match self.destination(url)? {
            Destination::Literal(ip) => self.policy.check_ip(ip),
            Destination::Name(_) => Ok(()),
        }
    }

    /// The full check made at registration: scheme, and every address the
    /// host resolves to.
    pub async fn vet_url(&self, url: &Url) -> Result<(), Blocked> {
        match self.destination(url)? {
            Destination::Literal(ip) => self.policy.check_ip(ip),
            Destination::Name(name) => {
                let port = url.port_or_known_default().unwrap_or(443);
                self.resolve_vetted(&name, port).await.map(drop)
            }
        }
    }

    /// Resolves `host` and returns its addresses only if every one is allowed.
    pub async fn resolve_vetted(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Blocked> {
        let bare = host.trim_end_matches('.').to_ascii_lowercase();
        if bare == "localhost" || bare.ends_with(".localhost") {
            return Err(Blocked::LocalName(host.to_owned()));
        }
        let addresses =
            self.resolver
                .resolve(host, port)
                .await
                .map_err(|e| Blocked::Unresolvable {
                    host: host.to_owned(),
                    message: e.to_string(),
                })?;
        if addresses.is_empty() {
            return Err(Blocked::NoAddresses(host.to_owned()));
        }
        for address in &addresses {
            self.policy.check_ip(address.ip())?;
        }
        Ok(addresses)
    }
}

/// The resolver the webhook HTTP client uses: every name goes through the guard.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            // The port is replaced by the connector with the URL's own.
            let addresses = guard.resolve_vetted(name.as_str(), 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Finds a [`Blocked`] in an error's source chain (the HTTP client wraps it).
pub fn find_blocked<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return Some(blocked);
        }
        // io::Error's `source()` skips the error it wraps; look inside.
        if let Some(blocked) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<Blocked>())
        {
            return Some(blocked);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Answers from a fixed table; unknown names do not resolve.
    #[derive(Debug, Default)]
    pub struct TableResolver(HashMap<String, Vec<IpAddr>>);

    impl Resolver for TableResolver {
        fn resolve(&self, host: &str, port: u16) -> Resolving {
            let found = self.0.get(host).cloned();
            Box::pin(async move {
                found
                    .map(|ips| {
                        ips.into_iter()
                            .map(|ip| SocketAddr::new(ip, port))
                            .collect()
                    })
                    .ok_or_else(|| std::io::Error::other("no such host"))
            })
        }
    }

    fn guard(allow: &[&str]) -> Guard {
        let resolver = TableResolver(HashMap::from([
            (
                "private.example".to_owned(),
                vec!["10.1.2.3".parse().unwrap()],
            ),
            (
                "public.example".to_owned(),
                vec!["93.184.215.14".parse().unwrap()],
            ),
            (
                "mixed.example".to_owned(),
                vec![
                    "93.184.215.14".parse().unwrap(),
                    "192.168.1.1".parse().unwrap(),
                ],
            ),
            (
                "metadata.example".to_owned(),
                vec!["169.254.169.254".parse().unwrap()],
            ),
        ]));
        let policy = EgressPolicy {
            allow: allow.iter().map(|c| c.parse().unwrap()).collect(),
            https_only: false,
        };
        Guard::new(policy, Arc::new(resolver))
    }

    async fn vet(guard: &Guard, url: &str) -> Result<(), Blocked> {
        guard.vet_url(&Url::parse(url).unwrap()).await
    }

    /// Refused at registration and at delivery alike (the same guard does both).
    pub const REFUSED: &[&str] = &[
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://127.1/",
        "http://017700000001/",
        "http://127.0.0.1:8080/",
        "http://localhost/",
        "http://localhost./",
        "http://api.localhost/",
        "http://[::]/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.0.1/",
        "http://100.64.0.1/",
        "http://192.0.2.1/",
        "http://198.51.100.7/",
        "http://203.0.113.9/",
        "http://198.18.0.1/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[64:ff9b::a00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[2001:db8::1]/",
        "http://[::127.0.0.1]/",
        "http://private.example/",
        "http://metadata.example/",
        "http://mixed.example/",
        "http://nonexistent.example/",
        "ftp://public.example/",
        "file:///etc/passwd",
        "gopher://public.example/",
    ];

    #[tokio::test]
    async fn non_public_destinations_are_refused() {
        let guard = guard(&[]);
        for url in REFUSED {
            assert!(vet(&guard, url).await.is_err(), "allowed {url}");
        }
    }

    #[tokio::test]
    async fn public_destinations_are_allowed() {
        let guard = guard(&[]);
        for url in [
            "https://public.example/hooks",
            "http://93.184.215.14/",
            "http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
            "http://[64:ff9b::5db8:d70e]/",
        ] {
            assert_eq!(vet(&guard, url).await, Ok(()), "{url}");
        }
    }

    #[tokio::test]
    async fn the_allow_list_opens_named_networks_only() {
        let guard = guard(&["127.0.0.0/8"]);
        assert_eq!(vet(&guard, "http://127.0.0.1:9000/").await, Ok(()));
        assert_eq!(vet(&guard, "http://[::ffff:127.0.0.1]/").await, Ok(()));
        assert!(vet(&guard, "http://10.0.0.1/").await.is_err());
        // Names of the local machine stay refused: allow an address, not "localhost".
        assert!(vet(&guard, "http://localhost/").await.is_err());
    }

    #[tokio::test]
    async fn https_only_refuses_plain_http() {
        let mut guard = guard(&[]);
        guard.policy = Arc::new(EgressPolicy {
            https_only: true,
            ..EgressPolicy::default()
        });
        assert_eq!(
            vet(&guard, "http://public.example/").await,
            Err(Blocked::HttpsRequired)
        );
        assert_eq!(vet(&guard, "https://public.example/").await, Ok(()));
    }

    #[test]
    fn reasons_name_the_range() {
        let reason = |ip: &str| non_public_reason(ip.parse().unwrap());
        assert_eq!(
            reason("169.254.169.254"),
            Some("link-local (169.254.0.0/16)")
        );
        assert_eq!(reason("::1"), Some("loopback (::1)"));
        assert_eq!(reason("8.8.8.8"), None);
        assert_eq!(reason("2606:4700::1111"), None);
    }

    #[tokio::test]
    async fn refusals_do_not_reveal_the_resolved_address() {
        let guard = guard(&[]);
        for (url, address) in [
            ("http://private.example/", "10.1.2.3"),
            ("http://metadata.example/", "169.254.169.254"),
            ("http://mixed.example/", "192.168.1.1"),
            ("http://10.0.0.5/", "10.0.0.5"),
        ] {
            let blocked = vet(&guard, url).await.unwrap_err();
            let told = blocked.to_string();
            assert_eq!(told, "resolves to a non-public address", "{url}");
            assert!(!told.contains(address), "{url}: {told}");
            // The operator's log still names it.
            assert!(blocked.for_operator().contains(address), "{url}");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn blocked_errors_are_found_in_a_source_chain() {
        let inner = Blocked::NoHost;
        let wrapped = std::io::Error::other(inner.clone());
        assert_eq!(find_blocked(&wrapped), Some(&inner));
    }
}

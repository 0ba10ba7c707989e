//! Where the service may send requests on a user's behalf (webhook
//! receivers, S3 endpoints): never to the service's own network —
//! loopback, private, link-local (cloud metadata), shared, unspecified or
//! multicast addresses — unless the operator allows a range in
//! `network.outbound_allow`. Hosts are resolved and every address checked
//! when a URL is accepted, and again at every connection (a resolver that
//! drops forbidden answers), so a name that later resolves elsewhere (DNS
//! rebinding) is refused too. Redirects are not followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::ServiceError;

/// An address range `addr/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Range {
    addr: IpAddr,
    prefix: u8,
}

impl Range {
    fn parse(raw: &str) -> Option<Self> {
        let (addr, prefix) = match raw.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = raw.trim().parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address mapped into IPv6 is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `ip` belongs to the service's own network rather than the
/// internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                // 0.0.0.0/8, 100.64.0.0/10 (shared), 192.0.0.0/24, 198.18.0.0/15, 240.0.0.0/4
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, 64:ff9b::/96 NAT64
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x64 && s[1] == 0xff9b)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    allow: Arc<Vec<Range>>,
    /// One client (and connection pool) for every project's object storage.
    storage: Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl OutboundPolicy {
    /// `allow`: ranges (`10.0.0.0/8`, `127.0.0.1`, `::1/128`) the operator
    /// permits although they are internal.
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let ranges = allow
            .iter()
            .map(|raw| {
                Range::parse(raw).ok_or_else(|| {
                    format!("network.outbound_allow: '{raw}' is not an address or range")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allow: Arc::new(ranges),
            storage: Arc::default(),
        })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|r| r.contains(ip))
    }

    /// Resolves `url`'s host and checks every address it has; the error
    /// names the field and never the address it resolved to.
    pub async fn check_url(&self, field: &str, url: &str) -> Result<(), ServiceError> {
        let refused = || {
            ServiceError::validation(
                "url_not_allowed",
                format!(
                    "Field '{field}' points at an address this service does not send to (loopback, private, link-local or similar); an operator can allow it in network.outbound_allow"
                ),
            )
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| {
            ServiceError::validation("invalid_url", format!("Field '{field}' is not a valid URL"))
        })?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let Some(host) = parsed.host_str() else {
            return Err(refused());
        };
        // An address literal is checked as it is (IPv6 comes in brackets).
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return if self.permits(ip) {
                Ok(())
            } else {
                Err(refused())
            };
        }
        let host = host.to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| {
                ServiceError::validation(
                    "url_unresolvable",
                    format!("Field '{field}': the host does not resolve"),
                )
            })?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !self.permits(a.ip())) {
            return Err(refused());
        }
        Ok(())
    }

    /// An HTTP client that connects only where the policy permits (checked
    /// at each connection) and follows no redirect.
    /// The client S3-compatible storage is reached through: the same
    /// address checks, a timeout long enough for large files.
    pub fn storage_client(&self) -> reqwest::Client {
        self.storage
            .get_or_init(|| self.client(Duration::from_secs(120)))
            .clone()
    }

    pub fn client(&self, timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .user_agent(concat!("atelier/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(PolicyResolver {
                policy: self.clone(),
            }))
            .build()
            .unwrap_or_default()
    }
}

/// Resolves names like the system does and drops every address the policy
/// does not permit; nothing left is an error.
struct PolicyResolver {
    policy: OutboundPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(
                    "the host resolves only to addresses this service does not send to".into(),
                );
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_allow_list_opens_ranges() {
        let p = OutboundPolicy::new(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        assert!(p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("::1".parse().unwrap()));
        assert!(!p.permits("10.0.0.1".parse().unwrap()));
        assert!(!p.permits("169.254.169.254".parse().unwrap()));
        assert!(OutboundPolicy::new(&["nonsense".into()]).is_err());
        assert!(OutboundPolicy::new(&["10.0.0.0/33".into()]).is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_after_resolution() {
        let deny = OutboundPolicy::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost:8080/hook",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            let e = deny.check_url("url", url).await.unwrap_err();
            assert!(e.to_string().contains("does not send to"), "{url}: {e}");
        }
        let allow = OutboundPolicy::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert!(
            allow
                .check_url("url", "http://localhost:8080/hook")
                .await
                .is_ok()
        );
        assert!(
            allow
                .check_url("url", "http://127.0.0.1/hook")
                .await
                .is_ok()
        );
    }

    /// The client checks again at connection time: a name accepted earlier
    /// that now resolves to a forbidden address (DNS rebinding) is refused.
    #[tokio::test]
    async fn the_client_refuses_forbidden_addresses_when_it_connects() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let url = format!("http://localhost:{port}/");
        let deny = OutboundPolicy::default().client(Duration::from_secs(2));
        assert!(
            deny.get(&url).send().await.is_err(),
            "connected to loopback"
        );
        let allow = OutboundPolicy::new(&["127.0.0.0/8".into(), "::1/128".into()])
            .unwrap()
            .client(Duration::from_secs(2));
        assert_eq!(allow.get(&url).send().await.unwrap().status(), 200);
    }
}

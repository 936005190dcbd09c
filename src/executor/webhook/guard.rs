//! The SSRF guard: which destinations a webhook call may reach.
//!
//! Checked after DNS resolution (the HTTP client resolves names through
//! [`GuardedResolver`], so a name that points at a private address is refused
//! at connect time, whatever the name), and before each request for URLs whose
//! host is an IP literal (the client does not resolve those). Redirects are
//! followed by the executor itself, so every hop goes through the same checks.
//! It owns no I/O besides the resolver's lookup.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Why an address is refused, or `None` when it is a public address.
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip == Ipv4Addr::new(169, 254, 169, 254) {
        "cloud metadata"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (b & 0xc0) == 64 {
        "shared (CGNAT)"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() || a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96).
        return v4_reason(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        // 6to4 (2002::/16) embeds an IPv4 address.
        return v4_reason(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(
        if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
            "cloud metadata"
        } else if ip.is_unspecified() {
            "unspecified"
        } else if ip.is_loopback() {
            "loopback"
        } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
            // IPv4-compatible (deprecated) ::a.b.c.d.
            "reserved"
        } else if (s[0] & 0xfe00) == 0xfc00 {
            "unique-local (private)"
        } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
            "link-local"
        } else if ip.is_multicast() {
            "multicast"
        } else {
            return None;
        },
    )
}

/// A destination the guard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrfRefused {
    /// The host as named in the URL.
    pub host: String,
    /// The address refused, if the refusal is about one.
    pub ip: Option<IpAddr>,
    /// Why.
    pub reason: String,
}

impl fmt::Display for SsrfRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) if ip.to_string() != self.host => write!(
                f,
                "refused to call {} ({ip}): {} address; list it in webhook.allow_hosts to allow it",
                self.host, self.reason
            ),
            Some(_) => write!(
                f,
                "refused to call {}: {} address; list it in webhook.allow_hosts to allow it",
                self.host, self.reason
            ),
            None => write!(f, "refused to call {}: {}", self.host, self.reason),
        }
    }
}

impl std::error::Error for SsrfRefused {}

/// The destinations exempt from the guard (`webhook.allow_hosts`), and
/// Switchyard's own listeners, which a webhook may never reach unless an
/// entry names them with their port.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    /// Host names, each with the one port it allows (`None`: any).
    names: Vec<(String, Option<u16>)>,
    /// Addresses and networks, likewise.
    nets: Vec<(IpNet, Option<u16>)>,
    /// The server's own listen addresses (gRPC, admin).
    own: Vec<SocketAddr>,
}

/// Lower-cases a host name and drops a trailing dot and IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim_end_matches('.');
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.to_ascii_lowercase()
}

impl AllowList {
    /// Parses entries: host names, IP addresses or CIDRs, the first two
    /// optionally with a port (`n8n.internal:5678`, `127.0.0.1:5678`,
    /// `[::1]:5678`), which then is the only port they allow.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = AllowList::default();
        for raw in entries {
            let e = raw.trim().to_ascii_lowercase();
            if e.is_empty() {
                return Err("webhook.allow_hosts has an empty entry".into());
            }
            if let Ok(net) = e.parse::<IpNet>() {
                out.nets.push((net.trunc(), None));
            } else if let Ok(ip) = normalize_host(&e).parse::<IpAddr>() {
                out.nets.push((IpNet::from(ip), None));
            } else if let Ok(sa) = e.parse::<SocketAddr>() {
                out.nets.push((IpNet::from(sa.ip()), Some(sa.port())));
            } else {
                let (host, port) = match e.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') => {
                        let port = p.parse::<u16>().map_err(|_| {
                            format!(
                                "webhook.allow_hosts entry {} has a port that is not a number from 0 to 65535",
                                crate::domain::text::quote(raw)
                            )
                        })?;
                        (h, Some(port))
                    }
                    _ => (e.as_str(), None),
                };
                let host = normalize_host(host);
                if host.is_empty() || host.contains('/') || host.contains(':') {
                    return Err(format!(
                        "webhook.allow_hosts entry {} is neither a host name, an IP address nor a CIDR (each optionally with :port)",
                        crate::domain::text::quote(raw)
                    ));
                }
                out.names.push((host, port));
            }
        }
        Ok(out)
    }

    /// The same list, knowing the server's own listen addresses.
    pub fn with_own(mut self, own: &[SocketAddr]) -> Self {
        self.own = own.to_vec();
        self
    }

    /// Whether a host name is listed as such (on some port; [`Self::check`]
    /// checks the port).
    pub fn host_allowed(&self, host: &str) -> bool {
        let h = normalize_host(host);
        self.names.iter().any(|(n, _)| *n == h)
    }

    /// Checks one address that `host` resolved to (or is), on any port a
    /// matching entry allows ([`Self::check`] checks the port).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), SsrfRefused> {
        self.check_ip_port(host, ip, None)
    }

    /// Checks an address, and with `port` also that an entry allowing the
    /// address allows that port.
    fn check_ip_port(&self, host: &str, ip: IpAddr, port: Option<u16>) -> Result<(), SsrfRefused> {
        let Some(reason) = refused_reason(ip) else {
            return Ok(());
        };
        let v4 = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = self.nets.iter().any(|(n, p)| {
            (n.contains(&ip) || v4.is_some_and(|v4| n.contains(&v4)))
                && (p.is_none() || port.is_none() || *p == port)
        });
        if listed {
            return Ok(());
        }
        Err(SsrfRefused {
            host: host.to_string(),
            ip: Some(ip),
            reason: match port {
                Some(port) if self.nets.iter().any(|(n, _)| n.contains(&ip)) => {
                    format!("{reason} address, allowed on other ports than {port}")
                }
                _ => reason.to_string(),
            },
        })
    }

    /// Whether `ip:port` reaches one of the server's own listeners (a
    /// listener on 0.0.0.0 or :: is reached through any loopback or private
    /// address).
    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        self.own.iter().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    || (a.ip().is_loopback() && ip.is_loopback())
                    || (a.ip().is_unspecified() && refused_reason(ip).is_some()))
        })
    }

    /// Refuses the server's own listeners unless an entry names them with
    /// their port.
    fn check_own(&self, host: &str, ip: IpAddr, port: u16) -> Result<(), SsrfRefused> {
        if !self.is_own(ip, port) {
            return Ok(());
        }
        let h = normalize_host(host);
        let named = self.names.iter().any(|(n, p)| *n == h && *p == Some(port))
            || self
                .nets
                .iter()
                .any(|(n, p)| n.contains(&ip) && *p == Some(port));
        if named {
            return Ok(());
        }
        Err(SsrfRefused {
            host: host.to_string(),
            ip: Some(ip),
            reason: format!(
                "Switchyard's own listener (port {port}); only an entry with this port in webhook.allow_hosts allows it"
            ),
        })
    }

    /// Checks a URL before a request: [`Self::check_without_dns`], then, for
    /// a name, (resolving it here) that it does not lead to the server's own
    /// listeners or to an address listed for other ports only. Names are
    /// checked again by [`GuardedResolver`] when connecting.
    pub async fn check(&self, url: &Url) -> Result<(), SsrfRefused> {
        let Some(name) = self.precheck(url)? else {
            return Ok(());
        };
        let port_rules = self.own.iter().any(|a| a.port() == name.port)
            || self.nets.iter().any(|(_, p)| p.is_some());
        if port_rules {
            if let Ok(found) = tokio::net::lookup_host((name.normal.as_str(), name.port)).await {
                for a in found {
                    self.check_own(&name.host, a.ip(), name.port)?;
                    if !name.listed {
                        self.check_ip_port(&name.host, a.ip(), Some(name.port))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What can be checked of a URL without resolving its host (when a task
    /// is scheduled): the scheme; the host and port when the host is an IP
    /// literal; for a name, the port its entry allows, and `localhost`
    /// (and `*.localhost`, which resolve to loopback by definition) unless
    /// listed. Any other name may still be refused once resolved.
    pub fn check_without_dns(&self, url: &Url) -> Result<(), SsrfRefused> {
        self.precheck(url).map(|_| ())
    }

    /// The checks that need no DNS; for a host name, what the lookup's
    /// checks need.
    fn precheck(&self, url: &Url) -> Result<Option<NamedHost>, SsrfRefused> {
        let host = url.host_str().unwrap_or_default();
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SsrfRefused {
                host: host.to_string(),
                ip: None,
                reason: format!(
                    "the scheme {:?} is not allowed (http and https only)",
                    url.scheme()
                ),
            });
        }
        if host.is_empty() {
            return Err(SsrfRefused {
                host: String::new(),
                ip: None,
                reason: "the URL has no host".into(),
            });
        }
        let port = url.port_or_known_default().unwrap_or(0);
        // The URL parser normalises IP literals (`0x7f.1` is `127.0.0.1`), so
        // a host that parses as an address is one; anything else is a name.
        if let Ok(ip) = normalize_host(host).parse::<IpAddr>() {
            self.check_own(host, ip, port)?;
            self.check_ip_port(host, ip, Some(port))?;
            return Ok(None);
        }
        let h = normalize_host(host);
        let entries: Vec<Option<u16>> = self
            .names
            .iter()
            .filter(|(n, _)| *n == h)
            .map(|(_, p)| *p)
            .collect();
        if !entries.is_empty() && !entries.iter().any(|p| p.is_none() || *p == Some(port)) {
            return Err(SsrfRefused {
                host: host.to_string(),
                ip: None,
                reason: format!("webhook.allow_hosts allows {host} on other ports than {port}"),
            });
        }
        if entries.is_empty() && (h == "localhost" || h.ends_with(".localhost")) {
            // RFC 6761: loopback, whatever a resolver says; refused unless
            // one of the loopback addresses is allowed on this port, and
            // never the server's own listeners.
            self.check_own(host, IpAddr::V4(Ipv4Addr::LOCALHOST), port)?;
            let v4 = self.check_ip_port(host, IpAddr::V4(Ipv4Addr::LOCALHOST), Some(port));
            let v6 = self.check_ip_port(host, IpAddr::V6(Ipv6Addr::LOCALHOST), Some(port));
            if let (Err(e), Err(_)) = (v4, v6) {
                return Err(e);
            }
        }
        Ok(Some(NamedHost {
            host: host.to_string(),
            normal: h,
            port,
            listed: !entries.is_empty(),
        }))
    }
}

/// A URL's host that is a name, as the DNS part of [`AllowList::check`]
/// needs it.
struct NamedHost {
    /// As written in the URL (for messages).
    host: String,
    /// Normalised (for the lookup).
    normal: String,
    port: u16,
    /// `webhook.allow_hosts` names it.
    listed: bool,
}

/// A DNS resolver that drops refused addresses and fails when none is left.
#[derive(Clone)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    /// A resolver enforcing `allow`.
    pub fn new(allow: Arc<AllowList>) -> Self {
        GuardedResolver { allow }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow.host_allowed(&host) {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let mut refused = None;
            let mut ok = Vec::with_capacity(found.len());
            for a in found {
                match allow.check_ip(&host, a.ip()) {
                    Ok(()) => ok.push(a),
                    Err(e) => {
                        refused.get_or_insert(e);
                    }
                }
            }
            match refused {
                Some(e) if ok.is_empty() => {
                    Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(ok.into_iter()) as Addrs),
            }
        })
    }
}

/// Finds an SSRF refusal in an error's chain of causes.
pub fn find_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a SsrfRefused> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<SsrfRefused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        refused_reason(s.parse().unwrap())
    }

    #[test]
    fn classifies_addresses() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "unique-local (private)"),
            ("fd12:3456::1", "unique-local (private)"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            ("64:ff9b::a00:1", "private"),
            ("2002:c0a8:101::1", "private"),
        ] {
            assert_eq!(reason(ip), Some(why), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn allow_list_takes_names_ips_and_cidrs() {
        let a = AllowList::parse(&[
            "127.0.0.1".into(),
            "10.1.0.0/16".into(),
            "N8N.Internal.".into(),
            "[::1]".into(),
        ])
        .unwrap();
        assert!(a.check_ip("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(a.check_ip("x", "::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(a.check_ip("x", "::1".parse().unwrap()).is_ok());
        assert!(a.check_ip("x", "10.1.200.3".parse().unwrap()).is_ok());
        let e = a.check_ip("x", "10.2.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(e.reason, "private");
        assert!(a.check_ip("x", "127.0.0.2".parse().unwrap()).is_err());
        assert!(a.host_allowed("n8n.internal"));
        assert!(!a.host_allowed("other.internal"));
        assert!(AllowList::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(AllowList::parse(&["".into()]).is_err());
    }

    async fn check_with(a: &AllowList, u: &str) -> Result<(), SsrfRefused> {
        a.check(&Url::parse(u).unwrap()).await
    }

    #[test]
    fn what_needs_no_dns_is_checked_without_it() {
        let none = AllowList::default();
        let own = AllowList::parse(&["127.0.0.1".into()])
            .unwrap()
            .with_own(&["127.0.0.1:50051".parse().unwrap()]);
        let check = |a: &AllowList, u: &str| a.check_without_dns(&Url::parse(u).unwrap());
        for (u, why) in [
            ("http://127.0.0.1:8080/x", "loopback"),
            ("http://localhost:8080/x", "loopback"),
            ("http://api.localhost/x", "loopback"),
            ("http://[::1]/x", "loopback"),
            ("http://10.1.2.3/x", "private"),
            ("http://169.254.169.254/latest", "cloud metadata"),
            ("ftp://example.com/x", "scheme"),
        ] {
            let e = check(&none, u).unwrap_err();
            assert!(e.to_string().contains(why), "{u}: {e}");
        }
        // A name is not resolved: judged when the call connects.
        assert!(check(&none, "https://hooks.example.com/x").is_ok());
        assert!(check(&own, "http://localhost:8080/x").is_ok());
        for u in ["http://localhost:50051/", "http://127.0.0.1:50051/"] {
            let e = check(&own, u).unwrap_err();
            assert!(e.to_string().contains("own listener"), "{u}: {e}");
        }
    }

    #[tokio::test]
    async fn entries_with_a_port_allow_that_port_only() {
        let a = AllowList::parse(&[
            "127.0.0.1:5678".into(),
            "n8n.internal:5678".into(),
            "[::1]:80".into(),
        ])
        .unwrap();
        assert!(check_with(&a, "http://127.0.0.1:5678/webhook/x")
            .await
            .is_ok());
        let e = check_with(&a, "http://127.0.0.1:9000/").await.unwrap_err();
        assert!(e.reason.contains("other ports"), "{e}");
        assert!(check_with(&a, "http://[::1]/").await.is_ok());
        assert!(check_with(&a, "http://[::1]:81/").await.is_err());
        let e = check_with(&a, "http://n8n.internal:80/").await.unwrap_err();
        assert!(e.reason.contains("other ports"), "{e}");
        assert!(AllowList::parse(&["n8n.internal:http".into()]).is_err());
        assert!(AllowList::parse(&["n8n.internal:70000".into()]).is_err());
    }

    #[tokio::test]
    async fn the_servers_own_listeners_need_an_entry_with_their_port() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:50051".parse().unwrap(),
            "0.0.0.0:9090".parse().unwrap(),
        ];
        // Loopback allowed on every port: still not the admin or gRPC port.
        let a = AllowList::parse(&["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .with_own(&own);
        assert!(check_with(&a, "http://127.0.0.1:5678/").await.is_ok());
        for u in [
            "http://127.0.0.1:50051/",
            "http://127.0.0.1:9090/api/tasks",
            "http://127.0.0.2:9090/",
            "http://localhost:9090/api/tasks",
        ] {
            let e = check_with(&a, u).await.unwrap_err();
            assert!(e.reason.contains("own listener"), "{u}: {e}");
        }
        // Listed with its port: allowed.
        let b = AllowList::parse(&["127.0.0.1:9090".into()])
            .unwrap()
            .with_own(&own);
        assert!(check_with(&b, "http://127.0.0.1:9090/").await.is_ok());
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_and_ip_literals() {
        let none = AllowList::default();
        assert!(
            check_with(&none, "https://example.com/x").await.is_ok(),
            "names are checked at resolution"
        );
        assert_eq!(
            check_with(&none, "http://169.254.169.254/latest")
                .await
                .unwrap_err()
                .reason,
            "cloud metadata"
        );
        assert_eq!(
            check_with(&none, "http://[::1]:8080/")
                .await
                .unwrap_err()
                .reason,
            "loopback"
        );
        assert_eq!(
            check_with(&none, "http://0x7f.1/")
                .await
                .unwrap_err()
                .reason,
            "loopback",
            "the URL parser normalises"
        );
        assert!(check_with(&none, "ftp://example.com/")
            .await
            .unwrap_err()
            .reason
            .contains("scheme"));
        assert!(check_with(&none, "file:///etc/passwd").await.is_err());
        let msg = check_with(&none, "http://10.0.0.1/")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("private") && msg.contains("allow_hosts"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let r = GuardedResolver::new(Arc::new(AllowList::default()));
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        let refusal = find_refusal(err.as_ref()).expect("an SSRF refusal");
        assert_eq!(refusal.reason, "loopback");

        let allowed =
            GuardedResolver::new(Arc::new(AllowList::parse(&["localhost".into()]).unwrap()));
        let addrs: Vec<_> = match allowed.resolve("localhost".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}

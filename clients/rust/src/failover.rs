//! A channel over several replicas' addresses that uses one at a time
//! (pick-first) and moves to the next when a call fails at the transport
//! (the replica died or cannot be reached).
//!
//! A standby replica forwards calls to the leader, so any live replica
//! serves; what matters is leaving a dead one quickly. A call that was in
//! flight on a replica that died fails (UNAVAILABLE: it is never replayed,
//! since it may have reached the server); the next call goes to the next
//! address. A load balancer over the replicas (`Channel::balance_list`)
//! would keep sending a share of the calls to the dead one.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

/// See the module documentation. Cheap to clone; clones share the choice.
#[derive(Clone)]
pub struct Failover {
    endpoints: Arc<[Endpoint]>,
    /// The index of the address in use, and its channel.
    current: Arc<Mutex<(usize, Channel)>>,
}

impl Failover {
    /// Connects to the first address that accepts a connection, trying
    /// them in order; if none does, starts on the first (lazily), so calls
    /// fail with UNAVAILABLE until one comes up. A host name with several
    /// address records counts as several addresses (one per record).
    pub async fn connect(endpoints: Vec<Endpoint>) -> Failover {
        assert!(!endpoints.is_empty(), "at least one address");
        let endpoints = expand_dns(endpoints).await;
        let mut chosen = None;
        for (i, e) in endpoints.iter().enumerate() {
            if let Ok(c) = e.connect().await {
                chosen = Some((i, c));
                break;
            }
        }
        let current = chosen.unwrap_or_else(|| (0, endpoints[0].connect_lazy()));
        Failover {
            endpoints: endpoints.into(),
            current: Arc::new(Mutex::new(current)),
        }
    }

    /// Moves on from address `from` (if it is still the one in use).
    fn fail(&self, from: usize) {
        let mut cur = self.current.lock();
        if cur.0 == from {
            let next = (from + 1) % self.endpoints.len();
            tracing::warn!(
                from = %self.endpoints[from].uri(),
                to = %self.endpoints[next].uri(),
                "a replica failed; using the next address"
            );
            *cur = (next, self.endpoints[next].connect_lazy());
        }
    }
}

/// Each endpoint whose host name resolves to several addresses becomes one
/// endpoint per address (plain `http` only: TLS needs the name). Names that
/// do not resolve now are kept as they are (they may resolve later).
pub async fn expand_dns(endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let uri = e.uri().clone();
        let (Some(host), Some("http")) = (uri.host(), uri.scheme_str()) else {
            out.push(e);
            continue;
        };
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            out.push(e);
            continue;
        }
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            Err(_) => Vec::new(),
        };
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<_> = addrs.into_iter().filter(|a| seen.insert(*a)).collect();
        if unique.len() < 2 {
            out.push(e);
            continue;
        }
        for a in unique {
            let path = uri.path_and_query().map_or("", |p| p.as_str());
            match Endpoint::from_shared(format!("http://{a}{path}")) {
                Ok(ip) => out.push(
                    ip.connect_timeout(std::time::Duration::from_secs(5))
                        .origin(uri.clone()),
                ),
                Err(_) => out.push(e.clone()),
            }
        }
    }
    out
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (index, channel) = self.current.lock().clone();
        let this = self.clone();
        Box::pin(async move {
            let result = match channel.ready_oneshot().await {
                Ok(mut ch) => ch.call(req).await,
                Err(e) => Err(e),
            };
            if result.is_err() {
                this.fail(index);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_with_several_records_becomes_several_addresses() {
        // `localhost` resolves to 127.0.0.1 and, where IPv6 is set up,
        // ::1; an IP stays one address; an unknown name is kept.
        let e = |u: &str| Endpoint::from_shared(u.to_string()).unwrap();
        let out = expand_dns(vec![
            e("http://127.0.0.1:1"),
            e("http://no-such-host.invalid:1"),
        ])
        .await;
        assert_eq!(out.len(), 2);
        let local = expand_dns(vec![e("http://localhost:7")]).await;
        let n = tokio::net::lookup_host(("localhost", 7))
            .await
            .map(|a| a.collect::<std::collections::HashSet<_>>().len())
            .unwrap_or(1);
        assert_eq!(local.len(), n.max(1));
        for ep in &local {
            assert_eq!(ep.uri().port_u16(), Some(7));
        }
    }
}

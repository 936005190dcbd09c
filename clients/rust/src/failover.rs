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
    /// fail with UNAVAILABLE until one comes up.
    pub async fn connect(endpoints: Vec<Endpoint>) -> Failover {
        assert!(!endpoints.is_empty(), "at least one address");
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

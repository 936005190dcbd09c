//! Several replicas over one PostgreSQL store: who leads, and what the
//! others do meanwhile.
//!
//! Every `switchyard serve` on the same database (and schema) is a replica.
//! One holds the partition's lease ([`crate::store::postgres::Lease`]) and
//! runs the core; the others are standbys:
//! - they answer health with NOT_SERVING (a load balancer sends them
//!   nothing it can avoid), and forward every other gRPC call, streams
//!   included, to the leader's advertised address, so a client that
//!   reaches a standby still gets served;
//! - while they cannot reach a leader (none leads during a takeover, or
//!   the one in the lease table is gone), they answer a task's status and
//!   its log from the database themselves ([`LOCAL_READS`]), with the same
//!   checks, codes and answers as the leader; everything else needs the
//!   leader's core and gets UNAVAILABLE (retry);
//! - every quarter lease they try to take the lease; once it has lapsed
//!   (the leader died or stalled), one of them gets it with the next term,
//!   closes its forwarding connections (HTTP/2 GOAWAY: clients reconnect)
//!   and starts the core from the database, as a restart does.
//!
//! The leader renews its lease every quarter lease. Once its term has moved
//! on it steps down by stopping: a supervisor starts it again, as a
//! standby. While the database cannot be reached it keeps trying (nobody
//! else can take over without the database either). The fence in every
//! write transaction makes sure a leader that learns late wrote nothing
//! after the takeover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::api::convert;
use crate::api::orchestrator::{logs_limit, logs_response, status_response};
use crate::auth::{GrpcAuth, Tokens};
use crate::core::CoreError;
use crate::pb;
use crate::store::postgres::{Leadership, Lease};
use crate::store::Store;

/// `[cluster]`: replicas over one PostgreSQL store (`store.url`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How long the leader's lease lasts without renewal: a dead leader is
    /// replaced after at most this plus a quarter of it. The leader renews
    /// every quarter lease.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The address other replicas forward to (`host:port` of this
    /// replica's gRPC listener as they can reach it). Default: the
    /// listener's address, `127.0.0.1` for an unspecified IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// This replica's id (default: a new UUID at every start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease_ttl: Duration::from_secs(2),
            advertise: None,
            replica_id: None,
        }
    }
}

impl ClusterConfig {
    /// Checks the settings; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_ttl < Duration::from_millis(200) || self.lease_ttl > Duration::from_secs(600)
        {
            return Err("cluster.lease_ttl: must be between 200ms and 10m".into());
        }
        if let Some(a) = &self.advertise {
            if a.is_empty() || a.len() > 255 || a.contains('/') {
                return Err("cluster.advertise: must be host:port".into());
            }
        }
        if let Some(r) = &self.replica_id {
            if r.is_empty() || r.len() > 128 {
                return Err("cluster.replica_id: must be 1 to 128 bytes".into());
            }
        }
        Ok(())
    }

    /// The address to advertise for a listener bound to `local`.
    pub fn advertised(&self, local: std::net::SocketAddr) -> String {
        match &self.advertise {
            Some(a) => a.clone(),
            None if local.ip().is_unspecified() => format!("127.0.0.1:{}", local.port()),
            None => local.to_string(),
        }
    }
}

/// How often replicas act on the lease: a quarter of it.
pub fn tick(lease: &Lease) -> Duration {
    (lease.ttl / 4).max(Duration::from_millis(25))
}

/// Serves as a standby on `listener` until this replica takes the lease
/// (then returns its term and the listener, every standby connection
/// closing) or `stop` is cancelled (then `None`).
pub async fn stand_by(
    listener: TcpListener,
    lease: Arc<Lease>,
    store: Arc<dyn Store>,
    checks: Checks,
    stop: CancellationToken,
) -> Option<(i64, TcpListener)> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for svc in [
        "switchyard.v1.OrchestratorService",
        "switchyard.v1.WorkerService",
        "switchyard.v1.ScheduleService",
    ] {
        health
            .set_service_status(svc, tonic_health::ServingStatus::NotServing)
            .await;
    }
    let leader: Arc<parking_lot::Mutex<Option<(String, Channel)>>> = Default::default();
    let promoted = CancellationToken::new();
    let mut ticker = tokio::time::interval(tick(&lease));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<Instant> = None;
    let term = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                promoted.cancel();
                return None;
            }
            accepted = listener.accept() => {
                let Ok((io, _)) = accepted else { continue };
                let _ = io.set_nodelay(true);
                let svc = Forward {
                    health: health_service.clone(),
                    leader: leader.clone(),
                    store: store.clone(),
                    auth: GrpcAuth(checks.tokens.clone()),
                    max_message: checks.max_message,
                    jwt: checks.jwt,
                    keys: checks.keys.clone(),
                };
                tokio::spawn(serve_connection(io, svc, promoted.clone()));
            }
            _ = ticker.tick() => {
                match lease.try_acquire().await {
                    Ok(Leadership::Leader(term)) => break term,
                    Ok(Leadership::Standby) => {
                        last_error = None;
                        match lease.leader().await {
                            Ok(Some(row)) => {
                                let mut l = leader.lock();
                                if l.as_ref().is_none_or(|(a, _)| *a != row.address) {
                                    tracing::info!(leader = %row.holder, address = %row.address, term = row.term, "standby: following the leader");
                                    *l = channel_to(&row.address).map(|c| (row.address.clone(), c));
                                }
                            }
                            Ok(None) => *leader.lock() = None,
                            Err(e) => tracing::debug!(cause = %e, "reading the leader"),
                        }
                    }
                    Err(e) => {
                        if last_error.is_none() {
                            tracing::warn!(cause = %e, "standby: cannot reach the store's lease; retrying");
                            last_error = Some(Instant::now());
                        }
                    }
                }
            }
        }
    };
    promoted.cancel();
    Some((term, listener))
}

fn channel_to(address: &str) -> Option<Channel> {
    match Endpoint::from_shared(format!("http://{address}")) {
        Ok(e) => Some(
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect_lazy(),
        ),
        Err(e) => {
            tracing::warn!(address, cause = %e, "the leader's advertised address is not usable");
            None
        }
    }
}

/// The calls a standby answers from the database when it cannot reach a
/// leader: reads whose answer the database holds (a task's status, its
/// log). While a leader answers, they are forwarded like everything else:
/// the leader's answer includes what its core has not written yet.
pub const LOCAL_READS: [&str; 2] = [STATUS_PATH, LOGS_PATH];
const STATUS_PATH: &str = "/switchyard.v1.OrchestratorService/GetTaskStatus";
const LOGS_PATH: &str = "/switchyard.v1.OrchestratorService/GetTaskLogs";

/// What a standby checks of the calls it answers itself, as the leader's
/// services do.
pub struct Checks {
    /// `auth.tokens`.
    pub tokens: Tokens,
    /// The largest message decoded (RESOURCE_EXHAUSTED beyond).
    pub max_message: usize,
    /// Whether `[auth.jwt]` is set: the leader then takes JWTs.
    pub jwt: bool,
    /// The cluster's API keys (read to see whether there are any).
    pub keys: Option<Arc<crate::keys::Db>>,
}

/// Whether a cluster is closed by API keys or JWTs (so a caller without a
/// static token may not read from a standby); closed when the keys cannot
/// be read.
async fn closed_by_keys(jwt: bool, keys: Option<&crate::keys::Db>) -> bool {
    if jwt {
        return true;
    }
    match keys {
        Some(db) => db.all().await.map_or(true, |k| !k.is_empty()),
        None => false,
    }
}

/// A standby's answer to a request: health locally, the rest forwarded.
#[derive(Clone)]
struct Forward<H> {
    health: H,
    leader: Arc<parking_lot::Mutex<Option<(String, Channel)>>>,
    store: Arc<dyn Store>,
    auth: GrpcAuth,
    max_message: usize,
    jwt: bool,
    keys: Option<Arc<crate::keys::Db>>,
}

impl<H> Forward<H>
where
    H: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    H::Future: Send,
{
    async fn call(mut self, req: Request<Body>) -> Response<Body> {
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return match self.health.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        if LOCAL_READS.contains(&req.uri().path()) {
            return self.read(req).await;
        }
        let channel = self.leader.lock().as_ref().map(|(_, c)| c.clone());
        let Some(mut channel) = channel else {
            return tonic::Status::unavailable(
                "this replica is a standby and no replica leads now (a takeover is under way); retry",
            )
            .into_http();
        };
        // The request goes on as it came (path, metadata, token, body
        // stream); the leader checks and answers it.
        let ready = match tower::ServiceExt::ready(&mut channel).await {
            Ok(c) => c.call(req).await,
            Err(e) => Err(e),
        };
        match ready {
            Ok(r) => r,
            Err(e) => tonic::Status::unavailable(format!(
                "this replica is a standby and cannot reach the leader: {e}; retry"
            ))
            .into_http(),
        }
    }
}

impl<H> Forward<H> {
    /// One of [`LOCAL_READS`]: forwarded if a leader answers, else answered
    /// from the database.
    async fn read(self, req: Request<Body>) -> Response<Body> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        // One gRPC frame: a 5-byte header and the message.
        let bytes = match http_body_util::Limited::new(body, self.max_message + 5)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return tonic::Status::resource_exhausted(format!(
                    "the request could not be read (at most {} bytes): {e}",
                    self.max_message
                ))
                .into_http()
            }
        };
        let rebuild = |bytes: bytes::Bytes| {
            let mut r = Request::new(Body::new(http_body_util::Full::new(bytes)));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            r
        };
        let channel = self.leader.lock().as_ref().map(|(_, c)| c.clone());
        if let Some(mut channel) = channel {
            let forwarded = match tower::ServiceExt::ready(&mut channel).await {
                Ok(c) => c.call(rebuild(bytes.clone())).await,
                Err(e) => Err(e),
            };
            match forwarded {
                Ok(r) => return r,
                Err(e) => {
                    tracing::debug!(cause = %e, "standby: the leader cannot be reached; answering a read from the store")
                }
            }
        }
        // A standby checks only the static tokens: it holds no keys and
        // verifies no JWT. With none set, it answers to anyone only while
        // the cluster has no keys and takes no JWT; otherwise it refuses,
        // rather than show any task to any caller.
        if self.auth.0.is_open() && closed_by_keys(self.jwt, self.keys.as_deref()).await {
            return tonic::Status::unavailable(
                "no leader answers; while leaderless a standby answers reads only to a static \
                 token of `auth.tokens`, and this cluster's keys and JWTs are checked by its leader",
            )
            .into_http();
        }
        // The same token check as the leader's services.
        let mut auth = self.auth.clone();
        let checked = tonic::service::Interceptor::call(
            &mut auth,
            tonic::Request::from_parts(
                tonic::metadata::MetadataMap::from_headers(parts.headers.clone()),
                Default::default(),
                (),
            ),
        );
        if let Err(status) = checked {
            return status.into_http();
        }
        let req = rebuild(bytes);
        let max = self.max_message;
        if parts.uri.path() == STATUS_PATH {
            tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .unary(StatusRead(self.store), req)
                .await
        } else {
            tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max)
                .unary(LogsRead(self.store), req)
                .await
        }
    }
}

type ReadFuture<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send>,
>;

/// The namespace a static token's read names (`default` without the
/// header): a task of another is NOT_FOUND, as on the leader.
fn asked_namespace<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(crate::keys::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(crate::keys::DEFAULT_NAMESPACE)
        .to_string()
}

/// GetTaskStatus from the database.
struct StatusRead(Arc<dyn Store>);

impl tonic::server::UnaryService<pb::GetTaskStatusRequest> for StatusRead {
    type Response = pb::GetTaskStatusResponse;
    type Future = ReadFuture<Self::Response>;
    fn call(&mut self, req: tonic::Request<pb::GetTaskStatusRequest>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            let ns = asked_namespace(&req);
            let id = convert::parse_id("task_id", &req.get_ref().task_id)?;
            match store.get(id).await.map_err(CoreError::from)? {
                Some((t, payload)) if t.spec.namespace() == ns => {
                    Ok(tonic::Response::new(status_response(&t, &payload)))
                }
                _ => Err(CoreError::NotFound(id.to_string()).into()),
            }
        })
    }
}

/// GetTaskLogs from the database.
struct LogsRead(Arc<dyn Store>);

impl tonic::server::UnaryService<pb::GetTaskLogsRequest> for LogsRead {
    type Response = pb::GetTaskLogsResponse;
    type Future = ReadFuture<Self::Response>;
    fn call(&mut self, req: tonic::Request<pb::GetTaskLogsRequest>) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            let ns = asked_namespace(&req);
            let r = req.into_inner();
            let id = convert::parse_id("task_id", &r.task_id)?;
            let limit = logs_limit(r.limit)?;
            let task = match store.get(id).await.map_err(CoreError::from)? {
                Some((t, _)) if t.spec.namespace() == ns => t,
                _ => return Err(CoreError::NotFound(id.to_string()).into()),
            };
            let lines = crate::store::task_logs(&*store, &task, r.after_line, limit + 1)
                .await
                .map_err(CoreError::from)?;
            Ok(tonic::Response::new(logs_response(lines, limit)))
        })
    }
}

async fn serve_connection<H>(
    io: tokio::net::TcpStream,
    svc: Forward<H>,
    promoted: CancellationToken,
) where
    H: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let svc = svc.clone();
        async move { Ok::<_, std::convert::Infallible>(svc.call(req.map(Body::new)).await) }
    });
    // The HTTP/2 limits of the gRPC port (`http2.rs`), not hyper's
    // defaults: its 20 calls cancelled before they were taken, its 1,024
    // streams reset by the server over a connection's life and its 1 MiB
    // connection window each closed connections that the leader keeps.
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_pending_accept_reset_streams(crate::http2::MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(None)
        .initial_connection_window_size(crate::http2::CONNECTION_WINDOW)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(cause = %e, "standby connection ended");
            }
            return;
        }
        _ = promoted.cancelled() => {}
    }
    // Promoted (or stopping): GOAWAY, so the client reconnects, to the
    // leader this replica now is; streams in flight get a moment.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

/// The cluster's status from the PostgreSQL lease tables.
pub struct LeaseView(pub Arc<Lease>);

#[async_trait::async_trait]
impl crate::app::cluster::ClusterView for LeaseView {
    async fn status(&self) -> Result<crate::app::cluster::ClusterStatus, crate::core::CoreError> {
        let (leases, replicas) = self
            .0
            .status()
            .await
            .map_err(|e| crate::core::CoreError::Unavailable(e.to_string()))?;
        Ok(crate::app::cluster::ClusterStatus {
            store: "postgres",
            replica_id: self.0.replica.clone(),
            leases,
            replicas,
        })
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Another replica holds the lease now.
    TermOver,
}

/// Renews the lease of `term` every quarter lease; resolves when it is
/// lost. Reports each renewal's latency to `observe`.
///
/// A renewal that cannot reach the database is retried, not taken as a
/// loss: renewing checks the term, not the expiry, so a leader cut off from
/// PostgreSQL (which no standby can reach either, or they would have taken
/// over) keeps its term if nobody took it meanwhile, and learns otherwise
/// at its first renewal after the outage. Its writes are fenced all along.
pub async fn keep_lease(
    lease: Arc<Lease>,
    term: i64,
    observe: impl Fn(Duration) + Send + 'static,
) -> Lost {
    let mut ticker = tokio::time::interval(tick(&lease));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        match lease.renew(term).await {
            Ok(true) => {
                observe(started.elapsed());
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        term,
                        after_ms = since.elapsed().as_millis() as u64,
                        "the lease is renewed again"
                    );
                }
            }
            Ok(false) => return Lost::TermOver,
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(cause = %e, term, "the lease cannot be renewed; retrying (writes are fenced meanwhile)");
                }
            }
        }
    }
}

//! The admin HTTP server, on its own port (`[admin] listen`, default
//! `127.0.0.1:50052`): the original design's JSON routes under
//! `/internal/execution-manager/`, a server-sent-events stream of task
//! events, Prometheus text at `/metrics`, `/healthz`, and the live dashboard
//! at `/`.
//!
//! Like `api/`, this is an edge: handlers validate, call the core, and map
//! errors through the one mapping (`CoreError` → gRPC status → HTTP, see
//! [`error`]). The JSON is the messages in Switchyard's one JSON dialect
//! ([`json`], [`crate::pb::dialect`]), the CLI's `--json` too; the query
//! parameters are one table ([`params`]) and `GET /openapi.json`
//! ([`openapi`]) describes every route from it and from the dialect's
//! schemas; the event stream is the `WatchTasks` machinery
//! ([`crate::app::watch`]). No scheduling decision and no SQL
//! here, and nothing here changes a task except `DELETE …/tasks/{id}`
//! (`CancelTask`), `POST …/tasks/{id}/retry` (`RetryTask`) and `POST
//! …/tasks/{id}/replay` (`ReplayWorkflow`); `POST …/flow/pause` and `POST
//! …/flow/resume` (`PauseQueue`, `ResumeQueue`) change the flow rules.

pub use crate::auth;
pub mod error;
pub mod guard;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod params;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use metrics::Metrics;

/// `[admin]`: the admin HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it (`switchyard serve` binds `listen`).
    pub enabled: bool,
    /// Where it listens. Port 0 picks a free port (logged at start).
    pub listen: SocketAddr,
    /// How often an idle event stream gets a heartbeat comment.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            heartbeat: Duration::from_secs(15),
        }
    }
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The scheduler core.
    pub core: Core,
    /// This server's metrics registry.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server drains: event streams end.
    pub streams_stop: CancellationToken,
    /// Heartbeat interval of event streams.
    pub heartbeat: Duration,
    /// Who leads (`GET /api/cluster`).
    pub cluster: Arc<dyn crate::app::cluster::ClusterView>,
    /// Why the store cannot commit now (a full disk, an unreachable
    /// database), `None` while it can; kept by the server's store watcher
    /// (`GET /healthz`, `GET /readyz`).
    pub store_blocked: tokio::sync::watch::Receiver<Option<String>>,
    /// The schedules (`GET /api/schedules`).
    pub schedules: crate::schedules::Schedules,
    /// The flow rules (`GET …/flow`, pause and resume).
    pub flow: crate::flow::FlowControl,
    /// The keys: who may call which route (`guard`), and the audit log.
    pub keys: crate::keys::Keys,
}

/// The admin router: every route, behind the access check.
pub fn router(state: AdminState) -> axum::Router {
    let keys = state.keys.clone();
    routes::routes(state).layer(axum::middleware::from_fn_with_state(keys, guard::require))
}

/// Serves the admin API on `listener` until `stop` is cancelled, then
/// closes gracefully (event streams end when `state.streams_stop` is
/// cancelled, which the drain does first). Also follows committed events
/// for the metrics' histograms (policy on shutdown: abort with the server).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let follower = tokio::spawn(
        state
            .metrics
            .clone()
            .follow(state.core.clone(), stop.clone()),
    );
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            %addr,
            dashboard = %format!("{scheme}://{addr}/"),
            metrics = %format!("{scheme}://{addr}/metrics"),
            auth = if state.keys.is_open() { "open" } else { "bearer token" },
            "admin server ready"
        );
    }
    let app = router(state);
    let stopped = async move { stop.cancelled().await };
    if let Some(acceptor) = tls {
        // The accept loop sets TCP_NODELAY itself.
        let result = axum::serve(crate::tls::TlsListener::new(listener, acceptor)?, app)
            .with_graceful_shutdown(stopped)
            .await;
        follower.abort();
        return result;
    }
    // Events and answers are small writes: without TCP_NODELAY one can wait
    // for the client's delayed ACK (40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an admin connection");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await;
    follower.abort();
    result
}

//! The server: opens the store, starts the core, the engines (executors and
//! backends), the admin HTTP server and the gRPC services, and owns the
//! shutdown order. `main` parses the configuration and calls [`run_with`];
//! tests call [`run`] or [`run_with`] on `127.0.0.1:0`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::api::authz::Authorized;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::{error, flow, keys, orchestrator, schedules, worker};
use crate::config::Config;
use crate::core::Core;
use crate::http2;
use crate::pb;
use crate::pb::flow_service_server::FlowServiceServer;
use crate::pb::keys_service_server::KeysServiceServer;
use crate::pb::orchestrator_service_server::OrchestratorServiceServer;
use crate::pb::schedule_service_server::ScheduleServiceServer;
use crate::pb::worker_service_server::WorkerServiceServer;
use crate::store::postgres::{Fence, Lease, PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::Store;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The core could not start.
    #[error(transparent)]
    Core(#[from] crate::core::CoreError),
    /// gRPC transport failure.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection set-up failed.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A setting cannot be used (an unreadable `auth.tokens_file`).
    #[error("configuration: {0}")]
    Config(String),
    /// The admin HTTP server failed.
    #[error("admin server: {0}")]
    Admin(#[from] std::io::Error),
    /// This replica led and lost its lease: it stopped (a supervisor starts
    /// it again, as a standby).
    #[error("this replica stopped leading (term {term}): {reason}")]
    LostLeadership {
        /// The term it held.
        term: i64,
        /// Why.
        reason: String,
    },
}

/// Where a server listens: gRPC, and the admin HTTP server if given.
pub struct Listeners {
    /// The gRPC services.
    pub grpc: TcpListener,
    /// The admin HTTP API, event stream, Prometheus metrics and dashboard
    /// (see [`crate::admin`]); `None` serves none of it.
    pub admin: Option<TcpListener>,
}

/// The store a server runs on.
pub enum OpenedStore {
    /// The embedded SQLite file (or memory).
    Sqlite(Arc<SqliteStore>),
    /// PostgreSQL, shared by every replica.
    Postgres(Arc<PgStore>),
}

impl OpenedStore {
    /// The store, for the core.
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            OpenedStore::Sqlite(s) => s.clone(),
            OpenedStore::Postgres(s) => s.clone(),
        }
    }

    fn set_metrics(&self, m: Arc<dyn crate::telemetry::MetricsSink>) {
        let _ = match self {
            OpenedStore::Sqlite(s) => s.stats.sink.set(m),
            OpenedStore::Postgres(s) => s.stats.sink.set(m),
        };
    }

    /// Commits what is queued and stops the writer.
    pub async fn close(&self) {
        match self {
            OpenedStore::Sqlite(s) => s.close(),
            OpenedStore::Postgres(s) => s.close().await,
        }
    }

    /// Where it is, for the log (no password).
    pub fn describe(&self, config: &Config) -> String {
        match self {
            OpenedStore::Sqlite(_) if config.store.memory => "memory".into(),
            OpenedStore::Sqlite(_) => config.data_dir.join(STORE_FILE).display().to_string(),
            OpenedStore::Postgres(s) => format!(
                "{} schema {}",
                crate::store::postgres::redact(&s.options().url),
                s.options().schema
            ),
        }
    }
}

/// The SQLite store's file in `data_dir`.
pub const STORE_FILE: &str = "switchyard.db";
/// The embedded workflow engine's registry in `data_dir` (SQLite store).
pub const WORKFLOWS_FILE: &str = "workflows.db";

/// Why `switchyard backup` wrote nothing, or not everything.
#[derive(Debug, thiserror::Error)]
pub enum BackupFailed {
    /// The store is PostgreSQL: its own tools back it up.
    #[error(
        "the store is PostgreSQL ({url}, schema {schema}); back it up with pg_dump:\n  {command}"
    )]
    Postgres {
        /// The store's URL, without its password.
        url: String,
        /// The schema of the tables (`store.schema`).
        schema: String,
        /// The pg_dump command that does it.
        command: String,
    },
    /// The store is in memory: nothing to copy.
    #[error("the store is in memory (store.memory): there is nothing to back up")]
    Memory,
    /// The copy failed or was refused.
    #[error(transparent)]
    Sqlite(#[from] crate::store::sqlite::BackupError),
}

/// `switchyard backup`: copies the configured SQLite store, running or
/// not, into `dest` as one consistent snapshot, and the workflow registry
/// (`workflows.db`) and the schedules (`schedules.db`), if there are, beside
/// it (`dest` with the extension `workflows.db`, `schedules.db`). The
/// registry is copied after the tasks: its versions are never changed or
/// deleted, so it holds every version the copied tasks use. The schedules
/// are copied last: a restored schedule's last tick is at least as late as
/// the copied tasks' fires, and a tick the copy recorded but whose task it
/// lacks is not fired again.
/// The keys and the audit log (`keys.db`) follow.
/// Existing destinations are refused unless `replace`.
pub fn backup(
    config: &Config,
    dest: &std::path::Path,
    replace: bool,
) -> Result<Vec<crate::store::sqlite::BackupReport>, BackupFailed> {
    use crate::store::sqlite::{backup, BackupError};
    if let Some(url) = &config.store.url {
        let url = crate::store::postgres::redact(url);
        let schema = config.store.schema.clone();
        let mut command = format!(
            "pg_dump --format=custom --schema={schema} --file={} '{url}'",
            dest.display()
        );
        if url.contains(":***@") {
            command
                .push_str("\n  (the password is not shown: put it back, or give it in PGPASSWORD)");
        }
        return Err(BackupFailed::Postgres {
            command,
            url,
            schema,
        });
    }
    if config.store.memory {
        return Err(BackupFailed::Memory);
    }
    // The side files that exist: the workflow registry and the schedules.
    let sides: Vec<_> = [
        WORKFLOWS_FILE,
        crate::schedules::FILE,
        crate::flow::FILE,
        crate::keys::FILE,
    ]
    .into_iter()
    .map(|f| (config.data_dir.join(f), dest.with_extension(f)))
    .filter(|(from, _)| from.is_file())
    .collect();
    if !replace {
        for d in std::iter::once(dest).chain(sides.iter().map(|(_, to)| to.as_path())) {
            if d.symlink_metadata().is_ok() {
                return Err(BackupError::Exists(d.to_path_buf()).into());
            }
        }
    }
    let mut out = vec![backup(&config.data_dir.join(STORE_FILE), dest, replace)?];
    for (from, to) in &sides {
        out.push(backup(from, to, replace)?);
    }
    Ok(out)
}

/// The largest gRPC message a server decodes or encodes.
fn max_message(config: &Config) -> usize {
    (config.limits.max_payload_bytes * 2).max(4 << 20)
}

/// Opens the configured store: PostgreSQL with `store.url`, else SQLite.
/// `retention` stamps each ended row with its removal time.
pub async fn open_store(
    config: &Config,
    retention: Arc<crate::domain::retention::RetentionPolicy>,
) -> Result<OpenedStore, crate::store::StoreError> {
    if let Some(url) = &config.store.url {
        let replica = config
            .cluster
            .replica_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        return Ok(OpenedStore::Postgres(
            PgStore::open(PgOptions {
                url: url.clone(),
                schema: config.store.schema.clone(),
                max_batch: config.store.max_batch,
                replica,
                retention,
                ..Default::default()
            })
            .await?,
        ));
    }
    Ok(OpenedStore::Sqlite(SqliteStore::open(SqliteOptions {
        path: (!config.store.memory).then(|| config.data_dir.join(STORE_FILE)),
        synchronous: config.store.synchronous,
        max_batch: config.store.max_batch,
        retention,
        ..Default::default()
    })?))
}

/// Serves Switchyard's gRPC services on `listener` until `shutdown`
/// resolves, then drains: health goes NOT_SERVING, nothing new is accepted,
/// running tasks get `scheduler.shutdown_grace` to finish and the rest are
/// requeued durably. Serves no admin HTTP server; [`run_with`] does.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with(
        Listeners {
            grpc: listener,
            admin: None,
        },
        config,
        shutdown,
    )
    .await
}

/// As [`run`], and also the admin HTTP server on `listeners.admin` (JSON
/// routes, server-sent events, Prometheus `/metrics`, the dashboard). With
/// `auth.tokens` set, both require a bearer token. The admin server stops
/// with the gRPC server; its event streams end when the drain starts.
pub async fn run_with(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        admin: admin_listener,
    } = listeners;
    let tokens = crate::auth::Tokens::load(&config.auth).map_err(ServeError::Config)?;
    let tls = config
        .tls
        .server()
        .map_err(|e| ServeError::Config(e.to_string()))?;
    if tls.is_some() && config.store.url.is_some() {
        // A standby forwards calls to the leader over plaintext.
        return Err(ServeError::Config(
            "tls with store.url (replicas over PostgreSQL) is not supported yet: a standby \
             forwards to the leader in plaintext"
                .into(),
        ));
    }
    config.cluster.check().map_err(ServeError::Config)?;
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let retention = Arc::new(config.retention.policy().map_err(ServeError::Config)?);
    let flow_rules = config.flow.rules().map_err(ServeError::Config)?;
    let opening = std::time::Instant::now();
    let store = open_store(&config, retention.clone()).await?;
    // The open alone (`ready_in_ms` below counts from after it, and from
    // the lease on PostgreSQL): an upgrade of an earlier file runs here.
    let store_open_ms = opening.elapsed().as_millis() as u64;
    // On PostgreSQL: stand by until this replica holds the lease.
    let mut listener = listener;
    let mut leading: Option<(Arc<Lease>, i64)> = None;
    if let OpenedStore::Postgres(pg) = &store {
        let local = listener.local_addr()?;
        let lease = Arc::new(Lease::new(
            pg.options(),
            config.cluster.advertised(local),
            config.cluster.lease_ttl,
        )?);
        tracing::info!(replica = %lease.replica, address = %lease.address, "replica started: standing by until it holds the lease");
        match crate::cluster::stand_by(
            listener,
            lease.clone(),
            pg.clone(),
            crate::cluster::Checks {
                tokens: tokens.clone(),
                max_message: max_message(&config),
                jwt: config.auth.jwt.is_some(),
                keys: Some(Arc::new(crate::keys::Db::Postgres(Box::new(
                    crate::store::postgres::keys::KeyRows::open(pg)?,
                )))),
            },
            stop.clone(),
        )
        .await
        {
            Some((term, l)) => {
                listener = l;
                pg.set_fence(Fence {
                    partition: lease.partition,
                    term,
                    holder: lease.replica.clone(),
                });
                tracing::info!(term, replica = %lease.replica, "this replica leads: starting the core from the store");
                leading = Some((lease, term));
            }
            None => {
                store.close().await;
                tracing::info!("stopped (standby)");
                return Ok(());
            }
        }
    }
    let started = std::time::Instant::now();
    // This server's own registry, fed by the store writer and the webhook
    // executor through one-line hooks; only when something serves it.
    let metrics = admin_listener
        .is_some()
        .then(crate::admin::metrics::Metrics::new);
    let mut core_config = config.core();
    core_config.retention = retention;
    if let Some(m) = &metrics {
        store.set_metrics(m.clone());
        core_config.metrics_sink = Some(m.clone());
        if let Some((_, term)) = &leading {
            crate::telemetry::MetricsSink::leading(&**m, *term);
        }
    }
    let core = Core::start(store.store(), core_config).await?;
    if let Some(m) = &metrics {
        m.attach(core.clone());
    }
    let addr = listener.local_addr().ok();
    let mut config = config;
    config.webhook.own_addresses = addr
        .into_iter()
        .chain(admin_listener.as_ref().and_then(|l| l.local_addr().ok()))
        .collect();
    // The flow rules are in place before any engine takes a task.
    let flow_control = start_flow(&core, &config, &store, flow_rules).await?;
    let executors = start_engines(&core, &config, &store)?;
    // The schedules' runner stops at the drain's start, or when the lease
    // is lost (`serve_stop`).
    let schedules_stop = CancellationToken::new();
    let schedules = start_schedules(&core, &config, &store, schedules_stop.clone()).await?;
    let keys = start_keys(&core, &config, &store, tokens.clone()).await?;
    tracing::info!(
        ?addr,
        store = %store.describe(&config),
        ready_in_ms = started.elapsed().as_millis() as u64,
        store_open_ms,
        "switchyard ready"
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<OrchestratorServiceServer<orchestrator::Orchestrator>>()
        .await;
    health
        .set_serving::<WorkerServiceServer<worker::Workers>>()
        .await;
    health
        .set_serving::<ScheduleServiceServer<schedules::ScheduleApi>>()
        .await;
    health
        .set_serving::<FlowServiceServer<flow::FlowApi>>()
        .await;
    health
        .set_serving::<KeysServiceServer<keys::KeysApi>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let watch_stop = CancellationToken::new();
    let serve_stop = CancellationToken::new();
    let store_blocked = watch_store(store.store(), health.clone(), stop.clone());
    let max_msg = max_message(&config);
    let cluster: Arc<dyn crate::app::cluster::ClusterView> = match &leading {
        Some((lease, _)) => Arc::new(crate::cluster::LeaseView(lease.clone())),
        None => Arc::new(crate::app::cluster::SingleReplica {
            replica_id: config
                .cluster
                .replica_id
                .clone()
                .unwrap_or_else(|| "embedded".into()),
        }),
    };
    let orchestrator = orchestrator::Orchestrator::new(
        core.clone(),
        crate::app::convert::Limits {
            max_payload_bytes: config.limits.max_payload_bytes,
        },
        watch_stop.clone(),
        executors.workflows.clone(),
        cluster.clone(),
        keys.clone(),
    );
    // The keys' last use: policy on shutdown — one last write when the
    // server stops serving.
    tokio::spawn(keys.clone().flush_loop(serve_stop.clone()));

    {
        let (stop, serve_stop) = (stop.clone(), serve_stop.clone());
        // Policy on shutdown: ends with the first of the two.
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_stop.cancelled() => {}
            }
            schedules_stop.cancel();
        });
    }

    // The drain: policy — runs once, when `shutdown` resolves.
    {
        let sqlite = match &store {
            OpenedStore::Sqlite(s) => Some(s.clone()),
            OpenedStore::Postgres(_) => None,
        };
        let core = core.clone();
        let health = health.clone();
        let (watch_stop, serve_stop) = (watch_stop.clone(), serve_stop.clone());
        let grace = config.scheduler.shutdown_grace;
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            tracing::info!("shutting down: draining");
            if let Some(s) = &sqlite {
                // A full disk does not hold the drain's last writes for ever.
                s.stopping();
            }
            health
                .set_not_serving::<OrchestratorServiceServer<orchestrator::Orchestrator>>()
                .await;
            health
                .set_not_serving::<WorkerServiceServer<worker::Workers>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            core.shutdown(grace).await;
            watch_stop.cancel();
            serve_stop.cancel();
        });
    }

    // Leadership: policy — a leader that loses its lease (or finds itself
    // fenced) stops at once, without a drain: its writes would be refused,
    // and a standby is taking over.
    let lost: Arc<parking_lot::Mutex<Option<(i64, String)>>> = Default::default();
    if let (Some((lease, term)), OpenedStore::Postgres(pg)) = (&leading, &store) {
        let (lease, term, fenced) = (lease.clone(), *term, pg.fenced());
        let (lost, health) = (lost.clone(), health.clone());
        let (watch_stop, serve_stop) = (watch_stop.clone(), serve_stop.clone());
        let m = metrics.clone();
        tokio::spawn(async move {
            let observe = move |d| {
                if let Some(m) = &m {
                    crate::telemetry::MetricsSink::lease_renewed(&**m, d)
                }
            };
            let reason = tokio::select! {
                l = crate::cluster::keep_lease(lease, term, observe) => match l {
                    crate::cluster::Lost::TermOver => "another replica holds the lease".to_string(),
                },
                t = fenced => format!("a write found term {t} over"),
                _ = serve_stop.cancelled() => return,
            };
            tracing::error!(term, %reason, "this replica lost its lease: stopping now, without a drain (a standby takes over)");
            *lost.lock() = Some((term, reason));
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            watch_stop.cancel();
            serve_stop.cancel();
        });
    }

    // Admin server: policy on shutdown — closes gracefully with the gRPC
    // server (`serve_stop`); its event streams end with `watch_stop`.
    let admin = match (admin_listener, metrics) {
        (Some(l), Some(m)) => Some(tokio::spawn(crate::admin::serve(
            l,
            crate::admin::AdminState {
                core: core.clone(),
                metrics: m,
                streams_stop: watch_stop.clone(),
                heartbeat: config.admin.heartbeat,
                cluster: cluster.clone(),
                store_blocked,
                schedules: schedules.clone(),
                flow: flow_control.clone(),
                keys: keys.clone(),
            },
            tls.as_ref().map(|t| t.admin.clone()),
            serve_stop.clone(),
        ))),
        _ => None,
    };

    // Health and reflection stay open; the other services need a token or
    // a key when any is configured, and the role the table names for each
    // method (`keys::table`). ScheduleService, FlowService and KeysService
    // are clients' services: they take the same certificate check as
    // OrchestratorService.
    let (orchestrator_gate, worker_gate) = match &tls {
        Some(t) => (t.orchestrator.clone(), t.workers.clone()),
        None => (crate::tls::Gate::open(), crate::tls::Gate::open()),
    };
    let router = Server::builder()
        // The "rapid reset" guard, set rather than left to h2's default:
        // 20 calls cancelled before the server took them closed the whole
        // connection when a client's calls passed their deadlines together
        // (a stalled machine, a NestJS backend sharing one connection):
        // every other call on it failed. The limit on streams the server
        // resets itself stays off, as tonic leaves it: h2 counts those over
        // a connection's whole life, so a long-lived connection reached
        // hyper's 1,024 in normal use and was sent away (bench k, a minute
        // of load).
        .http2_max_pending_accept_reset_streams(Some(http2::MAX_PENDING_ACCEPT_RESETS))
        // A paused server's worker connections keep their piled-up messages.
        .initial_connection_window_size(http2::CONNECTION_WINDOW)
        // A server span per RPC, parented on the caller's traceparent, while
        // tracing is on (nothing otherwise).
        .trace_fn(crate::telemetry::grpc_request_span)
        .layer(tower::util::MapResponseLayer::new(
            error::resize_status::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // The certificate check (mTLS per service) runs before the token's.
        .add_service(InterceptedService::new(
            Authorized::new(
                OrchestratorServiceServer::new(orchestrator)
                    .max_decoding_message_size(max_msg)
                    .max_encoding_message_size(max_msg),
                keys.clone(),
            ),
            orchestrator_gate.clone(),
        ))
        .add_service(InterceptedService::new(
            Authorized::new(
                WorkerServiceServer::new(worker::Workers::new(core.clone(), keys.clone()))
                    .max_decoding_message_size(max_msg)
                    .max_encoding_message_size(max_msg),
                keys.clone(),
            ),
            worker_gate,
        ))
        .add_service(InterceptedService::new(
            Authorized::new(
                FlowServiceServer::new(flow::FlowApi::new(flow_control, keys.clone()))
                    .max_decoding_message_size(max_msg)
                    .max_encoding_message_size(max_msg),
                keys.clone(),
            ),
            orchestrator_gate.clone(),
        ))
        .add_service(InterceptedService::new(
            Authorized::new(
                ScheduleServiceServer::new(schedules::ScheduleApi::new(
                    schedules.clone(),
                    crate::app::convert::Limits {
                        max_payload_bytes: config.limits.max_payload_bytes,
                    },
                    keys.clone(),
                ))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg),
                keys.clone(),
            ),
            orchestrator_gate.clone(),
        ))
        .add_service(InterceptedService::new(
            Authorized::new(
                KeysServiceServer::new(keys::KeysApi::new(keys.clone())),
                keys,
            ),
            orchestrator_gate,
        ));
    let stopped = {
        let s = serve_stop.clone();
        async move { s.cancelled().await }
    };
    let serve: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match &tls {
            Some(t) => Box::pin(router.serve_with_incoming_shutdown(
                crate::tls::incoming(listener, t.grpc.clone()),
                stopped,
            )),
            // `Server::tcp_nodelay` does not apply to an incoming stream of
            // our own: without TCP_NODELAY, a small HTTP/2 frame (an answer,
            // an assignment) written while an earlier one is unacknowledged
            // waits for the peer's delayed ACK, 40 ms on Linux.
            None => Box::pin(router.serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped,
            )),
        };
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        _ = async {
            serve_stop.cancelled().await;
            // Connections that do not close by themselves get a few seconds.
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    };
    if let Some(admin) = admin {
        serve_stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), admin).await {
            Ok(Ok(Err(e))) => tracing::error!(cause = %e, "admin server failed"),
            Ok(_) => {}
            Err(_) => tracing::warn!("admin server connections did not close in time"),
        }
    }
    store.close().await;
    if let Some((term, reason)) = lost.lock().take() {
        return Err(ServeError::LostLeadership { term, reason });
    }
    if let Some((lease, term)) = leading {
        // A clean stop hands the lease over at once.
        if let Err(e) = lease.release(term).await {
            tracing::warn!(cause = %e, "releasing the lease");
        }
    }
    tracing::info!("stopped");
    Ok(result?)
}

/// How often the server looks whether its store can commit.
const STORE_WATCH_EVERY: Duration = Duration::from_millis(250);

/// The store watcher: policy — polls [`Store::writable`] every
/// [`STORE_WATCH_EVERY`] until `stop` (the drain, which owns health from
/// then on). While the store cannot commit (a full disk, an unreachable
/// database) the server's overall health (service `""`) is NOT_SERVING, and
/// the returned channel holds why (the admin server's `/healthz` and
/// `/readyz`); it is SERVING again once the store commits.
fn watch_store(
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::watch::channel(None::<String>);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORE_WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let now = store.writable().err().map(|e| e.to_string());
            let changed = now.is_some() != tx.borrow().is_some();
            tx.send_if_modified(|v| {
                let m = *v != now;
                *v = now.clone();
                m
            });
            if changed && !stop.is_cancelled() {
                let status = match now {
                    Some(_) => tonic_health::ServingStatus::NotServing,
                    None => tonic_health::ServingStatus::Serving,
                };
                health.set_service_status("", status).await;
                if stop.is_cancelled() {
                    // The drain began meanwhile: it says NOT_SERVING.
                    health
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                    return;
                }
            }
        }
    });
    rx
}

/// Opens the flow rules' storage beside the store (`flow.db` in the data
/// directory, the PostgreSQL store's `flow_rules` table, or nothing for a
/// store in memory) and gives the core the rules: the configuration's and
/// those set at run time.
pub async fn start_flow(
    core: &Core,
    config: &Config,
    store: &OpenedStore,
    rules: crate::domain::flow::FlowRules,
) -> Result<crate::flow::FlowControl, ServeError> {
    use crate::flow::{Db, FlowControl};
    let db = match store {
        OpenedStore::Sqlite(_) if config.store.memory => Db::Memory,
        OpenedStore::Sqlite(_) => FlowControl::open_sqlite(&config.data_dir)?,
        OpenedStore::Postgres(pg) => {
            Db::Postgres(Box::new(crate::store::postgres::flow::FlowRows::open(pg)?))
        }
    };
    Ok(FlowControl::start(core.clone(), db, rules).await?)
}

/// Opens the schedules' storage beside the store (`schedules.db` in the
/// data directory, the PostgreSQL store's `schedules` table, or nothing for
/// a store in memory) and starts their runner, which stops with `stop`.
pub async fn start_schedules(
    core: &Core,
    config: &Config,
    store: &OpenedStore,
    stop: CancellationToken,
) -> Result<crate::schedules::Schedules, ServeError> {
    use crate::schedules::{Db, Schedules};
    let db = match store {
        OpenedStore::Sqlite(_) if config.store.memory => Db::Memory,
        OpenedStore::Sqlite(_) => Schedules::open_sqlite(&config.data_dir)?,
        OpenedStore::Postgres(pg) => Db::Postgres(Box::new(
            crate::store::postgres::schedules::ScheduleRows::open(pg)?,
        )),
    };
    let compile = crate::app::schedule::compiler(crate::app::convert::Limits {
        max_payload_bytes: config.limits.max_payload_bytes,
    });
    Ok(Schedules::start(core.clone(), db, compile, stop).await?)
}

/// Opens the keys' storage beside the store (`keys.db` in the data
/// directory, the PostgreSQL store's `api_keys` and `audit_events` tables,
/// or memory for a store in memory) and loads them beside the static
/// `auth.tokens`.
pub async fn start_keys(
    core: &Core,
    config: &Config,
    store: &OpenedStore,
    tokens: crate::auth::Tokens,
) -> Result<crate::keys::Keys, ServeError> {
    use crate::keys::{Db, Keys};
    let db = match store {
        OpenedStore::Sqlite(_) if config.store.memory => Db::memory(),
        OpenedStore::Sqlite(_) => Db::open_sqlite(&config.data_dir)?,
        OpenedStore::Postgres(pg) => {
            Db::Postgres(Box::new(crate::store::postgres::keys::KeyRows::open(pg)?))
        }
    };
    let jwt = match &config.auth.jwt {
        Some(cfg) => Some(crate::keys::jwt::Jwt::load(cfg).map_err(ServeError::Config)?),
        None => None,
    };
    Ok(Keys::load(tokens, jwt, db, core.clone()).await?)
}

/// Starts every configured engine: the in-process executors (webhook,
/// workflows) and the backends (Temporal, BullMQ), each with its own
/// configuration section.
pub fn start_engines(
    core: &Core,
    config: &Config,
    store: &OpenedStore,
) -> Result<crate::executor::Executors, crate::core::CoreError> {
    let mut ex = crate::executor::Executors::default();
    if config.webhook.enabled {
        // Shutdown policy: abort (calls in flight are requeued by the core).
        ex.tasks
            .push(crate::executor::webhook::start(core, &config.webhook)?);
    }
    if config.temporal.enabled {
        // Shutdown policy: abort (followers stop; the core requeues their
        // tasks and a restarted server resumes following their runs).
        // `tracking_queue` jobs go to BullMQ when a connection is configured.
        let sink: Arc<dyn crate::backend::temporal::TrackingSink> = if config.bullmq.enabled {
            Arc::new(
                crate::backend::temporal::BullmqTrackingSink::new(&config.bullmq)
                    .map_err(crate::core::CoreError::FailedPrecondition)?,
            )
        } else {
            Arc::new(crate::backend::temporal::NoopTrackingSink)
        };
        ex.tasks.push(crate::backend::temporal::start_with_sink(
            core,
            &config.temporal,
            sink,
        )?);
    }
    if config.bullmq.enabled {
        // Shutdown policy: abort (followers stop; the core requeues their
        // tasks and a restarted server resumes following their jobs).
        ex.tasks
            .push(crate::backend::bullmq::start(core, &config.bullmq)?);
    }
    if config.workflows.enabled {
        // Shutdown policy: the engine stops when the core closes its channel
        // (the core requeues the workflows it held); aborted on drop.
        let file = config.data_dir.join(WORKFLOWS_FILE);
        let at = match store {
            OpenedStore::Postgres(pg) => crate::executor::workflow::RegistryAt::Postgres(pg),
            OpenedStore::Sqlite(_) if config.store.memory => {
                crate::executor::workflow::RegistryAt::Memory
            }
            OpenedStore::Sqlite(_) => crate::executor::workflow::RegistryAt::File(&file),
        };
        let (registry, task) = crate::executor::workflow::start(core, &config.workflows, at)?;
        ex.workflows = Some(Arc::new(registry));
        ex.tasks.push(task);
    }
    Ok(ex)
}

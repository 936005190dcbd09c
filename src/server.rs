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
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::api::{error, orchestrator, worker};
use crate::config::Config;
use crate::core::Core;
use crate::pb;
use crate::pb::orchestrator_service_server::OrchestratorServiceServer;
use crate::pb::worker_service_server::WorkerServiceServer;
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
}

/// Where a server listens: gRPC, and the admin HTTP server if given.
pub struct Listeners {
    /// The gRPC services.
    pub grpc: TcpListener,
    /// The admin HTTP API, event stream, Prometheus metrics and dashboard
    /// (see [`crate::admin`]); `None` serves none of it.
    pub admin: Option<TcpListener>,
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> Result<Arc<SqliteStore>, crate::store::StoreError> {
    SqliteStore::open(SqliteOptions {
        path: (!config.store.memory).then(|| config.data_dir.join("switchyard.db")),
        synchronous: config.store.synchronous,
        max_batch: config.store.max_batch,
        ..Default::default()
    })
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
    let store = open_store(&config)?;
    let started = std::time::Instant::now();
    // This server's own registry, fed by the store writer and the webhook
    // executor through one-line hooks; only when something serves it.
    let metrics = admin_listener
        .is_some()
        .then(crate::admin::metrics::Metrics::new);
    let mut core_config = config.core();
    if let Some(m) = &metrics {
        let _ = store.stats.sink.set(m.clone());
        core_config.metrics_sink = Some(m.clone());
    }
    let core = Core::start(store.clone() as Arc<dyn Store>, core_config).await?;
    if let Some(m) = &metrics {
        m.attach(core.clone());
    }
    let addr = listener.local_addr().ok();
    let mut config = config;
    config.webhook.own_addresses = addr
        .into_iter()
        .chain(admin_listener.as_ref().and_then(|l| l.local_addr().ok()))
        .collect();
    let executors = start_engines(&core, &config)?;
    tracing::info!(
        ?addr,
        store = %if config.store.memory { "memory".to_string() } else { config.data_dir.join("switchyard.db").display().to_string() },
        ready_in_ms = started.elapsed().as_millis() as u64,
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
    let max_msg = (config.limits.max_payload_bytes * 2).max(4 << 20);
    let orchestrator = orchestrator::Orchestrator::new(
        core.clone(),
        crate::app::convert::Limits {
            max_payload_bytes: config.limits.max_payload_bytes,
        },
        watch_stop.clone(),
        executors.workflows.clone(),
    );

    // The drain: policy — runs once, when `shutdown` resolves.
    {
        let core = core.clone();
        let health = health.clone();
        let (watch_stop, serve_stop) = (watch_stop.clone(), serve_stop.clone());
        let grace = config.scheduler.shutdown_grace;
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: draining");
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
            },
            tokens.clone(),
            serve_stop.clone(),
        ))),
        _ => None,
    };

    // Health and reflection stay open; the two services need the token
    // when `auth.tokens` is set.
    let auth = crate::auth::GrpcAuth(tokens);
    let serve = Server::builder()
        // A server span per RPC, parented on the caller's traceparent, while
        // tracing is on (nothing otherwise).
        .trace_fn(crate::telemetry::grpc_request_span)
        .layer(tower::util::MapResponseLayer::new(
            error::resize_status::<tonic::body::Body>,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            OrchestratorServiceServer::new(orchestrator)
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            WorkerServiceServer::new(worker::Workers::new(core.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg),
            auth,
        ))
        // `Server::tcp_nodelay` does not apply to an incoming stream of our
        // own: without TCP_NODELAY, a small HTTP/2 frame (an answer, an
        // assignment) written while an earlier one is unacknowledged waits
        // for the peer's delayed ACK, 40 ms on Linux.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), {
            let s = serve_stop.clone();
            async move { s.cancelled().await }
        });
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
    store.close();
    tracing::info!("stopped");
    Ok(result?)
}

/// Starts every configured engine: the in-process executors (webhook,
/// workflows) and the backends (Temporal, BullMQ), each with its own
/// configuration section.
pub fn start_engines(
    core: &Core,
    config: &Config,
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
        let (registry, task) = crate::executor::workflow::start(
            core,
            &config.workflows,
            (!config.store.memory)
                .then(|| config.data_dir.join("workflows.db"))
                .as_deref(),
        )?;
        ex.workflows = Some(Arc::new(registry));
        ex.tasks.push(task);
    }
    let _ = (core, config);
    Ok(ex)
}

//! The gRPC edge: service handlers, conversions, the error mapping, and
//! [`run`], the server's entry point.

pub mod convert;
pub mod error;
pub mod orchestrator;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

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

/// Serves Switchyard on `listener` until `shutdown` resolves, then drains:
/// health goes NOT_SERVING, nothing new is accepted, running tasks get
/// `scheduler.shutdown_grace` to finish and the rest are requeued durably.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config)?;
    let started = std::time::Instant::now();
    let core = Core::start(store.clone() as Arc<dyn Store>, config.core()).await?;
    let executors = crate::executor::start(&core, &config)?;
    let addr = listener.local_addr().ok();
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
        convert::Limits {
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

    let serve = Server::builder()
        // A server span per RPC, parented on the caller's traceparent, while
        // tracing is on (nothing otherwise).
        .trace_fn(crate::telemetry::grpc_request_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            OrchestratorServiceServer::new(orchestrator)
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg),
        )
        .add_service(
            WorkerServiceServer::new(worker::Workers::new(core.clone()))
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(max_msg),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
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
    store.close();
    tracing::info!("stopped");
    Ok(result?)
}

//! In-process executors: the engines that run INTEGRATION (webhook) and
//! COMPLEX (workflow) tasks inside the server.
//!
//! An executor is a local worker: it registers with the core for its type's
//! internal queue key ([`crate::core::internal_key`]), receives
//! [`crate::core::Push`]es on a channel exactly like a remote worker's stream,
//! and reports with [`crate::core::Core::report`]. So retries, backoff,
//! leases, cancellation, `Disconnect`, logs and events work the same for every
//! type, and the core never knows which engine ran a task.

pub mod webhook;
pub mod workflow;

use crate::config::Config;
use crate::core::Core;

use std::sync::Arc;

use crate::core::CoreError;

/// The registry of workflow definitions, served by `RegisterWorkflow` and
/// `ListWorkflows`.
#[async_trait::async_trait]
pub trait WorkflowRegistry: Send + Sync {
    /// Registers a definition (`format`: `json` or `toml`); returns the name,
    /// the version, and whether a new version was made.
    async fn register(&self, text: &str, format: &str) -> Result<(String, u32, bool), CoreError>;
    /// The latest version of every definition: (name, version, JSON).
    async fn list(&self) -> Result<Vec<(String, u32, String)>, CoreError>;
}

/// Handles of the running executors (kept so they live as long as the server).
#[derive(Default)]
pub struct Executors {
    /// Background tasks of the executors; aborted on drop.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The workflow registry, when the workflow engine runs.
    pub workflows: Option<Arc<dyn WorkflowRegistry>>,
}

impl Drop for Executors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts every configured in-process executor.
pub fn start(core: &Core, config: &Config) -> Result<Executors, crate::core::CoreError> {
    let mut ex = Executors::default();
    if config.webhook.enabled {
        // Shutdown policy: abort (calls in flight are requeued by the core).
        ex.tasks.push(webhook::start(core, &config.webhook)?);
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
        let (registry, task) = workflow::start(core, config)?;
        ex.workflows = Some(Arc::new(registry));
        ex.tasks.push(task);
    }
    let _ = (core, config);
    Ok(ex)
}

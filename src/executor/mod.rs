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

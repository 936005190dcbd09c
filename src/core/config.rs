//! The core's configuration ([`CoreConfig`]) and routing of tasks to engines
//! ([`Routes`]).
//!
//! Owns: tunables and the decision which queue key a task goes to.
//! Must not: read files or the environment (that is `crate::config`).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::*;

use super::EngineKind;

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long a worker's leases last without a message from it.
    pub lease_ttl: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// How often a task may lose its worker before it fails.
    pub max_lease_losses: u32,
    /// Events kept for resuming watches.
    pub event_history: usize,
    /// Payload bytes kept in memory for pending tasks (the rest are read from
    /// the store at dispatch).
    pub payload_cache_bytes: usize,
    /// Execution timeout of tasks that set none.
    pub default_execution_timeout: Option<Duration>,
    /// Which tasks go to external engines.
    pub routes: Routes,
    /// Where the in-process executors report measurements the core does not
    /// see (webhook response codes); none when nothing exports metrics.
    pub metrics_sink: Option<Arc<dyn crate::telemetry::MetricsSink>>,
    /// How long ended tasks are kept (the sweeper's count caps; the store
    /// stamps the ages on each ended row).
    pub retention: Arc<crate::domain::retention::RetentionPolicy>,
    /// How often the retention sweeper looks for tasks to remove.
    pub sweep_every: Duration,
    /// Tasks removed per write.
    pub sweep_batch: usize,
}

/// Which tasks an external engine runs instead of the embedded one. Routing
/// is decided from the task's spec and this configuration whenever a task is
/// queued (also after a restart).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// SIMPLE tasks whose queue (or, without one, name) is listed go to the
    /// BullMQ backend; `*` routes every SIMPLE task.
    pub bullmq_queues: Vec<String>,
    /// COMPLEX tasks whose workflow type is listed go to the Temporal
    /// backend; `*` routes every COMPLEX task.
    pub temporal_workflows: Vec<String>,
}

impl Routes {
    pub(super) fn listed(list: &[String], v: &str) -> bool {
        list.iter().any(|x| x == "*" || x == v)
    }

    /// The queue key and the engine of a task.
    pub fn route<'a>(&self, spec: &'a TaskSpec) -> (&'a str, EngineKind) {
        let engine = match (&spec.task_type, &spec.target) {
            (TaskType::Simple, Target::Simple { queue }) => {
                let q = queue.as_deref().unwrap_or(&spec.name);
                if Self::listed(&self.bullmq_queues, q) {
                    EngineKind::Bullmq
                } else {
                    EngineKind::Queue
                }
            }
            (TaskType::Complex, Target::Complex { workflow_type, .. })
                if Self::listed(&self.temporal_workflows, workflow_type) =>
            {
                EngineKind::Temporal
            }
            (TaskType::Integration, _) => EngineKind::Webhook,
            (TaskType::Complex, _) => EngineKind::Workflow,
            (TaskType::Simple, _) => EngineKind::Queue,
        };
        (engine.key().unwrap_or(&spec.name), engine)
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            max_lease_losses: 5,
            event_history: 100_000,
            payload_cache_bytes: 256 << 20,
            default_execution_timeout: None,
            routes: Routes::default(),
            metrics_sink: None,
            retention: Default::default(),
            sweep_every: Duration::from_secs(1),
            sweep_batch: 100,
        }
    }
}

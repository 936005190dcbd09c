//! The core's configuration ([`CoreConfig`]) and routing of tasks to engines
//! ([`Routes`]).
//!
//! Owns: tunables and the decision which queue key a task goes to.
//! Must not: read files or the environment (that is `crate::config`).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::*;

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
    pub metrics_sink: Option<Arc<dyn super::metrics::MetricsSink>>,
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

/// Whether a queue key belongs to an external engine's backend.
pub fn is_backend_key(key: &str) -> bool {
    key == BULLMQ_KEY || key == TEMPORAL_KEY
}

/// The internal queue key of the BullMQ backend.
pub const BULLMQ_KEY: &str = "#bullmq";

/// The internal queue key of the Temporal backend.
pub const TEMPORAL_KEY: &str = "#temporal";

impl Routes {
    pub(super) fn listed(list: &[String], v: &str) -> bool {
        list.iter().any(|x| x == "*" || x == v)
    }

    /// The queue key and the engine of a task.
    pub fn route<'a>(&self, spec: &'a TaskSpec) -> (&'a str, Source) {
        match (&spec.task_type, &spec.target) {
            (TaskType::Simple, Target::Simple { queue }) => {
                let q = queue.as_deref().unwrap_or(&spec.name);
                if Self::listed(&self.bullmq_queues, q) {
                    (BULLMQ_KEY, Source::Bullmq)
                } else {
                    (&spec.name, Source::Embedded)
                }
            }
            (TaskType::Complex, Target::Complex { workflow_type, .. })
                if Self::listed(&self.temporal_workflows, workflow_type) =>
            {
                (TEMPORAL_KEY, Source::Temporal)
            }
            (TaskType::Integration, _) => ("#integration", Source::N8n),
            (TaskType::Complex, _) => ("#workflow", Source::Embedded),
            (TaskType::Simple, _) => (&spec.name, Source::Embedded),
        }
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
        }
    }
}

/// The queue key of tasks of a type that run on an in-process executor.
pub fn internal_key(t: TaskType) -> Option<&'static str> {
    match t {
        TaskType::Simple => None,
        TaskType::Complex => Some("#workflow"),
        TaskType::Integration => Some("#integration"),
    }
}

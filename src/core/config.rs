//! The core's configuration ([`CoreConfig`]) and routing of tasks to engines
//! ([`Routes`]).
//!
//! Owns: tunables and the decision which queue key a task goes to.
//! Must not: read files or the environment (that is `crate::config`).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::*;

use super::{CoreError, EngineKind};

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

    /// The queue key and the engine of a task: an in-process engine's key,
    /// or for the embedded queue the task's name, qualified by its
    /// namespace (`name@ns`, see `domain::namespace`) so a worker takes
    /// only its namespace's tasks.
    pub fn route<'a>(&self, spec: &'a TaskSpec) -> (std::borrow::Cow<'a, str>, EngineKind) {
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
        let key = match engine.key() {
            Some(k) => std::borrow::Cow::Borrowed(k),
            None => crate::domain::namespace::qualify(&spec.name, spec.namespace()),
        };
        (key, engine)
    }

    /// Refuses the target's settings that `engine`, where the task is
    /// routed, cannot honour (FAILED_PRECONDITION naming the setting), so
    /// a setting is never dropped without a word. On the embedded workflow
    /// engine: `complex.tracking_queue` (only Temporal's backend publishes
    /// tracking jobs), and `complex.task_queue` unless it is a queue BullMQ
    /// takes (the engine gives it to its step tasks as their queue, which
    /// only BullMQ's routing reads). The engines check their own settings
    /// in their admissions (see `Core::set_admission`).
    pub fn check_settings(&self, spec: &TaskSpec, engine: EngineKind) -> Result<(), CoreError> {
        let Target::Complex {
            workflow_type,
            task_queue,
            tracking_queue,
            ..
        } = &spec.target
        else {
            return Ok(());
        };
        if engine != EngineKind::Workflow {
            return Ok(());
        }
        let why = if self.temporal_workflows.is_empty() {
            "this server routes no workflow to Temporal (temporal.enabled, temporal.workflow_types)"
                .to_string()
        } else {
            format!(
                "workflow type {} is not in temporal.workflow_types",
                text::quote(workflow_type)
            )
        };
        if tracking_queue.is_some() {
            return Err(CoreError::FailedPrecondition(format!(
                "complex.tracking_queue: the task would run on the embedded workflow engine \
                 ({why}), which publishes no tracking jobs; tracking_queue is honoured for \
                 workflows on Temporal with [bullmq] enabled"
            )));
        }
        if let Some(q) = task_queue {
            if !Self::listed(&self.bullmq_queues, q) {
                return Err(CoreError::FailedPrecondition(format!(
                    "complex.task_queue: the task would run on the embedded workflow engine \
                     ({why}), which has no task queues: its steps go to workers by task name, \
                     and {} is not a BullMQ queue (bullmq.queues) its steps could go to",
                    text::quote(q)
                )));
            }
        }
        Ok(())
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
            sweep_batch: 32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complex(task_queue: Option<&str>, tracking_queue: Option<&str>) -> TaskSpec {
        TaskSpec::new(
            "order",
            TaskType::Complex,
            Target::Complex {
                workflow_type: "order".into(),
                workflow_args: vec![],
                task_queue: task_queue.map(Into::into),
                tracking_queue: tracking_queue.map(Into::into),
                workflow_id: None,
            },
        )
    }

    fn refused(r: Result<(), CoreError>) -> String {
        match r {
            Err(CoreError::FailedPrecondition(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn settings_the_embedded_workflow_engine_ignores_are_refused() {
        let embedded = Routes::default();
        let (_, engine) = embedded.route(&complex(None, None));
        assert_eq!(engine, EngineKind::Workflow);
        assert!(embedded
            .check_settings(&complex(None, None), engine)
            .is_ok());
        let m = refused(embedded.check_settings(&complex(None, Some("track")), engine));
        assert!(
            m.starts_with("complex.tracking_queue: ") && m.contains("temporal.enabled"),
            "{m}"
        );
        let m = refused(embedded.check_settings(&complex(Some("orders"), None), engine));
        assert!(
            m.starts_with("complex.task_queue: ") && m.contains("bullmq.queues"),
            "{m}"
        );

        // Another type on Temporal: this one stays embedded, and says why.
        let some = Routes {
            temporal_workflows: vec!["payment".into()],
            bullmq_queues: vec!["orders".into()],
        };
        let m = refused(some.check_settings(&complex(None, Some("track")), engine));
        assert!(
            m.contains("\"order\" is not in temporal.workflow_types"),
            "{m}"
        );
        // A task queue BullMQ takes is where its steps go.
        assert!(some
            .check_settings(&complex(Some("orders"), None), engine)
            .is_ok());

        // On Temporal both are its own (its admission checks them).
        let all = Routes {
            temporal_workflows: vec!["*".into()],
            ..Default::default()
        };
        let spec = complex(Some("q"), Some("track"));
        let (_, engine) = all.route(&spec);
        assert_eq!(engine, EngineKind::Temporal);
        assert!(all.check_settings(&spec, engine).is_ok());
    }
}

//! The engines that run tasks, as one typed [`EngineKind`], and the queue
//! keys of the in-process ones.
//!
//! Owns: which engine a queue key belongs to, and what the core must know
//! of each engine (whether it is an external backend, its [`Source`]).
//! Must not: know how an engine runs a task (that is `crate::executor` and
//! `crate::backend`).

use crate::domain::Source;

/// An engine that runs tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// The embedded queue: remote workers take tasks by name.
    Queue,
    /// The in-process webhook caller (INTEGRATION tasks).
    Webhook,
    /// The embedded workflow engine (COMPLEX tasks).
    Workflow,
    /// The BullMQ backend (SIMPLE tasks routed to it).
    Bullmq,
    /// The Temporal backend (COMPLEX tasks routed to it).
    Temporal,
}

impl EngineKind {
    /// The internal queue key of an in-process engine (none for the
    /// embedded queue, whose keys are task names). The keys start with `#`,
    /// which no task name does, and show in the metrics.
    pub const fn key(self) -> Option<&'static str> {
        match self {
            EngineKind::Queue => None,
            EngineKind::Webhook => Some("#integration"),
            EngineKind::Workflow => Some("#workflow"),
            EngineKind::Bullmq => Some("#bullmq"),
            EngineKind::Temporal => Some("#temporal"),
        }
    }

    /// The engine a queue key belongs to.
    pub fn of_key(key: &str) -> EngineKind {
        if !key.starts_with('#') {
            return EngineKind::Queue;
        }
        match key {
            "#integration" => EngineKind::Webhook,
            "#workflow" => EngineKind::Workflow,
            "#bullmq" => EngineKind::Bullmq,
            "#temporal" => EngineKind::Temporal,
            _ => EngineKind::Queue,
        }
    }

    /// An external engine reached through a backend: it holds the task
    /// (and its delay) and the backend mirrors its states.
    pub const fn is_backend(self) -> bool {
        matches!(self, EngineKind::Bullmq | EngineKind::Temporal)
    }

    /// Whether it runs inside the server (everything but the embedded
    /// queue's remote workers).
    pub const fn in_process(self) -> bool {
        !matches!(self, EngineKind::Queue)
    }

    /// The engine's name in logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            EngineKind::Queue => "queue",
            EngineKind::Webhook => "integration",
            EngineKind::Workflow => "workflow",
            EngineKind::Bullmq => "bullmq",
            EngineKind::Temporal => "temporal",
        }
    }

    /// The name an engine registers under (shown with the workers).
    pub const fn worker_name(self) -> &'static str {
        match self {
            EngineKind::Queue => "queue",
            EngineKind::Webhook => "webhook",
            EngineKind::Workflow => "workflows",
            EngineKind::Bullmq => "bullmq",
            EngineKind::Temporal => "temporal",
        }
    }

    /// The task source the engine's tasks show.
    pub const fn source(self) -> Source {
        match self {
            EngineKind::Queue | EngineKind::Workflow => Source::Embedded,
            EngineKind::Webhook => Source::N8n,
            EngineKind::Bullmq => Source::Bullmq,
            EngineKind::Temporal => Source::Temporal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        use EngineKind::*;
        for e in [Webhook, Workflow, Bullmq, Temporal] {
            assert_eq!(EngineKind::of_key(e.key().unwrap()), e);
        }
        assert_eq!(EngineKind::of_key("send-email"), Queue);
        assert!(Bullmq.is_backend() && Temporal.is_backend() && !Workflow.is_backend());
    }
}

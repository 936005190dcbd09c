//! The failure kinds Switchyard writes itself in `TaskError.kind`.
//!
//! Owns: the closed list of kinds the core and the engines report, their
//! words on the wire (stable: clients filter and alert on them) and what
//! each means. A worker's own kinds (an exception's class, a BullMQ
//! error's name, a Temporal failure's type) stay free strings and never
//! pass through here.
//! Must not: decide retries; the engine that reports a kind says whether
//! another attempt may succeed (`TaskError.retryable`).

use std::fmt;

/// A kind of failure that Switchyard reports itself (not a worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    // --- the core ---
    /// The attempt ran past its execution timeout.
    Timeout,
    /// The worker holding the attempt was lost (its lease expired, or the
    /// server restarted with the attempt in flight).
    WorkerLost,

    // --- the embedded workflow engine ---
    /// A non-COMPLEX task was routed to the workflow engine.
    InvalidTask,
    /// No registered workflow has the task's name.
    UnknownWorkflow,
    /// A step's task was cancelled.
    StepCancelled,
    /// A step's task ended neither COMPLETED, FAILED nor CANCELLED.
    StepEnded,
    /// A compensation step failed.
    CompensationFailed,
    /// The workflow ran past its own timeout.
    WorkflowTimeout,
    /// A signal step waited past its timeout.
    SignalTimeout,

    // --- the Temporal backend ---
    /// The server's configuration cannot start this workflow (no task
    /// queue).
    Config,
    /// The workflow id is in use by a run another request started.
    WorkflowIdInUse,
    /// Temporal refused the start.
    Rejected,
    /// Temporal no longer knows the workflow.
    NotFound,
    /// The workflow was terminated in Temporal.
    Terminated,
    /// A run failed without a failure of its own (Temporal's generic
    /// `Failure` class).
    TemporalFailure,

    // --- the INTEGRATION (webhook) executor ---
    /// The target cannot be turned into a URL (no n8n base URL, bad URL).
    /// Not retried. The Temporal backend uses it for a target it cannot
    /// start either.
    InvalidTarget,
    /// The SSRF guard refused the destination. Not retried.
    SsrfRefused,
    /// A source's credentials may not go to this host. Not retried.
    AuthRefused,
    /// The host already has `per_host_concurrency` calls in flight and as
    /// many waiting. Retried.
    HostBusy,
    /// No connection could be made (refused, DNS, TLS, connect timeout);
    /// the request was not sent. Retried.
    ConnectError,
    /// The request was (or may have been) sent and no answer came: the
    /// outcome is unknown. Retried (with the same `Idempotency-Key`).
    NoResponse,
    /// The answer's headers came but its body was cut off. Retried.
    ResponseInterrupted,
    /// The answer's body is larger than `max_response_bytes`. Not retried.
    ResponseTooLarge,
    /// More redirects than `max_redirects`, or a redirect without a usable
    /// `Location`. Not retried.
    Redirect,
    /// n8n answered 404 "webhook is not registered". Not retried.
    WebhookNotRegistered,
    /// 429 Too Many Requests. Retried after `Retry-After`.
    RateLimited,
    /// 5xx, or 408 Request Timeout. Retried.
    ServerError,
    /// Any other 4xx (or an unexpected status). Not retried.
    ClientError,
    /// The payload could not be read from the store. Not retried.
    PayloadMissing,

    // --- the core, again ---
    /// A pending task of a debounce key was cancelled because a newer task
    /// of the same key was scheduled within the quiet period (the error's
    /// message names the newer task).
    Superseded,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 30] = [
        FailureKind::Timeout,
        FailureKind::WorkerLost,
        FailureKind::InvalidTask,
        FailureKind::UnknownWorkflow,
        FailureKind::StepCancelled,
        FailureKind::StepEnded,
        FailureKind::CompensationFailed,
        FailureKind::WorkflowTimeout,
        FailureKind::SignalTimeout,
        FailureKind::Config,
        FailureKind::WorkflowIdInUse,
        FailureKind::Rejected,
        FailureKind::NotFound,
        FailureKind::Terminated,
        FailureKind::TemporalFailure,
        FailureKind::InvalidTarget,
        FailureKind::SsrfRefused,
        FailureKind::AuthRefused,
        FailureKind::HostBusy,
        FailureKind::ConnectError,
        FailureKind::NoResponse,
        FailureKind::ResponseInterrupted,
        FailureKind::ResponseTooLarge,
        FailureKind::Redirect,
        FailureKind::WebhookNotRegistered,
        FailureKind::RateLimited,
        FailureKind::ServerError,
        FailureKind::ClientError,
        FailureKind::PayloadMissing,
        FailureKind::Superseded,
    ];

    /// The word in `TaskError.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::WorkerLost => "worker_lost",
            FailureKind::InvalidTask => "invalid_task",
            FailureKind::UnknownWorkflow => "unknown_workflow",
            FailureKind::StepCancelled => "cancelled",
            FailureKind::StepEnded => "failed",
            FailureKind::CompensationFailed => "compensation_failed",
            FailureKind::WorkflowTimeout => "workflow_timeout",
            FailureKind::SignalTimeout => "signal_timeout",
            FailureKind::Config => "config",
            FailureKind::WorkflowIdInUse => "workflow_id_in_use",
            FailureKind::Rejected => "rejected",
            FailureKind::NotFound => "not_found",
            FailureKind::Terminated => "terminated",
            FailureKind::TemporalFailure => "Failure",
            FailureKind::InvalidTarget => "invalid_target",
            FailureKind::SsrfRefused => "ssrf_refused",
            FailureKind::AuthRefused => "auth_refused",
            FailureKind::HostBusy => "host_busy",
            FailureKind::ConnectError => "connect_error",
            FailureKind::NoResponse => "no_response",
            FailureKind::ResponseInterrupted => "response_interrupted",
            FailureKind::ResponseTooLarge => "response_too_large",
            FailureKind::Redirect => "redirect_error",
            FailureKind::WebhookNotRegistered => "webhook_not_registered",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::ServerError => "server_error",
            FailureKind::ClientError => "client_error",
            FailureKind::PayloadMissing => "payload_missing",
            FailureKind::Superseded => "superseded",
        }
    }

    /// The kind a word names, if Switchyard writes it.
    pub fn parse(word: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<FailureKind> for String {
    fn from(k: FailureKind) -> String {
        k.as_str().to_string()
    }
}

impl PartialEq<FailureKind> for String {
    fn eq(&self, k: &FailureKind) -> bool {
        self == k.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_read_back() {
        let mut seen = std::collections::HashSet::new();
        for k in FailureKind::ALL {
            assert!(seen.insert(k.as_str()), "{k:?} repeats a word");
            assert_eq!(FailureKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(FailureKind::parse("TypeError"), None);
    }

    #[test]
    fn words_on_the_wire_do_not_move() {
        // Clients filter and alert on these: a rename is a breaking change.
        let words: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            words,
            [
                "timeout",
                "worker_lost",
                "invalid_task",
                "unknown_workflow",
                "cancelled",
                "failed",
                "compensation_failed",
                "workflow_timeout",
                "signal_timeout",
                "config",
                "workflow_id_in_use",
                "rejected",
                "not_found",
                "terminated",
                "Failure",
                "invalid_target",
                "ssrf_refused",
                "auth_refused",
                "host_busy",
                "connect_error",
                "no_response",
                "response_interrupted",
                "response_too_large",
                "redirect_error",
                "webhook_not_registered",
                "rate_limited",
                "server_error",
                "client_error",
                "payload_missing",
                "superseded",
            ]
        );
    }
}

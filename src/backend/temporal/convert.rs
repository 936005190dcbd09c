//! Pure translations between Switchyard and Temporal: JSON payloads,
//! failures, close events, pending activities and gRPC errors. No I/O here.

use std::collections::HashMap;
use std::time::Duration;

use temporalio_common::protos::temporal::api::common::v1::{Payload, Payloads};
use temporalio_common::protos::temporal::api::enums::v1::{PendingActivityState, RetryState};
use temporalio_common::protos::temporal::api::failure::v1::{failure::FailureInfo, Failure};
use temporalio_common::protos::temporal::api::history::v1::{
    history_event::Attributes, HistoryEvent,
};
use temporalio_common::protos::temporal::api::workflow::v1::PendingActivityInfo;
use tonic::Code;

use crate::domain::{FailureKind, TaskError};

/// Most bytes of failure detail kept (stack traces, causes).
const MAX_DETAILS: usize = 8 * 1024;

/// A JSON value as a `json/plain` payload, as every Temporal SDK's default
/// converter reads it.
pub fn json_payload(v: &serde_json::Value) -> Payload {
    Payload {
        metadata: HashMap::from([("encoding".to_string(), b"json/plain".to_vec())]),
        data: serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()),
        ..Default::default()
    }
}

/// A search attribute value (JSON-encoded, typed as a Keyword).
pub fn keyword_payload(s: &str) -> Payload {
    let mut p = json_payload(&serde_json::Value::String(s.to_string()));
    p.metadata.insert("type".into(), b"Keyword".to_vec());
    p
}

/// A payload as JSON: `json/plain` and `json/protobuf` are parsed,
/// `binary/null` is null, anything else (binary, encrypted, protobuf) is
/// kept opaque as `{"encoding": .., "data_hex": ..}`.
pub fn payload_json(p: &Payload) -> serde_json::Value {
    let encoding = p
        .metadata
        .get("encoding")
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .unwrap_or_default();
    match encoding.as_str() {
        "json/plain" | "json/protobuf" => {
            serde_json::from_slice(&p.data).unwrap_or_else(|_| opaque(&encoding, &p.data))
        }
        "binary/null" => serde_json::Value::Null,
        _ => opaque(&encoding, &p.data),
    }
}

fn opaque(encoding: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "encoding": encoding,
        "data_hex": data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    })
}

/// A workflow's result as one JSON value: nothing is null, one payload is
/// its value, several are an array.
pub fn payloads_json(p: Option<&Payloads>) -> serde_json::Value {
    match p.map(|p| p.payloads.as_slice()).unwrap_or(&[]) {
        [] => serde_json::Value::Null,
        [one] => payload_json(one),
        many => serde_json::Value::Array(many.iter().map(payload_json).collect()),
    }
}

/// The kind of a failure: an application error's type, else the failure's
/// class as the SDKs name it.
pub fn failure_kind(f: &Failure) -> String {
    match &f.failure_info {
        Some(FailureInfo::ApplicationFailureInfo(a)) if !a.r#type.is_empty() => a.r#type.clone(),
        Some(FailureInfo::ApplicationFailureInfo(_)) => "ApplicationFailure".into(),
        Some(FailureInfo::TimeoutFailureInfo(_)) => "TimeoutFailure".into(),
        Some(FailureInfo::CanceledFailureInfo(_)) => "CanceledFailure".into(),
        Some(FailureInfo::TerminatedFailureInfo(_)) => "TerminatedFailure".into(),
        Some(FailureInfo::ServerFailureInfo(_)) => "ServerFailure".into(),
        Some(FailureInfo::ResetWorkflowFailureInfo(_)) => "ResetWorkflowFailure".into(),
        Some(FailureInfo::ActivityFailureInfo(_)) => "ActivityFailure".into(),
        Some(FailureInfo::ChildWorkflowExecutionFailureInfo(_)) => "ChildWorkflowFailure".into(),
        Some(FailureInfo::NexusOperationExecutionFailureInfo(_)) => "NexusOperationFailure".into(),
        Some(FailureInfo::NexusHandlerFailureInfo(_)) => "NexusHandlerFailure".into(),
        None => FailureKind::TemporalFailure.into(),
    }
}

/// A Temporal failure as a task error: the message and kind of the
/// failure itself, and in `details` its cause chain and stack trace.
pub fn failure_error(f: &Failure) -> TaskError {
    let mut details = String::new();
    let mut cause = f.cause.as_deref();
    while let Some(c) = cause {
        details.push_str(&format!("caused by {}: {}\n", failure_kind(c), c.message));
        cause = c.cause.as_deref();
    }
    if !f.stack_trace.is_empty() {
        details.push_str(&f.stack_trace);
    }
    TaskError {
        message: if f.message.is_empty() {
            "the workflow failed".into()
        } else {
            f.message.clone()
        },
        kind: failure_kind(f),
        details: truncate(details, MAX_DETAILS),
        retryable: false,
        attempt: 0,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// How a workflow run closed, in Switchyard's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// Completed with this result.
    Completed(serde_json::Value),
    /// Failed (also a run that timed out: kind `timeout`).
    Failed(TaskError),
    /// Cancelled after a cancel request.
    Canceled,
    /// Terminated, with the reason and who did it.
    Terminated {
        /// The reason given.
        reason: String,
        /// The identity that terminated it.
        identity: String,
    },
    /// The workflow goes on in a new run (continue-as-new, a retry, a cron
    /// run): follow that one. `why` says which.
    NewRun {
        /// The new run id.
        run_id: String,
        /// What made the new run.
        why: String,
    },
}

/// The meaning of a close event; `None` if the event is not one.
pub fn close_event(e: &HistoryEvent) -> Option<Closed> {
    let new_run = |run_id: &str, why: &str| {
        (!run_id.is_empty()).then(|| Closed::NewRun {
            run_id: run_id.to_string(),
            why: why.to_string(),
        })
    };
    Some(match e.attributes.as_ref()? {
        Attributes::WorkflowExecutionCompletedEventAttributes(a) => new_run(
            &a.new_execution_run_id,
            "the run completed and a cron schedule started the next one",
        )
        .unwrap_or_else(|| Closed::Completed(payloads_json(a.result.as_ref()))),
        Attributes::WorkflowExecutionFailedEventAttributes(a) => new_run(
            &a.new_execution_run_id,
            "the run failed and the workflow's retry policy started another",
        )
        .unwrap_or_else(|| {
            Closed::Failed(
                a.failure
                    .as_ref()
                    .map(failure_error)
                    .unwrap_or_else(|| TaskError {
                        message: "the workflow failed".into(),
                        kind: FailureKind::TemporalFailure.into(),
                        ..Default::default()
                    }),
            )
        }),
        Attributes::WorkflowExecutionTimedOutEventAttributes(a) => new_run(
            &a.new_execution_run_id,
            "the run timed out and the workflow's retry policy started another",
        )
        .unwrap_or_else(|| {
            Closed::Failed(TaskError {
                message: format!(
                    "the workflow timed out ({})",
                    RetryState::try_from(a.retry_state)
                        .map(|s| s.as_str_name())
                        .unwrap_or("RETRY_STATE_UNSPECIFIED")
                ),
                kind: FailureKind::Timeout.into(),
                ..Default::default()
            })
        }),
        Attributes::WorkflowExecutionCanceledEventAttributes(_) => Closed::Canceled,
        Attributes::WorkflowExecutionTerminatedEventAttributes(a) => Closed::Terminated {
            reason: a.reason.clone(),
            identity: a.identity.clone(),
        },
        Attributes::WorkflowExecutionContinuedAsNewEventAttributes(a) => {
            new_run(&a.new_execution_run_id, "continued as new")?
        }
        _ => return None,
    })
}

/// One line per pending activity: `activity charge attempt 2 running (last
/// failure: card declined)`. Empty when none is pending.
pub fn pending_activities(acts: &[PendingActivityInfo]) -> String {
    acts.iter()
        .map(|a| {
            let name = a
                .activity_type
                .as_ref()
                .map(|t| t.name.as_str())
                .unwrap_or("?");
            let state = match PendingActivityState::try_from(a.state) {
                Ok(PendingActivityState::Scheduled) if a.attempt > 1 => "waiting to retry",
                Ok(PendingActivityState::Scheduled) => "scheduled",
                Ok(PendingActivityState::Started) => "running",
                Ok(PendingActivityState::CancelRequested) => "cancel requested",
                Ok(PendingActivityState::Paused) => "paused",
                Ok(PendingActivityState::PauseRequested) => "pause requested",
                _ => "pending",
            };
            let mut s = format!("activity {name} attempt {} {state}", a.attempt.max(1));
            if let Some(f) = &a.last_failure {
                s.push_str(&format!(" (last failure: {})", f.message));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a failed call to Temporal means for the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Temporal cannot be reached or cannot serve now: wait and try again.
    Unreachable(String),
    /// The request itself is wrong: trying again will not help.
    Rejected(String),
}

/// A gRPC error from Temporal in words: its code, and its message if any.
pub fn status_reason(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

/// Classifies a gRPC error from Temporal.
pub fn classify(s: &tonic::Status) -> Fault {
    let msg = status_reason(s);
    match s.code() {
        // A missing namespace or a refused credential is a deployment
        // problem: keep the task until it is fixed rather than fail it.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal
        | Code::Unauthenticated
        | Code::PermissionDenied
        | Code::NotFound => Fault::Unreachable(msg),
        _ => Fault::Rejected(msg),
    }
}

/// The outbox's delay after `n` consecutive failures to reach Temporal:
/// 0.5 s, doubling, at most 10 s.
pub fn unreachable_backoff(n: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << n.min(5));
    Duration::from_millis(ms.min(10_000))
}

/// Switchyard's priority (-1000..1000, higher first) as Temporal's priority
/// key (1..5, lower first; 3 is Temporal's default). `None` for 0.
pub fn priority_key(p: i32) -> Option<i32> {
    (p != 0).then(|| (3 - (p as f64 / 500.0).round() as i32).clamp(1, 5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use temporalio_common::protos::temporal::api::failure::v1::ApplicationFailureInfo;
    use temporalio_common::protos::temporal::api::history::v1::{
        WorkflowExecutionCompletedEventAttributes, WorkflowExecutionContinuedAsNewEventAttributes,
        WorkflowExecutionFailedEventAttributes, WorkflowExecutionTerminatedEventAttributes,
        WorkflowExecutionTimedOutEventAttributes,
    };

    fn event(a: Attributes) -> HistoryEvent {
        HistoryEvent {
            attributes: Some(a),
            ..Default::default()
        }
    }

    #[test]
    fn json_payloads_round_trip() {
        let v = serde_json::json!({"a": [1, "x", null]});
        assert_eq!(payload_json(&json_payload(&v)), v);
        let null = Payload {
            metadata: HashMap::from([("encoding".to_string(), b"binary/null".to_vec())]),
            ..Default::default()
        };
        assert_eq!(payload_json(&null), serde_json::Value::Null);
        let bin = Payload {
            metadata: HashMap::from([("encoding".to_string(), b"binary/plain".to_vec())]),
            data: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(payload_json(&bin)["encoding"], "binary/plain");
        assert_eq!(payloads_json(None), serde_json::Value::Null);
        let two = Payloads {
            payloads: vec![json_payload(&1.into()), json_payload(&2.into())],
        };
        assert_eq!(payloads_json(Some(&two)), serde_json::json!([1, 2]));
    }

    #[test]
    fn close_events_map_to_final_states() {
        let done = event(Attributes::WorkflowExecutionCompletedEventAttributes(
            WorkflowExecutionCompletedEventAttributes {
                result: Some(Payloads {
                    payloads: vec![json_payload(&serde_json::json!({"ok": true}))],
                }),
                ..Default::default()
            },
        ));
        assert_eq!(
            close_event(&done),
            Some(Closed::Completed(serde_json::json!({"ok": true})))
        );

        let failed = event(Attributes::WorkflowExecutionFailedEventAttributes(
            WorkflowExecutionFailedEventAttributes {
                failure: Some(Failure {
                    message: "declined".into(),
                    stack_trace: "at pay()".into(),
                    cause: Some(Box::new(Failure {
                        message: "inner".into(),
                        ..Default::default()
                    })),
                    failure_info: Some(FailureInfo::ApplicationFailureInfo(
                        ApplicationFailureInfo {
                            r#type: "PaymentDeclined".into(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ));
        let Some(Closed::Failed(e)) = close_event(&failed) else {
            panic!("a failure");
        };
        assert_eq!(
            (e.message.as_str(), e.kind.as_str()),
            ("declined", "PaymentDeclined")
        );
        assert!(e.details.contains("caused by Failure: inner") && e.details.contains("at pay()"));
        assert!(!e.retryable);

        let timed_out = event(Attributes::WorkflowExecutionTimedOutEventAttributes(
            WorkflowExecutionTimedOutEventAttributes::default(),
        ));
        let Some(Closed::Failed(e)) = close_event(&timed_out) else {
            panic!("a timeout is a failure");
        };
        assert_eq!(e.kind, "timeout");

        let terminated = event(Attributes::WorkflowExecutionTerminatedEventAttributes(
            WorkflowExecutionTerminatedEventAttributes {
                reason: "ops".into(),
                ..Default::default()
            },
        ));
        assert!(
            matches!(close_event(&terminated), Some(Closed::Terminated { reason, .. }) if reason == "ops")
        );

        let can = event(Attributes::WorkflowExecutionContinuedAsNewEventAttributes(
            WorkflowExecutionContinuedAsNewEventAttributes {
                new_execution_run_id: "r2".into(),
                ..Default::default()
            },
        ));
        assert!(matches!(close_event(&can), Some(Closed::NewRun { run_id, .. }) if run_id == "r2"));

        let retried = event(Attributes::WorkflowExecutionFailedEventAttributes(
            WorkflowExecutionFailedEventAttributes {
                new_execution_run_id: "r3".into(),
                ..Default::default()
            },
        ));
        assert!(
            matches!(close_event(&retried), Some(Closed::NewRun { run_id, .. }) if run_id == "r3")
        );
        assert_eq!(close_event(&HistoryEvent::default()), None);
    }

    #[test]
    fn errors_say_wait_or_give_up() {
        assert!(matches!(
            classify(&tonic::Status::unavailable("down")),
            Fault::Unreachable(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::not_found("namespace")),
            Fault::Unreachable(_)
        ));
        assert!(matches!(
            classify(&tonic::Status::invalid_argument("bad")),
            Fault::Rejected(_)
        ));
    }

    #[test]
    fn backoff_and_priority_scales() {
        assert_eq!(unreachable_backoff(0), Duration::from_millis(500));
        assert_eq!(unreachable_backoff(1), Duration::from_secs(1));
        assert_eq!(unreachable_backoff(40), Duration::from_secs(10));
        assert_eq!(priority_key(0), None);
        assert_eq!(priority_key(1000), Some(1));
        assert_eq!(priority_key(400), Some(2));
        assert_eq!(priority_key(-1000), Some(5));
    }

    #[test]
    fn pending_activities_read_as_progress() {
        let a = PendingActivityInfo {
            activity_type: Some(
                temporalio_common::protos::temporal::api::common::v1::ActivityType {
                    name: "charge".into(),
                },
            ),
            state: PendingActivityState::Started as i32,
            attempt: 2,
            last_failure: Some(Failure {
                message: "flaky".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pending_activities(&[a]),
            "activity charge attempt 2 running (last failure: flaky)"
        );
        assert_eq!(pending_activities(&[]), "");
    }
}

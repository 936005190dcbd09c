//! `SignalTask` for a routed task: Temporal's `SignalWorkflowExecution`,
//! with the signal's name and its JSON payload as the one input value.
//!
//! The backend registers [`hook`] with the core for its engine; the core
//! answers the RPC, and logs the signal, only once Temporal accepted it.
//! Temporal unreachable (or silent past the connect timeout and a few
//! seconds) is `Unavailable`; a refusal (the workflow has ended, or never
//! started) is `FailedPrecondition` with Temporal's reason.

use std::sync::{Arc, Weak};
use std::time::Duration;

use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::common::v1::{Payloads, WorkflowExecution};
use temporalio_common::protos::temporal::api::workflowservice::v1::SignalWorkflowExecutionRequest;
use tonic::{Code, Status};

use super::{convert, Shared};
use crate::core::{CoreError, Signal, SignalHook};
use crate::domain::{text, Target};

/// How long past the connect timeout a signal may take before the caller
/// is told Temporal did not answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// The core's hook for signals to tasks on Temporal. Holds the backend
/// weakly: the core outlives it, and a stopped backend answers
/// `Unavailable`.
pub(super) fn hook(sh: &Arc<Shared>) -> SignalHook {
    let weak: Weak<Shared> = Arc::downgrade(sh);
    Arc::new(move |s: Signal| {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(sh) => deliver(&sh, s).await,
                None => Err(CoreError::Unavailable(
                    "the Temporal backend has stopped; the signal was not delivered".into(),
                )),
            }
        })
    })
}

/// Sends the signal; `Ok` with the log line once Temporal accepted it.
async fn deliver(sh: &Shared, s: Signal) -> Result<String, CoreError> {
    let Target::Complex { workflow_id, .. } = &s.task.spec.target else {
        return Err(CoreError::FailedPrecondition(format!(
            "task {} is not a workflow (COMPLEX) task",
            s.task.id
        )));
    };
    let workflow_id = workflow_id.clone().unwrap_or_else(|| s.task.id.to_string());
    // The run the follower follows (it moves on after a continue-as-new);
    // none yet: the workflow's current run.
    let run_id = s
        .task
        .rt
        .external_id
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    let req = SignalWorkflowExecutionRequest {
        namespace: sh.cfg.namespace.clone(),
        workflow_execution: Some(WorkflowExecution {
            workflow_id: workflow_id.clone(),
            run_id: run_id.clone(),
        }),
        signal_name: s.name.clone(),
        input: Some(Payloads {
            payloads: vec![convert::json_payload(&s.payload)],
        }),
        identity: sh.cfg.identity.clone(),
        // One id per SignalTask call: the client's own retries of this
        // request are one signal in Temporal's history.
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let conn = sh.connect().await.map_err(|e| {
        CoreError::Unavailable(format!(
            "signal {} not delivered: Temporal cannot be reached ({e})",
            text::quote(&s.name)
        ))
    })?;
    let call = async move {
        conn.workflow_service()
            .signal_workflow_execution(req.into_request())
            .await
    };
    let wait = sh.cfg.connect_timeout + ANSWER_MARGIN;
    let run = if run_id.is_empty() {
        "its current run".to_string()
    } else {
        format!("run {run_id}")
    };
    match tokio::time::timeout(wait, call).await {
        Ok(Ok(_)) => Ok(format!(
            "signal {} delivered to Temporal: workflow {workflow_id} {run}",
            text::quote(&s.name)
        )),
        Ok(Err(status)) => Err(refusal(&status, &s.name, &workflow_id, &run)),
        Err(_) => Err(CoreError::Unavailable(format!(
            "signal {} to workflow {workflow_id}: Temporal did not answer within {}; \
             it may or may not have been delivered",
            text::quote(&s.name),
            text::duration(wait)
        ))),
    }
}

/// Temporal's refusal as the caller's error: `Unavailable` when trying
/// again may help, else `FailedPrecondition` with Temporal's reason.
fn refusal(s: &Status, name: &str, workflow_id: &str, run: &str) -> CoreError {
    let reason = convert::status_reason(s);
    let what = format!("signal {} to workflow {workflow_id}", text::quote(name));
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => CoreError::Unavailable(format!(
            "{what} not delivered: Temporal cannot take it now ({reason})"
        )),
        Code::NotFound => CoreError::FailedPrecondition(format!(
            "{what} refused by Temporal: {run} is not running (it has ended, or has not \
             started yet) ({reason})"
        )),
        _ => CoreError::FailedPrecondition(format!("{what} refused by Temporal ({reason})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_whether_to_try_again() {
        let gone = refusal(
            &Status::not_found("workflow execution already completed"),
            "approve",
            "wf-1",
            "run r1",
        );
        match gone {
            CoreError::FailedPrecondition(m) => {
                assert!(m.contains("already completed"), "{m}");
                assert!(m.contains("wf-1") && m.contains("\"approve\""), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal(&Status::unavailable("down"), "a", "w", "r"),
            CoreError::Unavailable(_)
        ));
        assert!(matches!(
            refusal(&Status::invalid_argument("bad"), "a", "w", "r"),
            CoreError::FailedPrecondition(m) if m.contains("bad")
        ));
    }
}

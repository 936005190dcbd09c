//! One routed task's life on Temporal: start its workflow (idempotently),
//! then follow it with one long poll for the close event until it ends, and
//! carry cancels and terminations to it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::common::v1::{
    Header, Memo, Payloads, Priority, RetryPolicy, SearchAttributes, WorkflowExecution,
    WorkflowType,
};
use temporalio_common::protos::temporal::api::enums::v1::{
    HistoryEventFilterType, TaskQueueKind, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
};
use temporalio_common::protos::temporal::api::errordetails::v1::WorkflowExecutionAlreadyStartedFailure;
use temporalio_common::protos::temporal::api::taskqueue::v1::TaskQueue;
use temporalio_common::protos::temporal::api::workflowservice::v1::{
    DescribeWorkflowExecutionRequest, GetWorkflowExecutionHistoryRequest,
    RequestCancelWorkflowExecutionRequest, StartWorkflowExecutionRequest,
    TerminateWorkflowExecutionRequest,
};
use temporalio_common::protos::utilities::decode_status_detail;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument as _;

use super::convert::{self, Closed, Fault};
use super::Shared;
use crate::core::{Assignment, Report};
use crate::domain::{BackoffKind, FailureKind, Target, Task, TaskError, TaskState};

/// A message from the backend's loop to a follower.
#[derive(Debug)]
pub(super) enum Ctl {
    /// The task was cancelled: graceful (request cancellation) or forced
    /// (terminate; the task is already CANCELLED in Switchyard).
    Cancel {
        /// Terminate instead of requesting cancellation.
        force: bool,
        /// The reason, for Temporal's history.
        reason: String,
    },
}

/// The header Temporal's OpenTelemetry interceptors (Go, Java, Python,
/// TypeScript, .NET, Rust SDKs) read the caller's trace context from: a JSON
/// payload of a W3C carrier, `{"traceparent": "00-…"}`.
pub const TRACE_HEADER: &str = "_tracer-data";

/// How long a forced termination is retried while Temporal is unreachable.
const TERMINATE_PATIENCE: Duration = Duration::from_secs(600);

type PollFuture = Pin<Box<dyn Future<Output = Result<PollOutcome, Status>> + Send>>;

enum PollOutcome {
    /// The run closed.
    Closed(Closed),
    /// The long poll timed out: poll again from this page token.
    Again(Vec<u8>),
}

/// What a routed task's workflow is.
struct Workflow {
    workflow_type: String,
    args: Vec<serde_json::Value>,
    task_queue: Option<String>,
    id: String,
    /// The workflow id is the task id: no one else can have started it.
    own_id: bool,
}

pub(super) struct Follower {
    sh: Arc<Shared>,
    task: Task,
    attempt: u32,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    workflow_id: String,
    run_id: String,
    /// Switchyard asked Temporal to cancel the workflow.
    cancel_requested: bool,
    /// A graceful cancel still to be delivered (Temporal was unreachable).
    cancel_pending: Option<String>,
    /// The last progress line reported.
    progress: String,
    /// Consecutive failed calls while following (for the retry delay and to
    /// log an outage once).
    poll_failures: u32,
    /// The trace context of the attempt (see [`Assignment::traceparent`]).
    traceparent: Option<String>,
}

impl Follower {
    pub(super) fn new(
        sh: Arc<Shared>,
        a: Assignment,
        ctl: mpsc::UnboundedReceiver<Ctl>,
    ) -> Follower {
        let attempt = a.task.rt.attempt;
        let traceparent = a.traceparent().map(str::to_string);
        Follower {
            sh,
            attempt,
            ctl,
            traceparent,
            workflow_id: String::new(),
            run_id: a
                .task
                .rt
                .external_id
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            task: a.task,
            cancel_requested: false,
            cancel_pending: None,
            progress: String::new(),
            poll_failures: 0,
        }
    }

    /// Reports on the task; false once the core no longer lets this attempt
    /// report (it ended, or the backend was removed): stop then.
    fn report(&self, r: Report) -> bool {
        match self
            .sh
            .core
            .report(&self.sh.worker_id, self.task.id, self.attempt, r)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(task_id = %self.task.id, cause = %e, "report refused; the follower stops");
                false
            }
        }
    }

    fn log(&self, level: &str, message: impl Into<String>) -> bool {
        self.report(Report::Log {
            source: crate::domain::LogSource::Worker,
            level: level.into(),
            message: message.into(),
        })
    }

    fn fail(&self, kind: FailureKind, message: String) {
        self.report(Report::Fail {
            error: TaskError {
                message,
                kind: kind.into(),
                details: String::new(),
                retryable: false,
                attempt: self.attempt,
            },
            retry_after: None,
        });
    }

    fn workflow(&self) -> Result<Workflow, String> {
        let Target::Complex {
            workflow_type,
            workflow_args,
            task_queue,
            workflow_id,
            ..
        } = &self.task.spec.target
        else {
            return Err("only COMPLEX tasks run on Temporal".into());
        };
        Ok(Workflow {
            workflow_type: workflow_type.clone(),
            args: workflow_args.clone(),
            task_queue: task_queue
                .clone()
                .or_else(|| self.sh.cfg.default_task_queue.clone()),
            id: workflow_id
                .clone()
                .unwrap_or_else(|| self.task.id.to_string()),
            own_id: workflow_id.is_none(),
        })
    }

    /// The whole life: start (or resume), then follow until the run ends.
    pub(super) async fn run(mut self) {
        let wf = match self.workflow() {
            Ok(w) => w,
            Err(e) => return self.fail(FailureKind::InvalidTarget, e),
        };
        self.workflow_id = wf.id.clone();
        if self.run_id.is_empty() {
            if !self.start(&wf).await {
                return;
            }
        } else {
            // Started before a restart (or before the backend lost the
            // task): follow the run we know.
            let msg = format!(
                "following workflow {} run {} again after a restart",
                self.workflow_id, self.run_id
            );
            if !self.report(self.mirror(msg)) {
                return;
            }
        }
        self.follow().await;
    }

    /// Starts the workflow; false if the task was handed back (unreachable)
    /// or ended.
    async fn start(&mut self, wf: &Workflow) -> bool {
        let Some(task_queue) = wf.task_queue.clone() else {
            self.fail(
                FailureKind::Config,
                format!(
                    "workflow {} has no task queue: set `complex.task_queue` on the task or \
                     `temporal.default_task_queue` in the server's configuration",
                    wf.workflow_type
                ),
            );
            return false;
        };
        // A client span for the start (a child of the task's `task.run`);
        // the workflow continues the trace from it through the header.
        let span = if crate::telemetry::enabled() {
            tracing::info_span!(
                parent: None,
                "temporal.start",
                otel.kind = "client",
                task.id = %self.task.id,
                task.name = %self.task.spec.name,
                task.type = self.task.spec.task_type.as_str(),
                task.attempt = self.attempt,
                temporal.workflow_type = %wf.workflow_type,
                temporal.workflow_id = %wf.id,
                temporal.run_id = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let traceparent = if span.is_none() {
            self.traceparent.clone()
        } else {
            crate::telemetry::adopt(&span, self.traceparent.as_deref())
        };
        let mut req = self.start_request(wf, &task_queue);
        req.header = trace_header(traceparent.as_deref());
        let conn = match self.sh.connect().await {
            Ok(c) => c,
            Err(e) => return self.unreachable(e).await,
        };
        let mut svc = conn.workflow_service();
        let res = async {
            let mut res = svc
                .start_workflow_execution(req.clone().into_request())
                .await;
            if let Err(s) = &res {
                // A connection closed under the call (the server's maximum
                // connection age): once more at once. The request id makes it
                // the same start.
                if matches!(s.code(), Code::Unavailable | Code::Cancelled) {
                    res = svc.start_workflow_execution(req.into_request()).await;
                }
            }
            res
        }
        .instrument(span.clone())
        .await;
        let (run_id, how) = match res {
            Ok(r) => {
                let r = r.into_inner();
                let how = if r.started {
                    "started"
                } else {
                    "already started by this task"
                };
                (r.run_id, how)
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                let existing =
                    decode_status_detail::<WorkflowExecutionAlreadyStartedFailure>(s.details());
                match existing {
                    // Our own earlier start (same request id), or a run of
                    // a workflow id only this task uses: follow it.
                    Some(f) if f.start_request_id == self.task.id.to_string() || wf.own_id => {
                        (f.run_id, "already started by this task")
                    }
                    Some(f) => {
                        self.fail(
                            FailureKind::WorkflowIdInUse,
                            format!(
                                "workflow id {} is already in use by run {} (started by another request)",
                                wf.id, f.run_id
                            ),
                        );
                        return false;
                    }
                    None => {
                        self.fail(
                            FailureKind::WorkflowIdInUse,
                            format!("workflow id {} is already in use: {}", wf.id, s.message()),
                        );
                        return false;
                    }
                }
            }
            Err(s) => match convert::classify(&s) {
                Fault::Unreachable(m) => return self.unreachable(m).await,
                Fault::Rejected(m) => {
                    self.fail(
                        FailureKind::Rejected,
                        format!(
                            "Temporal refused to start workflow {}: {m}",
                            wf.workflow_type
                        ),
                    );
                    return false;
                }
            },
        };
        self.sh.reachable(self.task.id);
        span.record("temporal.run_id", run_id.as_str());
        self.run_id = run_id;
        let mut msg = format!(
            "workflow {} {how}: id {} run {} on task queue {task_queue}",
            wf.workflow_type, self.workflow_id, self.run_id
        );
        if let Some(d) = self.start_delay() {
            msg.push_str(&format!(
                "; Temporal starts it in {}",
                crate::domain::text::duration(d)
            ));
        }
        self.report(Report::ExternalId(self.run_id.clone())) && self.report(self.mirror(msg))
    }

    /// The rest of the task's delay: Temporal holds the start that long
    /// (the core hands delayed tasks to the backend at once).
    fn start_delay(&self) -> Option<Duration> {
        let left = self.task.rt.run_at - crate::domain::now_micros();
        (left > 0).then(|| Duration::from_micros(left as u64))
    }

    /// The engine's state now: PENDING (delayed) while Temporal holds the
    /// start, else RUNNING.
    fn mirror(&self, message: String) -> Report {
        let delayed = self.start_delay().is_some();
        Report::Mirror {
            state: if delayed {
                TaskState::Pending
            } else {
                TaskState::Running
            },
            waiting_reason: delayed.then_some(crate::domain::WaitingReason::Delayed),
            progress: None,
            attempt: None,
            message: Some(message),
        }
    }

    fn start_request(&self, wf: &Workflow, task_queue: &str) -> StartWorkflowExecutionRequest {
        let spec = &self.task.spec;
        let cfg = &self.sh.cfg;
        let mut memo = HashMap::from([
            (
                "switchyard_task_id".to_string(),
                convert::json_payload(&self.task.id.to_string().into()),
            ),
            (
                "switchyard_task_name".to_string(),
                convert::json_payload(&spec.name.clone().into()),
            ),
        ]);
        let mut attrs = HashMap::new();
        if let Some(u) = &spec.user_id {
            memo.insert("user_id".into(), convert::json_payload(&u.clone().into()));
            if let Some(sa) = &cfg.user_search_attribute {
                attrs.insert(sa.clone(), convert::keyword_payload(u));
            }
        }
        if let Some(s) = &spec.session_id {
            memo.insert(
                "session_id".into(),
                convert::json_payload(&s.clone().into()),
            );
            if let Some(sa) = &cfg.session_search_attribute {
                attrs.insert(sa.clone(), convert::keyword_payload(s));
            }
        }
        // Switchyard's attempts become the workflow's retry policy: a failed
        // run is retried by Temporal as a new run, which the follower follows.
        let retry_policy = (spec.max_attempts > 1).then(|| RetryPolicy {
            initial_interval: spec.backoff.base.try_into().ok(),
            backoff_coefficient: match spec.backoff.kind {
                BackoffKind::Fixed => 1.0,
                BackoffKind::Exponential => 2.0,
            },
            maximum_interval: spec.backoff.max.max(spec.backoff.base).try_into().ok(),
            maximum_attempts: i32::try_from(spec.max_attempts).unwrap_or(i32::MAX),
            ..Default::default()
        });
        StartWorkflowExecutionRequest {
            namespace: cfg.namespace.clone(),
            workflow_id: wf.id.clone(),
            workflow_type: Some(WorkflowType {
                name: wf.workflow_type.clone(),
            }),
            task_queue: Some(TaskQueue {
                name: task_queue.to_string(),
                kind: TaskQueueKind::Normal as i32,
                ..Default::default()
            }),
            input: Some(Payloads {
                payloads: wf.args.iter().map(convert::json_payload).collect(),
            }),
            workflow_execution_timeout: spec.execution_timeout.and_then(|d| d.try_into().ok()),
            workflow_start_delay: self.start_delay().and_then(|d| d.try_into().ok()),
            identity: cfg.identity.clone(),
            // The task id: a start repeated after an outage or a restart is
            // recognised by Temporal as the same start.
            request_id: self.task.id.to_string(),
            workflow_id_reuse_policy: if wf.own_id {
                WorkflowIdReusePolicy::RejectDuplicate as i32
            } else {
                WorkflowIdReusePolicy::AllowDuplicate as i32
            },
            workflow_id_conflict_policy: WorkflowIdConflictPolicy::Fail as i32,
            retry_policy,
            memo: Some(Memo { fields: memo }),
            search_attributes: (!attrs.is_empty()).then_some(SearchAttributes {
                indexed_fields: attrs,
            }),
            priority: convert::priority_key(spec.priority).map(|k| Priority {
                priority_key: k,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Hands the task back to the core's outbox: PENDING, reason
    /// ENGINE_UNREACHABLE, offered again after a growing delay. A cancel
    /// that arrived meanwhile ends it instead.
    async fn unreachable(&mut self, message: String) -> bool {
        if let Ok(Ctl::Cancel { force, reason }) = self.ctl.try_recv() {
            if !force {
                self.report(Report::CancelAck);
            }
            // The start may have reached Temporal before the connection
            // failed: make sure no orphan runs on.
            stop_workflow(&self.sh, &self.workflow_id, "", &reason, !force).await;
            return false;
        }
        let retry_after = self.sh.unreachable(self.task.id);
        self.report(Report::Unreachable {
            retry_after,
            message: format!("Temporal at {}: {message}", self.sh.cfg.address),
        });
        false
    }

    /// Follows the run until it closes or the task ends.
    async fn follow(&mut self) {
        let mut poll = self.long_poll(Vec::new(), Duration::ZERO);
        let mut describe_at = self.next_describe();
        let mut cancel_retry_at: Option<Instant> = None;
        let mut running_at = self.start_delay().map(|d| Instant::now() + d);
        loop {
            tokio::select! {
                _ = sleep_until_opt(running_at), if running_at.is_some() => {
                    running_at = None;
                    if !self.report(mirror_running(format!("workflow {} started after its delay", self.workflow_id))) {
                        return;
                    }
                }
                r = &mut poll => match r {
                    Ok(PollOutcome::Again(token)) => {
                        self.recovered();
                        poll = self.long_poll(token, Duration::ZERO);
                    }
                    Ok(PollOutcome::Closed(closed)) => {
                        self.recovered();
                        match self.closed(closed) {
                            Some(()) => {
                                poll = self.long_poll(Vec::new(), Duration::ZERO);
                            }
                            None => return,
                        }
                    }
                    Err(s) if s.code() == Code::NotFound => {
                        let msg = format!(
                            "workflow {} run {} is not in Temporal any more: {}",
                            self.workflow_id, self.run_id, s.message()
                        );
                        self.report(Report::End {
                            state: TaskState::Failed,
                            result: None,
                            error: Some(TaskError {
                                message: msg.clone(),
                                kind: FailureKind::NotFound.into(),
                                attempt: self.attempt,
                                ..Default::default()
                            }),
                            message: msg,
                        });
                        return;
                    }
                    Err(s) => {
                        // One failure is retried at once and not logged: the
                        // server closes connections now and then (its maximum
                        // connection age), failing the polls on them.
                        self.poll_failures += 1;
                        if self.poll_failures == 2
                            && !self.log("warn", format!("lost contact with Temporal while following the workflow ({}); retrying", s.message()))
                        {
                            return;
                        }
                        let delay = match self.poll_failures {
                            1 => Duration::ZERO,
                            n => convert::unreachable_backoff(n - 2),
                        };
                        poll = self.long_poll(Vec::new(), delay);
                    }
                },
                c = self.ctl.recv() => match c {
                    Some(Ctl::Cancel { force: true, reason }) => {
                        stop_workflow(&self.sh, &self.workflow_id, &self.run_id, &reason, false).await;
                        return;
                    }
                    Some(Ctl::Cancel { force: false, reason }) => {
                        self.cancel_pending = Some(reason);
                        if !self.request_cancel().await {
                            cancel_retry_at = Some(Instant::now() + convert::unreachable_backoff(self.poll_failures));
                        }
                    }
                    None => return,
                },
                _ = sleep_until_opt(cancel_retry_at), if cancel_retry_at.is_some() => {
                    cancel_retry_at = None;
                    if !self.request_cancel().await {
                        cancel_retry_at = Some(Instant::now() + convert::unreachable_backoff(self.poll_failures.max(1)));
                    }
                }
                _ = sleep_until_opt(describe_at), if describe_at.is_some() => {
                    if !self.describe().await {
                        return;
                    }
                    describe_at = self.next_describe();
                }
            }
        }
    }

    fn recovered(&mut self) {
        if self.poll_failures > 1 {
            self.log("info", "in contact with Temporal again");
        }
        self.poll_failures = 0;
    }

    /// Acts on a close event; `Some` when a new run is to be followed.
    fn closed(&mut self, c: Closed) -> Option<()> {
        let a = self.attempt;
        match c {
            Closed::Completed(v) => {
                self.report(Report::Complete(v));
            }
            Closed::Failed(mut e) => {
                e.attempt = a;
                let message = format!(
                    "workflow {} failed: {} ({})",
                    self.workflow_id, e.message, e.kind
                );
                self.report(Report::End {
                    state: TaskState::Failed,
                    result: None,
                    error: Some(e),
                    message,
                });
            }
            Closed::Canceled if self.cancel_requested => {
                self.log(
                    "info",
                    format!(
                        "workflow {} run {} cancelled in Temporal",
                        self.workflow_id, self.run_id
                    ),
                );
                self.report(Report::CancelAck);
            }
            Closed::Canceled => {
                self.report(Report::End {
                    state: TaskState::Cancelled,
                    result: None,
                    error: None,
                    message: format!(
                        "workflow {} was cancelled in Temporal, not through Switchyard",
                        self.workflow_id
                    ),
                });
            }
            Closed::Terminated { reason, identity } => {
                let message = format!(
                    "workflow {} was terminated in Temporal by {}: {}",
                    self.workflow_id,
                    if identity.is_empty() {
                        "someone"
                    } else {
                        &identity
                    },
                    if reason.is_empty() {
                        "no reason given"
                    } else {
                        &reason
                    }
                );
                self.report(Report::End {
                    state: TaskState::Cancelled,
                    result: None,
                    error: Some(TaskError {
                        message: message.clone(),
                        kind: FailureKind::Terminated.into(),
                        attempt: a,
                        ..Default::default()
                    }),
                    message,
                });
            }
            Closed::NewRun { run_id, why } => {
                let msg = format!(
                    "workflow {}: {why}; following run {run_id}",
                    self.workflow_id
                );
                self.run_id = run_id;
                if self.report(Report::ExternalId(self.run_id.clone())) && self.log("info", msg) {
                    self.progress.clear();
                    return Some(());
                }
            }
        }
        None
    }

    /// One long poll for the run's close event (after `delay`).
    fn long_poll(&self, token: Vec<u8>, delay: Duration) -> PollFuture {
        let sh = self.sh.clone();
        let req = GetWorkflowExecutionHistoryRequest {
            namespace: sh.cfg.namespace.clone(),
            execution: Some(WorkflowExecution {
                workflow_id: self.workflow_id.clone(),
                run_id: self.run_id.clone(),
            }),
            next_page_token: token,
            wait_new_event: true,
            history_event_filter_type: HistoryEventFilterType::CloseEvent as i32,
            ..Default::default()
        };
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let conn = sh.connect().await.map_err(Status::unavailable)?;
            let mut svc = conn.workflow_service();
            let r = svc
                .get_workflow_execution_history(req.into_request())
                .await?
                .into_inner();
            let closed = r
                .history
                .iter()
                .flat_map(|h| h.events.iter())
                .find_map(convert::close_event);
            match closed {
                Some(c) => Ok(PollOutcome::Closed(c)),
                None => Ok(PollOutcome::Again(r.next_page_token)),
            }
        })
    }

    /// Asks Temporal to cancel the run; false if it must be tried again.
    async fn request_cancel(&mut self) -> bool {
        let Some(reason) = self.cancel_pending.clone() else {
            return true;
        };
        let req = RequestCancelWorkflowExecutionRequest {
            namespace: self.sh.cfg.namespace.clone(),
            workflow_execution: Some(WorkflowExecution {
                workflow_id: self.workflow_id.clone(),
                run_id: self.run_id.clone(),
            }),
            identity: self.sh.cfg.identity.clone(),
            request_id: format!("{}:cancel", self.task.id),
            reason: reason.clone(),
            ..Default::default()
        };
        let res = match self.sh.connect().await {
            Ok(conn) => conn
                .workflow_service()
                .request_cancel_workflow_execution(req.into_request())
                .await
                .map(|_| ()),
            Err(e) => Err(Status::unavailable(e)),
        };
        match res {
            Ok(()) => {
                self.cancel_pending = None;
                self.cancel_requested = true;
                self.log(
                    "info",
                    format!("Temporal accepted the cancel request for workflow {}; waiting for it to finish", self.workflow_id),
                );
                true
            }
            Err(s) => match convert::classify(&s) {
                Fault::Unreachable(m) if s.code() != Code::NotFound => {
                    self.log(
                        "warn",
                        format!("cannot deliver the cancel to Temporal yet ({m}); retrying"),
                    );
                    false
                }
                // Already closed (the close event will say how) or not
                // cancellable: nothing more to deliver.
                Fault::Unreachable(m) | Fault::Rejected(m) => {
                    self.cancel_pending = None;
                    self.cancel_requested = true;
                    self.log("info", format!("Temporal did not take the cancel ({m}); waiting for the workflow's end"));
                    true
                }
            },
        }
    }

    fn next_describe(&self) -> Option<Instant> {
        let cfg = &self.sh.cfg;
        if cfg.progress_interval.is_zero() {
            return None;
        }
        // Many workflows share the describe budget: each is described less
        // often rather than Temporal being asked more.
        let followed = self
            .sh
            .followed
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(1) as f64;
        let spread = match cfg.progress_describes_per_second {
            0 => Duration::ZERO,
            rate => Duration::from_secs_f64(followed / f64::from(rate)),
        };
        let every = cfg.progress_interval.max(spread);
        let jitter = rand::rng().random_range(0.8..1.2);
        Some(Instant::now() + every.mul_f64(jitter))
    }

    /// Reports the pending activities as progress when they changed; false
    /// if the task is no longer ours.
    async fn describe(&mut self) -> bool {
        let req = DescribeWorkflowExecutionRequest {
            namespace: self.sh.cfg.namespace.clone(),
            execution: Some(WorkflowExecution {
                workflow_id: self.workflow_id.clone(),
                run_id: self.run_id.clone(),
            }),
        };
        let Ok(conn) = self.sh.connect().await else {
            return true;
        };
        let Ok(r) = conn
            .workflow_service()
            .describe_workflow_execution(req.into_request())
            .await
        else {
            return true;
        };
        let line = convert::pending_activities(&r.into_inner().pending_activities);
        if line == self.progress {
            return true;
        }
        self.progress = line.clone();
        self.report(Report::Progress {
            percent: 0.0,
            message: line,
        })
    }
}

/// The start's header: the trace context under [`TRACE_HEADER`], in the
/// format Temporal's tracing interceptors read, if there is one.
fn trace_header(traceparent: Option<&str>) -> Option<Header> {
    let tp = traceparent?;
    Some(Header {
        fields: HashMap::from([(
            TRACE_HEADER.to_string(),
            convert::json_payload(&serde_json::json!({ "traceparent": tp })),
        )]),
    })
}

fn mirror_running(message: String) -> Report {
    Report::Mirror {
        state: TaskState::Running,
        waiting_reason: None,
        progress: None,
        attempt: None,
        message: Some(message),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Terminates (or, with `graceful`, asks to cancel) a workflow whose task
/// Switchyard has already ended; retried while Temporal is unreachable, for
/// at most [`TERMINATE_PATIENCE`]. An empty `run_id` means the current run.
pub(super) async fn stop_workflow(
    sh: &Shared,
    workflow_id: &str,
    run_id: &str,
    reason: &str,
    graceful: bool,
) {
    let deadline = Instant::now() + TERMINATE_PATIENCE;
    let mut n = 0u32;
    loop {
        let res = match sh.connect().await {
            Ok(conn) => {
                let mut svc = conn.workflow_service();
                let execution = Some(WorkflowExecution {
                    workflow_id: workflow_id.to_string(),
                    run_id: run_id.to_string(),
                });
                if graceful {
                    svc.request_cancel_workflow_execution(
                        RequestCancelWorkflowExecutionRequest {
                            namespace: sh.cfg.namespace.clone(),
                            workflow_execution: execution,
                            identity: sh.cfg.identity.clone(),
                            reason: reason.to_string(),
                            ..Default::default()
                        }
                        .into_request(),
                    )
                    .await
                    .map(|_| ())
                } else {
                    svc.terminate_workflow_execution(
                        TerminateWorkflowExecutionRequest {
                            namespace: sh.cfg.namespace.clone(),
                            workflow_execution: execution,
                            reason: reason.to_string(),
                            identity: sh.cfg.identity.clone(),
                            ..Default::default()
                        }
                        .into_request(),
                    )
                    .await
                    .map(|_| ())
                }
            }
            Err(e) => Err(Status::unavailable(e)),
        };
        match res {
            Ok(()) => {
                tracing::info!(
                    workflow_id,
                    run_id,
                    graceful,
                    "workflow stopped in Temporal"
                );
                return;
            }
            Err(s) => match convert::classify(&s) {
                Fault::Unreachable(m)
                    if s.code() != Code::NotFound && Instant::now() < deadline =>
                {
                    tracing::warn!(workflow_id, cause = %m, "cannot stop the workflow in Temporal yet; retrying");
                    tokio::time::sleep(convert::unreachable_backoff(n)).await;
                    n += 1;
                }
                // Not found (never started, or gone) or already closed.
                _ => {
                    tracing::info!(workflow_id, cause = %s.message(), "workflow not stopped: it is not running");
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_header_is_a_json_carrier_under_tracer_data() {
        assert_eq!(trace_header(None), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = trace_header(Some(tp)).unwrap();
        let p = &h.fields["_tracer-data"];
        assert_eq!(p.metadata["encoding"], b"json/plain");
        let carrier: HashMap<String, String> = serde_json::from_slice(&p.data).unwrap();
        assert_eq!(carrier, HashMap::from([("traceparent".into(), tp.into())]));
    }
}

//! `OrchestratorService`: thin handlers that validate, call the core and map
//! errors. No scheduling decision and no SQL here.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::authz::caller;
use super::convert::{self, Limits};
use crate::core::Core;
use crate::executor::WorkflowRegistry;
use crate::keys::{Keys, Principal};
use crate::pb;
use crate::pb::orchestrator_service_server::OrchestratorService;

/// GetTaskStatus's answer: a task and its payload (a JSON object). The
/// leader's and a standby's (`cluster`).
pub(crate) fn status_response(t: &crate::domain::Task, payload: &str) -> pb::GetTaskStatusResponse {
    let payload = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| crate::pb::json::json_to_struct(&v).ok());
    pb::GetTaskStatusResponse {
        status: Some(convert::status(t)),
        payload,
    }
}

/// GetTaskLogs's `limit`: 0 means 200, at most 5,000.
pub(crate) fn logs_limit(limit: u32) -> Result<usize, Status> {
    match limit {
        0 => Ok(200),
        n if n > 5000 => Err(crate::core::CoreError::field("limit", "must be at most 5000").into()),
        n => Ok(n as usize),
    }
}

/// GetTaskLogs's answer from up to `limit + 1` lines (one more says there
/// are more).
pub(crate) fn logs_response(
    mut lines: Vec<crate::domain::LogEntry>,
    limit: usize,
) -> pb::GetTaskLogsResponse {
    let has_more = lines.len() > limit;
    lines.truncate(limit);
    pb::GetTaskLogsResponse {
        lines: lines.iter().map(convert::log_line).collect(),
        has_more,
    }
}

/// The service.
pub struct Orchestrator {
    core: Core,
    limits: Limits,
    shutdown: CancellationToken,
    workflows: Option<Arc<dyn WorkflowRegistry>>,
    cluster: Arc<dyn crate::app::cluster::ClusterView>,
    keys: Keys,
}

impl Orchestrator {
    /// A service over a core. Watch streams end when `shutdown` is cancelled.
    pub fn new(
        core: Core,
        limits: Limits,
        shutdown: CancellationToken,
        workflows: Option<Arc<dyn WorkflowRegistry>>,
        cluster: Arc<dyn crate::app::cluster::ClusterView>,
        keys: Keys,
    ) -> Self {
        Orchestrator {
            core,
            limits,
            shutdown,
            workflows,
            cluster,
            keys,
        }
    }

    /// NOT_FOUND unless the caller sees task `id`: one of its namespace
    /// (and, for a scoped key, its user's or its own).
    async fn check_sees(&self, who: &Principal, id: crate::domain::TaskId) -> Result<(), Status> {
        who.check(&self.core.status(id).await?)?;
        Ok(())
    }

    fn registry(&self) -> Result<&Arc<dyn WorkflowRegistry>, Status> {
        self.workflows.as_ref().ok_or_else(|| {
            Status::failed_precondition("the workflow engine is not running on this server")
        })
    }
}

fn traceparent<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 256)
        .map(str::to_string)
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchTasksResponse, Status>> + Send>>;

#[tonic::async_trait]
impl OrchestratorService for Orchestrator {
    #[instrument(skip_all, fields(name = %req.get_ref().name, task_id))]
    async fn schedule_task(
        &self,
        req: Request<pb::ScheduleTaskRequest>,
    ) -> Result<Response<pb::ScheduleTaskResponse>, Status> {
        // With tracing on, the task's trace continues from this RPC's span
        // (itself a child of the caller's); otherwise the caller's context
        // is passed on as it came.
        let tp = if crate::telemetry::enabled() {
            crate::telemetry::traceparent_of(&tracing::Span::current())
                .or_else(|| traceparent(&req))
        } else {
            traceparent(&req)
        };
        let who = caller(&req)?;
        let mut new = convert::new_task(req.into_inner(), &self.limits, tp)?;
        who.stamp(&mut new.spec)?;
        who.fits_payload(new.payload.json_len())?;
        let s = self.core.schedule(new).await?;
        tracing::Span::current().record("task_id", tracing::field::display(s.task.id));
        Ok(Response::new(pb::ScheduleTaskResponse {
            task_id: s.task.id.to_string(),
            existing: s.existing,
            status: Some(convert::status(&s.task)),
            outcome: convert::schedule_outcome(s.outcome) as i32,
            superseded_task_ids: convert::superseded_ids(&s),
        }))
    }

    #[instrument(skip_all, fields(tasks = req.get_ref().tasks.len()))]
    async fn schedule_tasks(
        &self,
        req: Request<pb::ScheduleTasksRequest>,
    ) -> Result<Response<pb::ScheduleTasksResponse>, Status> {
        let tp = if crate::telemetry::enabled() {
            crate::telemetry::traceparent_of(&tracing::Span::current())
                .or_else(|| traceparent(&req))
        } else {
            traceparent(&req)
        };
        let who = caller(&req)?;
        let mut items = convert::new_tasks(req.into_inner(), &self.limits, tp)?;
        for item in items.iter_mut() {
            if let Ok(new) = item {
                who.stamp(&mut new.spec)?;
                // Over the key's payload limit: this item alone is refused,
                // as ScheduleTask would refuse it.
                if let Err(l) = who.fits_payload(new.payload.json_len()) {
                    *item = Err(crate::core::CoreError::ResourceExhausted(l.to_string()));
                }
            }
        }
        let mut results = Vec::with_capacity(items.len());
        let mut valid = Vec::with_capacity(items.len());
        let mut at = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Ok(new) => {
                    at.push(i);
                    valid.push(new);
                    results.push(None);
                }
                Err(e) => results.push(Some(crate::app::status::item_error(i, e))),
            }
        }
        for (i, r) in at.into_iter().zip(self.core.schedule_many(valid).await?) {
            results[i] = Some(match r {
                Ok(s) => convert::scheduled_item(i, &s),
                Err(e) => crate::app::status::item_error(i, e),
            });
        }
        Ok(Response::new(pb::ScheduleTasksResponse {
            results: results.into_iter().flatten().collect(),
        }))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn get_task_status(
        &self,
        req: Request<pb::GetTaskStatusRequest>,
    ) -> Result<Response<pb::GetTaskStatusResponse>, Status> {
        let who = caller(&req)?;
        let id = convert::parse_id("task_id", &req.get_ref().task_id)?;
        let (t, payload) = self.core.status_with_payload(id).await?;
        who.check(&t)?;
        Ok(Response::new(status_response(&t, &payload)))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let id = convert::parse_id("task_id", &r.task_id)?;
        convert::check_reason(&r.reason)?;
        self.check_sees(&who, id).await?;
        let (outcome, t) = self.core.cancel(id, &r.reason, r.force).await?;
        self.keys
            .audit_task(
                &who,
                if r.force { "cancel (force)" } else { "cancel" },
                id,
                &r.reason,
            )
            .await;
        Ok(Response::new(pb::CancelTaskResponse {
            outcome: convert::cancel_outcome(outcome) as i32,
            status: Some(convert::status(&t)),
        }))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn retry_task(
        &self,
        req: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let id = convert::parse_id("task_id", &r.task_id)?;
        convert::check_reason(&r.reason)?;
        self.check_sees(&who, id).await?;
        let t = self.core.retry(id, &r.reason).await?;
        self.keys.audit_task(&who, "retry", id, &r.reason).await;
        Ok(Response::new(pb::RetryTaskResponse {
            status: Some(convert::status(&t)),
        }))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn replay_workflow(
        &self,
        req: Request<pb::ReplayWorkflowRequest>,
    ) -> Result<Response<pb::ReplayWorkflowResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let id = convert::parse_id("task_id", &r.task_id)?;
        convert::check_from_step(&r.from_step)?;
        convert::check_reason(&r.reason)?;
        self.check_sees(&who, id).await?;
        let t = self.core.replay(id, &r.from_step, &r.reason).await?;
        self.keys
            .audit_task(
                &who,
                "replay",
                id,
                &format!("from step {:?}: {}", r.from_step, r.reason),
            )
            .await;
        Ok(Response::new(pb::ReplayWorkflowResponse {
            status: Some(convert::status(&t)),
        }))
    }

    type WatchTasksStream = WatchStream;

    #[instrument(skip_all)]
    async fn watch_tasks(
        &self,
        req: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut filter = convert::filter(r.filter, "filter")?;
        if !who.narrow(&mut filter) {
            // Another user's tasks: nothing to show, and the stream ends.
            let (_, rx) = mpsc::channel::<Result<pb::WatchTasksResponse, Status>>(1);
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let (tx, rx) = mpsc::channel(1024);
        let core = self.core.clone();
        let shutdown = self.shutdown.clone();
        // Policy on shutdown: ends the stream when the server drains.
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::app::watch::watch(core, filter, r.after_sequence, r.include_snapshot, tx) => {}
                _ = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(user_id = %req.get_ref().user_id, session_id = %req.get_ref().session_id))]
    async fn disconnect(
        &self,
        req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let (u, s) = (r.user_id.as_str(), r.session_id.as_str());
        if u.is_empty() == s.is_empty() {
            return Err(crate::core::CoreError::field(
                if u.is_empty() {
                    "user_id"
                } else {
                    "session_id"
                },
                "exactly one of user_id and session_id is required",
            )
            .into());
        }
        convert::check_owner("user_id", u)?;
        convert::check_owner("session_id", s)?;
        convert::check_reason(&r.reason)?;
        if let Some(own) = who.user() {
            // A user-bound key disconnects its own user only.
            if !s.is_empty() {
                return Err(crate::keys::Denied::Scope.into());
            }
            if u != own {
                return Err(crate::keys::Denied::User.into());
            }
        }
        let reason = if r.reason.is_empty() {
            "disconnected".to_string()
        } else {
            format!("disconnected: {}", r.reason)
        };
        let receipts = self
            .core
            .disconnect(
                who.namespace(),
                (!u.is_empty()).then_some(u),
                (!s.is_empty()).then_some(s),
                &reason,
            )
            .await?;
        let target = if u.is_empty() {
            format!("session {s}")
        } else {
            format!("user {u}")
        };
        self.keys
            .audit(&who, "disconnect", &target, &r.reason)
            .await;
        for (id, _, _) in &receipts {
            self.keys.note_task(&who, "disconnect", *id, &r.reason);
        }
        let receipts = receipts
            .into_iter()
            .map(|(id, name, o)| pb::DisconnectReceipt {
                task_id: id.to_string(),
                name,
                outcome: convert::cancel_outcome(o) as i32,
            })
            .collect();
        Ok(Response::new(pb::DisconnectResponse { receipts }))
    }

    #[instrument(skip_all)]
    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut filter = convert::filter(r.filter, "filter")?;
        let limit = crate::app::list::page_size("page_size", r.page_size.into())?;
        if !who.narrow(&mut filter) {
            return Ok(Response::new(pb::ListTasksResponse::default()));
        }
        let page =
            crate::app::list::page(&self.core, filter, limit, &r.page_token, "page_token").await?;
        Ok(Response::new(page))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id))]
    async fn get_task_logs(
        &self,
        req: Request<pb::GetTaskLogsRequest>,
    ) -> Result<Response<pb::GetTaskLogsResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let id = convert::parse_id("task_id", &r.task_id)?;
        let limit = logs_limit(r.limit)?;
        self.check_sees(&who, id).await?;
        let lines = self.core.logs(id, r.after_line, limit + 1).await?;
        Ok(Response::new(logs_response(lines, limit)))
    }

    #[instrument(skip_all, fields(task_id = %req.get_ref().task_id, signal = %req.get_ref().signal))]
    async fn signal_task(
        &self,
        req: Request<pb::SignalTaskRequest>,
    ) -> Result<Response<pb::SignalTaskResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let id = convert::parse_id("task_id", &r.task_id)?;
        if let Err(e) = convert::check_name(&r.signal) {
            return Err(crate::core::CoreError::field("signal", e).into());
        }
        let payload = match r.payload.as_ref().map(crate::pb::json::struct_to_json) {
            None => serde_json::json!({}),
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                return Err(crate::core::CoreError::field("payload", e.to_string()).into())
            }
        };
        let bytes = payload.to_string().len();
        if bytes > self.limits.max_payload_bytes {
            return Err(
                crate::core::CoreError::field("payload", "is over the payload limit").into(),
            );
        }
        who.fits_payload(bytes)?;
        self.check_sees(&who, id).await?;
        let t = self.core.signal(id, &r.signal, payload).await?;
        self.keys.audit_task(&who, "signal", id, &r.signal).await;
        Ok(Response::new(pb::SignalTaskResponse {
            status: Some(convert::status(&t)),
        }))
    }

    #[instrument(skip_all)]
    async fn register_workflow(
        &self,
        req: Request<pb::RegisterWorkflowRequest>,
    ) -> Result<Response<pb::RegisterWorkflowResponse>, Status> {
        let r = req.into_inner();
        let format = if r.format.is_empty() {
            "json"
        } else {
            r.format.as_str()
        };
        if format != "json" && format != "toml" {
            return Err(crate::core::CoreError::field("format", "must be json or toml").into());
        }
        if r.definition.len() > convert::MAX_DEFINITION_BYTES {
            return Err(crate::core::CoreError::field(
                "definition",
                format!(
                    "must be at most {} bytes, got {}",
                    convert::MAX_DEFINITION_BYTES,
                    r.definition.len()
                ),
            )
            .into());
        }
        let (name, version, created) = self.registry()?.register(&r.definition, format).await?;
        Ok(Response::new(pb::RegisterWorkflowResponse {
            name,
            version,
            created,
        }))
    }

    async fn list_workflows(
        &self,
        _req: Request<pb::ListWorkflowsRequest>,
    ) -> Result<Response<pb::ListWorkflowsResponse>, Status> {
        let workflows = self
            .registry()?
            .list()
            .await?
            .into_iter()
            .map(|(name, version, definition_json)| pb::WorkflowInfo {
                name,
                version,
                definition_json,
            })
            .collect();
        Ok(Response::new(pb::ListWorkflowsResponse { workflows }))
    }

    async fn get_metrics(
        &self,
        _req: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        Ok(Response::new(convert::metrics(&self.core.metrics())))
    }

    async fn get_cluster_status(
        &self,
        _req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        let s = self.cluster.status().await?;
        Ok(Response::new(crate::app::cluster::to_pb(&s)))
    }
}

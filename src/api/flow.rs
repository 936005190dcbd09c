//! `FlowService`: thin handlers that validate, call the flow component and
//! map errors. No holding decision here (the core makes it). Every call
//! acts on the caller's namespace's rules only (`Principal::namespace`).

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::authz::caller;
use crate::app::flow as conv;
use crate::flow::FlowControl;
use crate::keys::Keys;
use crate::pb;
use crate::pb::flow_service_server::FlowService;

/// The service.
pub struct FlowApi {
    flow: FlowControl,
    keys: Keys,
}

impl FlowApi {
    /// A service over the flow rules.
    pub fn new(flow: FlowControl, keys: Keys) -> Self {
        FlowApi { flow, keys }
    }
}

#[tonic::async_trait]
impl FlowService for FlowApi {
    #[instrument(skip_all)]
    async fn set_concurrency_policy(
        &self,
        req: Request<pb::SetConcurrencyPolicyRequest>,
    ) -> Result<Response<pb::SetConcurrencyPolicyResponse>, Status> {
        let who = caller(&req)?;
        let p = conv::policy(req.into_inner().policy)?;
        let replaced = self
            .flow
            .set_policy(who.namespace(), &p.pattern, p.limit, p.weights)
            .await?;
        Ok(Response::new(pb::SetConcurrencyPolicyResponse { replaced }))
    }

    #[instrument(skip_all)]
    async fn delete_concurrency_policy(
        &self,
        req: Request<pb::DeleteConcurrencyPolicyRequest>,
    ) -> Result<Response<pb::DeleteConcurrencyPolicyResponse>, Status> {
        let who = caller(&req)?;
        self.flow
            .delete_policy(who.namespace(), &req.into_inner().pattern)
            .await?;
        Ok(Response::new(pb::DeleteConcurrencyPolicyResponse {}))
    }

    #[instrument(skip_all)]
    async fn list_flow_rules(
        &self,
        req: Request<pb::ListFlowRulesRequest>,
    ) -> Result<Response<pb::ListFlowRulesResponse>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(conv::rules(
            &self.flow.rules(),
            &self.flow.rate_tokens(),
            who.namespace(),
        )))
    }

    #[instrument(skip_all)]
    async fn set_rate_limit(
        &self,
        req: Request<pb::SetRateLimitRequest>,
    ) -> Result<Response<pb::SetRateLimitResponse>, Status> {
        let who = caller(&req)?;
        let r = conv::rate_limit(req.into_inner().rate_limit)?;
        let replaced = self
            .flow
            .set_rate_limit(
                who.namespace(),
                &r.pattern,
                r.rate,
                r.interval,
                r.burst,
                r.per_key,
            )
            .await?;
        Ok(Response::new(pb::SetRateLimitResponse { replaced }))
    }

    #[instrument(skip_all)]
    async fn delete_rate_limit(
        &self,
        req: Request<pb::DeleteRateLimitRequest>,
    ) -> Result<Response<pb::DeleteRateLimitResponse>, Status> {
        let who = caller(&req)?;
        self.flow
            .delete_rate_limit(who.namespace(), &req.into_inner().pattern)
            .await?;
        Ok(Response::new(pb::DeleteRateLimitResponse {}))
    }

    #[instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn pause_queue(
        &self,
        req: Request<pb::PauseQueueRequest>,
    ) -> Result<Response<pb::PauseQueueResponse>, Status> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        let already = self.flow.pause(who.namespace(), &name).await?;
        self.keys.audit(&who, "pause_queue", &name, "").await;
        Ok(Response::new(pb::PauseQueueResponse { already }))
    }

    #[instrument(skip_all, fields(name = %req.get_ref().name))]
    async fn resume_queue(
        &self,
        req: Request<pb::ResumeQueueRequest>,
    ) -> Result<Response<pb::ResumeQueueResponse>, Status> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        let was_paused = self.flow.resume(who.namespace(), &name).await?;
        self.keys.audit(&who, "resume_queue", &name, "").await;
        Ok(Response::new(pb::ResumeQueueResponse { was_paused }))
    }
}

//! `ScheduleService`: thin handlers that validate (`app::schedule`), call
//! the schedules component and map errors. No firing decision here.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::authz::caller;
use crate::app::convert::Limits;
use crate::app::schedule::{self as conv, info};
use crate::domain::{namespace, now_micros, Micros};
use crate::keys::{Keys, Principal};
use crate::pb;
use crate::pb::schedule_service_server::ScheduleService;
use crate::schedules::{Schedule, Schedules};

/// The service.
pub struct ScheduleApi {
    schedules: Schedules,
    limits: Limits,
    keys: Keys,
}

impl ScheduleApi {
    /// A service over the schedules.
    pub fn new(schedules: Schedules, limits: Limits, keys: Keys) -> Self {
        ScheduleApi {
            schedules,
            limits,
            keys,
        }
    }
}

/// A schedule id as the schedules component keys it: qualified by the
/// caller's namespace (`id@ns`; the bare id in `default`).
fn qualified(who: &Principal, id: &str) -> String {
    namespace::qualify(id, who.namespace()).into_owned()
}

/// A schedule as the caller sees it: its bare id.
fn info_in(who: &Principal, s: &Schedule, now: Micros) -> pb::ScheduleInfo {
    let mut i = info(s, now);
    if let Some(bare) = namespace::unqualify(&s.id, who.namespace()) {
        i.schedule_id = bare.to_string();
    }
    i
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        let (spec, template, payload) = conv::spec(r.spec, &self.limits)?;
        // Each fire sends the template's payload: the key's limit holds.
        who.fits_payload(payload)?;
        let s = self
            .schedules
            .create(qualified(&who, &r.schedule_id), spec, template, r.paused)
            .await?;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(info_in(&who, &s, now_micros())),
        }))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn update_schedule(
        &self,
        req: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::UpdateScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        let (spec, template, payload) = conv::spec(r.spec, &self.limits)?;
        // Each fire sends the template's payload: the key's limit holds.
        who.fits_payload(payload)?;
        let (s, created) = self
            .schedules
            .update(
                &qualified(&who, &r.schedule_id),
                spec,
                template,
                r.create_if_missing,
            )
            .await?;
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(info_in(&who, &s, now_micros())),
            created,
        }))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        let s = self.schedules.get(&qualified(&who, &r.schedule_id))?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(info_in(&who, &s, now_micros())),
        }))
    }

    #[instrument(skip_all)]
    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let limit = conv::page_size(r.page_size)?;
        let after = conv::page_token(&r.page_token)?;
        let ns = who.namespace();
        let after = if after.is_empty() {
            String::new()
        } else {
            namespace::qualify(after, ns).into_owned()
        };
        let mut page = self.schedules.list_in(ns, &after, limit + 1);
        let more = page.len() > limit;
        page.truncate(limit);
        let now = now_micros();
        Ok(Response::new(pb::ListSchedulesResponse {
            next_page_token: match page.last() {
                Some(s) if more => namespace::split(&s.id).0.to_string(),
                _ => String::new(),
            },
            schedules: page.iter().map(|s| info_in(&who, s, now)).collect(),
        }))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        conv::note(&r.note)?;
        let s = self
            .schedules
            .set_paused(&qualified(&who, &r.schedule_id), true, r.note.clone())
            .await?;
        self.keys
            .audit(&who, "pause_schedule", &r.schedule_id, &r.note)
            .await;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(info_in(&who, &s, now_micros())),
        }))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        conv::note(&r.note)?;
        let s = self
            .schedules
            .set_paused(&qualified(&who, &r.schedule_id), false, r.note.clone())
            .await?;
        self.keys
            .audit(&who, "resume_schedule", &r.schedule_id, &r.note)
            .await;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(info_in(&who, &s, now_micros())),
        }))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id))]
    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        self.schedules
            .delete(&qualified(&who, &r.schedule_id))
            .await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    #[instrument(skip_all, fields(schedule = %req.get_ref().schedule_id, task_id))]
    async fn trigger_schedule(
        &self,
        req: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        conv::schedule_id(&r.schedule_id)?;
        let s = self
            .schedules
            .trigger(&qualified(&who, &r.schedule_id))
            .await?;
        tracing::Span::current().record("task_id", tracing::field::display(s.task.id));
        Ok(Response::new(pb::TriggerScheduleResponse {
            task_id: s.task.id.to_string(),
        }))
    }
}

//! The admin routes. Query parameters are checked strictly
//! ([`super::params`]): an unknown one is a 400 naming it, so a typo never
//! silently widens a filter. Every body is the JSON dialect
//! ([`crate::pb::dialect`]); `GET /openapi.json` describes them all
//! ([`super::openapi`]).
//!
//! Commands: `DELETE …/tasks/{id}` cancels (`CancelTask`), `POST
//! …/tasks/{id}/retry` retries (`RetryTask`), `POST
//! …/tasks/{id}/replay?fromStep=` replays a workflow (`ReplayWorkflow`),
//! `POST …/flow/pause?name=` and `POST …/flow/resume?name=` pause and
//! resume a task name or queue (`PauseQueue`, `ResumeQueue`) of the
//! caller's namespace; each answers the gRPC call's response.

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::error::ApiError;
use super::json::to_json;
use super::params::{self, Params};
use super::AdminState;
use crate::app::convert;
use crate::domain::TaskId;
use crate::keys::Principal;
use crate::pb;
use crate::pb::watch_tasks_response::Item;

/// The prefix of the original design's routes.
pub const PREFIX: &str = "/internal/execution-manager";

pub fn routes(state: AdminState) -> Router {
    let api = Router::new()
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/tasks/{id}/replay", post(replay_workflow))
        .route("/tasks/{id}/logs", get(task_logs))
        .route("/logs", get(logs))
        .route("/metrics", get(metrics_json))
        .route("/caller", get(caller))
        .route("/workers", get(workers))
        .route("/cluster", get(cluster))
        .route("/schedules", get(schedules))
        .route("/flow", get(flow_rules))
        .route("/flow/pause", post(pause_queue))
        .route("/flow/resume", post(resume_queue))
        .route("/events", get(events));
    Router::new()
        .nest(PREFIX, api)
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .fallback(not_found)
        .with_state(state)
}

/// The parameters of each route (the OpenAPI document reads them too).
pub mod takes {
    use super::params::*;

    /// `GET …/tasks`.
    pub const LIST: &[Param] = &[
        USER_ID,
        SESSION_ID,
        SCHEDULE_ID,
        ERROR_KIND,
        TASK_IDS,
        NAMES,
        TYPES,
        STATES,
        SOURCES_P,
        PAGE_LIMIT,
        PAGE_TOKEN,
    ];
    /// `DELETE …/tasks/{id}`.
    pub const CANCEL: &[Param] = &[FORCE, REASON];
    /// `POST …/tasks/{id}/retry`.
    pub const RETRY: &[Param] = &[REASON];
    /// `POST …/tasks/{id}/replay`.
    pub const REPLAY: &[Param] = &[FROM_STEP, REASON];
    /// `GET …/tasks/{id}/logs`.
    pub const TASK_LOGS: &[Param] = &[LOG_LIMIT, AFTER_LINE];
    /// `GET …/logs`.
    pub const LOGS: &[Param] = &[
        USER_ID,
        SESSION_ID,
        SCHEDULE_ID,
        ERROR_KIND,
        TASK_IDS,
        NAMES,
        TYPES,
        STATES,
        SOURCES_P,
        LOG_LIMIT,
        AFTER_LINE,
        LOG_TASKS,
    ];
    /// `GET …/events`.
    pub const EVENTS: &[Param] = &[
        USER_ID,
        SESSION_ID,
        SCHEDULE_ID,
        ERROR_KIND,
        TASK_IDS,
        NAMES,
        TYPES,
        STATES,
        SOURCES_P,
        EVENTS_AFTER,
        SNAPSHOT,
    ];
    /// `GET …/schedules`.
    pub const SCHEDULES: &[Param] = &[SCHEDULE_LIMIT, SCHEDULE_AFTER];
    /// `POST …/flow/pause`, `POST …/flow/resume`.
    pub const PAUSE: &[Param] = &[PAUSE_NAME];
}

/// The `{id}` of a task route. A segment that does not decode (bad
/// percent-encoding, not UTF-8) is a 400 naming `id` like any bad id, not
/// axum's plain-text rejection.
fn task_id(id: Result<Path<String>, PathRejection>) -> Result<TaskId, ApiError> {
    match id {
        Ok(Path(id)) => Ok(convert::parse_id("id", &id)?),
        Err(_) => Err(ApiError::field(
            "id",
            "is not a task id (the path segment does not decode as UTF-8)",
        )),
    }
}

// ---------------------------------------------------------------------------
// Tasks.
// ---------------------------------------------------------------------------

/// NOT_FOUND, as for an unknown id, for a task the caller does not see
/// (another namespace's, another user's, a task a scheduler key did not
/// schedule).
async fn sees(s: &AdminState, who: &Principal, id: TaskId) -> Result<(), ApiError> {
    who.check(&s.core.status(id).await?)?;
    Ok(())
}

/// Narrows a filter to the caller's namespace and user; a filter that asks
/// for another user's tasks then matches none (the nil id is no task's).
fn narrow(who: &Principal, filter: &mut crate::domain::TaskFilter) {
    if !who.narrow(filter) {
        filter.task_ids = vec![TaskId::nil()];
    }
}

async fn list_tasks(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::LIST)?;
    let mut filter = p.filter()?;
    narrow(&who, &mut filter);
    // As ListTasks: the same page size rule; the token is the last id.
    let limit = crate::app::list::page_size("limit", p.count(&params::PAGE_LIMIT))?;
    let token = p.one(&params::PAGE_TOKEN).unwrap_or_default();
    let page = crate::app::list::page(&s.core, filter, limit, token, "pageToken").await?;
    Ok(Json(to_json(&page)))
}

async fn get_task(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let (t, payload) = s.core.status_with_payload(task_id(id)?).await?;
    who.check(&t)?;
    let payload = serde_json::from_str::<Value>(&payload)
        .ok()
        .and_then(|v| crate::pb::json::json_to_struct(&v).ok());
    Ok(Json(to_json(&pb::GetTaskStatusResponse {
        status: Some(convert::status(&t)),
        payload,
    })))
}

async fn cancel_task(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::CANCEL)?;
    let id = task_id(id)?;
    let force = p.flag(&params::FORCE);
    let reason = p.one(&params::REASON).unwrap_or_default();
    sees(&s, &who, id).await?;
    let (outcome, t) = s.core.cancel(id, reason, force).await?;
    s.keys
        .audit_task(
            &who,
            if force { "cancel (force)" } else { "cancel" },
            id,
            reason,
        )
        .await;
    Ok(Json(to_json(&pb::CancelTaskResponse {
        outcome: convert::cancel_outcome(outcome) as i32,
        status: Some(convert::status(&t)),
    })))
}

/// `POST …/tasks/{id}/retry?reason=`: `RetryTask`.
async fn retry_task(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::RETRY)?;
    let id = task_id(id)?;
    let reason = p.one(&params::REASON).unwrap_or_default();
    sees(&s, &who, id).await?;
    let t = s.core.retry(id, reason).await?;
    s.keys.audit_task(&who, "retry", id, reason).await;
    Ok(Json(to_json(&pb::RetryTaskResponse {
        status: Some(convert::status(&t)),
    })))
}

/// `POST …/tasks/{id}/replay?fromStep=&reason=`: `ReplayWorkflow`.
async fn replay_workflow(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::REPLAY)?;
    let id = task_id(id)?;
    let from = p.one(&params::FROM_STEP).unwrap_or_default();
    convert::check_from_step(from).map_err(|_| {
        ApiError::field(
            "fromStep",
            "must name a step (1 to 64 bytes): the step to replay from",
        )
    })?;
    let reason = p.one(&params::REASON).unwrap_or_default();
    sees(&s, &who, id).await?;
    let t = s.core.replay(id, from, reason).await?;
    s.keys
        .audit_task(&who, "replay", id, &format!("from step {from:?}: {reason}"))
        .await;
    Ok(Json(to_json(&pb::ReplayWorkflowResponse {
        status: Some(convert::status(&t)),
    })))
}

// ---------------------------------------------------------------------------
// Flow rules.
// ---------------------------------------------------------------------------

/// `GET …/flow`: the rules in force in the caller's namespace
/// (`ListFlowRules`): the concurrency policies, the default limit, the
/// paused names and the rate limits with their tokens.
async fn flow_rules(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(to_json(&crate::app::flow::rules(
        &s.flow.rules(),
        &s.flow.rate_tokens(),
        who.namespace(),
    ))))
}

/// The required `name` of a pause or a resume.
fn pause_name(p: &Params) -> Result<&str, ApiError> {
    p.one(&params::PAUSE_NAME)
        .ok_or_else(|| ApiError::field("name", "is required: the task name or queue"))
}

/// `POST …/flow/pause?name=`: `PauseQueue`.
async fn pause_queue(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::PAUSE)?;
    let name = pause_name(&p)?;
    let already = s.flow.pause(who.namespace(), name).await?;
    s.keys.audit(&who, "pause_queue", name, "").await;
    Ok(Json(to_json(&pb::PauseQueueResponse { already })))
}

/// `POST …/flow/resume?name=`: `ResumeQueue`.
async fn resume_queue(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::PAUSE)?;
    let name = pause_name(&p)?;
    let was_paused = s.flow.resume(who.namespace(), name).await?;
    s.keys.audit(&who, "resume_queue", name, "").await;
    Ok(Json(to_json(&pb::ResumeQueueResponse { was_paused })))
}

/// One task's lines after `after`, at most `limit`, and whether more
/// follow.
async fn read_logs(
    s: &AdminState,
    id: TaskId,
    after: u64,
    limit: usize,
) -> Result<(Vec<pb::LogLine>, bool), ApiError> {
    let mut lines = s.core.logs(id, after, limit + 1).await?;
    let has_more = lines.len() > limit;
    lines.truncate(limit);
    Ok((lines.iter().map(convert::log_line).collect(), has_more))
}

/// `GET …/tasks/{id}/logs`: as `GetTaskLogs` (200 lines by default, at
/// most 5000).
async fn task_logs(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::TASK_LOGS)?;
    let limit = p.count(&params::LOG_LIMIT) as usize;
    let id = task_id(id)?;
    sees(&s, &who, id).await?;
    let (lines, has_more) = read_logs(&s, id, p.position(&params::AFTER_LINE), limit).await?;
    Ok(Json(to_json(&pb::GetTaskLogsResponse { lines, has_more })))
}

/// `GET …/logs`: the execution log (the original design's route). The
/// lines of the newest `tasks` tasks matching the filter (20 by default,
/// at most 100), merged by time: the newest `limit` lines, oldest first,
/// each with its `taskId` (`afterLine`: only each task's lines after that
/// number). With one `taskId`, that task's lines from the start (or after
/// `afterLine`), as `…/tasks/{id}/logs`.
async fn logs(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::LOGS)?;
    let mut filter = p.filter()?;
    narrow(&who, &mut filter);
    let limit = p.count(&params::LOG_LIMIT) as usize;
    let after = p.position(&params::AFTER_LINE);
    let line = |id: &str, l: &pb::LogLine| {
        let mut v = to_json(l);
        if let Value::Object(m) = &mut v {
            m.insert("taskId".into(), Value::String(id.to_string()));
        }
        v
    };
    if let [id] = filter.task_ids[..] {
        sees(&s, &who, id).await?;
        let (lines, has_more) = read_logs(&s, id, after, limit).await?;
        let id = id.to_string();
        let lines: Vec<Value> = lines.iter().map(|l| line(&id, l)).collect();
        return Ok(Json(
            serde_json::json!({ "lines": lines, "hasMore": has_more }),
        ));
    }
    let tasks = p.count(&params::LOG_TASKS) as usize;
    let page = crate::app::list::page(&s.core, filter, tasks, "", "pageToken").await?;
    let mut all: Vec<(pb::LogLine, String)> = Vec::new();
    let mut has_more = false;
    for t in &page.tasks {
        let Ok(id) = convert::parse_id("id", &t.id) else {
            continue;
        };
        match read_logs(&s, id, after, limit).await {
            Ok((lines, more)) => {
                has_more |= more;
                all.extend(lines.into_iter().map(|l| (l, t.id.clone())));
            }
            // Removed by retention since the listing: nothing to show.
            Err(e) if e.status() == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    let key = |l: &pb::LogLine| l.time.map(|t| (t.seconds, t.nanos)).unwrap_or_default();
    all.sort_by(|(a, ia), (b, ib)| (key(a), ia, a.line).cmp(&(key(b), ib, b.line)));
    if all.len() > limit {
        has_more = true;
        all.drain(..all.len() - limit);
    }
    let lines: Vec<Value> = all.iter().map(|(l, id)| line(id, l)).collect();
    Ok(Json(
        serde_json::json!({ "lines": lines, "hasMore": has_more }),
    ))
}

// ---------------------------------------------------------------------------
// Metrics, workers, health.
// ---------------------------------------------------------------------------

async fn metrics_json(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(to_json(&convert::metrics(&s.core.metrics()))))
}

/// A worker in `GET …/workers`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WorkerJson {
    id: String,
    name: String,
    /// The task names (queue keys) it takes.
    task_names: Vec<String>,
    /// None for an engine without a concurrency limit.
    slots: Option<u32>,
    immediate_slots: u32,
    running: usize,
    /// Normal plus immediate slots minus running tasks; none without a
    /// limit.
    free_slots: Option<u32>,
    /// Runs inside the server (webhook caller, workflow engine, backends).
    local: bool,
}

/// `GET …/schedules?limit=&after=`: schedules by id, each as
/// `ScheduleInfo`'s JSON (with its next fire times); `next` is the `after`
/// of the next page, empty on the last.
async fn schedules(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::SCHEDULES)?;
    let limit = p.count(&params::SCHEDULE_LIMIT) as usize;
    let after = p.one(&params::SCHEDULE_AFTER).unwrap_or("");
    let mut page = s.schedules.list(after, limit + 1);
    let more = page.len() > limit;
    page.truncate(limit);
    let now = crate::domain::now_micros();
    let next = match page.last() {
        Some(l) if more => l.id.clone(),
        _ => String::new(),
    };
    let list: Vec<Value> = page
        .iter()
        .map(|x| to_json(&crate::app::schedule::info(x, now)))
        .collect();
    Ok(Json(serde_json::json!({ "schedules": list, "next": next })))
}

/// Who leads and which replicas are alive (the dashboard's header):
/// `GetClusterStatus`'s answer, and `leader`, partition 0's lease (`null`
/// on SQLite, or while none holds it).
async fn cluster(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let status = s.cluster.status().await?;
    let leader =
        status.leases.iter().find(|l| l.partition == 0).map(
            |l| serde_json::json!({"replica": l.holder, "address": l.address, "term": l.term}),
        );
    let mut v = to_json(&crate::app::cluster::to_pb(&status));
    if let Value::Object(m) = &mut v {
        m.insert("leader".into(), leader.unwrap_or(Value::Null));
    }
    Ok(Json(v))
}

/// `GET …/caller`: who the bearer is and what it may do (the dashboard
/// shows only the actions and panels it may use).
async fn caller(
    Extension(who): Extension<Principal>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    use crate::keys::{Need, Scoping};
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(serde_json::json!({
        "keyId": who.key_id(),
        "role": who.role().as_str(),
        "namespace": who.namespace(),
        "userId": who.user(),
        "canCancel": who.may(Need::Cancel, Scoping::Tasks).is_ok(),
        "canOperate": who.may(Need::Operate, Scoping::Tasks).is_ok(),
        "serverWide": who.may(Need::Read, Scoping::Global).is_ok(),
    })))
}

async fn workers(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let mut ws: Vec<WorkerJson> = s
        .core
        .workers()
        .into_iter()
        .map(|w| WorkerJson {
            free_slots: w.slots.map(|s| {
                (s + w.immediate_slots).saturating_sub(u32::try_from(w.running).unwrap_or(u32::MAX))
            }),
            id: w.id,
            name: w.name,
            task_names: w.keys,
            slots: w.slots,
            immediate_slots: w.immediate_slots,
            running: w.running,
            local: w.local,
        })
        .collect();
    ws.sort_by(|a, b| (a.local, &a.name, &a.id).cmp(&(b.local, &b.name, &b.id)));
    Ok(Json(serde_json::json!({ "workers": ws })))
}

async fn prometheus(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// Liveness: 503 only while draining. A store that cannot commit (a full
/// disk) is said, with a 200: restarting the process would not help.
async fn healthz(State(s): State<AdminState>) -> Response {
    if s.core.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response();
    }
    match s.store_blocked.borrow().clone() {
        Some(reason) => {
            Json(serde_json::json!({"status": "store_cannot_commit", "reason": reason}))
                .into_response()
        }
        None => Json(serde_json::json!({"status": "serving"})).into_response(),
    }
}

/// Readiness: 503 while draining or while the store cannot commit (new
/// tasks are refused then), with the reason; 200 otherwise.
async fn readyz(State(s): State<AdminState>) -> Response {
    let unavailable = |body: Value| (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    if s.core.is_draining() {
        return unavailable(serde_json::json!({"status": "draining"}));
    }
    match s.store_blocked.borrow().clone() {
        Some(reason) => {
            unavailable(serde_json::json!({"status": "store_cannot_commit", "reason": reason}))
        }
        None => Json(serde_json::json!({"status": "ready"})).into_response(),
    }
}

/// `GET /openapi.json`: the OpenAPI document of these routes.
async fn openapi() -> Json<Value> {
    Json(super::openapi::document().clone())
}

async fn not_found() -> ApiError {
    tonic::Status::not_found("no such route").into()
}

// ---------------------------------------------------------------------------
// Server-sent events.
// ---------------------------------------------------------------------------

/// `GET …/events`: the `WatchTasks` stream as server-sent events.
///
/// - `event: task`, `id: <sequence>`, `data: <TaskEvent in the dialect>` per event
///   (snapshot events carry no id: they are no position to resume from);
/// - `event: gap`, `data: {"oldestKept": 123}` when the history no longer
///   covers the position asked for; the latest state of each task changed
///   since then follows as snapshot events;
/// - `event: live`, `id: <sequence>`, `data: {"sequence": 123}`, once caught up;
/// - a `: heartbeat` comment when idle.
///
/// Resume with the `Last-Event-ID` header (EventSource sends it when it
/// reconnects) or `?after=<sequence>`; `?snapshot=true` first sends every
/// active task matching the filter.
async fn events(
    State(s): State<AdminState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = Params::parse(q.as_deref(), takes::EVENTS)?;
    let mut filter = p.filter()?;
    narrow(&who, &mut filter);
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::field("Last-Event-ID", "must be an event sequence number"))?,
        None => p.position(&params::EVENTS_AFTER),
    };
    let snapshot = p.flag(&params::SNAPSHOT);
    let (tx, rx) = mpsc::channel(1024);
    let core = s.core.clone();
    let stop = s.streams_stop.clone();
    // Policy on shutdown: the stream ends when the server drains; it also
    // ends when the client goes away (the channel closes).
    tokio::spawn(async move {
        tokio::select! {
            _ = crate::app::watch::watch(core, filter, after, snapshot, tx) => {}
            _ = stop.cancelled() => {}
        }
    });
    let stream = ReceiverStream::new(rx).map(|item| Ok(sse_event(item)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(s.heartbeat).text("heartbeat")))
}

fn sse_event(item: Result<pb::WatchTasksResponse, tonic::Status>) -> Event {
    let data = |v: &Value| Event::default().data(v.to_string());
    match item.map(|r| r.item) {
        Ok(Some(Item::Event(e))) => {
            let snapshot = e.kind == pb::TaskEventKind::Snapshot as i32;
            let ev = data(&to_json(&e)).event("task");
            if snapshot {
                ev
            } else {
                ev.id(e.sequence.to_string())
            }
        }
        Ok(Some(Item::Gap(g))) => data(&to_json(&g)).event("gap"),
        Ok(Some(Item::Live(l))) => data(&to_json(&l)).event("live").id(l.sequence.to_string()),
        Ok(None) => Event::default().comment("empty"),
        Err(status) => {
            let e = ApiError::from(status);
            Event::default()
                .event("stream-error")
                .data(serde_json::to_string(e.body()).unwrap_or_default())
        }
    }
}

// ---------------------------------------------------------------------------
// The dashboard.
// ---------------------------------------------------------------------------

/// The page: one HTML document with its style and script inlined (sources
/// in `src/admin/ui/`, built into the binary), so a token given as
/// `?access_token=` covers everything it loads.
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        include_str!("ui/index.html")
            .replace("/*STYLE*/", include_str!("ui/app.css"))
            .replace("/*SCRIPT*/", include_str!("ui/app.js"))
    })
}

async fn dashboard() -> Response {
    let mut resp = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

//! The admin routes. Query parameters are checked strictly: an unknown one
//! is a 400 naming it, so a typo never silently widens a filter.
//!
//! Filters (tasks, events): `user` (or `user_id`), `session` (or
//! `session_id`), `schedule` (its fires), `id` (or `task_id`), `name`,
//! `type`, `state`, `source`;
//! the last five repeat or take comma-separated lists, and enum values take
//! either the short name (`running`) or the proto name (`TASK_STATE_RUNNING`).

use std::convert::Infallible;
use std::sync::OnceLock;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::error::ApiError;
use super::json::to_json;
use super::metrics::{source_name, type_name};
use super::AdminState;
use crate::app::convert;
use crate::domain::{Source, TaskFilter, TaskId, TaskState, TaskType};
use crate::pb;
use crate::pb::watch_tasks_response::Item;

/// The prefix of the original design's routes.
pub const PREFIX: &str = "/internal/execution-manager";

pub fn routes(state: AdminState) -> Router {
    let api = Router::new()
        .route("/tasks", get(list_tasks))
        .route("/tasks/{id}", get(get_task).delete(cancel_task))
        .route("/tasks/{id}/logs", get(task_logs))
        .route("/logs", get(logs))
        .route("/metrics", get(metrics_json))
        .route("/workers", get(workers))
        .route("/cluster", get(cluster))
        .route("/schedules", get(schedules))
        .route("/events", get(events));
    Router::new()
        .nest(PREFIX, api)
        .route("/metrics", get(prometheus))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .fallback(not_found)
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Query parameters.
// ---------------------------------------------------------------------------

const FILTER_KEYS: &[&str] = &[
    "user",
    "user_id",
    "session",
    "session_id",
    "id",
    "task_id",
    "name",
    "type",
    "state",
    "source",
    "schedule",
];

struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the query; names outside `keys` (and `access_token`, taken by
    /// the auth check) are refused.
    fn parse(query: Option<&str>, keys: &[&[&str]]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (k, _) in &pairs {
            if k != "access_token" && !keys.iter().any(|ks| ks.contains(&k.as_str())) {
                return Err(ApiError::field(
                    k.clone(),
                    "is not a parameter of this route",
                ));
            }
        }
        Ok(Params(pairs))
    }

    /// The last value of any of `names`, if not empty.
    fn one(&self, names: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`, commas splitting lists.
    fn many(&self, names: &[&str]) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .flat_map(|(k, v)| v.split(',').map(move |x| (k.as_str(), x.trim())))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    fn number(&self, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
        match self.one(&[name]) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(0) => Ok(default),
                Ok(n) if n <= max => Ok(n),
                Ok(_) => Err(ApiError::field(name, format!("must be at most {max}"))),
                Err(_) => Err(ApiError::field(
                    name,
                    format!(
                        "{} is not a non-negative integer",
                        crate::domain::text::quote(v)
                    ),
                )),
            },
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.one(&[name]) {
            None => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ApiError::field(
                name,
                format!("{} is not true or false", crate::domain::text::quote(v)),
            )),
        }
    }

    fn filter(&self) -> Result<TaskFilter, ApiError> {
        for k in ["user", "user_id", "session", "session_id"] {
            if let Some(v) = self.one(&[k]) {
                convert::check_owner(k, v)?;
            }
        }
        for keys in [
            &["id", "task_id"][..],
            &["name"],
            &["type"],
            &["state"],
            &["source"],
        ] {
            let n = self.many(keys).len();
            if n > convert::MAX_FILTER_VALUES {
                return Err(ApiError::field(
                    keys[0],
                    format!("at most {} values, got {n}", convert::MAX_FILTER_VALUES),
                ));
            }
        }
        let mut f = TaskFilter {
            user_id: self.one(&["user", "user_id"]).map(str::to_string),
            session_id: self.one(&["session", "session_id"]).map(str::to_string),
            schedule_id: self.one(&["schedule"]).map(str::to_string),
            ..Default::default()
        };
        if let Some(s) = &f.schedule_id {
            convert::check_name(s).map_err(|e| ApiError::field("schedule", e))?;
        }
        for (k, v) in self.many(&["id", "task_id"]) {
            f.task_ids.push(convert::parse_id(k, v)?);
        }
        for (k, v) in self.many(&["name"]) {
            convert::check_name(v).map_err(|e| ApiError::field(k, e))?;
            f.names.push(v.to_string());
        }
        for (k, v) in self.many(&["type"]) {
            f.task_types
                .push(enum_value(k, v, "TASK_TYPE_", &TaskType::ALL, |t| {
                    type_name(*t)
                })?);
        }
        for (k, v) in self.many(&["state"]) {
            f.states
                .push(enum_value(k, v, "TASK_STATE_", &TaskState::ALL, |s| {
                    s.as_str()
                })?);
        }
        const SOURCES: [Source; 4] = [
            Source::Embedded,
            Source::Bullmq,
            Source::Temporal,
            Source::N8n,
        ];
        for (k, v) in self.many(&["source"]) {
            f.sources
                .push(enum_value(k, v, "TASK_SOURCE_", &SOURCES, |s| {
                    source_name(*s)
                })?);
        }
        Ok(f)
    }
}

/// An enum value by its short name or its proto name.
fn enum_value<T: Copy>(
    field: &str,
    v: &str,
    proto_prefix: &str,
    all: &[T],
    name: impl Fn(&T) -> &'static str,
) -> Result<T, ApiError> {
    let lower = v.to_ascii_lowercase();
    let short = lower
        .strip_prefix(&proto_prefix.to_ascii_lowercase())
        .unwrap_or(&lower);
    all.iter()
        .find(|x| name(x) == short)
        .copied()
        .ok_or_else(|| {
            ApiError::field(
                field,
                format!(
                    "{v:?} is not one of {}",
                    all.iter().map(&name).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

fn task_id(id: &str) -> Result<TaskId, ApiError> {
    Ok(convert::parse_id("id", id)?)
}

// ---------------------------------------------------------------------------
// Tasks.
// ---------------------------------------------------------------------------

async fn list_tasks(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(
        q.as_deref(),
        &[FILTER_KEYS, &["limit", "page_token", "cursor"]],
    )?;
    let filter = p.filter()?;
    // As ListTasks: the same page size rule; the token is the last id.
    let limit = crate::app::list::page_size("limit", p.number("limit", 0, u64::MAX)?)?;
    let token = p.one(&["page_token", "cursor"]).unwrap_or_default();
    let page = crate::app::list::page(&s.core, filter, limit, token, "page_token").await?;
    Ok(Json(to_json("ListTasksResponse", &page)))
}

async fn get_task(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    let (t, payload) = s.core.status_with_payload(task_id(&id)?).await?;
    let payload = serde_json::from_str::<Value>(&payload)
        .ok()
        .and_then(|v| crate::pb::json::json_to_struct(&v).ok());
    Ok(Json(to_json(
        "GetTaskStatusResponse",
        &pb::GetTaskStatusResponse {
            status: Some(convert::status(&t)),
            payload,
        },
    )))
}

async fn cancel_task(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), &[&["force", "reason"]])?;
    let id = task_id(&id)?;
    let force = p.flag("force")?;
    let reason = p.one(&["reason"]).unwrap_or_default();
    convert::check_reason(reason)?;
    let (outcome, t) = s.core.cancel(id, reason, force).await?;
    Ok(Json(to_json(
        "CancelTaskResponse",
        &pb::CancelTaskResponse {
            outcome: convert::cancel_outcome(outcome) as i32,
            status: Some(convert::status(&t)),
        },
    )))
}

async fn read_logs(s: &AdminState, id: TaskId, p: &Params) -> Result<Json<Value>, ApiError> {
    // As GetTaskLogs: 200 lines by default, at most 5000.
    let limit = p.number("limit", 200, 5000)? as usize;
    let after = p.number("after_line", 0, u64::MAX)?;
    let mut lines = s.core.logs(id, after, limit + 1).await?;
    let has_more = lines.len() > limit;
    lines.truncate(limit);
    Ok(Json(to_json(
        "GetTaskLogsResponse",
        &pb::GetTaskLogsResponse {
            lines: lines.iter().map(convert::log_line).collect(),
            has_more,
        },
    )))
}

async fn task_logs(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), &[&["limit", "after_line"]])?;
    read_logs(&s, task_id(&id)?, &p).await
}

async fn logs(State(s): State<AdminState>, RawQuery(q): RawQuery) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), &[&["task_id", "limit", "after_line"]])?;
    let id = p
        .one(&["task_id"])
        .ok_or_else(|| ApiError::field("task_id", "is required"))?;
    let id = convert::parse_id("task_id", id)?;
    read_logs(&s, id, &p).await
}

// ---------------------------------------------------------------------------
// Metrics, workers, health.
// ---------------------------------------------------------------------------

async fn metrics_json(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(to_json(
        "GetMetricsResponse",
        &convert::metrics(&s.core.metrics()),
    )))
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

/// Who leads and which replicas are alive (the dashboard's header).
/// `GET …/schedules?limit=&after=`: schedules by id, each as
/// `ScheduleInfo`'s JSON (with its next fire times); `next` is the `after`
/// of the next page, empty on the last.
async fn schedules(
    State(s): State<AdminState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q.as_deref(), &[&["limit"], &["after"]])?;
    let limit = p.number("limit", 50, 1000)? as usize;
    let after = p.one(&["after"]).unwrap_or("");
    if !after.is_empty() && crate::domain::rules::check_name(after).is_err() {
        return Err(ApiError::field("after", "not a schedule id"));
    }
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
        .map(|x| to_json("ScheduleInfo", &crate::app::schedule::info(x, now)))
        .collect();
    Ok(Json(serde_json::json!({ "schedules": list, "next": next })))
}

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
    Ok(Json(serde_json::json!({
        "store": status.store,
        "replicaId": status.replica_id,
        "leader": leader,
        "leases": status.leases,
        "replicas": status.replicas,
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

async fn not_found() -> ApiError {
    tonic::Status::not_found("no such route").into()
}

// ---------------------------------------------------------------------------
// Server-sent events.
// ---------------------------------------------------------------------------

/// `GET …/events`: the `WatchTasks` stream as server-sent events.
///
/// - `event: task`, `id: <sequence>`, `data: <TaskEvent JSON>` per event
///   (snapshot events carry no id: they are no position to resume from);
/// - `event: gap`, `data: {"oldestKept": "…"}` when the history no longer
///   covers the position asked for; the latest state of each task changed
///   since then follows as snapshot events;
/// - `event: live`, `id: <sequence>`, once caught up;
/// - a `: heartbeat` comment when idle.
///
/// Resume with the `Last-Event-ID` header (EventSource sends it when it
/// reconnects) or `?after=<sequence>`; `?snapshot=true` first sends every
/// active task matching the filter.
async fn events(
    State(s): State<AdminState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let p = Params::parse(q.as_deref(), &[FILTER_KEYS, &["after", "snapshot"]])?;
    let filter = p.filter()?;
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::field("Last-Event-ID", "must be an event sequence number"))?,
        None => p.number("after", 0, u64::MAX)?,
    };
    let snapshot = p.flag("snapshot")?;
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
            let ev = data(&to_json("TaskEvent", &e)).event("task");
            if snapshot {
                ev
            } else {
                ev.id(e.sequence.to_string())
            }
        }
        Ok(Some(Item::Gap(g))) => data(&to_json("WatchGap", &g)).event("gap"),
        Ok(Some(Item::Live(l))) => data(&to_json("WatchLive", &l))
            .event("live")
            .id(l.sequence.to_string()),
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

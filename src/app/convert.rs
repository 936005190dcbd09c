//! Every conversion between protobuf messages and domain types, with the
//! validation of requests. A conversion failure is an invalid argument that
//! names the field, as in the proto.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::core::metrics::{StateArray, Summary};
use crate::core::{CoreError, FieldViolation, MetricsSnapshot};
use crate::domain::rules;
use crate::domain::Payload;
use crate::domain::*;
use crate::pb;
use crate::pb::json::{json_to_value, struct_to_json, value_to_json};

/// Limits applied to requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest serialised payload.
    pub max_payload_bytes: usize,
}

/// Collects field violations.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.to_string(),
            description: description.into(),
        });
    }

    fn into_result<T>(self, ok: T) -> Result<T, CoreError> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(CoreError::InvalidArgument(self.0))
        }
    }
}

pub use crate::domain::rules::check_name;

fn check_len(vs: &mut Violations, field: &str, v: &str, max: usize) {
    if v.len() > max {
        vs.add(
            field,
            format!("must be at most {max} bytes, got {}", v.len()),
        );
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A protobuf duration as a std duration, checked against a maximum.
fn duration(
    vs: &mut Violations,
    field: &str,
    d: Option<prost_types::Duration>,
    max: Duration,
) -> Option<Duration> {
    let d = d?;
    if d.nanos >= 1_000_000_000 || d.nanos <= -1_000_000_000 {
        vs.add(field, "nanos must be between 0 and 999,999,999");
        return None;
    }
    if d.seconds < 0 || d.nanos < 0 {
        vs.add(field, "must not be negative");
        return None;
    }
    let out = Duration::new(d.seconds as u64, d.nanos as u32);
    if out > max {
        vs.add(
            field,
            format!("must be at most {}", humantime::format_duration(max)),
        );
        return None;
    }
    Some(out)
}

/// Parses a task id.
pub fn parse_id(field: &str, s: &str) -> Result<TaskId, CoreError> {
    if s.is_empty() {
        return Err(CoreError::field(field, "must not be empty"));
    }
    TaskId::parse_str(s).map_err(|_| {
        CoreError::field(
            field,
            format!("{} is not a task id (a UUID)", text::quote(s)),
        )
    })
}

fn task_type(v: i32) -> Option<TaskType> {
    match pb::TaskType::try_from(v).ok()? {
        pb::TaskType::Simple => Some(TaskType::Simple),
        pb::TaskType::Complex => Some(TaskType::Complex),
        pb::TaskType::Integration => Some(TaskType::Integration),
        pb::TaskType::Unspecified => None,
    }
}

fn check_url(vs: &mut Violations, field: &str, url: &str) {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        vs.add(field, "must be an http:// or https:// URL");
    } else if url.len() > 2048 {
        vs.add(field, "must be at most 2048 bytes");
    } else if url
        .split("://")
        .nth(1)
        .is_none_or(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        vs.add(field, "has no host");
    }
}

/// Validates a `ScheduleTaskRequest` into a new task.
pub fn new_task(
    req: pb::ScheduleTaskRequest,
    limits: &Limits,
    traceparent: Option<String>,
) -> Result<NewTask, CoreError> {
    use pb::schedule_task_request::Target as T;
    let mut vs = Violations::default();
    if let Err(e) = check_name(&req.name) {
        vs.add("name", e);
    }
    let tt = task_type(req.task_type);
    if tt.is_none() {
        vs.add(
            "task_type",
            "must be TASK_TYPE_SIMPLE, TASK_TYPE_COMPLEX or TASK_TYPE_INTEGRATION",
        );
    }
    // Payload.
    let payload_json = match req.payload.as_ref().map(struct_to_json) {
        None => "{}".to_string(),
        Some(Ok(v)) => v.to_string(),
        Some(Err(e)) => {
            vs.add("payload", e.to_string());
            String::new()
        }
    };
    if payload_json.len() > limits.max_payload_bytes {
        vs.add(
            "payload",
            format!(
                "is {} bytes serialised; the limit is {} bytes",
                payload_json.len(),
                limits.max_payload_bytes
            ),
        );
    }
    // Options.
    let o = req.options.unwrap_or_default();
    if !rules::PRIORITY.contains(&o.priority) {
        vs.add(
            "options.priority",
            format!("must be between -1000 and 1000, got {}", o.priority),
        );
    }
    let attempts = match o.attempts {
        // Webhook calls retry by default; other types run once unless asked.
        0 if tt == Some(TaskType::Integration) => 5,
        0 => 1,
        n if n > rules::MAX_ATTEMPTS => {
            vs.add(
                "options.attempts",
                format!("must be between 1 and 100, got {n}"),
            );
            1
        }
        n => n,
    };
    let mut backoff = Backoff::default();
    if let Some(b) = o.backoff {
        match pb::backoff::Kind::try_from(b.kind) {
            Ok(pb::backoff::Kind::Fixed) => backoff.kind = BackoffKind::Fixed,
            Ok(_) => backoff.kind = BackoffKind::Exponential,
            Err(_) => vs.add("options.backoff.kind", format!("unknown kind {}", b.kind)),
        }
        if let Some(d) = duration(
            &mut vs,
            "options.backoff.base",
            b.base,
            Duration::from_secs(86_400),
        ) {
            backoff.base = d;
        }
        if let Some(d) = duration(
            &mut vs,
            "options.backoff.max",
            b.max,
            Duration::from_secs(7 * 86_400),
        ) {
            backoff.max = d;
        }
    }
    let delay = duration(
        &mut vs,
        "options.delay",
        o.delay,
        Duration::from_secs(365 * 86_400),
    )
    .unwrap_or_default();
    let execution_timeout = duration(
        &mut vs,
        "options.execution_timeout",
        o.execution_timeout,
        Duration::from_secs(7 * 86_400),
    )
    .filter(|d| !d.is_zero());
    check_len(&mut vs, "options.user_id", &o.user_id, 256);
    check_len(&mut vs, "options.session_id", &o.session_id, 256);
    check_len(&mut vs, "options.idempotency_key", &o.idempotency_key, 256);
    if o.labels.len() > 64 {
        vs.add(
            "options.labels",
            format!("at most 64 labels, got {}", o.labels.len()),
        );
    }
    for (k, v) in &o.labels {
        if k.is_empty() || k.len() > 128 {
            vs.add(
                "options.labels",
                format!("label key {} must be 1 to 128 bytes", text::quote(k)),
            );
        }
        if v.len() > 1024 {
            vs.add(
                "options.labels",
                format!(
                    "the value of label {} must be at most 1024 bytes",
                    text::quote(k)
                ),
            );
        }
    }
    let retention = o.retention.and_then(|r| {
        let max = Duration::from_secs(3650 * 86_400);
        let keep = crate::domain::retention::Retention {
            completed: duration(&mut vs, "options.retention.completed", r.completed, max),
            failed: duration(&mut vs, "options.retention.failed", r.failed, max),
            cancelled: duration(&mut vs, "options.retention.cancelled", r.cancelled, max),
        };
        (!keep.is_empty()).then(|| Box::new(keep))
    });
    let cleanup = match o.cleanup {
        Some(c) => match check_name(&c.name) {
            Ok(()) => Some(c.name.into_boxed_str()),
            Err(e) => {
                vs.add("options.cleanup.name", e);
                None
            }
        },
        None => None,
    };
    // Target.
    let target = match (tt, req.target) {
        (Some(TaskType::Simple), None) => Target::Simple { queue: None },
        (Some(TaskType::Simple), Some(T::Simple(s))) => {
            if !s.queue.is_empty() {
                if let Err(e) = check_name(&s.queue) {
                    vs.add("simple.queue", e);
                }
            }
            Target::Simple {
                queue: non_empty(s.queue),
            }
        }
        (Some(TaskType::Complex), Some(T::Complex(c))) => {
            if let Err(e) = check_name(&c.workflow_type) {
                vs.add("complex.workflow_type", e);
            }
            for (f, v) in [
                ("complex.task_queue", &c.task_queue),
                ("complex.tracking_queue", &c.tracking_queue),
            ] {
                if !v.is_empty() {
                    if let Err(e) = check_name(v) {
                        vs.add(f, e);
                    }
                }
            }
            check_len(&mut vs, "complex.workflow_id", &c.workflow_id, 256);
            let args = match c.workflow_args {
                None => Vec::new(),
                Some(l) => {
                    let mut out = Vec::with_capacity(l.values.len());
                    for v in &l.values {
                        match value_to_json(v) {
                            Ok(j) => out.push(j),
                            Err(e) => vs.add("complex.workflow_args", e.to_string()),
                        }
                    }
                    out
                }
            };
            Target::Complex {
                workflow_type: c.workflow_type,
                workflow_args: args,
                task_queue: non_empty(c.task_queue),
                tracking_queue: non_empty(c.tracking_queue),
                workflow_id: non_empty(c.workflow_id),
            }
        }
        (Some(TaskType::Complex), None) => {
            vs.add(
                "complex",
                "is required for COMPLEX tasks (workflow_type at least)",
            );
            Target::Complex {
                workflow_type: String::new(),
                workflow_args: vec![],
                task_queue: None,
                tracking_queue: None,
                workflow_id: None,
            }
        }
        (Some(TaskType::Integration), Some(T::Integration(i))) => {
            let n = i.n8n.unwrap_or_default();
            if n.workflow_id.is_empty() && n.webhook_url.is_empty() {
                vs.add("integration.n8n", "needs webhook_url or workflow_id");
            }
            if !n.webhook_url.is_empty() {
                check_url(&mut vs, "integration.n8n.webhook_url", &n.webhook_url);
            }
            if !n.workflow_id.is_empty() {
                if let Err(e) = check_name(&n.workflow_id) {
                    vs.add("integration.n8n.workflow_id", e);
                }
            }
            check_len(
                &mut vs,
                "integration.n8n.integration_source",
                &n.integration_source,
                128,
            );
            Target::Integration {
                workflow_id: non_empty(n.workflow_id),
                webhook_url: non_empty(n.webhook_url),
                integration_source: non_empty(n.integration_source),
            }
        }
        (Some(TaskType::Integration), None) => {
            vs.add(
                "integration",
                "is required for INTEGRATION tasks (webhook_url or workflow_id)",
            );
            Target::Simple { queue: None }
        }
        (Some(t), Some(other)) => {
            let (field, given) = match other {
                T::Simple(_) => ("simple", "SIMPLE"),
                T::Complex(_) => ("complex", "COMPLEX"),
                T::Integration(_) => ("integration", "INTEGRATION"),
            };
            vs.add(
                field,
                format!("a {given} target does not match task_type {}", t.as_str()),
            );
            Target::Simple { queue: None }
        }
        (None, _) => Target::Simple { queue: None },
    };
    let spec = TaskSpec {
        name: req.name,
        task_type: tt.unwrap_or(TaskType::Simple),
        priority: o.priority,
        max_attempts: attempts,
        backoff,
        execution_timeout,
        user_id: non_empty(o.user_id),
        session_id: non_empty(o.session_id),
        immediate: o.immediate,
        idempotency_key: non_empty(o.idempotency_key),
        labels: o.labels.into_iter().collect::<BTreeMap<_, _>>(),
        cleanup,
        target,
        traceparent: traceparent.map(String::into_boxed_str),
        parent_id: None,
        retention,
    };
    vs.into_result(NewTask {
        spec,
        payload: Payload::Json(Arc::from(payload_json)),
        delay,
    })
}

/// Validates a `ScheduleTasksRequest`: its size, then each item as
/// [`new_task`] validates one. Items that fail keep their error, by index.
pub fn new_tasks(
    req: pb::ScheduleTasksRequest,
    limits: &Limits,
    traceparent: Option<String>,
) -> Result<Vec<Result<NewTask, CoreError>>, CoreError> {
    if req.tasks.len() > rules::MAX_BULK_TASKS {
        return Err(CoreError::field(
            "tasks",
            format!(
                "must hold at most {} tasks, got {}",
                rules::MAX_BULK_TASKS,
                req.tasks.len()
            ),
        ));
    }
    Ok(req
        .tasks
        .into_iter()
        .map(|t| new_task(t, limits, traceparent.clone()))
        .collect())
}

/// One accepted item of a `ScheduleTasks` answer.
pub fn scheduled_item(index: usize, s: &crate::core::Scheduled) -> pb::ScheduleTasksResult {
    pb::ScheduleTasksResult {
        index: index as u32,
        outcome: Some(pb::schedule_tasks_result::Outcome::Scheduled(
            pb::ScheduledTask {
                task_id: s.task.id.to_string(),
                existing: s.existing,
                state: pb_state(s.task.rt.state) as i32,
            },
        )),
    }
}

/// A timestamp from microseconds.
pub fn ts(m: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: m.div_euclid(1_000_000),
        nanos: (m.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn pb_type(t: TaskType) -> pb::TaskType {
    match t {
        TaskType::Simple => pb::TaskType::Simple,
        TaskType::Complex => pb::TaskType::Complex,
        TaskType::Integration => pb::TaskType::Integration,
    }
}

fn pb_state(s: TaskState) -> pb::TaskState {
    match s {
        TaskState::Pending => pb::TaskState::Pending,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::Compensating => pb::TaskState::Compensating,
        TaskState::Compensated => pb::TaskState::Compensated,
    }
}

fn pb_source(s: Source) -> pb::TaskSource {
    match s {
        Source::Unspecified => pb::TaskSource::Unspecified,
        Source::Embedded => pb::TaskSource::Embedded,
        Source::Bullmq => pb::TaskSource::Bullmq,
        Source::Temporal => pb::TaskSource::Temporal,
        Source::N8n => pb::TaskSource::N8n,
    }
}

fn pb_reason(r: Option<WaitingReason>) -> pb::WaitingReason {
    match r {
        None => pb::WaitingReason::Unspecified,
        Some(WaitingReason::Queued) => pb::WaitingReason::Queued,
        Some(WaitingReason::NoWorker) => pb::WaitingReason::NoWorker,
        Some(WaitingReason::Delayed) => pb::WaitingReason::Delayed,
        Some(WaitingReason::BackingOff) => pb::WaitingReason::BackingOff,
        Some(WaitingReason::CapacityFull) => pb::WaitingReason::CapacityFull,
        Some(WaitingReason::EngineUnreachable) => pb::WaitingReason::EngineUnreachable,
    }
}

/// A task's status for the API.
pub fn status(t: &Task) -> pb::TaskStatus {
    let rt = &t.rt;
    pb::TaskStatus {
        id: t.id.to_string(),
        name: t.spec.name.clone(),
        task_type: pb_type(t.spec.task_type) as i32,
        source: pb_source(rt.source) as i32,
        state: pb_state(rt.state) as i32,
        attempt: rt.attempt,
        max_attempts: t.spec.max_attempts,
        priority: t.spec.priority,
        immediate: t.spec.immediate,
        user_id: t.spec.user_id.clone().unwrap_or_default(),
        session_id: t.spec.session_id.clone().unwrap_or_default(),
        progress: rt.progress,
        progress_message: rt
            .progress_message
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        result: rt.result.as_deref().map(json_to_value),
        last_error: rt.last_error.as_deref().map(task_error),
        created_at: Some(ts(t.created_at)),
        run_at: Some(ts(rt.run_at)),
        started_at: rt.started_at.map(ts),
        finished_at: rt.finished_at.map(ts),
        external_id: rt.external_id.clone().unwrap_or_default(),
        waiting_reason: pb_reason(rt.waiting_reason) as i32,
        cancel_requested: rt.cancel_requested,
        labels: t.spec.labels.clone().into_iter().collect(),
        worker_id: rt.worker_id.as_deref().unwrap_or_default().to_owned(),
        idempotency_key: t.spec.idempotency_key.clone().unwrap_or_default(),
        target: t.spec.target.describe(),
        sequence: rt.seq,
        steps: if t.spec.task_type == TaskType::Complex {
            steps(&WorkflowRun::from_detail(rt.detail.as_deref()))
        } else {
            Vec::new()
        },
        workflow_version: if t.spec.task_type == TaskType::Complex {
            WorkflowRun::from_detail(rt.detail.as_deref()).version
        } else {
            0
        },
        parent_id: t.spec.parent_id.map(|p| p.to_string()).unwrap_or_default(),
    }
}

fn task_error(e: &TaskError) -> pb::TaskError {
    pb::TaskError {
        message: e.message.clone(),
        kind: e.kind.clone(),
        details: e.details.clone(),
        retryable: e.retryable,
        attempt: e.attempt,
    }
}

fn steps(run: &WorkflowRun) -> Vec<pb::StepStatus> {
    run.steps
        .iter()
        .map(|s| pb::StepStatus {
            id: s.id.clone(),
            kind: s.kind.clone(),
            state: match s.state {
                StepState::Pending => pb::StepState::Pending,
                StepState::Running => pb::StepState::Running,
                StepState::Completed => pb::StepState::Completed,
                StepState::Failed => pb::StepState::Failed,
                StepState::Cancelled => pb::StepState::Cancelled,
                StepState::Skipped => pb::StepState::Skipped,
                StepState::Compensating => pb::StepState::Compensating,
                StepState::Compensated => pb::StepState::Compensated,
                StepState::CompensationFailed => pb::StepState::CompensationFailed,
            } as i32,
            attempt: s.attempt,
            output: s.output.as_ref().map(json_to_value),
            error: s.error.as_ref().map(task_error),
            started_at: s.started_at.map(ts),
            finished_at: s.finished_at.map(ts),
            task_id: s.task_id.map(|t| t.to_string()).unwrap_or_default(),
            compensation_task_id: s
                .compensation_task_id
                .map(|t| t.to_string())
                .unwrap_or_default(),
            depends_on: s.depends_on.clone(),
        })
        .collect()
}

/// The event kind for the API.
pub fn event_kind(k: EventKind) -> pb::TaskEventKind {
    match k {
        EventKind::Scheduled => pb::TaskEventKind::Scheduled,
        EventKind::Started => pb::TaskEventKind::Started,
        EventKind::Progress => pb::TaskEventKind::Progress,
        EventKind::Completed => pb::TaskEventKind::Completed,
        EventKind::Retrying => pb::TaskEventKind::Retrying,
        EventKind::Failed => pb::TaskEventKind::Failed,
        EventKind::CancelRequested => pb::TaskEventKind::CancelRequested,
        EventKind::Cancelled => pb::TaskEventKind::Cancelled,
        EventKind::Requeued => pb::TaskEventKind::Requeued,
        EventKind::Updated => pb::TaskEventKind::Updated,
        EventKind::Snapshot => pb::TaskEventKind::Snapshot,
    }
}

/// An event for the API.
pub fn event(e: &TaskEvent) -> pb::TaskEvent {
    pb::TaskEvent {
        sequence: e.seq,
        kind: event_kind(e.kind) as i32,
        time: Some(ts(e.time)),
        status: Some(status(&e.task)),
    }
}

/// A snapshot event (replayed state) for the API.
pub fn snapshot_event(t: &Task) -> pb::TaskEvent {
    pb::TaskEvent {
        sequence: t.rt.seq,
        kind: pb::TaskEventKind::Snapshot as i32,
        time: Some(ts(now_micros())),
        status: Some(status(t)),
    }
}

/// A cancel outcome for the API.
pub fn cancel_outcome(o: CancelOutcome) -> pb::CancelOutcome {
    match o {
        CancelOutcome::Cancelled => pb::CancelOutcome::Cancelled,
        CancelOutcome::CancelRequested => pb::CancelOutcome::CancelRequested,
        CancelOutcome::AlreadyFinished => pb::CancelOutcome::AlreadyFinished,
    }
}

pub use crate::domain::rules::{
    MAX_DEFINITION_BYTES, MAX_FILTER_VALUES, MAX_OWNER_BYTES, MAX_REASON_BYTES, MAX_RETRY_AFTER,
};

/// Checks a user or session id of a filter or a disconnect.
pub fn check_owner(vs_field: &str, v: &str) -> Result<(), CoreError> {
    if v.len() > MAX_OWNER_BYTES {
        return Err(CoreError::field(
            vs_field,
            format!("must be at most {MAX_OWNER_BYTES} bytes, got {}", v.len()),
        ));
    }
    Ok(())
}

/// Checks the reason of a cancel or a disconnect.
pub fn check_reason(v: &str) -> Result<(), CoreError> {
    if v.len() > MAX_REASON_BYTES {
        return Err(CoreError::field(
            "reason",
            format!("must be at most {MAX_REASON_BYTES} bytes, got {}", v.len()),
        ));
    }
    Ok(())
}

/// Validates a filter.
pub fn filter(f: Option<pb::TaskFilter>, prefix: &str) -> Result<TaskFilter, CoreError> {
    let f = f.unwrap_or_default();
    let mut vs = Violations::default();
    check_len(
        &mut vs,
        &format!("{prefix}.user_id"),
        &f.user_id,
        MAX_OWNER_BYTES,
    );
    check_len(
        &mut vs,
        &format!("{prefix}.session_id"),
        &f.session_id,
        MAX_OWNER_BYTES,
    );
    for (field, n) in [
        ("task_ids", f.task_ids.len()),
        ("names", f.names.len()),
        ("task_types", f.task_types.len()),
        ("states", f.states.len()),
        ("sources", f.sources.len()),
    ] {
        if n > MAX_FILTER_VALUES {
            vs.add(
                &format!("{prefix}.{field}"),
                format!("at most {MAX_FILTER_VALUES} values, got {n}"),
            );
        }
    }
    if !vs.0.is_empty() {
        return vs.into_result(TaskFilter::default());
    }
    for (i, n) in f.names.iter().enumerate() {
        if let Err(e) = check_name(n) {
            vs.add(&format!("{prefix}.names[{i}]"), e);
        }
    }
    let mut out = TaskFilter {
        user_id: non_empty(f.user_id),
        session_id: non_empty(f.session_id),
        ..Default::default()
    };
    for (i, id) in f.task_ids.iter().enumerate() {
        match TaskId::parse_str(id) {
            Ok(id) => out.task_ids.push(id),
            Err(_) => vs.add(
                &format!("{prefix}.task_ids[{i}]"),
                format!("{} is not a task id", text::quote(id)),
            ),
        }
    }
    out.names = f.names;
    for (i, t) in f.task_types.iter().enumerate() {
        match task_type(*t) {
            Some(t) => out.task_types.push(t),
            None => vs.add(
                &format!("{prefix}.task_types[{i}]"),
                format!("unknown task type {t}"),
            ),
        }
    }
    for (i, s) in f.states.iter().enumerate() {
        match pb::TaskState::try_from(*s) {
            Ok(pb::TaskState::Unspecified) | Err(_) => vs.add(
                &format!("{prefix}.states[{i}]"),
                format!("unknown state {s}"),
            ),
            Ok(s) => out.states.push(match s {
                pb::TaskState::Pending => TaskState::Pending,
                pb::TaskState::Running => TaskState::Running,
                pb::TaskState::Completed => TaskState::Completed,
                pb::TaskState::Failed => TaskState::Failed,
                pb::TaskState::Cancelled => TaskState::Cancelled,
                pb::TaskState::Compensating => TaskState::Compensating,
                _ => TaskState::Compensated,
            }),
        }
    }
    for (i, s) in f.sources.iter().enumerate() {
        match pb::TaskSource::try_from(*s) {
            Ok(pb::TaskSource::Unspecified) | Err(_) => vs.add(
                &format!("{prefix}.sources[{i}]"),
                format!("unknown source {s}"),
            ),
            Ok(s) => out.sources.push(match s {
                pb::TaskSource::Embedded => Source::Embedded,
                pb::TaskSource::Bullmq => Source::Bullmq,
                pb::TaskSource::Temporal => Source::Temporal,
                _ => Source::N8n,
            }),
        }
    }
    vs.into_result(out)
}

/// A log line for the API.
pub fn log_line(l: &LogEntry) -> pb::LogLine {
    pb::LogLine {
        line: l.line,
        time: Some(ts(l.time)),
        source: match l.source {
            LogSource::System => pb::LogSource::System,
            LogSource::Worker => pb::LogSource::Worker,
            LogSource::Engine => pb::LogSource::Engine,
        } as i32,
        level: l.level.clone(),
        message: l.message.clone(),
        attempt: l.attempt,
    }
}

fn state_counts(a: &StateArray) -> pb::StateCounts {
    pb::StateCounts {
        pending: a[0],
        running: a[1],
        completed: a[2],
        failed: a[3],
        cancelled: a[4],
        compensating: a[5],
        compensated: a[6],
    }
}

fn latency(s: &Summary) -> pb::LatencySummary {
    pb::LatencySummary {
        count: s.count,
        p50_ms: s.p50,
        p90_ms: s.p90,
        p99_ms: s.p99,
        p999_ms: s.p999,
        max_ms: s.max,
    }
}

/// Metrics for the API.
pub fn metrics(m: &MetricsSnapshot) -> pb::GetMetricsResponse {
    pb::GetMetricsResponse {
        total: Some(state_counts(&m.counts.total())),
        by_type: m
            .counts
            .by_type
            .iter()
            .map(|(t, a)| (t.as_str().to_string(), state_counts(a)))
            .collect(),
        by_name: m
            .counts
            .by_name
            .iter()
            .map(|(n, a)| (n.clone(), state_counts(a)))
            .collect(),
        queues: m
            .queues
            .iter()
            .map(|q| pb::QueueMetrics {
                name: q.name.clone(),
                ready: q.ready,
                scheduled: q.scheduled,
                running: q.running,
                workers: q.workers,
                free_slots: q.free_slots,
            })
            .collect(),
        throughput_per_sec: m.throughput,
        schedule_to_start: Some(latency(&m.schedule_to_start)),
        run_time: Some(latency(&m.run_time)),
        workers_connected: m.workers_connected,
        started_at: Some(ts(m.started_at)),
        last_sequence: m.last_seq,
    }
}

/// Validates a worker's registration: (name, task names, slots, immediate slots).
pub fn registration(r: pb::Register) -> Result<(String, Vec<String>, u32, u32), CoreError> {
    let mut vs = Violations::default();
    check_len(&mut vs, "register.worker_name", &r.worker_name, 200);
    if r.task_names.is_empty() {
        vs.add("register.task_names", "must name at least one task");
    }
    if r.task_names.len() > 1000 {
        vs.add("register.task_names", "at most 1000 names");
    }
    for (i, n) in r.task_names.iter().enumerate() {
        if let Err(e) = check_name(n) {
            vs.add(&format!("register.task_names[{i}]"), e);
        }
    }
    if r.slots == 0 || r.slots > 10_000 {
        vs.add(
            "register.slots",
            format!("must be between 1 and 10000, got {}", r.slots),
        );
    }
    if r.immediate_slots > 10_000 {
        vs.add("register.immediate_slots", "must be at most 10000");
    }
    vs.into_result((r.worker_name, r.task_names, r.slots, r.immediate_slots))
}

/// The assignment message a worker receives.
pub fn assignment(a: &crate::core::Assignment, payload: &str) -> pb::Assignment {
    let t = &a.task;
    let payload = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| crate::pb::json::json_to_struct(&v).ok());
    pb::Assignment {
        task_id: t.id.to_string(),
        name: t.spec.name.clone(),
        payload,
        attempt: t.rt.attempt,
        max_attempts: t.spec.max_attempts,
        idempotency_key: match t.spec.labels.get("workflow_step") {
            Some(step) => format!("{step}:{}", t.rt.attempt),
            None => format!("{}:{}", t.id, t.rt.attempt),
        },
        deadline: a.deadline.map(ts),
        labels: t.spec.labels.clone().into_iter().collect(),
        traceparent: a.traceparent().unwrap_or_default().to_string(),
        user_id: t.spec.user_id.clone().unwrap_or_default(),
        session_id: t.spec.session_id.clone().unwrap_or_default(),
        task_type: pb_type(t.spec.task_type) as i32,
        immediate: t.spec.immediate,
        parent_id: t.spec.parent_id.map(|p| p.to_string()).unwrap_or_default(),
    }
}

/// A worker's failure report as a domain error; a `retry_after` over
/// [`MAX_RETRY_AFTER`] is refused (a negative one is ignored: the task's
/// backoff applies).
pub fn fail_report(f: &pb::Fail) -> Result<(TaskError, Option<Duration>), CoreError> {
    let retry_after = f.retry_after.and_then(|d| {
        (d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos))
            .then(|| Duration::new(d.seconds as u64, d.nanos as u32))
    });
    if retry_after.is_some_and(|d| d > MAX_RETRY_AFTER) {
        return Err(CoreError::field(
            "fail.retry_after",
            format!(
                "must be at most {}",
                humantime::format_duration(MAX_RETRY_AFTER)
            ),
        ));
    }
    Ok((
        TaskError {
            message: text::cut(&f.message, 2048),
            kind: text::cut(&f.kind, 128),
            details: text::cut(&f.details, 8192),
            retryable: f.retryable,
            attempt: f.attempt,
        },
        retry_after,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_payload_bytes: 1 << 20,
        }
    }

    fn req() -> pb::ScheduleTaskRequest {
        pb::ScheduleTaskRequest {
            name: "send-email".into(),
            task_type: pb::TaskType::Simple as i32,
            ..Default::default()
        }
    }

    fn fields(e: CoreError) -> Vec<String> {
        match e {
            CoreError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("not invalid argument: {other}"),
        }
    }

    #[test]
    fn a_minimal_request_is_valid() {
        let t = new_task(req(), &limits(), None).unwrap();
        assert_eq!(t.spec.max_attempts, 1);
        assert_eq!(t.spec.target, Target::Simple { queue: None });
    }

    #[test]
    fn bad_fields_are_named() {
        let mut r = req();
        r.name = "bad name!".into();
        r.options = Some(pb::TaskOptions {
            attempts: 1000,
            priority: 5000,
            delay: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        });
        let f = fields(new_task(r, &limits(), None).unwrap_err());
        assert_eq!(
            f,
            vec![
                "name",
                "options.priority",
                "options.attempts",
                "options.delay"
            ]
        );
    }

    #[test]
    fn type_and_target_must_agree() {
        let mut r = req();
        r.task_type = 0;
        assert_eq!(
            fields(new_task(r, &limits(), None).unwrap_err()),
            vec!["task_type"]
        );
        let mut r = req();
        r.target = Some(pb::schedule_task_request::Target::Complex(
            pb::ComplexTarget {
                workflow_type: "x".into(),
                ..Default::default()
            },
        ));
        assert_eq!(
            fields(new_task(r, &limits(), None).unwrap_err()),
            vec!["complex"]
        );
        let mut r = req();
        r.task_type = pb::TaskType::Integration as i32;
        assert_eq!(
            fields(new_task(r, &limits(), None).unwrap_err()),
            vec!["integration"]
        );
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let mut r = req();
        let big = "x".repeat(2048);
        r.payload =
            Some(crate::pb::json::json_to_struct(&serde_json::json!({ "a": big })).unwrap());
        let f = fields(
            new_task(
                r,
                &Limits {
                    max_payload_bytes: 1024,
                },
                None,
            )
            .unwrap_err(),
        );
        assert_eq!(f, vec!["payload"]);
    }

    #[test]
    fn timestamps_convert() {
        let t = ts(1_500_000);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
    }
}

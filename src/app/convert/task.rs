//! Domain → protobuf for what a task is and what happens to it: a task's
//! status (with its workflow steps), its events, its log lines, a cancel's
//! outcome, an accepted item of a bulk. Every function here reads domain
//! types and builds messages; it validates nothing and must not touch the
//! core's state.

use crate::domain::debounce;
use crate::domain::*;
use crate::pb;
use crate::pb::json::json_to_value;

use super::ts;

/// One accepted item of a `ScheduleTasks` answer.
pub fn scheduled_item(index: usize, s: &crate::core::Scheduled) -> pb::ScheduleTasksResult {
    pb::ScheduleTasksResult {
        index: index as u32,
        outcome: Some(pb::schedule_tasks_result::Outcome::Scheduled(
            pb::ScheduledTask {
                task_id: s.task.id.to_string(),
                existing: s.existing,
                state: pb_state(s.task.rt.state) as i32,
                outcome: schedule_outcome(s.outcome) as i32,
                superseded_task_ids: superseded_ids(s),
            },
        )),
    }
}

/// The answer's word for what scheduling did.
pub fn schedule_outcome(o: crate::core::Outcome) -> pb::ScheduleOutcome {
    use crate::core::Outcome;
    match o {
        Outcome::Created => pb::ScheduleOutcome::Created,
        Outcome::Existing => pb::ScheduleOutcome::Existing,
        Outcome::SupersededOthers => pb::ScheduleOutcome::SupersededOthers,
        Outcome::Throttled => pb::ScheduleOutcome::Throttled,
    }
}

/// The most superseded ids an answer lists.
pub const MAX_SUPERSEDED_IDS: usize = 100;

/// The ids a new task superseded, at most [`MAX_SUPERSEDED_IDS`].
pub fn superseded_ids(s: &crate::core::Scheduled) -> Vec<String> {
    s.superseded
        .iter()
        .take(MAX_SUPERSEDED_IDS)
        .map(|id| id.to_string())
        .collect()
}

pub(super) fn pb_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn pb_debounce(d: &debounce::Debounce) -> pb::Debounce {
    pb::Debounce {
        key: crate::domain::namespace::unqualify_key(&d.key).to_string(),
        period: Some(pb_duration(d.period)),
        mode: match d.mode {
            debounce::Mode::Debounce => pb::DebounceMode::Debounce,
            debounce::Mode::Throttle => pb::DebounceMode::Throttle,
        } as i32,
    }
}

pub(super) fn pb_type(t: TaskType) -> pb::TaskType {
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
        Some(WaitingReason::ConcurrencyLimit) => pb::WaitingReason::ConcurrencyLimit,
        Some(WaitingReason::QueuePaused) => pb::WaitingReason::QueuePaused,
        Some(WaitingReason::RateLimited) => pb::WaitingReason::RateLimited,
    }
}

fn hold(h: &crate::domain::flow::Hold) -> pb::Hold {
    pb::Hold {
        rule: h.rule.clone(),
        concurrency_key: h
            .key
            .as_deref()
            .map(crate::domain::namespace::unqualify_key)
            .unwrap_or_default()
            .to_owned(),
        limit: h.limit,
        running: h.running,
        ahead: h.ahead,
        next_start_at: h.next_start.map(super::ts),
        rate: h.rate.map_or(0, |r| r.0),
        interval: h.rate.map(|r| prost_types::Duration {
            seconds: (r.1 / 1000) as i64,
            nanos: ((r.1 % 1000) * 1_000_000) as i32,
        }),
        burst: h.rate.map_or(0, |r| r.2),
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
        external_id: rt.external_id.as_deref().unwrap_or_default().to_owned(),
        waiting_reason: pb_reason(rt.waiting_reason) as i32,
        cancel_requested: rt.cancel_requested,
        labels: t.spec.labels.clone().into_iter().collect(),
        worker_id: rt.worker_id.as_deref().unwrap_or_default().to_owned(),
        idempotency_key: t
            .spec
            .idempotency_key
            .as_deref()
            .map(crate::domain::namespace::unqualify_key)
            .filter(|k| !debounce::is_reserved(k))
            .unwrap_or_default()
            .to_owned(),
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
        run: rt.run.into(),
        hold: rt
            .hold
            .as_deref()
            .filter(|_| rt.state == TaskState::Pending)
            .map(hold),
        concurrency_key: t
            .spec
            .concurrency_key()
            .map(crate::domain::namespace::unqualify_key)
            .unwrap_or_default()
            .to_owned(),
        idempotency_ttl: t.spec.dedup.as_deref().and_then(|d| d.ttl).map(pb_duration),
        debounce: t
            .spec
            .dedup
            .as_deref()
            .and_then(|d| d.debounce.as_ref())
            .map(pb_debounce),
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

//! The task filter of `ListTasks` and `WatchTasks` (and the admin API's
//! query, which builds the same filter), and the checks of the owner and
//! reason fields a cancel or disconnect carries. It must not run a query.

use crate::core::CoreError;
use crate::domain::*;
use crate::pb;

use super::{
    check_len, check_name, non_empty, task_type, Violations, MAX_ERROR_KIND_BYTES,
    MAX_FILTER_VALUES, MAX_OWNER_BYTES, MAX_REASON_BYTES,
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

/// Checks `ReplayWorkflow.from_step`: a step id, 1 to 64 bytes (whether
/// the workflow has it is the engine's to say).
pub fn check_from_step(v: &str) -> Result<(), CoreError> {
    use crate::executor::workflow::definition::MAX_STEP_ID;
    if v.is_empty() {
        return Err(CoreError::field("from_step", "must name a step"));
    }
    if v.len() > MAX_STEP_ID {
        return Err(CoreError::field(
            "from_step",
            format!("must be at most {MAX_STEP_ID} bytes, got {}", v.len()),
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
    if !f.schedule_id.is_empty() {
        if let Err(e) = check_name(&f.schedule_id) {
            vs.add(&format!("{prefix}.schedule_id"), e);
        }
    }
    check_len(
        &mut vs,
        &format!("{prefix}.error_kind"),
        &f.error_kind,
        MAX_ERROR_KIND_BYTES,
    );
    let mut out = TaskFilter {
        user_id: non_empty(f.user_id),
        session_id: non_empty(f.session_id),
        schedule_id: non_empty(f.schedule_id),
        error_kind: non_empty(f.error_kind),
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

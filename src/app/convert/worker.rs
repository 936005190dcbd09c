//! The worker stream's messages: a worker's registration and failure
//! reports (validated into domain values) and the assignment it receives.
//! It must not decide anything about leases or slots: the core does.

use std::time::Duration;

use crate::core::CoreError;
use crate::domain::*;
use crate::pb;

use super::task::pb_type;
use super::{check_len, check_name, ts, Violations, MAX_RETRY_AFTER};

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
            None if t.rt.run > 0 => format!("{}:run{}:{}", t.id, t.rt.run, t.rt.attempt),
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

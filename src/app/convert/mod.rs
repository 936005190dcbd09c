//! Every conversion between protobuf messages and domain types, with the
//! validation of requests, for both edges (`api`, `admin`). A conversion
//! failure is an invalid argument that names the field, as in the proto.
//!
//! One file per message family: [`new_task`] (a `ScheduleTask(s)` request
//! into a `NewTask`), [`task`] (a task's status, events, logs), [`filter`]
//! (the task filter, owner and reason checks), [`metrics`], [`worker`] (the
//! worker stream's messages). This file holds the helpers they share and
//! re-exports their public functions, so callers write `convert::status`.
//! It must not serve anything nor reach the store; it calls the core for
//! nothing.

use std::time::Duration;

use crate::core::{CoreError, FieldViolation};
use crate::domain::*;
use crate::pb;

pub mod filter;
pub mod metrics;
pub mod new_task;
pub mod task;
pub mod worker;

pub use filter::{check_from_step, check_owner, check_reason, filter};
pub use metrics::metrics;
pub use new_task::{new_task, new_tasks, Limits};
pub use task::{
    cancel_outcome, event, event_kind, log_line, schedule_outcome, scheduled_item, snapshot_event,
    status, superseded_ids,
};
pub use worker::{assignment, fail_report, registration};

pub use crate::domain::rules::check_name;
pub use crate::domain::rules::{
    MAX_DEFINITION_BYTES, MAX_ERROR_KIND_BYTES, MAX_FILTER_VALUES, MAX_OWNER_BYTES,
    MAX_REASON_BYTES, MAX_RETRY_AFTER,
};

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

/// A timestamp from microseconds.
pub fn ts(m: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: m.div_euclid(1_000_000),
        nanos: (m.rem_euclid(1_000_000) * 1000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert() {
        let t = ts(1_500_000);
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
    }
}

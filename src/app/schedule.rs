//! Schedules at the edge: `ScheduleSpec` ⇄ the domain's spec with the
//! request's validation (every violation named by its field, `spec.cron`,
//! `spec.task.name`, …), the schedule's answer (`ScheduleInfo`), and the
//! compiler that turns a stored template back into a task at each fire.
//!
//! Must not: serve anything, touch the store, or decide when a schedule
//! fires (`domain::schedule` does).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::convert::{self, Limits};
use crate::core::{CoreError, FieldViolation};
use crate::domain::schedule::{self as rules, CatchUp, Overlap, ScheduleSpec, Timing};
use crate::domain::{rules::check_name, text, Micros};
use crate::pb;
use crate::schedules::{Compile, Schedule};

/// How many next fire times an answer lists.
pub const NEXT_FIRES: usize = 5;
/// The most schedules one page lists.
pub const MAX_PAGE: u32 = 1000;

/// Checks a schedule id (the rules of a task name).
pub fn schedule_id(v: &str) -> Result<(), CoreError> {
    check_name(v).map_err(|e| CoreError::field("schedule_id", e))
}

/// Checks a pause or resume note.
pub fn note(v: &str) -> Result<(), CoreError> {
    if v.len() > rules::MAX_NOTE_BYTES {
        return Err(CoreError::field(
            "note",
            format!("must be at most {} bytes", rules::MAX_NOTE_BYTES),
        ));
    }
    Ok(())
}

fn duration(
    vs: &mut Vec<FieldViolation>,
    field: &str,
    d: Option<prost_types::Duration>,
) -> Option<Duration> {
    let d = d?;
    let bad = |vs: &mut Vec<FieldViolation>, why: &str| {
        vs.push(FieldViolation {
            field: field.into(),
            description: why.into(),
        })
    };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        bad(vs, "must be a non-negative duration");
        return None;
    }
    let out = Duration::new(d.seconds as u64, d.nanos as u32);
    if out > rules::MAX_SPAN {
        bad(vs, "must be at most 366 days");
        return None;
    }
    Some(out)
}

fn timestamp(
    vs: &mut Vec<FieldViolation>,
    field: &str,
    t: Option<prost_types::Timestamp>,
) -> Option<Micros> {
    let t = t?;
    // 0001-01-01 to 9999-12-31, as google.protobuf.Timestamp allows.
    if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds)
        || !(0..1_000_000_000).contains(&t.nanos)
    {
        vs.push(FieldViolation {
            field: field.into(),
            description: "not a valid timestamp".into(),
        });
        return None;
    }
    Some(t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
}

/// Validates a spec: the domain's spec, the template's bytes (the
/// `ScheduleTaskRequest`, re-encoded) and its task's payload size in bytes
/// of serialised JSON (a key's `max_payload_bytes` bounds it). Every
/// violation is named `spec.<field>`.
pub fn spec(
    s: Option<pb::ScheduleSpec>,
    limits: &Limits,
) -> Result<(ScheduleSpec, Arc<[u8]>, usize), CoreError> {
    use pb::schedule_spec::Timing as T;
    let Some(s) = s else {
        return Err(CoreError::field("spec", "is required"));
    };
    let mut vs = Vec::new();
    let timing = match s.timing {
        Some(T::Cron(expression)) => Some(Timing::Cron {
            expression,
            time_zone: s.time_zone.clone(),
        }),
        Some(T::Interval(d)) => {
            duration(&mut vs, "spec.interval", Some(d)).map(|interval| Timing::Every { interval })
        }
        None => {
            vs.push(FieldViolation {
                field: "spec.cron".into(),
                description: "one of cron or interval is required".into(),
            });
            None
        }
    };
    if !s.time_zone.is_empty() && !matches!(timing, Some(Timing::Cron { .. })) {
        if let Err(e) = rules::parse_time_zone(&s.time_zone) {
            vs.push(FieldViolation {
                field: "spec.time_zone".into(),
                description: e,
            });
        }
    }
    let start_at = timestamp(&mut vs, "spec.start_at", s.start_at);
    let end_at = timestamp(&mut vs, "spec.end_at", s.end_at);
    let jitter = duration(&mut vs, "spec.jitter", s.jitter).unwrap_or_default();
    let catchup_window = duration(&mut vs, "spec.catchup_window", s.catchup_window)
        .unwrap_or(rules::DEFAULT_CATCHUP_WINDOW);
    let overlap = match pb::ScheduleOverlapPolicy::try_from(s.overlap) {
        Ok(pb::ScheduleOverlapPolicy::Unspecified | pb::ScheduleOverlapPolicy::Skip) => {
            Overlap::Skip
        }
        Ok(pb::ScheduleOverlapPolicy::BufferOne) => Overlap::BufferOne,
        Ok(pb::ScheduleOverlapPolicy::AllowAll) => Overlap::AllowAll,
        Ok(pb::ScheduleOverlapPolicy::CancelOther) => Overlap::CancelOther,
        Err(_) => {
            vs.push(FieldViolation {
                field: "spec.overlap".into(),
                description: format!("unknown overlap policy {}", s.overlap),
            });
            Overlap::Skip
        }
    };
    let catchup = match pb::ScheduleCatchUp::try_from(s.catchup) {
        Ok(pb::ScheduleCatchUp::Unspecified | pb::ScheduleCatchUp::All) => CatchUp::All,
        Ok(pb::ScheduleCatchUp::One) => CatchUp::One,
        Err(_) => {
            vs.push(FieldViolation {
                field: "spec.catchup".into(),
                description: format!("unknown catch-up {}", s.catchup),
            });
            CatchUp::All
        }
    };
    let template = match s.task {
        None => {
            vs.push(FieldViolation {
                field: "spec.task".into(),
                description: "is required".into(),
            });
            None
        }
        Some(task) => {
            let bytes = task.encode_to_vec();
            match convert::new_task(task, limits, None) {
                Ok(new) => Some((bytes, new.payload.json_len())),
                Err(CoreError::InvalidArgument(inner)) => {
                    vs.extend(inner.into_iter().map(|v| FieldViolation {
                        field: format!("spec.task.{}", v.field),
                        description: v.description,
                    }));
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    let out = timing.map(|timing| ScheduleSpec {
        timing,
        start_at,
        end_at,
        jitter,
        overlap,
        catchup_window,
        catchup,
    });
    if let Some(out) = &out {
        vs.extend(rules::check(out).into_iter().map(|(f, d)| FieldViolation {
            field: format!("spec.{f}"),
            description: d,
        }));
    }
    match (out, template) {
        (Some(out), Some((t, payload))) if vs.is_empty() => Ok((out, t.into(), payload)),
        _ => Err(CoreError::InvalidArgument(vs)),
    }
}

/// The compiler of stored templates: decodes the `ScheduleTaskRequest` and
/// validates it as ScheduleTask would (so a template that today's limits
/// refuse fails its fire, with the reason in `last_error`).
pub fn compiler(limits: Limits) -> Compile {
    Arc::new(move |bytes: &[u8]| {
        let req = pb::ScheduleTaskRequest::decode(bytes).map_err(|e| {
            CoreError::FailedPrecondition(format!("the stored task template cannot be read: {e}"))
        })?;
        convert::new_task(req, &limits, None)
    })
}

fn pb_spec(s: &Schedule) -> pb::ScheduleSpec {
    use pb::schedule_spec::Timing as T;
    let (timing, time_zone) = match &s.spec.timing {
        Timing::Cron {
            expression,
            time_zone,
        } => (T::Cron(expression.clone()), time_zone.clone()),
        Timing::Every { interval } => (
            T::Interval(prost_types::Duration {
                seconds: interval.as_secs() as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
            String::new(),
        ),
    };
    let dur = |d: Duration| prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    };
    pb::ScheduleSpec {
        timing: Some(timing),
        time_zone,
        start_at: s.spec.start_at.map(convert::ts),
        end_at: s.spec.end_at.map(convert::ts),
        jitter: Some(dur(s.spec.jitter)),
        overlap: match s.spec.overlap {
            Overlap::Skip => pb::ScheduleOverlapPolicy::Skip,
            Overlap::BufferOne => pb::ScheduleOverlapPolicy::BufferOne,
            Overlap::AllowAll => pb::ScheduleOverlapPolicy::AllowAll,
            Overlap::CancelOther => pb::ScheduleOverlapPolicy::CancelOther,
        } as i32,
        catchup_window: Some(dur(s.spec.catchup_window)),
        catchup: match s.spec.catchup {
            CatchUp::All => pb::ScheduleCatchUp::All,
            CatchUp::One => pb::ScheduleCatchUp::One,
        } as i32,
        task: pb::ScheduleTaskRequest::decode(&s.template[..]).ok(),
    }
}

/// A schedule as the API answers it, with its next fire times from `now`.
pub fn info(s: &Schedule, now: Micros) -> pb::ScheduleInfo {
    pb::ScheduleInfo {
        schedule_id: s.id.clone(),
        spec: Some(pb_spec(s)),
        paused: s.paused,
        note: s.note.clone(),
        created_at: Some(convert::ts(s.created_at)),
        updated_at: Some(convert::ts(s.updated_at)),
        next_fires: s
            .upcoming(now, NEXT_FIRES)
            .into_iter()
            .map(convert::ts)
            .collect(),
        last_fire_at: s.state.last_fire_at.map(convert::ts),
        last_task_id: s.state.last_task.map(|t| t.to_string()).unwrap_or_default(),
        fires: s.state.fires,
        skipped: s.state.skipped,
        missed: s.state.missed,
        last_error: s
            .state
            .last_error
            .as_deref()
            .map(|e| text::cut(e, 512))
            .unwrap_or_default(),
        buffered: s.state.buffered.is_some(),
    }
}

/// ListSchedules's page size: 0 means 50, at most 1,000.
pub fn page_size(n: u32) -> Result<usize, CoreError> {
    match n {
        0 => Ok(50),
        n if n > MAX_PAGE => Err(CoreError::field("page_size", "must be at most 1000")),
        n => Ok(n as usize),
    }
}

/// ListSchedules's page token: the last id of the previous page.
pub fn page_token(t: &str) -> Result<&str, CoreError> {
    if t.is_empty() {
        return Ok(t);
    }
    check_name(t)
        .map(|_| t)
        .map_err(|_| CoreError::field("page_token", "not a page token of ListSchedules"))
}

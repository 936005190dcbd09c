//! The pure part of the BullMQ backend: Switchyard's task options as BullMQ
//! job options, BullMQ job states as Switchyard states, and the small
//! parsers for what BullMQ stores (return values, progress, stack traces).

use std::time::Duration;

use bullmq_rs::{BackoffStrategy, JobOptions};
use serde_json::{json, Value};

use crate::domain::{BackoffKind, Micros, Task, TaskState, WaitingReason};

/// BullMQ's priority for a task.
///
/// Switchyard's scale is -1000..=1000, higher first, 0 by default. BullMQ's
/// is 1 (highest) to 2^21 (lowest), and 0 means "no priority": such a job
/// goes to the `wait` list, which BullMQ serves before every prioritized
/// job. So:
///
/// - a normal task gets `1001 - priority` (1000 → 1, 0 → 1001,
///   -1000 → 2001): every Switchyard task is prioritized, and BullMQ's
///   order among them is Switchyard's (priority, then age: BullMQ breaks
///   ties with a counter, in the order of adding);
/// - an `immediate` task gets 0: it goes to the `wait` list and runs before
///   every prioritized job, whatever its priority, in the order added.
pub fn bullmq_priority(priority: i32, immediate: bool) -> u32 {
    if immediate {
        0
    } else {
        (1001 - priority.clamp(-1000, 1000)) as u32
    }
}

/// A job's options, as Switchyard adds it.
#[derive(Debug, Clone, PartialEq)]
pub struct AddOptions {
    /// BullMQ priority (see [`bullmq_priority`]).
    pub priority: u32,
    /// Delay before it may run.
    pub delay: Duration,
    /// Attempts in all.
    pub attempts: u32,
    /// Backoff between attempts, when there are several: (exponential, base).
    pub backoff: Option<(bool, Duration)>,
    /// The job id (the task id).
    pub job_id: String,
}

impl AddOptions {
    /// The options of a task's job; `now` is the time of adding.
    pub fn of(task: &Task, now: Micros) -> AddOptions {
        let spec = &task.spec;
        let delay_us = (task.rt.run_at - now).max(0) as u64;
        // BullMQ counts in whole milliseconds; round up so the job never runs
        // before `run_at`.
        let delay = Duration::from_millis(delay_us.div_ceil(1000));
        let backoff = (spec.max_attempts > 1).then(|| {
            (
                spec.backoff.kind == BackoffKind::Exponential,
                spec.backoff.base.max(Duration::from_millis(1)),
            )
        });
        AddOptions {
            priority: bullmq_priority(spec.priority, spec.immediate),
            delay,
            attempts: spec.max_attempts.max(1),
            backoff,
            job_id: task.id.to_string(),
        }
    }

    /// The options for bullmq-rs. Its `BackoffStrategy::Exponential`
    /// serialises as `{type, base, max}`, which Node BullMQ does not read
    /// (it wants `{type, delay}`), so exponential backoff is given as fixed
    /// with the same base here, and [`AddOptions::node_opts`] is written
    /// over the job's `opts` right after the add. Fixed and exponential
    /// agree on the first delay, so a worker that fetched the job in between
    /// still waits the right time after a first failure.
    pub fn for_bullmq_rs(&self) -> JobOptions {
        JobOptions {
            priority: (self.priority > 0).then_some(self.priority),
            delay: (!self.delay.is_zero()).then_some(self.delay),
            attempts: Some(self.attempts),
            backoff: self
                .backoff
                .map(|(_, base)| BackoffStrategy::Fixed { delay: base }),
            job_id: Some(self.job_id.clone()),
            ..Default::default()
        }
    }

    /// Whether the options bullmq-rs wrote need [`AddOptions::node_opts`]
    /// over them.
    pub fn needs_node_opts(&self) -> bool {
        matches!(self.backoff, Some((true, _)))
    }

    /// The job's `opts` as Node BullMQ writes them.
    pub fn node_opts(&self) -> Value {
        let mut o = json!({ "attempts": self.attempts, "jobId": self.job_id });
        if self.priority > 0 {
            o["priority"] = json!(self.priority);
        }
        if !self.delay.is_zero() {
            o["delay"] = json!(self.delay.as_millis() as u64);
        }
        if let Some((exp, base)) = self.backoff {
            o["backoff"] = json!({
                "type": if exp { "exponential" } else { "fixed" },
                "delay": base.as_millis() as u64,
            });
        }
        o
    }
}

/// Where a job is in BullMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPlace {
    /// In `wait` or `paused`.
    Waiting,
    /// In `prioritized`.
    Prioritized,
    /// In `delayed`.
    Delayed,
    /// In `waiting-children`.
    WaitingChildren,
    /// In `active`.
    Active,
    /// In `completed`.
    Completed,
    /// In `failed`.
    Failed,
    /// The hash exists but the job is in no state list (moving between
    /// states, or taken out by a cancel).
    Nowhere,
    /// No such job.
    Missing,
}

/// What Switchyard shows for a job that is not finished: (state, reason).
/// `attempts_made` tells a retry (backing off) from a first delay.
pub fn mirror_of(
    place: JobPlace,
    attempts_made: u32,
) -> Option<(TaskState, Option<WaitingReason>)> {
    Some(match place {
        JobPlace::Waiting | JobPlace::Prioritized | JobPlace::WaitingChildren => {
            (TaskState::Pending, Some(WaitingReason::Queued))
        }
        JobPlace::Delayed if attempts_made > 0 => {
            (TaskState::Pending, Some(WaitingReason::BackingOff))
        }
        JobPlace::Delayed => (TaskState::Pending, Some(WaitingReason::Delayed)),
        JobPlace::Active => (TaskState::Running, None),
        JobPlace::Completed | JobPlace::Failed | JobPlace::Nowhere | JobPlace::Missing => {
            return None
        }
    })
}

/// A job's `returnvalue` (JSON text) as a result.
pub fn return_value(s: Option<&str>) -> Value {
    match s {
        None | Some("") => Value::Null,
        Some(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())),
    }
}

/// A `progress` event's data: the percentage, if there is one, and a
/// message for anything else. BullMQ's progress is a number or any JSON.
pub fn progress_of(data: &str) -> (Option<f64>, String) {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Number(n)) => (n.as_f64(), String::new()),
        Ok(Value::Object(m)) => {
            let pct = ["percent", "progress", "percentage", "value"]
                .iter()
                .find_map(|k| m.get(*k).and_then(Value::as_f64));
            let msg = m
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| bounded(data, 512));
            (pct, msg)
        }
        Ok(Value::String(s)) => (None, bounded(&s, 512)),
        _ => (None, bounded(data, 512)),
    }
}

/// A job's `stacktrace` field (a JSON array of strings, newest last) as one
/// text, bounded to 8 KiB.
pub fn stacktrace(s: Option<&str>) -> String {
    let Some(s) = s else {
        return String::new();
    };
    let text = match serde_json::from_str::<Vec<String>>(s) {
        Ok(v) => v.last().cloned().unwrap_or_default(),
        Err(_) => s.to_string(),
    };
    bounded(&text, 8 * 1024)
}

/// The error kind in a stack trace's first line (`TypeError: …` →
/// `TypeError`), else `Error`.
pub fn error_kind(stack: &str) -> String {
    stack
        .lines()
        .next()
        .and_then(|l| l.split_once(':'))
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.contains(' '))
        .unwrap_or("Error")
        .to_string()
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Stream ids (`ms-seq`) compare as pairs of numbers.
pub fn stream_id_ge(a: &str, b: &str) -> bool {
    fn parse(s: &str) -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parse(a) >= parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use std::sync::Arc;

    fn task(priority: i32, immediate: bool, attempts: u32, kind: BackoffKind) -> Task {
        Task {
            id: TaskId::now_v7(),
            created_at: 1_000_000,
            spec: Arc::new(TaskSpec {
                priority,
                max_attempts: attempts,
                backoff: Backoff {
                    kind,
                    base: Duration::from_millis(250),
                    max: Duration::from_secs(60),
                },
                immediate,
                ..TaskSpec::new("email", TaskType::Simple, Target::Simple { queue: None })
            }),
            rt: TaskRuntime::new_pending(3_500_500, Source::Bullmq, WaitingReason::Queued),
        }
    }

    #[test]
    fn priority_edges_map_onto_bullmq() {
        assert_eq!(bullmq_priority(1000, false), 1, "highest is BullMQ's 1");
        assert_eq!(
            bullmq_priority(0, false),
            1001,
            "the default is in the middle"
        );
        assert_eq!(bullmq_priority(-1000, false), 2001, "lowest");
        assert_eq!(bullmq_priority(5000, false), 1, "clamped");
        assert_eq!(bullmq_priority(-5000, false), 2001, "clamped");
        assert!(
            bullmq_priority(-1000, false) < 1 << 21,
            "within BullMQ's range"
        );
        assert_eq!(
            bullmq_priority(-1000, true),
            0,
            "immediate: no priority, the wait list"
        );
        // Higher Switchyard priority is a lower BullMQ number, at every step.
        for p in -1000..1000 {
            assert!(bullmq_priority(p + 1, false) < bullmq_priority(p, false));
        }
    }

    #[test]
    fn options_carry_delay_attempts_and_backoff() {
        let t = task(10, false, 3, BackoffKind::Exponential);
        let o = AddOptions::of(&t, 1_000_000);
        assert_eq!(o.priority, 991);
        assert_eq!(o.delay, Duration::from_millis(2501), "rounded up");
        assert_eq!(o.attempts, 3);
        assert!(o.needs_node_opts());
        let n = o.node_opts();
        assert_eq!(n["backoff"], json!({"type": "exponential", "delay": 250}));
        assert_eq!(n["priority"], json!(991));
        assert_eq!(n["delay"], json!(2501));
        assert_eq!(n["jobId"], json!(t.id.to_string()));
        let r = o.for_bullmq_rs();
        assert_eq!(r.priority, Some(991));
        assert_eq!(r.job_id.as_deref(), Some(t.id.to_string().as_str()));
        let rs = serde_json::to_value(&r).unwrap();
        assert_eq!(rs["backoff"], json!({"type": "fixed", "delay": 250}));

        let once = AddOptions::of(&task(0, true, 1, BackoffKind::Exponential), 9_000_000);
        assert_eq!(once.priority, 0);
        assert!(once.delay.is_zero(), "run_at passed: no delay");
        assert_eq!(once.backoff, None, "one attempt: no backoff");
        assert!(!once.needs_node_opts());
        let r = serde_json::to_value(once.for_bullmq_rs()).unwrap();
        assert!(r.get("priority").is_none() && r.get("delay").is_none());

        let fixed = AddOptions::of(&task(0, false, 2, BackoffKind::Fixed), 9_000_000);
        assert!(
            !fixed.needs_node_opts(),
            "bullmq-rs writes fixed backoff as Node does"
        );
    }

    #[test]
    fn places_map_to_states() {
        use JobPlace::*;
        assert_eq!(
            mirror_of(Waiting, 0),
            Some((TaskState::Pending, Some(WaitingReason::Queued)))
        );
        assert_eq!(
            mirror_of(Prioritized, 2),
            Some((TaskState::Pending, Some(WaitingReason::Queued)))
        );
        assert_eq!(
            mirror_of(Delayed, 0),
            Some((TaskState::Pending, Some(WaitingReason::Delayed)))
        );
        assert_eq!(
            mirror_of(Delayed, 1),
            Some((TaskState::Pending, Some(WaitingReason::BackingOff)))
        );
        assert_eq!(
            mirror_of(WaitingChildren, 0),
            Some((TaskState::Pending, Some(WaitingReason::Queued)))
        );
        assert_eq!(mirror_of(Active, 0), Some((TaskState::Running, None)));
        assert_eq!(mirror_of(Completed, 1), None);
        assert_eq!(mirror_of(Missing, 0), None);
    }

    #[test]
    fn parsers() {
        assert_eq!(return_value(Some("{\"a\":1}")), json!({"a": 1}));
        assert_eq!(return_value(Some("not json")), json!("not json"));
        assert_eq!(return_value(None), Value::Null);
        assert_eq!(progress_of("42"), (Some(42.0), String::new()));
        assert_eq!(
            progress_of("{\"percent\":5,\"message\":\"hi\"}"),
            (Some(5.0), "hi".into())
        );
        assert_eq!(progress_of("\"half\"").0, None);
        let st = stacktrace(Some("[\"Error: a\\n at x\",\"TypeError: b\\n at y\"]"));
        assert!(st.starts_with("TypeError: b"));
        assert_eq!(error_kind(&st), "TypeError");
        assert_eq!(error_kind("oops it broke"), "Error");
        assert_eq!(bounded("héllo", 2), "h");
        assert!(
            stream_id_ge("10-2", "10-1")
                && stream_id_ge("11-0", "10-9")
                && !stream_id_ge("9-9", "10-0")
        );
    }
}

//! A `ScheduleTask` request (or each item of a `ScheduleTasks`) validated
//! into a `NewTask`: the name and type, the payload against the size limit,
//! the options (`TaskOptions`) and the per-type target. Every bad field is
//! collected, in the order of the request's fields, into one invalid
//! argument. It must not decide anything the core decides (ids, sequence,
//! placement).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::core::CoreError;
use crate::domain::debounce;
use crate::domain::retention::Retention;
use crate::domain::rules;
use crate::domain::*;
use crate::pb;
use crate::pb::json::{struct_to_json, value_to_json};
use pb::schedule_task_request::Target as T;

use super::{check_len, check_name, duration, non_empty, task_type, Violations};

/// Limits applied to requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest serialised payload.
    pub max_payload_bytes: usize,
}

/// Validates a `ScheduleTaskRequest` into a new task.
pub fn new_task(
    req: pb::ScheduleTaskRequest,
    limits: &Limits,
    traceparent: Option<String>,
) -> Result<NewTask, CoreError> {
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
    let payload_json = payload(&mut vs, req.payload.as_ref(), limits);
    let (mut spec, delay) = options(&mut vs, req.name, tt, req.options.unwrap_or_default());
    spec.target = target(&mut vs, tt, req.target);
    spec.traceparent = traceparent.map(String::into_boxed_str);
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

/// The payload as serialised JSON (`{}` when absent), checked against the
/// size limit.
fn payload(vs: &mut Violations, payload: Option<&prost_types::Struct>, limits: &Limits) -> String {
    let payload_json = match payload.map(struct_to_json) {
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
    payload_json
}

/// The spec the options describe, and the delay. Its target is a
/// placeholder the caller replaces (the target's violations come after the
/// options', as the fields do in the request).
fn options(
    vs: &mut Violations,
    name: String,
    tt: Option<TaskType>,
    o: pb::TaskOptions,
) -> (TaskSpec, Duration) {
    if !rules::PRIORITY.contains(&o.priority) {
        vs.add(
            "options.priority",
            format!("must be between -1000 and 1000, got {}", o.priority),
        );
    }
    let max_attempts = attempts(vs, o.attempts, tt);
    let backoff = backoff(vs, o.backoff);
    let delay = duration(vs, "options.delay", o.delay, days(365)).unwrap_or_default();
    let execution_timeout = duration(
        vs,
        "options.execution_timeout",
        o.execution_timeout,
        days(7),
    )
    .filter(|d| !d.is_zero());
    check_len(vs, "options.user_id", &o.user_id, 256);
    check_len(vs, "options.session_id", &o.session_id, 256);
    check_len(vs, "options.idempotency_key", &o.idempotency_key, 256);
    if debounce::is_reserved(&o.idempotency_key) {
        vs.add(
            "options.idempotency_key",
            "must not start with U+0001 (reserved for throttle keys)",
        );
    }
    check_len(
        vs,
        "options.concurrency_key",
        &o.concurrency_key,
        crate::domain::flow::MAX_KEY_BYTES,
    );
    if o.concurrency_key.starts_with(debounce::RESERVED) {
        vs.add(
            "options.concurrency_key",
            "must not start with U+0001 (reserved for the server's own keys)",
        );
    }
    check_labels(vs, &o.labels);
    let retention = o.retention.and_then(|r| retention(vs, r));
    let cleanup = o.cleanup.and_then(|c| cleanup(vs, c));
    let (dedup, throttle_key, delay) =
        dedup(vs, &o.idempotency_key, o.idempotency_ttl, o.debounce, delay);
    let spec = TaskSpec {
        priority: o.priority,
        max_attempts,
        backoff,
        execution_timeout,
        user_id: non_empty(o.user_id),
        session_id: non_empty(o.session_id),
        immediate: o.immediate,
        idempotency_key: non_empty(o.idempotency_key)
            .map(String::into_boxed_str)
            .or(throttle_key),
        labels: o.labels.into_iter().collect::<BTreeMap<_, _>>(),
        cleanup,
        retention,
        concurrency_key: non_empty(o.concurrency_key)
            .map(|k| Box::new(crate::domain::flow::Key(k.into_boxed_str()))),
        dedup,
        ..TaskSpec::new(name, tt.unwrap_or(TaskType::Simple), UNTARGETED)
    };
    (spec, delay)
}

/// The idempotency key's window and the debounce key, checked; the
/// idempotency key a THROTTLE key is kept under; the delay, at least the
/// quiet period of a DEBOUNCE key.
fn dedup(
    vs: &mut Violations,
    idempotency_key: &str,
    ttl: Option<prost_types::Duration>,
    d: Option<pb::Debounce>,
    delay: Duration,
) -> (Option<Box<debounce::Dedup>>, Option<Box<str>>, Duration) {
    if ttl.is_none() && d.is_none() {
        return (None, None, delay);
    }
    let ttl_given = ttl.is_some();
    let ttl = duration(vs, "options.idempotency_ttl", ttl, debounce::MAX_TTL);
    if ttl.is_some_and(|t| t.is_zero()) {
        vs.add("options.idempotency_ttl", "must be more than zero");
    }
    if ttl_given && idempotency_key.is_empty() {
        vs.add(
            "options.idempotency_ttl",
            "requires options.idempotency_key",
        );
    }
    let mut delay = delay;
    let mut throttle_key = None;
    let debounce = d.and_then(|d| {
        if let Err(e) = debounce::check_key(&d.key) {
            vs.add("options.debounce.key", e);
        }
        if d.period.is_none() {
            vs.add("options.debounce.period", "is required");
        }
        let period = duration(
            vs,
            "options.debounce.period",
            d.period,
            debounce::MAX_PERIOD,
        );
        if period.is_some_and(|p| p.is_zero()) {
            vs.add("options.debounce.period", "must be more than zero");
        }
        let mode = match pb::DebounceMode::try_from(d.mode) {
            Ok(pb::DebounceMode::Throttle) => debounce::Mode::Throttle,
            Ok(_) => debounce::Mode::Debounce,
            Err(_) => {
                vs.add("options.debounce.mode", format!("unknown mode {}", d.mode));
                debounce::Mode::Debounce
            }
        };
        if !idempotency_key.is_empty() {
            vs.add(
                "options.debounce",
                "cannot be combined with options.idempotency_key",
            );
        }
        let period = period.filter(|p| !p.is_zero())?;
        match mode {
            debounce::Mode::Debounce => delay = delay.max(period),
            debounce::Mode::Throttle => throttle_key = Some(debounce::throttle_key(&d.key)),
        }
        Some(debounce::Debounce {
            key: d.key.into_boxed_str(),
            period,
            mode,
        })
    });
    let dedup = debounce::Dedup {
        ttl: ttl.filter(|t| !t.is_zero()),
        debounce,
    };
    (Some(Box::new(dedup)), throttle_key, delay)
}

/// The target of a task whose target is refused or not yet read.
const UNTARGETED: Target = Target::Simple { queue: None };

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// Attempts in all: webhook calls retry by default; other types run once
/// unless asked.
fn attempts(vs: &mut Violations, asked: u32, tt: Option<TaskType>) -> u32 {
    match asked {
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
    }
}

fn backoff(vs: &mut Violations, b: Option<pb::Backoff>) -> Backoff {
    let mut backoff = Backoff::default();
    let Some(b) = b else {
        return backoff;
    };
    match pb::backoff::Kind::try_from(b.kind) {
        Ok(pb::backoff::Kind::Fixed) => backoff.kind = BackoffKind::Fixed,
        Ok(_) => backoff.kind = BackoffKind::Exponential,
        Err(_) => vs.add("options.backoff.kind", format!("unknown kind {}", b.kind)),
    }
    if let Some(d) = duration(vs, "options.backoff.base", b.base, days(1)) {
        backoff.base = d;
    }
    if let Some(d) = duration(vs, "options.backoff.max", b.max, days(7)) {
        backoff.max = d;
    }
    backoff
}

fn check_labels(vs: &mut Violations, labels: &std::collections::HashMap<String, String>) {
    if labels.len() > 64 {
        vs.add(
            "options.labels",
            format!("at most 64 labels, got {}", labels.len()),
        );
    }
    for (k, v) in labels {
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
}

/// The task's own retention, if it sets any.
fn retention(vs: &mut Violations, r: pb::Retention) -> Option<Box<Retention>> {
    let max = days(3650);
    let keep = Retention {
        completed: duration(vs, "options.retention.completed", r.completed, max),
        failed: duration(vs, "options.retention.failed", r.failed, max),
        cancelled: duration(vs, "options.retention.cancelled", r.cancelled, max),
    };
    (!keep.is_empty()).then(|| Box::new(keep))
}

fn cleanup(vs: &mut Violations, c: pb::CleanupTask) -> Option<Box<Box<str>>> {
    match check_name(&c.name) {
        Ok(()) => Some(Box::new(c.name.into_boxed_str())),
        Err(e) => {
            vs.add("options.cleanup.name", e);
            None
        }
    }
}

/// The target, which must agree with the task type.
fn target(vs: &mut Violations, tt: Option<TaskType>, target: Option<T>) -> Target {
    match (tt, target) {
        (Some(TaskType::Simple), None) => UNTARGETED,
        (Some(TaskType::Simple), Some(T::Simple(s))) => simple(vs, s),
        (Some(TaskType::Complex), Some(T::Complex(c))) => complex(vs, c),
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
        (Some(TaskType::Integration), Some(T::Integration(i))) => integration(vs, i),
        (Some(TaskType::Integration), None) => {
            vs.add(
                "integration",
                "is required for INTEGRATION tasks (webhook_url or workflow_id)",
            );
            UNTARGETED
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
            UNTARGETED
        }
        (None, _) => UNTARGETED,
    }
}

fn simple(vs: &mut Violations, s: pb::SimpleTarget) -> Target {
    if !s.queue.is_empty() {
        if let Err(e) = check_name(&s.queue) {
            vs.add("simple.queue", e);
        }
    }
    Target::Simple {
        queue: non_empty(s.queue),
    }
}

fn complex(vs: &mut Violations, c: pb::ComplexTarget) -> Target {
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
    check_len(vs, "complex.workflow_id", &c.workflow_id, 256);
    let mut workflow_args = Vec::new();
    for v in c.workflow_args.iter().flat_map(|l| &l.values) {
        match value_to_json(v) {
            Ok(j) => workflow_args.push(j),
            Err(e) => vs.add("complex.workflow_args", e.to_string()),
        }
    }
    Target::Complex {
        workflow_type: c.workflow_type,
        workflow_args,
        task_queue: non_empty(c.task_queue),
        tracking_queue: non_empty(c.tracking_queue),
        workflow_id: non_empty(c.workflow_id),
    }
}

fn integration(vs: &mut Violations, i: pb::IntegrationTarget) -> Target {
    let n = i.n8n.unwrap_or_default();
    if n.workflow_id.is_empty() && n.webhook_url.is_empty() {
        vs.add("integration.n8n", "needs webhook_url or workflow_id");
    }
    if !n.webhook_url.is_empty() {
        check_url(vs, "integration.n8n.webhook_url", &n.webhook_url);
    }
    if !n.workflow_id.is_empty() {
        if let Err(e) = check_name(&n.workflow_id) {
            vs.add("integration.n8n.workflow_id", e);
        }
    }
    check_len(
        vs,
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
    fn a_debounce_waits_its_quiet_period_and_a_throttle_key_is_kept_apart() {
        let with = |mode: pb::DebounceMode, delay: u64| {
            let mut r = req();
            r.options = Some(pb::TaskOptions {
                delay: Some(prost_types::Duration {
                    seconds: delay as i64,
                    nanos: 0,
                }),
                debounce: Some(pb::Debounce {
                    key: "doc".into(),
                    period: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                    mode: mode as i32,
                }),
                ..Default::default()
            });
            new_task(r, &limits(), None).unwrap()
        };
        let d = with(pb::DebounceMode::Unspecified, 0);
        assert_eq!(d.delay, Duration::from_secs(5));
        assert_eq!(d.spec.debounce_key(), Some("doc"));
        assert_eq!(d.spec.idempotency_key, None);
        // A longer delay wins.
        assert_eq!(
            with(pb::DebounceMode::Debounce, 9).delay,
            Duration::from_secs(9)
        );
        let t = with(pb::DebounceMode::Throttle, 0);
        assert_eq!(t.delay, Duration::ZERO);
        assert_eq!(t.spec.debounce_key(), None);
        assert_eq!(t.spec.key_window(), Some(Duration::from_secs(5)));
        let key = t.spec.idempotency_key.as_deref().unwrap();
        assert!(debounce::is_reserved(key), "{key:?}");
        // Neither: no options box at all.
        assert!(new_task(req(), &limits(), None)
            .unwrap()
            .spec
            .dedup
            .is_none());
    }

    #[test]
    fn bad_windows_and_debounce_keys_are_named_in_field_order() {
        let mut r = req();
        r.options = Some(pb::TaskOptions {
            idempotency_ttl: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            debounce: Some(pb::Debounce {
                key: String::new(),
                period: None,
                mode: 9,
            }),
            ..Default::default()
        });
        assert_eq!(
            fields(new_task(r, &limits(), None).unwrap_err()),
            vec![
                "options.idempotency_ttl",
                "options.idempotency_ttl",
                "options.debounce.key",
                "options.debounce.period",
                "options.debounce.mode"
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
}

//! The state machine on its own: no runtime, no store, no clock.
//!
//! Each test drives [`State::step`] at times it chooses and reads the
//! [`Effects`] it hands back (the writes, the pushes to workers, the timer
//! wake-up). Nothing here awaits: the worker's channel is only ever
//! inspected, never received from by a task, and the core's loops do not
//! run.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::state::{Effects, State};
use super::*;
use crate::domain::Payload;
use crate::store::WriteOp;

const T0: Micros = 1_700_000_000_000_000;

fn state() -> State {
    State::new(Arc::new(CoreConfig::default()), 0)
}

fn new_task(name: &str, max_attempts: u32, backoff: Duration) -> NewTask {
    let mut spec = TaskSpec::test_simple(name, None);
    spec.max_attempts = max_attempts;
    spec.backoff = Backoff {
        kind: BackoffKind::Fixed,
        base: backoff,
        max: backoff,
    };
    NewTask {
        spec,
        payload: Payload::Json(Arc::from("{}")),
        delay: Duration::ZERO,
    }
}

/// A worker serving `name` with `slots`; its number, id and channel.
fn worker(
    st: &mut State,
    name: &str,
    slots: u32,
) -> (u64, Arc<str>, mpsc::UnboundedReceiver<Push>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (wid, _) = st.step(T0, |st| {
        st.add_worker("w", &[name.to_string()], (slots, 0), None, tx)
    });
    let n = st.worker_ids[&wid];
    (n, wid, rx)
}

/// The states written by `fx`, in order.
fn written_states(fx: &Effects) -> Vec<TaskState> {
    fx.ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Insert { task, .. } | WriteOp::Update { task, .. } => Some(task.rt.state),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_is_assigned_through_effects_at_the_time_given() {
    let mut st = state();
    let (n, _, mut rx) = worker(&mut st, "email", 1);
    let (task, fx) = st.step(T0 + 5, |st| {
        st.schedule_internal(new_task("email", 1, Duration::ZERO))
    });

    // The insert, then the start, written in sequence order.
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Running]
    );
    assert!(fx.eager, "an insert needs a commit of its own");
    // One push, to that worker, not yet sent: the caller sends it.
    assert_eq!(fx.pushes.len(), 1);
    let (to, _, push) = &fx.pushes[0];
    assert_eq!(*to, n);
    match push {
        Push::Assign(a) => {
            assert_eq!(a.task.id, task.id);
            assert_eq!(a.task.rt.started_at, Some(T0 + 5));
            assert_eq!(a.task.rt.attempt, 1);
        }
        other => panic!("expected an assignment, got {other:?}"),
    }
    assert!(
        rx.try_recv().is_err(),
        "the state machine sends nothing itself"
    );
    assert_eq!(task.created_at, T0 + 5);
}

#[test]
fn a_failure_backs_off_from_the_time_of_the_report() {
    let mut st = state();
    let (n, _, _rx) = worker(&mut st, "email", 1);
    let (task, _) = st.step(T0, |st| {
        st.schedule_internal(new_task("email", 3, Duration::from_secs(7)))
    });

    // The timer loop sleeps with nothing to do.
    st.timer_wake = Micros::MAX;
    let at = T0 + 2_000_000;
    let ((), fx) = st.step(at, |st| {
        st.apply_report(
            task.id,
            1,
            Report::Fail {
                error: TaskError {
                    message: "boom".into(),
                    kind: "IOError".into(),
                    retryable: true,
                    ..Default::default()
                },
                retry_after: None,
            },
        )
    });
    assert_eq!(written_states(&fx), [TaskState::Pending]);
    let a = &st.tasks[&task.id];
    assert_eq!(
        a.task.rt.run_at,
        at + 7_000_000,
        "backoff counts from the report"
    );
    assert_eq!(a.task.rt.waiting_reason, Some(WaitingReason::BackingOff));
    assert_eq!(a.timer, Some(at + 7_000_000));
    assert!(fx.wake, "the timer loop must wake for the retry");
    assert!(fx.pushes.is_empty());
    assert_eq!(st.workers[&n].used, 0, "the slot is free again");
}

#[test]
fn a_cancel_asks_the_worker_and_arms_the_lease_deadline() {
    let mut st = state();
    let (n, _, _rx) = worker(&mut st, "email", 1);
    let (task, _) = st.step(T0, |st| {
        st.schedule_internal(new_task("email", 1, Duration::ZERO))
    });

    let at = T0 + 1_000;
    let (outcome, fx) = st.step(at, |st| {
        st.cancel_locked(task.id, CancelReason::Cancelled, "user asked", false)
    });
    let (outcome, _) = outcome.expect("the task is active");
    assert!(matches!(outcome, CancelOutcome::CancelRequested));
    match &fx.pushes[..] {
        [(
            to,
            _,
            Push::Cancel {
                task_id,
                reason,
                force,
                ..
            },
        )] => {
            assert_eq!((*to, *task_id, force), (n, task.id, &false));
            assert_eq!(reason, &CancelReason::Cancelled);
            assert_eq!(reason.to_string(), "cancelled");
        }
        other => panic!("expected one cancel push, got {other:?}"),
    }
    let lease = st.cfg.lease_ttl;
    let (deadline, _) = st.tasks[&task.id].deadline.expect("a cancel deadline");
    assert_eq!(deadline, add_micros(at, lease));
}

#[test]
fn a_removed_worker_still_gets_its_close_and_its_task_waits_for_another() {
    let mut st = state();
    let (n, wid, _rx) = worker(&mut st, "email", 1);
    let (task, _) = st.step(T0, |st| {
        st.schedule_internal(new_task("email", 2, Duration::ZERO))
    });

    let ((), fx) = st.step(T0 + 10, |st| st.remove_worker(&wid, "lease expired", true));
    assert!(st.workers.is_empty());
    match &fx.pushes[..] {
        [(to, _, Push::Close(why))] => assert_eq!((*to, why.as_str()), (n, "lease expired")),
        other => panic!("expected one close, got {other:?}"),
    }
    let a = &st.tasks[&task.id];
    assert_eq!(
        (a.task.rt.state, a.task.rt.attempt),
        (TaskState::Pending, 1)
    );
    assert_eq!(a.task.rt.waiting_reason, Some(WaitingReason::NoWorker));
    assert!(
        a.again,
        "its next worker is told the first try's outcome is unknown"
    );
}

#[test]
fn effects_are_handed_out_once() {
    let mut st = state();
    let (_n, _, _rx) = worker(&mut st, "email", 1);
    let (_, fx) = st.step(T0, |st| {
        st.schedule_internal(new_task("email", 1, Duration::ZERO))
    });
    assert!(!fx.ops.is_empty() && !fx.pushes.is_empty());
    let ((), again) = st.step(T0 + 1, |_| ());
    assert!(again.ops.is_empty() && again.pushes.is_empty() && !again.eager && !again.wake);
}

/// A task with a cleanup task, `max_attempts` attempts.
fn with_cleanup(name: &str, max_attempts: u32) -> NewTask {
    let mut new = new_task(name, max_attempts, Duration::ZERO);
    new.spec.cleanup = Some(Box::new("undo".into()));
    new
}

/// The cleanup tasks inserted by `fx`: their `cleanup_reason` labels.
fn cleanups(fx: &Effects) -> Vec<String> {
    fx.ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Insert { task, .. } if &*task.spec.name == "undo" => {
                task.spec.labels.get("cleanup_reason").cloned()
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_that_fails_by_losing_its_workers_gets_its_cleanup() {
    let mut st = state();
    let max_losses = st.cfg.max_lease_losses;
    let (task, _) = st.step(T0, |st| st.schedule_internal(with_cleanup("email", 1)));
    let mut last = None;
    for i in 0..=max_losses {
        let (_, wid, _rx) = worker(&mut st, "email", 1);
        let at = T0 + 1_000 * (i as i64 + 1);
        let ((), fx) = st.step(at, |st| st.remove_worker(&wid, "lease expired", true));
        last = Some(fx);
    }
    let fx = last.expect("at least one loss");
    let t = &st.finishing[&task.id];
    assert_eq!(t.rt.state, TaskState::Failed);
    assert_eq!(
        t.rt.last_error.as_ref().map(|e| e.kind.as_str()),
        Some("worker_lost")
    );
    assert_eq!(
        cleanups(&fx),
        ["failed"],
        "the cleanup rides on the same commit"
    );
}

#[test]
fn a_cancelled_task_whose_worker_is_lost_gets_its_cleanup() {
    let mut st = state();
    let (_, wid, _rx) = worker(&mut st, "email", 1);
    let (task, _) = st.step(T0, |st| st.schedule_internal(with_cleanup("email", 1)));
    let _ = st.step(T0 + 1, |st| {
        st.cancel_locked(task.id, CancelReason::Cancelled, "", false)
    });
    let ((), fx) = st.step(T0 + 2, |st| st.remove_worker(&wid, "lease expired", true));
    assert_eq!(st.finishing[&task.id].rt.state, TaskState::Cancelled);
    assert_eq!(cleanups(&fx), ["cancelled"]);
}

#[test]
fn a_retried_task_runs_again_under_a_new_run_with_a_new_attempt_budget() {
    let mut st = state();
    let (n, _, _rx) = worker(&mut st, "email", 1);
    let (task, _) = st.step(T0, |st| {
        st.schedule_internal(new_task("email", 2, Duration::ZERO))
    });
    let fail = |st: &mut State, attempt: u32| {
        st.apply_report(
            task.id,
            attempt,
            Report::Fail {
                error: TaskError {
                    message: "boom".into(),
                    kind: "IOError".into(),
                    retryable: true,
                    ..Default::default()
                },
                retry_after: None,
            },
        )
    };
    // Both attempts fail: FAILED for good.
    st.step(T0 + 1, |st| fail(st, 1));
    st.step(T0 + 2, |st| fail(st, 2));
    let ended = st.finishing[&task.id].clone();
    assert_eq!((ended.rt.state, ended.rt.attempt), (TaskState::Failed, 2));
    assert_eq!(
        st.counts.by_type[&TaskType::Simple][3],
        1,
        "counted as failed"
    );

    let (again, fx) = st.step(T0 + 10, |st| {
        super::retry::rerun_for_test(st, ended.clone(), "fixed the worker")
    });
    let again = again.expect("a failed task can be retried");
    assert_eq!((again.id, again.rt.run, again.rt.attempt), (task.id, 1, 0));
    assert_eq!(again.rt.finished_at, None);
    assert_eq!(
        again.rt.last_error.as_deref().map(|e| e.kind.as_str()),
        Some("IOError"),
        "the last error stays until the new run ends"
    );
    // Written PENDING (its event, its log line), then started at once on
    // the free worker as attempt 1 of the new run.
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Running]
    );
    assert!(fx.eager, "a retry needs a commit before its answer");
    match &fx.ops[0] {
        WriteOp::Update { log, event, .. } => {
            assert_eq!(*event, Some(EventKind::Retrying));
            assert!(
                log[0]
                    .message
                    .starts_with("retried by request from failed: run 1")
                    && log[0].message.ends_with("(fixed the worker)"),
                "{}",
                log[0].message
            );
        }
        other => panic!("expected an update, got {other:?}"),
    }
    match &fx.pushes[..] {
        [(to, _, Push::Assign(a))] => {
            assert_eq!(*to, n);
            assert_eq!((a.task.rt.attempt, a.task.rt.run), (1, 1));
        }
        other => panic!("expected one assignment, got {}", other.len()),
    }
    assert_eq!(
        st.counts.by_type[&TaskType::Simple][3],
        0,
        "no longer failed"
    );
    // A second retry while it runs is refused, and changes nothing.
    let (second, fx) = st.step(T0 + 11, |st| {
        super::retry::rerun_for_test(st, ended.clone(), "")
    });
    assert!(matches!(second, Err(CoreError::FailedPrecondition(_))));
    assert!(fx.ops.is_empty());
    // The new run has its own budget: a failure of its attempt 1 retries.
    let ((), fx) = st.step(T0 + 12, |st| fail(st, 1));
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Running]
    );
    assert_eq!(st.tasks[&task.id].task.rt.attempt, 2);
}

/// A keyed task of `name`, created in the order scheduled.
fn keyed(name: &str, key: &str, priority: i32) -> NewTask {
    let mut t = new_task(name, 1, Duration::ZERO);
    t.spec.concurrency_key = Some(Box::new(crate::domain::flow::Key(key.into())));
    t.spec.priority = priority;
    t
}

/// The ids of the tasks assigned in `fx`, in order.
fn assigned(fx: &Effects) -> Vec<TaskId> {
    fx.pushes
        .iter()
        .filter_map(|(_, _, p)| match p {
            Push::Assign(a) => Some(a.task.id),
            _ => None,
        })
        .collect()
}

fn limit(st: &mut State, pattern: &str, n: i64) {
    let rules = crate::domain::flow::FlowRules {
        policies: vec![crate::domain::flow::ConcurrencyPolicy::new(pattern, n, false).unwrap()],
        ..Default::default()
    };
    st.step(T0, |st| st.set_flow_rules(Arc::new(rules)));
}

#[test]
fn a_key_at_its_limit_is_held_and_goes_on_when_one_of_its_tasks_ends() {
    let mut st = state();
    limit(&mut st, "mail", 2);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (t, _) = st.step(T0, |st| st.schedule_internal(keyed("mail", "k", 0)));
        ids.push(t.id);
    }
    let (_, _, _rx) = worker(&mut st, "mail", 10);
    let running: Vec<_> = ids
        .iter()
        .filter(|id| st.tasks[*id].worker.is_some())
        .copied()
        .collect();
    assert_eq!(running, ids[..2], "two of key k start, in order");
    let held = &st.tasks[&ids[2]];
    let (reason, hold) = st.hold_of(held, true).expect("held");
    assert_eq!(reason, WaitingReason::ConcurrencyLimit);
    assert_eq!(
        (
            hold.rule.as_str(),
            hold.key.as_deref(),
            hold.limit,
            hold.running
        ),
        ("mail", Some("k"), 2, 2)
    );
    assert_eq!(hold.ahead, Some(0));
    assert_eq!(
        st.hold_of(&st.tasks[&ids[3]], true).unwrap().1.ahead,
        Some(1)
    );
    assert_eq!(st.held_counts(), (2, 0));

    // Another key is not held by k's limit.
    let (other, fx) = st.step(T0, |st| st.schedule_internal(keyed("mail", "j", 0)));
    assert_eq!(assigned(&fx), [other.id]);

    // One of k's ends: the next of k starts in the same section.
    let ((), fx) = st.step(T0 + 1, |st| {
        st.apply_report(ids[0], 1, Report::Complete(serde_json::json!({})))
    });
    assert_eq!(assigned(&fx), [ids[2]]);
    assert_eq!(st.held_counts(), (1, 0));
}

/// A keyed task of `name` in namespace `ns`.
fn keyed_in(ns: &str, name: &str, key: &str) -> NewTask {
    let mut t = keyed(name, key, 0);
    crate::domain::namespace::stamp(&mut t.spec, ns);
    t
}

#[test]
fn a_namespace_s_rules_hold_only_its_own_tasks() {
    let mut st = state();
    let rules = crate::domain::flow::FlowRules {
        policies: vec![crate::domain::flow::ConcurrencyPolicy::new("*", 1, false)
            .unwrap()
            .in_namespace("acme")],
        paused: [("acme".to_string(), ["p".to_string()].into())].into(),
        ..Default::default()
    };
    st.step(T0, |st| st.set_flow_rules(Arc::new(rules)));
    // Workers of each namespace take its queue key (`name@ns`).
    let (_, _, _a) = worker(&mut st, "mail@acme", 10);
    let (_, _, _b) = worker(&mut st, "mail@beta", 10);
    let (_, _, _pa) = worker(&mut st, "p@acme", 10);
    let (_, _, _pb) = worker(&mut st, "p@beta", 10);
    let mut acme = Vec::new();
    let mut beta = Vec::new();
    for _ in 0..3 {
        acme.push(
            st.step(T0, |st| st.schedule_internal(keyed_in("acme", "mail", "a")))
                .0
                .id,
        );
        beta.push(
            st.step(T0, |st| st.schedule_internal(keyed_in("beta", "mail", "b")))
                .0
                .id,
        );
    }
    let running = |st: &State, ids: &[TaskId]| {
        ids.iter()
            .filter(|id| st.tasks[*id].worker.is_some())
            .count()
    };
    assert_eq!(running(&st, &acme), 1, "acme's `*` limits acme's key");
    assert_eq!(running(&st, &beta), 3, "and not beta's, of the same name");
    // acme's pause of `p` holds acme's `p`, not beta's.
    let (pa, fx) = st.step(T0, |st| st.schedule_internal(keyed_in("acme", "p", "x")));
    assert!(assigned(&fx).is_empty());
    assert_eq!(
        st.derived_reason(&st.tasks[&pa.id]),
        Some(WaitingReason::QueuePaused)
    );
    let (pb, fx) = st.step(T0, |st| st.schedule_internal(keyed_in("beta", "p", "x")));
    assert_eq!(assigned(&fx), [pb.id]);
}

#[test]
fn the_same_key_in_two_namespaces_has_two_counts() {
    let mut st = state();
    let rules = crate::domain::flow::FlowRules {
        policies: vec![crate::domain::flow::ConcurrencyPolicy::new("*", 1, false)
            .unwrap()
            .in_namespace("acme")],
        ..Default::default()
    };
    st.step(T0, |st| st.set_flow_rules(Arc::new(rules)));
    let (_, _, _a) = worker(&mut st, "mail@acme", 10);
    let (_, _, _b) = worker(&mut st, "mail@beta", 10);
    // beta's three of key k run (no rule of beta's holds them)...
    for _ in 0..3 {
        let (t, fx) = st.step(T0, |st| st.schedule_internal(keyed_in("beta", "mail", "k")));
        assert_eq!(assigned(&fx), [t.id]);
    }
    // ...and do not count against acme's limit on its own key k.
    let (a1, fx) = st.step(T0, |st| st.schedule_internal(keyed_in("acme", "mail", "k")));
    assert_eq!(assigned(&fx), [a1.id], "acme's k has a count of its own");
    let (a2, fx) = st.step(T0, |st| st.schedule_internal(keyed_in("acme", "mail", "k")));
    assert!(assigned(&fx).is_empty());
    let (_, hold) = st.hold_of(&st.tasks[&a2.id], false).expect("held");
    assert_eq!((hold.limit, hold.running), (1, 1));
}

#[test]
fn keys_take_turns_and_priority_still_wins() {
    let mut st = state();
    let mut a = Vec::new();
    for _ in 0..50 {
        a.push(
            st.step(T0, |st| st.schedule_internal(keyed("q", "A", 0)))
                .0
                .id,
        );
    }
    let b: Vec<_> = (0..3)
        .map(|_| {
            st.step(T0, |st| st.schedule_internal(keyed("q", "B", 0)))
                .0
                .id
        })
        .collect();
    let plain = st
        .step(T0, |st| {
            st.schedule_internal(new_task("q", 1, Duration::ZERO))
        })
        .0
        .id;
    let urgent = st
        .step(T0, |st| st.schedule_internal(keyed("q", "A", 5)))
        .0
        .id;
    let (tx, _rx) = mpsc::unbounded_channel();
    let (_, fx) = st.step(T0, |st| {
        st.add_worker("w", &["q".to_string()], (10, 0), None, tx)
    });
    let order = assigned(&fx);
    assert_eq!(order[0], urgent, "priority wins across keys");
    // Then A, B and the tasks without a key take turns.
    let pos = |id: &TaskId| order.iter().position(|x| x == id).unwrap();
    assert!(b.iter().all(|id| pos(id) <= 9), "{order:?}");
    assert!(pos(&plain) <= 3, "{order:?}");
    assert_eq!(
        order.iter().filter(|id| a.contains(*id)).count(),
        10 - 1 - 3 - 1
    );
}

#[test]
fn a_paused_name_holds_its_tasks_until_resumed() {
    let mut st = state();
    let (_, _, _rx) = worker(&mut st, "p", 4);
    let paused = crate::domain::flow::FlowRules {
        paused: [("default".to_string(), ["p".to_string()].into())].into(),
        ..Default::default()
    };
    st.step(T0, |st| st.set_flow_rules(Arc::new(paused)));
    let (t, fx) = st.step(T0, |st| {
        st.schedule_internal(new_task("p", 1, Duration::ZERO))
    });
    assert!(assigned(&fx).is_empty());
    assert_eq!(
        st.derived_reason(&st.tasks[&t.id]),
        Some(WaitingReason::QueuePaused)
    );
    assert_eq!(st.held_counts(), (0, 1));
    let (_, fx) = st.step(T0, |st| st.set_flow_rules(Arc::default()));
    assert_eq!(assigned(&fx), [t.id]);
    assert_eq!(st.held_counts(), (0, 0));
}

#[test]
fn a_task_that_was_running_at_a_restart_keeps_its_slot_of_the_key() {
    let mut st = state();
    limit(&mut st, "r", 1);
    let (older, _) = st.step(T0, |st| st.schedule_internal(keyed("r", "k", 0)));
    let (was_running, _) = st.step(T0, |st| st.schedule_internal(keyed("r", "k", 0)));
    // As recovery does for a task that was running: its slot is kept.
    st.step(T0, |st| st.reserve(was_running.id));
    assert_eq!(st.flow.running_of("k"), 1);
    assert_eq!(
        st.derived_reason(&st.tasks[&older.id]),
        Some(WaitingReason::ConcurrencyLimit),
        "the older task waits behind the slot kept"
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let (_, fx) = st.step(T0, |st| {
        st.add_worker("w", &["r".to_string()], (4, 0), None, tx)
    });
    assert_eq!(assigned(&fx), [was_running.id], "it goes first, and alone");
    assert_eq!(st.flow.running_of("k"), 1, "counted once");
    let ((), fx) = st.step(T0 + 1, |st| {
        st.apply_report(was_running.id, 1, Report::Complete(serde_json::json!({})))
    });
    assert_eq!(assigned(&fx), [older.id]);
}

fn rate(st: &mut State, pattern: &str, rate: i64, burst: i64, per_key: bool) {
    let rules = crate::domain::flow::FlowRules {
        rate_limits: vec![crate::domain::flow::RateLimit::new(
            pattern,
            rate,
            Duration::from_secs(1),
            burst,
            per_key,
            false,
        )
        .unwrap()],
        ..Default::default()
    };
    st.step(T0, |st| st.set_flow_rules(Arc::new(rules)));
}

#[test]
fn a_rate_limit_holds_a_task_on_a_timer_until_its_token_is_due() {
    let mut st = state();
    // 2 a second, one at a time: a token every 500 ms.
    rate(&mut st, "rl", 2, 1, false);
    let (_, _, _rx) = worker(&mut st, "rl", 10);
    let mut ids = Vec::new();
    let mut started = Vec::new();
    for _ in 0..3 {
        let (t, fx) = st.step(T0, |st| {
            st.schedule_internal(new_task("rl", 1, Duration::ZERO))
        });
        ids.push(t.id);
        started.extend(assigned(&fx));
    }
    assert_eq!(started, [ids[0]], "one token at T0");
    let (reason, hold) = st.hold_of(&st.tasks[&ids[1]], false).expect("held");
    assert_eq!(reason, WaitingReason::RateLimited);
    assert_eq!(
        (hold.rule.as_str(), hold.next_start, hold.rate),
        ("rl", Some(T0 + 500_000), Some((2, 1000, 1)))
    );
    assert_eq!(
        st.hold_of(&st.tasks[&ids[2]], false).unwrap().1.next_start,
        Some(T0 + 1_000_000),
        "the held tasks wake one token apart"
    );
    assert_eq!(
        st.derived_reason(&st.tasks[&ids[2]]),
        Some(WaitingReason::RateLimited)
    );
    assert_eq!(st.rate_held_count(), 2);
    assert!(st.rate_tokens(T0)[0].1 < 0.01);

    // Not before its token: nothing starts.
    let ((), fx) = st.step(T0 + 499_999, |st| st.timers_due(T0 + 499_999));
    assert!(assigned(&fx).is_empty());
    let ((), fx) = st.step(T0 + 500_000, |st| st.timers_due(T0 + 500_000));
    assert_eq!(assigned(&fx), [ids[1]]);
    let ((), fx) = st.step(T0 + 1_000_000, |st| st.timers_due(T0 + 1_000_000));
    assert_eq!(assigned(&fx), [ids[2]]);
    assert_eq!(st.rate_held_count(), 0);
}

#[test]
fn a_rate_per_key_gives_each_key_its_bucket_and_deleting_it_releases_at_once() {
    let mut st = state();
    rate(&mut st, "rk", 1, 1, true);
    let (_, _, _rx) = worker(&mut st, "rk", 10);
    let mut started = Vec::new();
    let mut ids = Vec::new();
    for key in ["a", "a", "b"] {
        let (t, fx) = st.step(T0, |st| st.schedule_internal(keyed("rk", key, 0)));
        ids.push(t.id);
        started.extend(assigned(&fx));
    }
    assert_eq!(started, [ids[0], ids[2]], "a and b each have a token");
    let hold = st.hold_of(&st.tasks[&ids[1]], false).unwrap().1;
    assert_eq!(hold.key.as_deref(), Some("a"));
    // No rate limit any more: the held task goes at once.
    let ((), fx) = st.step(T0 + 1, |st| {
        st.set_flow_rules(Arc::new(crate::domain::flow::FlowRules::default()))
    });
    assert_eq!(assigned(&fx), [ids[1]]);
    assert_eq!(st.rate_held_count(), 0);
    assert!(st.timers.is_empty());
}

#[test]
fn a_cancelled_rate_held_task_leaves_the_timer_and_the_count() {
    let mut st = state();
    rate(&mut st, "rc", 1, 1, false);
    let (_, _, _rx) = worker(&mut st, "rc", 10);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (t, _) = st.step(T0, |st| {
            st.schedule_internal(new_task("rc", 1, Duration::ZERO))
        });
        ids.push(t.id);
    }
    assert_eq!(st.rate_held_count(), 1);
    st.step(T0, |st| st.unplace(ids[1]));
    assert_eq!(st.rate_held_count(), 0);
    assert!(st.timers.is_empty());
}

/// A task of debounce key `key` (mode DEBOUNCE) waiting `delay`.
fn debounced(name: &str, key: &str, delay: Duration) -> NewTask {
    let mut new = new_task(name, 1, Duration::ZERO);
    new.spec.dedup = Some(Box::new(crate::domain::debounce::Dedup {
        ttl: None,
        debounce: Some(crate::domain::debounce::Debounce {
            key: key.into(),
            period: Duration::from_secs(1),
            mode: crate::domain::debounce::Mode::Debounce,
        }),
    }));
    new.delay = delay;
    new
}

#[test]
fn a_newer_task_of_a_debounce_key_supersedes_the_pending_one_in_the_same_section() {
    let mut st = state();
    let quiet = Duration::from_secs(1);
    let (a, _) = st.step(T0, |st| st.schedule_internal(debounced("d", "k", quiet)));
    let (b, fx) = st.step(T0 + 10, |st| {
        st.schedule_internal(debounced("d", "k", quiet))
    });
    // B's insert, then A's end, in one critical section's writes.
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Cancelled]
    );
    let ended = fx
        .ops
        .iter()
        .find_map(|op| match op {
            WriteOp::Update { task, .. } if task.id == a.id => Some(task.clone()),
            _ => None,
        })
        .expect("A's update");
    let err = ended.rt.last_error.expect("A's error");
    assert_eq!(err.kind, "superseded");
    assert!(err.message.contains(&b.id.to_string()), "{}", err.message);
    assert!(!st.tasks.contains_key(&a.id));
    assert_eq!(st.debounce.get("k"), Some(&b.id));
    // Another key is its own.
    let (_, fx) = st.step(T0 + 20, |st| {
        st.schedule_internal(debounced("d", "j", quiet))
    });
    assert_eq!(written_states(&fx), [TaskState::Pending]);
    assert!(st.tasks.contains_key(&b.id));
}

#[test]
fn a_started_task_of_a_debounce_key_is_never_superseded() {
    let mut st = state();
    let (_n, _, _rx) = worker(&mut st, "d", 1);
    // No quiet period left: it starts at once.
    let (a, fx) = st.step(T0, |st| {
        st.schedule_internal(debounced("d", "k", Duration::ZERO))
    });
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Running]
    );
    let (b, fx) = st.step(T0 + 10, |st| {
        st.schedule_internal(debounced("d", "k", Duration::from_secs(1)))
    });
    assert_eq!(written_states(&fx), [TaskState::Pending]);
    assert_eq!(st.tasks[&a.id].task.rt.state, TaskState::Running);
    // The pending one is the key's now, and a newer one replaces it.
    let (_, fx) = st.step(T0 + 20, |st| {
        st.schedule_internal(debounced("d", "k", Duration::from_secs(1)))
    });
    assert_eq!(
        written_states(&fx),
        [TaskState::Pending, TaskState::Cancelled]
    );
    assert!(!st.tasks.contains_key(&b.id));
    assert_eq!(st.tasks[&a.id].task.rt.state, TaskState::Running);
}

#[test]
fn read_back_out_of_order_the_newer_pending_task_of_a_key_survives() {
    let mut st = state();
    let quiet = Duration::from_secs(1);
    // Two pending tasks of one key, as a crash between an insert and its
    // supersede could leave them; placed newest first.
    let (older, _) = st.step(T0, |st| st.schedule_internal(debounced("d", "x", quiet)));
    let (newer, _) = st.step(T0, |st| st.schedule_internal(debounced("d", "y", quiet)));
    let mut older_t = st.tasks[&older.id].task.clone();
    let mut newer_t = st.tasks[&newer.id].task.clone();
    let key_x = older_t.spec.clone();
    // Both of key "z" now, with their own sequence numbers.
    let respec = |t: &mut Task| {
        let mut spec = (*key_x).clone();
        if let Some(d) = spec.dedup.as_mut().and_then(|d| d.debounce.as_mut()) {
            d.key = "z".into();
        }
        t.spec = Arc::new(spec);
    };
    respec(&mut older_t);
    respec(&mut newer_t);
    let mut fresh = state();
    let (superseded, fx) = fresh.step(T0 + 1, |st| {
        let first = st.add_pending(newer_t.clone(), None);
        let second = st.add_pending(older_t.clone(), None);
        (first, second)
    });
    assert!(superseded.0.is_empty());
    // The older one placed second is superseded by the newer one already there.
    assert!(superseded.1.is_empty());
    assert_eq!(written_states(&fx), [TaskState::Cancelled]);
    assert!(!fresh.tasks.contains_key(&older_t.id));
    assert_eq!(fresh.debounce.get("z"), Some(&newer_t.id));
}

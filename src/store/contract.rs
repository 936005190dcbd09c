//! What every [`Store`] must do, as tests run against each implementation
//! (SQLite and PostgreSQL) through [`store_contract!`]: one suite, several
//! stores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{CommitListener, ListQuery, Store, WriteOp, WriteOutcome};
use crate::domain::retention::Retention;
use crate::domain::{
    now_micros, EventKind, LogEntry, Payload, Source, Task, TaskEvent, TaskFilter, TaskId,
    TaskRuntime, TaskSpec, TaskState, TaskType, WaitingReason,
};

/// A store under test, with what the suite needs of its implementation.
pub(crate) struct Opened {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its commits so far.
    pub commits: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Row writes it skipped by coalescing, if it counts them.
    pub coalesced: Box<dyn Fn() -> Option<u64> + Send + Sync>,
}

/// Opens stores of one kind at one place (the same data at every open).
#[async_trait]
pub(crate) trait Harness: Send + Sync {
    /// Opens the store, durable unless the kind has no such mode.
    async fn open(&self, lazy_within: Duration) -> Opened;
    /// Closes it (its writes committed).
    async fn close(&self, s: Opened);
}

/// Runs the contract against a harness built by `$make` (an expression,
/// evaluated once per test).
macro_rules! store_contract {
    ($make:expr) => {
        mod store_contract {
            use super::*;
            #[tokio::test]
            async fn insert_get_update_and_idempotency() {
                crate::store::contract::insert_get_update_and_idempotency(&$make).await
            }
            #[tokio::test]
            async fn a_released_key_may_be_taken_by_an_insert_after_it() {
                crate::store::contract::a_released_key_may_be_taken(&$make).await
            }
            #[tokio::test]
            async fn an_update_of_a_missing_task_publishes_nothing() {
                crate::store::contract::an_update_of_a_missing_task_publishes_nothing(&$make).await
            }
            #[tokio::test]
            async fn writes_of_one_task_in_a_batch_are_coalesced_but_logs_and_events_are_not() {
                crate::store::contract::writes_of_one_task_in_a_batch_are_coalesced(&$make).await
            }
            #[tokio::test]
            async fn a_lazy_write_rides_on_the_next_commit() {
                crate::store::contract::a_lazy_write_rides_on_the_next_commit(&$make).await
            }
            #[tokio::test]
            async fn a_lazy_write_alone_commits_within_its_bound() {
                crate::store::contract::a_lazy_write_alone_commits_within_its_bound(&$make).await
            }
            #[tokio::test]
            async fn a_task_inserted_and_changed_in_one_batch_ends_in_its_last_state() {
                crate::store::contract::inserted_and_changed_in_one_batch(&$make).await
            }
            #[tokio::test]
            async fn a_quarantined_row_leaves_the_active_scan() {
                crate::store::contract::quarantine_sets_a_row_aside(&$make).await
            }
            #[tokio::test]
            async fn ended_tasks_are_removed_when_due_with_their_steps() {
                crate::store::contract::ended_tasks_are_removed_when_due(&$make).await
            }
            #[tokio::test]
            async fn removing_writes_ride_on_commits_in_slices() {
                crate::store::contract::removals_ride_in_slices(&$make).await
            }
            #[tokio::test]
            async fn a_removal_spares_a_task_run_again() {
                crate::store::contract::a_removal_spares_a_task_run_again(&$make).await
            }
            #[tokio::test]
            async fn an_ended_task_run_again_leaves_the_ended_set() {
                crate::store::contract::a_rerun_leaves_the_ended_set(&$make).await
            }
            #[tokio::test]
            async fn a_derived_first_line_comes_first_and_pages() {
                crate::store::contract::a_derived_first_line_comes_first_and_pages(&$make).await
            }
            #[tokio::test]
            async fn filters_lists_counts_and_changes() {
                crate::store::contract::filters_lists_counts_and_changes(&$make).await
            }
        }
    };
}
pub(crate) use store_contract;

pub(crate) fn task(key: Option<&str>) -> Task {
    Task {
        id: TaskId::now_v7(),
        created_at: now_micros(),
        spec: Arc::new(TaskSpec::test_simple("t", key)),
        rt: TaskRuntime::new_pending(0, Source::Embedded, WaitingReason::Queued),
    }
}

pub(crate) async fn insert(s: &dyn Store, t: &Task) -> WriteOutcome {
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![WriteOp::Insert {
            task: t.clone(),
            payload: Payload::Json(Arc::from("{}")),
            log: vec![LogEntry::system(t.id, 0, "scheduled")],
            event: Some(EventKind::Scheduled),
        }],
        Some(tx),
    );
    rx.await.unwrap().unwrap().remove(0)
}

fn update(t: &Task, state: TaskState, seq: u64) -> WriteOp {
    let mut t = t.clone();
    t.rt.state = state;
    t.rt.seq = seq;
    let log = vec![LogEntry::system(t.id, 1, format!("seq {seq}"))];
    WriteOp::Update {
        task: t,
        log,
        event: Some(EventKind::Updated),
    }
}

/// Collects published events.
pub(crate) struct Seen(parking_lot::Mutex<Vec<(TaskId, u64, EventKind, TaskState)>>);

impl Seen {
    /// The events `pick` keeps, once there are `n` of them (or after a
    /// second: the listener hears of a commit just after its callers do).
    async fn wait<T>(
        &self,
        n: usize,
        pick: impl Fn(&(TaskId, u64, EventKind, TaskState)) -> Option<T>,
    ) -> Vec<T> {
        for _ in 0..100 {
            if self.0.lock().iter().filter_map(&pick).count() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.0.lock().iter().filter_map(&pick).collect()
    }
}
impl CommitListener for Seen {
    fn committed(&self, events: Vec<Arc<TaskEvent>>) {
        let mut v = self.0.lock();
        for e in events {
            v.push((e.task.id, e.seq, e.kind, e.task.rt.state));
        }
    }
}

fn change(t: &Task, state: TaskState, seq: u64, msg: &str) -> WriteOp {
    let mut t = t.clone();
    t.rt.state = state;
    t.rt.seq = seq;
    WriteOp::Update {
        log: vec![LogEntry::system(t.id, 1, msg)],
        task: t,
        event: Some(EventKind::Updated),
    }
}

/// A task inserted and changed in the same group (a task started while
/// its insert commits) is stored in its last state, with every log line in
/// order and every event published.
pub(crate) async fn inserted_and_changed_in_one_batch(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let seen = Arc::new(Seen(Default::default()));
    s.set_listener(seen.clone());
    let a = task(None);
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            WriteOp::Insert {
                task: a.clone(),
                payload: Payload::Json(Arc::from(r#"{"n":1}"#)),
                log: vec![LogEntry::system(a.id, 0, "scheduled")],
                event: Some(EventKind::Scheduled),
            },
            change(&a, TaskState::Running, 2, "started"),
            WriteOp::Log(vec![LogEntry::system(a.id, 1, "a line")]),
            change(&a, TaskState::Completed, 3, "completed"),
        ],
        Some(tx),
    );
    let out = rx.await.unwrap().unwrap();
    assert_eq!(out[0], WriteOutcome::Done);
    let (got, payload) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 3));
    assert_eq!(&*payload, r#"{"n":1}"#);
    assert_eq!(
        super::log_messages(s, a.id).await,
        ["scheduled", "started", "a line", "completed"]
    );
    let mine = seen.wait(3, |e| (e.0 == a.id).then_some((e.1, e.2))).await;
    assert_eq!(
        mine,
        [
            (a.rt.seq, EventKind::Scheduled),
            (2, EventKind::Updated),
            (3, EventKind::Updated)
        ]
    );
    assert!(s.load_active().await.unwrap().iter().all(|t| t.id != a.id));
    h.close(o).await;
}

/// A row set aside leaves every active scan (a restart does not load it
/// again); the other writes of its batch are kept.
pub(crate) async fn quarantine_sets_a_row_aside(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let (bad, good) = (task(None), task(None));
    assert_eq!(insert(s, &bad).await, WriteOutcome::Done);
    assert_eq!(insert(s, &good).await, WriteOutcome::Done);
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            WriteOp::Quarantine {
                key: bad.id.as_bytes().to_vec(),
                reason: "unreadable in a test".into(),
            },
            change(&good, TaskState::Running, 7, "started"),
        ],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    let active: Vec<TaskId> = s
        .load_active()
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert!(!active.contains(&bad.id), "{active:?}");
    assert!(active.contains(&good.id), "{active:?}");
    let (g, _) = s.get(good.id).await.unwrap().unwrap();
    assert_eq!((g.rt.state, g.rt.seq), (TaskState::Running, 7));
    h.close(o).await;
}

/// `WriteOp::ReleaseKey`: the old row keeps its history but not the key;
/// an insert after the release in the same group takes it, and later
/// inserts find the new owner. A release of a key the row no longer holds
/// changes nothing.
pub(crate) async fn a_released_key_may_be_taken(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let key = format!("r-{}", TaskId::now_v7());
    let a = task(Some(&key));
    assert_eq!(insert(s, &a).await, WriteOutcome::Done);
    let b = task(Some(&key));
    assert_eq!(insert(s, &b).await, WriteOutcome::Existing(a.id));
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            WriteOp::ReleaseKey {
                id: a.id,
                key: key.clone().into_boxed_str(),
            },
            WriteOp::Insert {
                task: b.clone(),
                payload: Payload::Json(Arc::from("{}")),
                log: vec![LogEntry::system(b.id, 0, "scheduled")],
                event: Some(EventKind::Scheduled),
            },
        ],
        Some(tx),
    );
    assert_eq!(
        rx.await.unwrap().unwrap(),
        vec![WriteOutcome::Done, WriteOutcome::Done]
    );
    let c = task(Some(&key));
    assert_eq!(insert(s, &c).await, WriteOutcome::Existing(b.id));
    // The old row is still there, its spec with its key.
    let (old, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!(old.spec.idempotency_key.as_deref(), Some(key.as_str()));
    // Releasing it again (it no longer holds the key) leaves B's alone.
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![WriteOp::ReleaseKey {
            id: a.id,
            key: key.clone().into_boxed_str(),
        }],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    assert_eq!(
        insert(s, &task(Some(&key))).await,
        WriteOutcome::Existing(b.id)
    );
    h.close(o).await;
}

pub(crate) async fn insert_get_update_and_idempotency(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let a = task(Some(&format!("k-{}", TaskId::now_v7())));
    assert_eq!(insert(s, &a).await, WriteOutcome::Done);
    let b = task(a.spec.idempotency_key.as_deref());
    assert_eq!(insert(s, &b).await, WriteOutcome::Existing(a.id));
    // Two new tasks with one new key in one group: the first wins.
    let c = task(Some(&format!("k-{}", TaskId::now_v7())));
    let d = task(c.spec.idempotency_key.as_deref());
    let (tx, rx) = oneshot::channel();
    let ins = |t: &Task| WriteOp::Insert {
        task: t.clone(),
        payload: Payload::Json(Arc::from("{\"n\":1}")),
        log: vec![LogEntry::system(t.id, 0, "scheduled")],
        event: Some(EventKind::Scheduled),
    };
    s.submit(vec![ins(&c), ins(&d)], Some(tx));
    assert_eq!(
        rx.await.unwrap().unwrap(),
        vec![WriteOutcome::Done, WriteOutcome::Existing(c.id)]
    );
    assert!(s.get(d.id).await.unwrap().is_none());
    assert!(s.logs(d.id, 0, 10).await.unwrap().is_empty());
    // A copy of another task's payload.
    let e = task(None);
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![WriteOp::Insert {
            task: e.clone(),
            payload: Payload::CopyOf(c.id),
            log: vec![],
            event: None,
        }],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    assert_eq!(s.payload(e.id).await.unwrap().as_deref(), Some("{\"n\":1}"));
    let mut a2 = a.clone();
    a2.rt.state = TaskState::Completed;
    a2.rt.seq = 7;
    s.submit(
        vec![WriteOp::Update {
            task: a2.clone(),
            log: vec![],
            event: None,
        }],
        None,
    );
    s.flush().await.unwrap();
    let (got, payload) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!(got.rt.state, TaskState::Completed);
    assert_eq!(got.spec.name, a.spec.name);
    assert_eq!(&*payload, "{}");
    assert!(s.get(b.id).await.unwrap().is_none());
    assert_eq!(s.max_seq().await.unwrap(), 7);
    let active: Vec<TaskId> = s
        .load_active()
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert!(!active.contains(&a.id));
    assert!(active.contains(&c.id));
    let logs = s.logs(a.id, 0, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(s.logs(a.id, logs[0].line, 10).await.unwrap().len(), 0);
    h.close(o).await;
}

/// A task whose first line is derived (`TaskSpec::first_line_derived`)
/// stores none: its log reads "scheduled (TYPE)" at its creation time,
/// numbered 1, then the stored lines, which a fresh store numbers from 2;
/// pages split anywhere. A task without the flag reads its stored lines
/// alone (rows of earlier versions).
pub(crate) async fn a_derived_first_line_comes_first_and_pages(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let mut a = task(None);
    Arc::make_mut(&mut a.spec).first_line_derived = true;
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            WriteOp::Insert {
                task: a.clone(),
                payload: Payload::Json(Arc::from("{}")),
                log: Vec::new(),
                event: Some(EventKind::Scheduled),
            },
            update(&a, TaskState::Running, 2),
        ],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    assert_eq!(
        s.logs(a.id, 0, 10).await.unwrap().len(),
        1,
        "one stored line"
    );
    let (stored, _) = s.get(a.id).await.unwrap().unwrap();
    assert!(stored.spec.first_line_derived, "the flag is stored");
    let read = |after, limit| {
        let stored = stored.clone();
        async move { super::task_logs(s, &stored, after, limit).await.unwrap() }
    };
    let all = read(0, 10).await;
    let msgs: Vec<(u64, &str)> = all.iter().map(|l| (l.line, l.message.as_str())).collect();
    assert_eq!(msgs[0], (1, "scheduled (SIMPLE)"));
    assert_eq!(msgs[1].1, "seq 2");
    assert!(
        msgs[1].0 >= 2,
        "a fresh store numbers its lines from 2: {msgs:?}"
    );
    assert_eq!(all.len(), 2);
    assert_eq!((all[0].time, all[0].attempt), (a.created_at, 0));
    assert_eq!(all[0].source, crate::domain::LogSource::System);
    // Pages of one line: the derived line, then the stored one, then none.
    assert_eq!(read(0, 1).await, all[..1]);
    assert_eq!(read(1, 1).await, all[1..]);
    assert!(read(all[1].line, 1).await.is_empty());
    assert!(read(0, 0).await.is_empty());
    // Without the flag: the stored lines only.
    let b = task(None);
    insert(s, &b).await;
    let (b, _) = s.get(b.id).await.unwrap().unwrap();
    let lines = super::task_logs(s, &b, 0, 10).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].message, "scheduled");
    assert!(lines[0].line >= 2);
    h.close(o).await;
}

pub(crate) async fn an_update_of_a_missing_task_publishes_nothing(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let seen = Arc::new(Seen(parking_lot::Mutex::new(Vec::new())));
    s.set_listener(seen.clone());
    let mut ghost = task(None);
    ghost.rt.state = TaskState::Running;
    ghost.rt.seq = 3;
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![WriteOp::Update {
            task: ghost.clone(),
            log: vec![LogEntry::system(ghost.id, 1, "attempt 1 started")],
            event: Some(EventKind::Started),
        }],
        Some(tx),
    );
    assert_eq!(rx.await.unwrap().unwrap(), vec![WriteOutcome::Done]);
    assert!(seen.0.lock().is_empty());
    assert!(s.get(ghost.id).await.unwrap().is_none());
    assert!(s.logs(ghost.id, 0, 10).await.unwrap().is_empty());
    // A real task's update in the same way is published.
    let real = task(None);
    insert(s, &real).await;
    let mut r2 = real.clone();
    r2.rt.state = TaskState::Running;
    r2.rt.seq = 4;
    s.submit(
        vec![WriteOp::Update {
            task: r2,
            log: vec![],
            event: Some(EventKind::Started),
        }],
        None,
    );
    s.flush().await.unwrap();
    let kinds: Vec<_> = seen.0.lock().iter().map(|e| (e.0, e.2)).collect();
    assert_eq!(
        kinds,
        vec![
            (real.id, EventKind::Scheduled),
            (real.id, EventKind::Started)
        ]
    );
    h.close(o).await;
}

pub(crate) async fn writes_of_one_task_in_a_batch_are_coalesced(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let seen = Arc::new(Seen(Default::default()));
    s.set_listener(seen.clone());
    let a = task(None);
    let other = task(None);
    assert_eq!(insert(s, &a).await, WriteOutcome::Done);
    assert_eq!(insert(s, &other).await, WriteOutcome::Done);
    // One group: a's two updates around an update of another task, and
    // a log line; then a second group in the same batch finishes a.
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            change(&a, TaskState::Running, 10, "started"),
            change(&other, TaskState::Running, 11, "other started"),
            WriteOp::Log(vec![LogEntry::system(a.id, 1, "a line")]),
            change(&a, TaskState::Running, 12, "progress"),
        ],
        None,
    );
    s.submit(
        vec![change(&a, TaskState::Completed, 13, "completed")],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    let (got, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
    let (o2, _) = s.get(other.id).await.unwrap().unwrap();
    assert_eq!((o2.rt.state, o2.rt.seq), (TaskState::Running, 11));
    let lines = super::log_messages(s, a.id).await;
    assert_eq!(
        lines,
        ["scheduled", "started", "a line", "progress", "completed"]
    );
    // The listener hears of a commit just after its callers do.
    let updates = seen
        .wait(3, |e| {
            (e.0 == a.id && e.2 == EventKind::Updated).then_some((e.1, e.3))
        })
        .await;
    assert_eq!(
        updates,
        [
            (10, TaskState::Running),
            (12, TaskState::Running),
            (13, TaskState::Completed)
        ]
    );
    // The first group alone supersedes a's first update; if both groups
    // shared a batch (the writer was busy), the second too.
    if let Some(skipped) = (o.coalesced)() {
        assert!((1..=2).contains(&skipped), "{skipped}");
    }
    // And what was committed survives a reopen.
    h.close(o).await;
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let (got, _) = o.store.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
    h.close(o).await;
}

/// A lazy write does not start a commit: it rides on the next write
/// that does, in submission order, in the same transaction.
pub(crate) async fn a_lazy_write_rides_on_the_next_commit(h: &dyn Harness) {
    let o = h.open(Duration::from_secs(30)).await;
    let s = &*o.store;
    let a = task(None);
    insert(s, &a).await;
    let commits = (o.commits)();
    s.submit_lazy(vec![update(&a, TaskState::Running, 5)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!((o.commits)(), commits);
    assert_eq!(
        s.get(a.id).await.unwrap().unwrap().0.rt.state,
        TaskState::Pending
    );
    // An eager write after it: one commit holds both, the later wins.
    let (tx, rx) = oneshot::channel();
    s.submit(vec![update(&a, TaskState::Completed, 6)], Some(tx));
    rx.await.unwrap().unwrap();
    assert_eq!((o.commits)(), commits + 1);
    let (got, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 6));
    let logs = super::log_messages(s, a.id).await;
    assert_eq!(logs, ["scheduled", "seq 5", "seq 6"]);
    h.close(o).await;
}

/// With nothing to ride on, a lazy write is committed on its own once
/// `lazy_within` has passed, and no sooner.
pub(crate) async fn a_lazy_write_alone_commits_within_its_bound(h: &dyn Harness) {
    let within = Duration::from_millis(200);
    let o = h.open(within).await;
    let s = &*o.store;
    let a = task(None);
    insert(s, &a).await;
    let t0 = Instant::now();
    s.submit_lazy(vec![update(&a, TaskState::Running, 5)]);
    loop {
        if s.get(a.id).await.unwrap().unwrap().0.rt.state == TaskState::Running {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never committed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(t0.elapsed() >= within, "committed after {:?}", t0.elapsed());
    h.close(o).await;
}

/// Every filter field selects what it says, lists page by id, counts and
/// `changed_since` agree.
pub(crate) async fn filters_lists_counts_and_changes(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let base = s.max_seq().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let mut t = task(None);
        let mut spec = (*t.spec).clone();
        spec.name = format!("contract-{}", i % 2);
        spec.user_id = Some(format!("user-{}", base));
        t.spec = Arc::new(spec);
        t.rt.seq = base + 1 + i;
        insert(s, &t).await;
        ids.push(t.id);
    }
    let user = format!("user-{}", base);
    let q = |f: TaskFilter, limit, before| ListQuery {
        filter: f,
        limit,
        before,
    };
    let by_user = TaskFilter {
        user_id: Some(user.clone()),
        ..Default::default()
    };
    let all = s.list(q(by_user.clone(), 10, None)).await.unwrap();
    let listed: Vec<TaskId> = all.iter().map(|t| t.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let page = s.list(q(by_user.clone(), 2, Some(ids[3]))).await.unwrap();
    assert_eq!(
        page.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let named = s
        .list(q(
            TaskFilter {
                user_id: Some(user.clone()),
                names: vec!["contract-1".into()],
                states: vec![TaskState::Pending],
                task_ids: vec![ids[1], ids[2], ids[3]],
                ..Default::default()
            },
            10,
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        named.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[3], ids[1]]
    );
    let none = s
        .list(q(
            TaskFilter {
                user_id: Some(user.clone()),
                states: vec![TaskState::Completed],
                ..Default::default()
            },
            10,
            None,
        ))
        .await
        .unwrap();
    assert!(none.is_empty());
    let changed = s
        .changed_since(base + 1, base + 4, by_user, 10)
        .await
        .unwrap();
    assert_eq!(
        changed.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids[1..4].to_vec()
    );
    let counts = s.counts().await.unwrap();
    let n: u64 = counts
        .iter()
        .filter(|c| c.1.starts_with("contract-") && c.2 == TaskState::Pending)
        .map(|c| c.3)
        .sum();
    assert!(n >= 5, "{counts:?}");
    let finals = s.final_counts().await.unwrap();
    assert!(finals.iter().all(|c| c.2.is_final()));
    h.close(o).await;
}

/// Retention: a task whose removal time has come is listed with its
/// workflow steps, oldest first, and not one that is active or still has
/// time; removing them takes their rows, logs and ended counts. The rows
/// are stamped through both paths (an update that ends a task, an insert
/// of an ended task).
pub(crate) async fn ended_tasks_are_removed_when_due(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let base = s.max_seq().await.unwrap();
    let now = now_micros();
    let named = |name: &str, keep: Option<Duration>| {
        let mut t = task(None);
        let mut spec = (*t.spec).clone();
        spec.name = name.into();
        spec.retention = keep.map(|k| {
            Box::new(Retention {
                completed: Some(k),
                ..Default::default()
            })
        });
        t.spec = Arc::new(spec);
        t
    };
    let ended = |t: &Task, seq: u64, at: i64| {
        let mut t = t.clone();
        t.rt.state = TaskState::Completed;
        t.rt.finished_at = Some(at);
        t.rt.seq = seq;
        t
    };
    let submit = |ops: Vec<WriteOp>| {
        let (tx, rx) = oneshot::channel();
        s.submit(ops, Some(tx));
        rx
    };
    // A workflow that ended 10 s ago, kept 1 s: due. Its step goes with it.
    let mut wf = named("ret-wf", Some(Duration::from_secs(1)));
    let mut spec = (*wf.spec).clone();
    spec.task_type = TaskType::Complex;
    wf.spec = Arc::new(spec);
    insert(s, &wf).await;
    let mut step = named("ret-step", Some(Duration::ZERO));
    let mut spec = (*step.spec).clone();
    spec.parent_id = Some(wf.id);
    step.spec = Arc::new(spec);
    let step = ended(&step, base + 1, now - 10_000_000);
    insert(s, &step).await;
    let done = ended(&wf, base + 2, now - 10_000_000);
    submit(vec![WriteOp::Update {
        task: done,
        log: vec![LogEntry::system(wf.id, 1, "completed")],
        event: Some(EventKind::Completed),
    }])
    .await
    .unwrap()
    .unwrap();
    // Ended, kept an hour: not due. Active: never listed.
    let kept = ended(
        &named("ret-kept", Some(Duration::from_secs(3600))),
        base + 3,
        now,
    );
    insert(s, &kept).await;
    let kept2 = ended(
        &named("ret-kept", Some(Duration::from_secs(3600))),
        base + 4,
        now,
    );
    insert(s, &kept2).await;
    let active = named("ret-active", Some(Duration::ZERO));
    insert(s, &active).await;

    let count = |finals: &crate::store::Counts, name: &str| -> u64 {
        finals
            .iter()
            .filter(|c| c.1 == name && c.2 == TaskState::Completed)
            .map(|c| c.3)
            .sum()
    };
    let finals = s.final_counts().await.unwrap();
    assert_eq!(count(&finals, "ret-wf"), 1, "{finals:?}");
    assert_eq!(count(&finals, "ret-step"), 1, "{finals:?}");
    assert_eq!(count(&finals, "ret-kept"), 2, "{finals:?}");

    let due = s.due_for_removal(now_micros(), 10).await.unwrap();
    assert_eq!(
        due.iter()
            .map(|e| (e.id, e.name.as_str(), e.state))
            .collect::<Vec<_>>(),
        vec![
            (wf.id, "ret-wf", TaskState::Completed),
            (step.id, "ret-step", TaskState::Completed)
        ]
    );
    // Nothing is due yet a minute earlier.
    assert!(s
        .due_for_removal(now - 60_000_000, 10)
        .await
        .unwrap()
        .is_empty());
    // The oldest ended of a name, in the order they ended.
    let oldest = s
        .oldest_ended(TaskState::Completed, "ret-kept", 1)
        .await
        .unwrap();
    assert_eq!(
        oldest.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![kept.id]
    );

    submit(vec![WriteOp::Remove(due.iter().map(|e| e.id).collect())])
        .await
        .unwrap()
        .unwrap();
    assert!(s.get(wf.id).await.unwrap().is_none());
    assert!(s.get(step.id).await.unwrap().is_none());
    assert!(s.logs(wf.id, 0, 10).await.unwrap().is_empty());
    assert!(s.get(kept.id).await.unwrap().is_some());
    assert!(s.get(active.id).await.unwrap().is_some());
    assert!(s
        .due_for_removal(now_micros(), 10)
        .await
        .unwrap()
        .is_empty());
    let finals = s.final_counts().await.unwrap();
    assert_eq!(count(&finals, "ret-wf"), 0, "{finals:?}");
    assert_eq!(count(&finals, "ret-step"), 0, "{finals:?}");
    assert_eq!(count(&finals, "ret-kept"), 2, "{finals:?}");
    h.close(o).await;
}

/// A task that failed is listed by its error's kind (the column follows
/// the runtime through an update); run again (`RetryTask`: the row goes
/// back to PENDING, keeping its last error), it leaves the ended counts
/// and is no longer due for removal, and the kind still selects it.
pub(crate) async fn a_rerun_leaves_the_ended_set(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let base = s.max_seq().await.unwrap();
    let name = format!("rerun-{base}");
    let kind = format!("kind-{base}");
    let mut t = task(None);
    let mut spec = (*t.spec).clone();
    spec.name = name.clone();
    spec.retention = Some(Box::new(Retention {
        failed: Some(Duration::from_secs(1)),
        ..Default::default()
    }));
    t.spec = Arc::new(spec);
    t.rt.seq = base + 1;
    insert(s, &t).await;
    let update = |t: &Task| {
        let (tx, rx) = oneshot::channel();
        s.submit(
            vec![WriteOp::Update {
                task: t.clone(),
                log: vec![],
                event: Some(EventKind::Updated),
            }],
            Some(tx),
        );
        rx
    };
    let mut failed = t.clone();
    failed.rt.state = TaskState::Failed;
    failed.rt.finished_at = Some(now_micros() - 10_000_000);
    failed.rt.seq = base + 2;
    failed.rt.last_error = Some(Box::new(crate::domain::TaskError {
        message: "too slow".into(),
        kind: kind.clone(),
        ..Default::default()
    }));
    update(&failed).await.unwrap().unwrap();
    let by_kind = |states: Vec<TaskState>| ListQuery {
        filter: TaskFilter {
            error_kind: Some(kind.clone()),
            states,
            ..Default::default()
        },
        limit: 10,
        before: None,
    };
    let ids = |v: Vec<Task>| v.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list(by_kind(vec![])).await.unwrap()), vec![t.id]);
    assert_eq!(
        ids(s.list(by_kind(vec![TaskState::Failed])).await.unwrap()),
        vec![t.id]
    );
    let ended = |finals: &crate::store::Counts| -> u64 {
        finals
            .iter()
            .filter(|c| c.1 == name && c.2 == TaskState::Failed)
            .map(|c| c.3)
            .sum()
    };
    assert_eq!(ended(&s.final_counts().await.unwrap()), 1);
    assert!(s
        .due_for_removal(now_micros(), 1000)
        .await
        .unwrap()
        .iter()
        .any(|e| e.id == t.id));

    let mut again = failed.clone();
    again.rt.state = TaskState::Pending;
    again.rt.finished_at = None;
    again.rt.attempt = 0;
    again.rt.run = 1;
    again.rt.seq = base + 3;
    update(&again).await.unwrap().unwrap();
    assert_eq!(ended(&s.final_counts().await.unwrap()), 0);
    assert!(!s
        .due_for_removal(now_micros(), 1000)
        .await
        .unwrap()
        .iter()
        .any(|e| e.id == t.id));
    assert!(s
        .list(by_kind(vec![TaskState::Failed]))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(ids(s.list(by_kind(vec![])).await.unwrap()), vec![t.id]);
    let (back, _) = s.get(t.id).await.unwrap().expect("the row");
    assert_eq!((back.rt.state, back.rt.run), (TaskState::Pending, 1));
    h.close(o).await;
}

/// Removing writes queued together ride on consecutive commits, a slice
/// each ([`super::batch`]): a sweep's removals never pile into one commit
/// that would hold the writes behind it.
pub(crate) async fn removals_ride_in_slices(h: &dyn Harness) {
    let o = h.open(Duration::from_millis(300)).await;
    let s = &*o.store;
    let per = super::batch::REMOVE_SLICE / 2 + 1;
    let mut ids = Vec::new();
    let mut ops = Vec::new();
    for _ in 0..3 * per {
        let mut t = task(None);
        t.rt.state = TaskState::Completed;
        t.rt.finished_at = Some(now_micros());
        ids.push(t.id);
        ops.push(WriteOp::Insert {
            task: t,
            payload: Payload::Json(Arc::from("{}")),
            log: vec![LogEntry::system(ids[ids.len() - 1], 0, "ended")],
            event: None,
        });
    }
    let (tx, rx) = oneshot::channel();
    s.submit(ops, Some(tx));
    rx.await.unwrap().unwrap();
    let before = (o.commits)();
    // A lazy write first: the writer waits for company (up to 300 ms), and
    // the removals queue meanwhile.
    s.submit_lazy(vec![WriteOp::Log(vec![LogEntry::system(
        ids[0], 1, "lazy",
    )])]);
    let waits: Vec<_> = ids
        .chunks(per)
        .map(|c| {
            let (tx, rx) = oneshot::channel();
            s.submit(vec![WriteOp::Remove(c.to_vec())], Some(tx));
            rx
        })
        .collect();
    for w in waits {
        w.await.unwrap().unwrap();
    }
    // Two removals of more than half a slice never share a commit.
    let commits = (o.commits)() - before;
    assert!(commits >= 3, "three removing writes in {commits} commit(s)");
    for id in ids {
        assert!(s.get(id).await.unwrap().is_none());
    }
    h.close(o).await;
}

/// A removal takes only a row that is still ended: a write queued after
/// it (a retry that runs the task again) may commit first, and then the
/// task stays, with its log.
pub(crate) async fn a_removal_spares_a_task_run_again(h: &dyn Harness) {
    let o = h.open(super::LAZY_COMMIT_WITHIN).await;
    let s = &*o.store;
    let t = task(None);
    insert(s, &t).await;
    let mut ended = t.clone();
    ended.rt.state = TaskState::Failed;
    ended.rt.finished_at = Some(now_micros());
    let base = s.max_seq().await.unwrap();
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![change(&ended, TaskState::Failed, base + 1, "failed")],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    // Run again, and the removal listed before it, in one group: the
    // update comes first.
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            change(&t, TaskState::Pending, base + 2, "retried"),
            WriteOp::Remove(vec![t.id]),
        ],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    let (back, _) = s.get(t.id).await.unwrap().expect("the task stays");
    assert_eq!(back.rt.state, TaskState::Pending);
    let logs = s.logs(t.id, 0, 100).await.unwrap();
    assert!(logs.iter().any(|l| l.message == "retried"), "{logs:?}");
    h.close(o).await;
}

/// The filters a page of `ListTasks` (and the admin routes, the dashboard
/// and a watch's snapshot, which page through the same query) can combine,
/// one case each, in namespace `default` as every caller of it sends them
/// (`Principal::narrow`), and a namespace of its own with and without
/// another filter.
pub(crate) fn filter_cases() -> Vec<(&'static str, TaskFilter)> {
    let mut cases = filters_of_one_namespace();
    for (_, f) in cases.iter_mut() {
        f.namespace = Some(crate::domain::namespace::DEFAULT.into());
    }
    let acme = || Some("acme".to_string());
    cases.push((
        "namespace",
        TaskFilter {
            namespace: acme(),
            ..Default::default()
        },
    ));
    cases.push((
        "namespace and states",
        TaskFilter {
            namespace: acme(),
            states: vec![TaskState::Pending],
            ..Default::default()
        },
    ));
    cases
}

fn filters_of_one_namespace() -> Vec<(&'static str, TaskFilter)> {
    let f = TaskFilter::default;
    vec![
        ("none", f()),
        (
            "user",
            TaskFilter {
                user_id: Some("u".into()),
                ..f()
            },
        ),
        (
            "session",
            TaskFilter {
                session_id: Some("s".into()),
                ..f()
            },
        ),
        (
            "schedule",
            TaskFilter {
                schedule_id: Some("nightly".into()),
                ..f()
            },
        ),
        (
            "schedule and states",
            TaskFilter {
                schedule_id: Some("nightly".into()),
                states: vec![TaskState::Failed, TaskState::Cancelled],
                ..f()
            },
        ),
        (
            "error kind",
            TaskFilter {
                error_kind: Some("timeout".into()),
                ..f()
            },
        ),
        (
            "error kind and states",
            TaskFilter {
                error_kind: Some("timeout".into()),
                states: vec![TaskState::Failed, TaskState::Cancelled],
                ..f()
            },
        ),
        (
            "ids",
            TaskFilter {
                task_ids: vec![TaskId::now_v7(), TaskId::now_v7()],
                ..f()
            },
        ),
        (
            "one name",
            TaskFilter {
                names: vec!["a".into()],
                ..f()
            },
        ),
        (
            "two names",
            TaskFilter {
                names: vec!["a".into(), "b".into()],
                ..f()
            },
        ),
        (
            "one type",
            TaskFilter {
                task_types: vec![TaskType::Integration],
                ..f()
            },
        ),
        (
            "two types",
            TaskFilter {
                task_types: vec![TaskType::Simple, TaskType::Complex],
                ..f()
            },
        ),
        (
            "one state",
            TaskFilter {
                states: vec![TaskState::Pending],
                ..f()
            },
        ),
        (
            "three states",
            TaskFilter {
                states: vec![
                    TaskState::Pending,
                    TaskState::Running,
                    TaskState::Compensating,
                ],
                ..f()
            },
        ),
        (
            "one source",
            TaskFilter {
                sources: vec![Source::Bullmq],
                ..f()
            },
        ),
        (
            "two sources",
            TaskFilter {
                sources: vec![Source::Bullmq, Source::Temporal],
                ..f()
            },
        ),
        (
            "state and name",
            TaskFilter {
                states: vec![TaskState::Failed],
                names: vec!["a".into()],
                ..f()
            },
        ),
        (
            "state and type",
            TaskFilter {
                states: vec![TaskState::Failed, TaskState::Cancelled],
                task_types: vec![TaskType::Simple],
                ..f()
            },
        ),
    ]
}

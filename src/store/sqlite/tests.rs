//! The SQLite store's unit tests.

use super::*;
use crate::domain::{EventKind, Source, WaitingReason};

fn task(key: Option<&str>) -> Task {
    Task {
        id: TaskId::now_v7(),
        created_at: now_micros(),
        spec: Arc::new(TaskSpec::test_simple("t", key)),
        rt: TaskRuntime::new_pending(0, Source::Embedded, WaitingReason::Queued),
    }
}

async fn insert(s: &SqliteStore, t: &Task) -> WriteOutcome {
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

#[tokio::test]
async fn insert_get_update_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(SqliteOptions {
        path: Some(dir.path().join("t.db")),
        ..Default::default()
    })
    .unwrap();
    let a = task(Some("k"));
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    let b = task(Some("k"));
    assert_eq!(insert(&s, &b).await, WriteOutcome::Existing(a.id));
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
    assert_eq!(&*payload, "{}");
    assert!(s.get(b.id).await.unwrap().is_none());
    assert_eq!(s.max_seq().await.unwrap(), 7);
    assert!(s.load_active().await.unwrap().is_empty());
    let logs = s.logs(a.id, 0, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    let listed = s
        .list(ListQuery {
            filter: TaskFilter {
                user_id: Some("u1".into()),
                ..Default::default()
            },
            limit: 10,
            before: None,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let changed = s
        .changed_since(0, 100, TaskFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
}

/// An update of a task the store has no row for (its insert failed)
/// changes nothing, logs nothing and publishes nothing.
#[tokio::test]
async fn an_update_of_a_missing_task_publishes_nothing() {
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
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
    insert(&s, &real).await;
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
}

/// Collects published events.
struct Seen(parking_lot::Mutex<Vec<(TaskId, u64, EventKind, TaskState)>>);
impl CommitListener for Seen {
    fn committed(&self, events: Vec<Arc<TaskEvent>>) {
        let mut v = self.0.lock();
        for e in events {
            v.push((e.task.id, e.seq, e.kind, e.task.rt.state));
        }
    }
}

#[tokio::test]
async fn writes_of_one_task_in_a_batch_are_coalesced_but_logs_and_events_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    let seen = Arc::new(Seen(Default::default()));
    s.set_listener(seen.clone());
    let a = task(None);
    let other = task(None);
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    assert_eq!(insert(&s, &other).await, WriteOutcome::Done);
    let step = |t: &Task, state, seq: u64, msg: &str| {
        let mut t = t.clone();
        t.rt.state = state;
        t.rt.seq = seq;
        WriteOp::Update {
            log: vec![LogEntry::system(t.id, 1, msg)],
            task: t,
            event: Some(EventKind::Updated),
        }
    };
    // One group: a's two updates around an update of another task, and
    // a log line; then a second group in the same batch finishes a.
    let (tx, rx) = oneshot::channel();
    s.submit(
        vec![
            step(&a, TaskState::Running, 10, "started"),
            step(&other, TaskState::Running, 11, "other started"),
            WriteOp::Log(vec![LogEntry::system(a.id, 1, "a line")]),
            step(&a, TaskState::Running, 12, "progress"),
        ],
        None,
    );
    s.submit(
        vec![step(&a, TaskState::Completed, 13, "completed")],
        Some(tx),
    );
    rx.await.unwrap().unwrap();
    let (got, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
    let (o, _) = s.get(other.id).await.unwrap().unwrap();
    assert_eq!((o.rt.state, o.rt.seq), (TaskState::Running, 11));
    let lines = crate::store::log_messages(&*s, a.id).await;
    assert_eq!(
        lines,
        ["scheduled", "started", "a line", "progress", "completed"]
    );
    // The listener hears of a commit just after its callers do.
    let updates = || -> Vec<(u64, TaskState)> {
        seen.0
            .lock()
            .iter()
            .filter(|e| e.0 == a.id && e.2 == EventKind::Updated)
            .map(|e| (e.1, e.3))
            .collect()
    };
    for _ in 0..100 {
        if updates().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ev = updates();
    assert_eq!(
        ev,
        [
            (10, TaskState::Running),
            (12, TaskState::Running),
            (13, TaskState::Completed)
        ]
    );
    // The first group alone supersedes a's first update; if both groups
    // shared a batch (the writer was busy), the second too.
    let skipped = s.stats.coalesced.load(Ordering::Relaxed);
    assert!((1..=2).contains(&skipped), "{skipped}");
    // And what was committed survives a reopen.
    s.close();
    drop(s);
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path),
        ..Default::default()
    })
    .unwrap();
    let (got, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 13));
}

/// Under writes that never pause (the writer is never idle between
/// commits), the WAL still starts over: it stays near its restart
/// threshold while several times as much is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_writes_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        synchronous: Synchronous::Normal,
        max_batch: 64,
        ..Default::default()
    })
    .unwrap();
    let big = Arc::<str>::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)));
    // About 40,000 pages (160 MB): twenty times the restart threshold.
    let n = 40_000;
    for _ in 0..n {
        s.submit(
            vec![WriteOp::Insert {
                task: task(None),
                payload: Payload::Json(big.clone()),
                log: vec![],
                event: None,
            }],
            None,
        );
    }
    let mut largest = 0;
    loop {
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        if s.stats.ops.load(Ordering::Relaxed) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.flush().await.unwrap();
    s.close();
    drop(s);
    let db = std::fs::metadata(&path).unwrap().len();
    assert!(db > 128 << 20, "only {db} bytes were written");
    // The high-water mark is the threshold plus what the writer added
    // before the checkpointer's next look and the RESTART's turn.
    assert!(
        largest < db / 2,
        "WAL reached {largest} bytes for {db} bytes written"
    );
}

#[tokio::test]
async fn the_checkpointer_thread_keeps_the_wal_short_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let wal = dir.path().join("t.db-wal");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        synchronous: Synchronous::Normal,
        ..Default::default()
    })
    .unwrap();
    // About 2,000 pages of WAL: twice SQLite's own checkpoint interval,
    // which the writer no longer runs.
    let big = Arc::<str>::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)));
    let mut ids = Vec::new();
    for _ in 0..4 {
        for _ in 0..1000 {
            let t = task(None);
            ids.push(t.id);
            s.submit(
                vec![WriteOp::Insert {
                    task: t,
                    payload: Payload::Json(big.clone()),
                    log: vec![],
                    event: None,
                }],
                None,
            );
        }
        let (tx, rx) = oneshot::channel();
        s.submit(vec![WriteOp::Log(vec![])], Some(tx));
        rx.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.stats.checkpoints.load(Ordering::Relaxed) > 0);
    // Each checkpoint let the writer start the log over: the WAL never
    // held everything written (~8,000 pages, 32 MB).
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    assert!(wal_len < 24 << 20, "WAL is {wal_len} bytes");
    s.close();
    drop(s);
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path),
        ..Default::default()
    })
    .unwrap();
    for id in [ids[0], ids[1999], ids[3999]] {
        assert!(s.get(id).await.unwrap().is_some());
        assert_eq!(s.payload(id).await.unwrap().as_deref(), Some(&*big));
    }
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

/// A lazy write does not start a commit: it rides on the next write
/// that does, in submission order, in the same transaction.
#[tokio::test]
async fn a_lazy_write_rides_on_the_next_commit() {
    let s = SqliteStore::open(SqliteOptions {
        lazy_within: Duration::from_secs(30),
        ..Default::default()
    })
    .unwrap();
    let a = task(None);
    insert(&s, &a).await;
    let commits = s.stats.commits.load(Ordering::Relaxed);
    s.submit_lazy(vec![update(&a, TaskState::Running, 5)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.stats.commits.load(Ordering::Relaxed), commits);
    assert_eq!(
        s.get(a.id).await.unwrap().unwrap().0.rt.state,
        TaskState::Pending
    );
    // An eager write after it: one commit holds both, the later wins.
    let (tx, rx) = oneshot::channel();
    s.submit(vec![update(&a, TaskState::Completed, 6)], Some(tx));
    rx.await.unwrap().unwrap();
    assert_eq!(s.stats.commits.load(Ordering::Relaxed), commits + 1);
    let (got, _) = s.get(a.id).await.unwrap().unwrap();
    assert_eq!((got.rt.state, got.rt.seq), (TaskState::Completed, 6));
    let logs = crate::store::log_messages(&*s, a.id).await;
    assert_eq!(logs, ["scheduled", "seq 5", "seq 6"]);
}

/// With nothing to ride on, a lazy write is committed on its own once
/// `lazy_within` has passed, and no sooner.
#[tokio::test]
async fn a_lazy_write_alone_commits_within_its_bound() {
    let within = Duration::from_millis(200);
    let s = SqliteStore::open(SqliteOptions {
        lazy_within: within,
        ..Default::default()
    })
    .unwrap();
    let a = task(None);
    insert(&s, &a).await;
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
}

#[tokio::test]
async fn memory_mode_works() {
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
    let a = task(None);
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    assert_eq!(s.load_active().await.unwrap().len(), 1);
    assert_eq!(s.counts().await.unwrap()[0].3, 1);
}

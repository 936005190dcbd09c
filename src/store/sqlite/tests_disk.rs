//! The SQLite store against its disk: a long reader (a backup) while
//! commits go on, and commits that cannot be written for want of space.

use super::*;
use crate::store::contract::task;

fn insert_op(t: &Task) -> WriteOp {
    WriteOp::Insert {
        task: t.clone(),
        payload: Payload::Json(Arc::from("{\"pad\":\"0123456789abcdef\"}")),
        log: vec![LogEntry::system(t.id, 0, "scheduled")],
        event: None,
    }
}

async fn commit(s: &SqliteStore, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, Arc<StoreError>> {
    let (tx, rx) = oneshot::channel();
    s.submit(ops, Some(tx));
    rx.await.map_err(|_| Arc::new(StoreError::Closed))?
}

/// A reader that keeps one snapshot open for 2 s (as `switchyard backup`
/// does while it copies) does not hold up commits, even while the WAL
/// restart is wanted before every one of them: the restart gives way
/// instead of waiting for the reader (the busy timeout is 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_its_snapshot_does_not_hold_up_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(SqliteOptions {
        path: Some(path.clone()),
        ..Default::default()
    })
    .unwrap();
    for _ in 0..20 {
        commit(&s, vec![insert_op(&task(None))]).await.unwrap();
    }
    // The backup's reader: a read-only connection inside one read
    // transaction.
    let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    // One more commit, so the reader's snapshot is an older one.
    commit(&s, vec![insert_op(&task(None))]).await.unwrap();
    // The premise: while the reader holds its snapshot, the WAL cannot
    // start over (a RESTART that does not wait says busy).
    let probe = Connection::open(&path).unwrap();
    probe.busy_timeout(Duration::ZERO).unwrap();
    let busy: i64 = probe
        .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        busy, 1,
        "the reader does not pin the WAL: the test tests nothing"
    );
    drop(probe);

    let held = Instant::now();
    let mut commits = 0u32;
    let mut longest = Duration::ZERO;
    while held.elapsed() < Duration::from_secs(2) {
        s.restart_wanted.store(true, Ordering::Release);
        let t0 = Instant::now();
        commit(&s, vec![insert_op(&task(None))]).await.unwrap();
        longest = longest.max(t0.elapsed());
        commits += 1;
    }
    // Still the same snapshot.
    let again: i64 = reader
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(again, before);
    reader.execute_batch("COMMIT").unwrap();
    let deferred = s.stats.restarts_deferred.load(Ordering::Relaxed);
    assert!(
        deferred > 0,
        "no restart was attempted while the reader held on"
    );
    assert!(
        longest < Duration::from_secs(1),
        "a commit waited {longest:?} behind the reader ({commits} commits)"
    );
    assert!(
        commits >= 50,
        "only {commits} commits in 2 s (longest {longest:?})"
    );
    // Once the reader is gone, the next restart goes through.
    let restarts = s.stats.restarts.load(Ordering::Relaxed);
    s.restart_wanted.store(true, Ordering::Release);
    commit(&s, vec![insert_op(&task(None))]).await.unwrap();
    let mut n = 0;
    while s.stats.restarts.load(Ordering::Relaxed) == restarts && n < 100 {
        // The checkpointer's PASSIVE may hold the log at that moment: ask
        // again.
        s.restart_wanted.store(true, Ordering::Release);
        commit(&s, vec![insert_op(&task(None))]).await.unwrap();
        n += 1;
    }
    assert!(s.stats.restarts.load(Ordering::Relaxed) > restarts);
}

/// Records the sequence numbers of published events.
#[derive(Default)]
struct Seqs(Mutex<Vec<u64>>);

impl CommitListener for Seqs {
    fn committed(&self, events: Vec<Arc<TaskEvent>>) {
        self.0.lock().extend(events.iter().map(|e| e.seq));
    }
}

fn set_max_pages(c: &Connection, n: i64) -> i64 {
    c.query_row(&format!("PRAGMA max_page_count = {n}"), [], |r| r.get(0))
        .unwrap()
}

/// A batch the disk cannot take is kept, not lost: SQLite's "database or
/// disk is full" (here from `max_page_count`, the same SQLITE_FULL a full
/// disk gives) makes the store unwritable with the reason, nobody is
/// answered, reads go on, and once there is room the same writes commit in
/// order, their callers are answered and their events published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_disk_refuses_is_kept_and_retried_until_it_fits() {
    // Memory mode: the readers' connection is the writer's.
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
    let seqs = Arc::new(Seqs::default());
    s.set_listener(seqs.clone());
    let first = task(None);
    commit(&s, vec![insert_op(&first)]).await.unwrap();
    let pages: i64 = s.readers[0]
        .lock()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    set_max_pages(&s.readers[0].lock(), pages);

    let big: Arc<str> = Arc::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(8000)));
    let mut tasks = Vec::new();
    let mut waits = Vec::new();
    for seq in 1..=20u64 {
        let mut t = task(None);
        t.rt.seq = seq;
        let (tx, rx) = oneshot::channel();
        s.submit(
            vec![WriteOp::Insert {
                task: t.clone(),
                payload: Payload::Json(big.clone()),
                log: vec![LogEntry::system(t.id, 0, "scheduled")],
                event: Some(crate::domain::EventKind::Scheduled),
            }],
            Some(tx),
        );
        tasks.push(t);
        waits.push(rx);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        if let Err(e) = s.writable() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the store never said it cannot commit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    // It keeps trying, answers nobody, publishes nothing, and reads work.
    let retries = s.stats.retries.load(Ordering::Relaxed);
    while s.stats.retries.load(Ordering::Relaxed) < retries + 2 {
        assert!(Instant::now() < deadline, "the writer does not try again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in &mut waits {
        assert!(matches!(
            w.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
    }
    assert!(seqs.0.lock().is_empty());
    assert!(s.get(first.id).await.unwrap().is_some());
    assert!(s.get(tasks[0].id).await.unwrap().is_none());

    // Room again.
    set_max_pages(&s.readers[0].lock(), 1 << 30);
    for w in waits {
        assert_eq!(within(w).await.unwrap().unwrap(), vec![WriteOutcome::Done]);
    }
    assert!(s.writable().is_ok());
    for t in &tasks {
        assert!(s.get(t.id).await.unwrap().is_some());
    }
    assert_eq!(*seqs.0.lock(), (1..=20).collect::<Vec<u64>>());
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("an answer within 5 s")
}

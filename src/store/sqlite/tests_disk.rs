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

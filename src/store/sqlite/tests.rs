//! The SQLite store's unit tests.

use super::*;
use crate::store::contract::{self, store_contract, Harness, Opened};

use contract::task;

async fn insert(s: &SqliteStore, t: &Task) -> WriteOutcome {
    contract::insert(s, t).await
}

/// SQLite stores in one file of a temporary directory.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }
}

#[async_trait]
impl Harness for Files {
    async fn open(&self, lazy_within: Duration) -> Opened {
        let s = SqliteStore::open(SqliteOptions {
            path: Some(self.0.path().join("t.db")),
            lazy_within,
            ..Default::default()
        })
        .unwrap();
        let (a, b) = (s.stats.clone(), s.stats.clone());
        Opened {
            store: s,
            commits: Box::new(move || a.commits.load(Ordering::Relaxed)),
            coalesced: Box::new(move || Some(b.coalesced.load(Ordering::Relaxed))),
        }
    }

    async fn close(&self, o: Opened) {
        // The last reference: dropping it closes the writer after its
        // queued writes.
        drop(o);
    }
}

store_contract!(Files::new());

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

#[tokio::test]
async fn memory_mode_works() {
    let s = SqliteStore::open(SqliteOptions::default()).unwrap();
    let a = task(None);
    assert_eq!(insert(&s, &a).await, WriteOutcome::Done);
    assert_eq!(s.load_active().await.unwrap().len(), 1);
    assert_eq!(s.counts().await.unwrap()[0].3, 1);
}

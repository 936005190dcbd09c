//! The checkpointer: its own thread and connection copy the WAL back into
//! the database, so no commit waits behind SQLite's automatic checkpoint.

use super::*;

/// WAL frames (pages) past which the log is started over: the checkpointer
/// asks the writer, which runs a RESTART checkpoint between two commits.
/// Under a steady stream of commits the PASSIVE checkpoints never catch up
/// with the newest frame, so SQLite never starts the log over by itself:
/// the WAL grew by ~55 MB/s at half of bench c's maximum rate, every commit
/// appended to new file pages (page-cache allocation, and ext4 metadata in
/// each fsync), and a RESTART from the checkpointer's own connection,
/// taken at 256 MiB, could starve behind a writer that never pauses. The
/// PASSIVE checkpoints have copied nearly all of an 8 MiB log when the
/// writer restarts it, so the writer's pause is short: the last few frames
/// and the database file's fsync.
pub(super) const WAL_RESTART_FRAMES: i64 = 2_048;
/// How often the checkpointer looks, when something was committed.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);
/// How often it tries again after a checkpoint failed (a full disk).
pub(super) const CHECKPOINT_RETRY: Duration = Duration::from_millis(500);

/// Copies the WAL back into the database on its own thread and connection,
/// with PASSIVE checkpoints that never block the writer. SQLite's automatic
/// checkpoint would run on the writer thread after a commit every 1,000
/// pages, and every commit queued behind it (with its callers) would wait
/// for the copy and, with `synchronous = full`, the database file's fsync.
pub(super) struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(
        path: &Path,
        sync: Synchronous,
        stats: Arc<CommitStats>,
        restart_wanted: Arc<AtomicBool>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        configure(&conn, sync, false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer_loop(conn, stats, restart_wanted, stop))
                .map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    reason: format!("checkpoint thread: {e}"),
                })?
        };
        Ok(Checkpointer { stop, handle })
    }

    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

pub(super) fn checkpointer_loop(
    conn: Connection,
    stats: Arc<CommitStats>,
    restart_wanted: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let checkpoint = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
    };
    let mut seen = 0;
    // Since when checkpoints fail (a full disk: the database file cannot
    // grow). Logged once; tried again every CHECKPOINT_RETRY, not at every
    // commit, until one works.
    let mut failing: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(match failing {
            Some(_) => CHECKPOINT_RETRY,
            None => CHECKPOINT_EVERY,
        });
        let commits = stats.commits.load(Ordering::Relaxed);
        if commits == seen && failing.is_none() {
            continue;
        }
        match checkpoint("PASSIVE") {
            Ok((frames, copied)) => {
                if let Some(since) = failing.take() {
                    tracing::info!(
                        failed_ms = since.elapsed().as_millis() as u64,
                        "WAL checkpoints work again"
                    );
                }
                if frames >= WAL_RESTART_FRAMES && copied < frames {
                    restart_wanted.store(true, Ordering::Release);
                }
            }
            Err(e) if failing.is_some() => {
                tracing::debug!(cause = %e, "WAL checkpoint failed again");
            }
            Err(e) => {
                tracing::warn!(
                    cause = %e,
                    "WAL checkpoint failed: the WAL grows until one works (tried again every {} ms)",
                    CHECKPOINT_RETRY.as_millis()
                );
                failing = Some(Instant::now());
            }
        }
        seen = commits;
        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
    }
}

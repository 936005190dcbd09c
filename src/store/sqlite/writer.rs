//! The writer thread: drains the queued groups, applies each under a
//! savepoint, commits them in one transaction (group commit) and publishes
//! their events once durable; a task written several times in one batch
//! has its row written once (coalescing). Retention's removals ride on
//! the commits in slices ([`crate::store::batch`]). A batch the disk
//! cannot take (full) is kept and tried again until it commits (`disk`).

use super::*;
use crate::domain::EventKind;
use crate::store::batch::{Batch, BatchFormer, Queued};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// How the writer batches.
pub(super) struct Limits {
    /// Most operations in one transaction.
    pub(super) max_batch: usize,
    /// The longest lazy writes wait for a commit to ride on.
    pub(super) lazy_within: Duration,
    /// When ended rows may be removed (their `purge_at`).
    pub(super) retention: Arc<RetentionPolicy>,
    /// The log line numbers.
    pub(super) lines: LogLines,
}

impl Queued for Group {
    fn ops(&self) -> &[WriteOp] {
        &self.ops
    }
    fn lazy(&self) -> bool {
        self.lazy
    }
}

pub(super) fn writer_loop(
    conn: Arc<Mutex<Connection>>,
    rx: mpsc::Receiver<Group>,
    listener: Arc<Listener>,
    stats: Arc<CommitStats>,
    restart_wanted: Arc<AtomicBool>,
    health: Arc<Health>,
    limits: Limits,
) {
    let Limits {
        max_batch,
        lazy_within,
        retention,
        lines,
    } = limits;
    // Free pages to give back to the file system (after removals).
    let mut reclaim = false;
    let mut former = BatchFormer::new();
    loop {
        // Wait for a write, unless removals wait for a commit already.
        if !former.removals_waiting() {
            let first = if reclaim {
                match rx.recv_timeout(RECLAIM_EVERY) {
                    Ok(g) => g,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        reclaim = give_back(&conn.lock());
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(g) => g,
                    Err(_) => break,
                }
            };
            former.push(first);
        }
        if restart_wanted.swap(false, Ordering::AcqRel) {
            restart_wal(&conn.lock(), &stats);
        }
        // Everything queued now joins (removals aside); only lazy writes
        // so far: wait (a little) for one that needs a commit, and ride
        // on it.
        let lazy_until = Instant::now() + lazy_within;
        while !former.full(max_batch) {
            let next = match rx.try_recv() {
                Ok(g) => Ok(g),
                Err(mpsc::TryRecvError::Empty) if former.lazy_only() => rx
                    .recv_timeout(lazy_until.saturating_duration_since(Instant::now()))
                    .map_err(|_| ()),
                Err(_) => Err(()),
            };
            match next {
                Ok(g) => former.push(g),
                Err(()) => break,
            }
        }
        let Batch {
            groups,
            weight: n,
            removes,
        } = former.take();
        if groups.is_empty() {
            continue;
        }
        reclaim |= removes;
        let started = Instant::now();
        let commit = commit_batch(&conn, &groups, &stats, &health, &retention, &lines);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(n as u64, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(s) = stats.sink.get() {
            s.store_commit(started.elapsed(), n);
        }
        match commit {
            Ok((results, events)) => {
                // Publish, then answer: once a caller hears its write is
                // durable, a watcher that starts then sees its event.
                if !events.is_empty() {
                    if let Some(l) = listener.get() {
                        l.committed(events);
                    }
                }
                for (g, r) in groups.into_iter().zip(results) {
                    if let Some(done) = g.done {
                        let _ = done.send(r);
                    }
                }
            }
            Err(e) => {
                tracing::error!(cause = %e, "store commit failed; the writes of this group are lost");
                let e = Arc::new(e);
                for g in groups {
                    if let Some(done) = g.done {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// How often the writer, while idle, gives free pages back.
const RECLAIM_EVERY: Duration = Duration::from_millis(50);
/// Free pages given back per step: a step is one short write transaction.
const RECLAIM_STEP: i64 = 1024;
/// Free pages are given back only past this many, and past a fifth of the
/// file: under a steady load with retention, the pages a removal frees are
/// reused by the next inserts, and returning them would only grow the file
/// again.
const RECLAIM_MIN_FREE: i64 = 4096;

/// Gives up to [`RECLAIM_STEP`] free pages back to the file system when
/// many are free; whether more remain to give. A file created before the
/// store set `auto_vacuum = incremental` keeps its free pages for reuse.
pub(super) fn give_back(conn: &Connection) -> bool {
    let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    if q("PRAGMA auto_vacuum") != 2 {
        return false;
    }
    let (free, pages) = (q("PRAGMA freelist_count"), q("PRAGMA page_count"));
    if free < RECLAIM_MIN_FREE || free * 5 < pages {
        return false;
    }
    if let Err(e) = conn.execute_batch(&format!("PRAGMA incremental_vacuum({RECLAIM_STEP})")) {
        tracing::warn!(cause = %e, "giving free pages back failed");
        return false;
    }
    true
}

/// Each group's outcome, and the events to publish.
type Done = (
    Vec<Result<Vec<WriteOutcome>, Arc<StoreError>>>,
    Vec<Arc<TaskEvent>>,
);

/// Commits a batch. Fast path: every group in one transaction. A group
/// that is refused (rare: a constraint, a row that cannot be encoded) rolls
/// the batch back, and then each group is committed on its own so only the
/// refused one fails. A disk that cannot take the commit (full, or failing
/// writes) refuses no group: the same batch is tried again, whole and in
/// order, until it commits ([`until_written`]); its callers wait, and the
/// groups queued meanwhile wait behind it.
fn commit_batch(
    conn: &Mutex<Connection>,
    groups: &[Group],
    stats: &CommitStats,
    health: &Health,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Done, StoreError> {
    if let Some(done) = until_written(conn, health, stats, |c| {
        try_batch(c, groups, stats, retention, lines)
    })? {
        return Ok(done);
    }
    let mut results = Vec::with_capacity(groups.len());
    let mut events = Vec::new();
    for g in groups {
        match until_written(conn, health, stats, |c| try_group(c, g, retention, lines)) {
            Ok(Ok((out, group_events))) => {
                results.push(Ok(out));
                events.extend(group_events);
            }
            Ok(Err(e)) => {
                tracing::error!(cause = %e, "store write group rolled back");
                results.push(Err(Arc::new(e)));
            }
            Err(e) => {
                tracing::error!(cause = %e, "store commit failed; the writes of this group are lost");
                results.push(Err(Arc::new(e)));
            }
        }
    }
    Ok((results, events))
}

/// One attempt at the whole batch in one transaction: `None` when a group
/// was refused (the transaction is rolled back); an error when the
/// transaction could not be written.
fn try_batch(
    conn: &mut Connection,
    groups: &[Group],
    stats: &CommitStats,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Option<Done>, StoreError> {
    lines.kept_if(
        || batch_in_transaction(conn, groups, stats, retention, lines),
        |done| matches!(done, Ok(Some(_))),
    )
}

fn batch_in_transaction(
    conn: &mut Connection,
    groups: &[Group],
    stats: &CommitStats,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Option<Done>, StoreError> {
    let tx = conn.transaction()?;
    let mut outs = Vec::with_capacity(groups.len());
    let mut events = Vec::new();
    let mut latest = Latest::of(groups);
    for g in groups {
        match apply_group(&tx, g, &mut events, latest.as_mut(), retention, lines) {
            Ok(out) => outs.push(Ok(out)),
            // The disk, not the group: the batch is tried again whole
            // (dropping `tx` rolls back what SQLite has not).
            Err(e) if cannot_commit(&e).is_some() => return Err(e),
            Err(_) => {
                tx.finish()?;
                return Ok(None);
            }
        }
    }
    tx.commit()?;
    if let Some(l) = &latest {
        stats.coalesced.fetch_add(l.skipped, Ordering::Relaxed);
    }
    Ok(Some((outs, events)))
}

/// A group's outcome and its events.
type GroupDone = (Vec<WriteOutcome>, Vec<Arc<TaskEvent>>);

/// One group in a transaction of its own: the inner error is the group's
/// refusal, the outer one a transaction that could not be written.
fn try_group(
    conn: &mut Connection,
    g: &Group,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Result<GroupDone, StoreError>, StoreError> {
    lines.kept_if(
        || group_in_transaction(conn, g, retention, lines),
        |done| matches!(done, Ok(Ok(_))),
    )
}

fn group_in_transaction(
    conn: &mut Connection,
    g: &Group,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Result<GroupDone, StoreError>, StoreError> {
    let tx = conn.transaction()?;
    let mut events = Vec::new();
    match apply_group(&tx, g, &mut events, None, retention, lines) {
        Ok(out) => {
            tx.commit()?;
            Ok(Ok((out, events)))
        }
        Err(e) if cannot_commit(&e).is_some() => Err(e),
        Err(e) => {
            tx.finish()?;
            Ok(Err(e))
        }
    }
}

/// Runs `attempt` on the writer's connection until the disk takes it.
/// While the disk refuses (full, or failing writes: [`cannot_commit`]) the
/// store is not writable ([`Health`]: new writes are refused, the reason
/// logged once) and the attempt is repeated every [`RETRY_EVERY`], the
/// connection unlocked in between. Any other failure is returned. At
/// shutdown it gives up after [`CLOSE_PATIENCE`].
fn until_written<T>(
    conn: &Mutex<Connection>,
    health: &Health,
    stats: &CommitStats,
    mut attempt: impl FnMut(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    loop {
        let result = {
            let mut c = conn.lock();
            let r = attempt(&mut c);
            if r.is_err() && !c.is_autocommit() {
                // SQLite rolls back a transaction the disk refused, and
                // rusqlite what is left; never leave one open.
                if let Err(e) = c.execute_batch("ROLLBACK") {
                    tracing::warn!(cause = %e, "rolling back a failed store transaction");
                }
            }
            r
        };
        let e = match result {
            Ok(v) => {
                // After giving up at shutdown, an empty commit (a flush)
                // goes through on a full disk: that is no recovery.
                if !health.give_up() {
                    health.unblock(stats);
                }
                return Ok(v);
            }
            Err(e) => e,
        };
        let Some(blocked) = cannot_commit(&e) else {
            return Err(e);
        };
        if health.give_up() {
            tracing::error!(
                cause = ?blocked,
                "the store is closing and still cannot commit: these writes are not committed"
            );
            return Err(blocked.error());
        }
        health.block(blocked, stats);
        stats.retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(RETRY_EVERY);
    }
}

/// Starts the WAL over (see `WAL_RESTART_FRAMES`) between two commits, if
/// it can without waiting. No write transaction is open, so only a reader
/// of an older snapshot can be in the way: a long query, or a
/// `switchyard backup` copying the file in one read transaction. Waiting
/// for it (the busy timeout, 5 s) would hold every commit queued behind
/// the writer; so the RESTART runs with no busy timeout, and when a
/// reader is in the way it copies what it can and leaves the restart for
/// the checkpointer's next request (it asks again while the WAL is past
/// the threshold).
pub(super) fn restart_wal(conn: &Connection, stats: &CommitStats) {
    let restart = || -> rusqlite::Result<bool> {
        conn.busy_timeout(Duration::ZERO)?;
        // Busy (1) when a reader or the checkpointer holds the log.
        let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(busy? == 0)
    };
    match restart() {
        Ok(true) => {
            stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {
            stats.restarts_deferred.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            let e = StoreError::Db(e);
            match cannot_commit(&e) {
                // The checkpointer has said so already.
                Some(_) => tracing::debug!(cause = %e, "WAL restart checkpoint failed"),
                None => tracing::warn!(cause = %e, "WAL restart checkpoint failed"),
            }
            // Whatever failed, the writer's busy timeout is its own again.
            if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
                tracing::warn!(cause = %e, "resetting the writer's busy timeout");
            }
        }
    }
}

/// Write coalescing within one batch (one transaction): a task changed
/// several times in a batch has its row written once, with its latest
/// runtime state. Every log line and every event is still written and
/// published in order; only the superseded row images are skipped. The
/// batch commits or rolls back as a whole, so no reader or crash can see the
/// difference.
pub(super) struct Latest {
    /// For each task written more than once in the batch: the position (in
    /// batch order) of its last write.
    last: HashMap<TaskId, usize>,
    /// Position of the op being applied.
    pos: usize,
    /// Row writes skipped so far.
    skipped: u64,
}

impl Latest {
    /// `None` when no task is written twice (nothing to coalesce).
    fn of(groups: &[Group]) -> Option<Latest> {
        let mut seen: HashMap<TaskId, (usize, u32)> = HashMap::new();
        let mut pos = 0;
        for g in groups {
            for op in &g.ops {
                if let Some(id) = op_task(op) {
                    let e = seen.entry(id).or_insert((pos, 0));
                    *e = (pos, e.1 + 1);
                }
                pos += 1;
            }
        }
        let last: HashMap<TaskId, usize> = seen
            .into_iter()
            .filter(|(_, (_, n))| *n > 1)
            .map(|(id, (p, _))| (id, p))
            .collect();
        (!last.is_empty()).then_some(Latest {
            last,
            pos: 0,
            skipped: 0,
        })
    }

    /// Whether the op at the current position is superseded by a later write
    /// of the same task in this batch.
    fn superseded(&self, id: TaskId) -> bool {
        self.last.get(&id).is_some_and(|&p| p > self.pos)
    }
}

pub(super) fn op_task(op: &WriteOp) -> Option<TaskId> {
    match op {
        WriteOp::Insert { task, .. } | WriteOp::Update { task, .. } => Some(task.id),
        WriteOp::Log(_)
        | WriteOp::Quarantine { .. }
        | WriteOp::Remove(_)
        | WriteOp::ReleaseKey { .. } => None,
    }
}

/// The `state` column of a quarantined row: no task state has this code, so
/// no active scan, filter or count selects it (the state it had is kept in
/// the `quarantine` table).
pub(super) const QUARANTINED: i64 = 100;

fn apply_group(
    conn: &Connection,
    g: &Group,
    events: &mut Vec<Arc<TaskEvent>>,
    mut latest: Option<&mut Latest>,
    retention: &RetentionPolicy,
    lines: &LogLines,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let mut out = Vec::with_capacity(g.ops.len());
    let now = now_micros();
    for (op, enc) in g.ops.iter().zip(&g.enc) {
        let superseded = match (&mut latest, op_task(op)) {
            (Some(l), Some(id)) => {
                let s = l.superseded(id) && matches!(op, WriteOp::Update { .. });
                l.pos += 1;
                l.skipped += u64::from(s);
                s
            }
            (Some(l), None) => {
                l.pos += 1;
                false
            }
            _ => false,
        };
        match op {
            WriteOp::Update { task, log, event } if superseded => {
                // A later write of this batch carries the row.
                log_and_publish(conn, lines, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Insert {
                task,
                payload,
                log,
                event,
            } => {
                let encoded;
                let (spec, rt) = match enc {
                    Encoded::Insert(spec, rt) => (spec, rt),
                    _ => {
                        encoded = (
                            serde_json::to_string(&*task.spec).map_err(|e| corrupt(task.id, e))?,
                            serde_json::to_string(&task.rt).map_err(|e| corrupt(task.id, e))?,
                        );
                        (&encoded.0, &encoded.1)
                    }
                };
                let (sql, payload) = match payload {
                    Payload::Json(p) => (
                        INSERT_WITH_PAYLOAD,
                        // Bound as it is (SQLite copies it once), not through an owned copy.
                        ToSqlOutput::Borrowed(ValueRef::Text(p.as_bytes())),
                    ),
                    Payload::CopyOf(src) => (
                        INSERT_COPYING_PAYLOAD,
                        ToSqlOutput::Borrowed(ValueRef::Blob(src.as_bytes())),
                    ),
                };
                let mut st = conn.prepare_cached(sql)?;
                let n = st.execute(params![
                    task.id.as_bytes(),
                    task.created_at,
                    task.spec.name,
                    task.spec.task_type.code(),
                    task.rt.state.code(),
                    task.rt.seq as i64,
                    task.rt.source.code(),
                    task.spec.user_id,
                    task.spec.session_id,
                    task.spec.idempotency_key,
                    task.spec.parent_id.map(|p| p.as_bytes().to_vec()),
                    spec,
                    rt,
                    payload,
                    purge_at(retention, task),
                    task.spec.schedule_id(),
                    task.rt.error_kind(),
                    task.spec.namespace_column(),
                ])?;
                if n == 0 {
                    let existing: Option<Vec<u8>> = match &task.spec.idempotency_key {
                        Some(k) => conn
                            .prepare_cached("SELECT id FROM tasks WHERE idempotency_key = ?1")?
                            .query_row([k], |r| r.get(0))
                            .optional()?,
                        None => None,
                    };
                    let id = existing
                        .and_then(|b| TaskId::from_slice(&b).ok())
                        .unwrap_or(task.id);
                    out.push(WriteOutcome::Existing(id));
                    continue;
                }
                count_ended_insert(conn, task)?;
                log_and_publish(conn, lines, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Update { task, log, event } => {
                let encoded;
                let rt = match enc {
                    Encoded::Update(rt) => rt,
                    _ => {
                        encoded =
                            serde_json::to_string(&task.rt).map_err(|e| corrupt(task.id, e))?;
                        &encoded
                    }
                };
                let columns = params![
                    task.id.as_bytes(),
                    task.rt.state.code(),
                    task.rt.seq as i64,
                    task.rt.source.code(),
                    rt,
                    purge_at(retention, task),
                    task.rt.error_kind(),
                ];
                // Most changes that keep the state (an engine took the task,
                // progress, a hold) leave every indexed column but `seq` as
                // it is: the light statement then rewrites the row and one
                // index entry, where the full one rewrites six and runs the
                // state triggers. Its WHERE checks that the columns are
                // unchanged, so a wrong guess only costs a lookup.
                let light = matches!(event, Some(EventKind::Updated | EventKind::Progress))
                    && conn.prepare_cached(LIGHT_UPDATE)?.execute(columns)? == 1;
                let n = if light {
                    1
                } else {
                    conn.prepare_cached(FULL_UPDATE)?.execute(columns)?
                };
                if n == 0 {
                    // No such row: the task's insert failed (the core
                    // withdraws such a task). Nothing of it is logged or
                    // published: no watcher hears of a task the store lacks.
                    out.push(WriteOutcome::Done);
                    continue;
                }
                log_and_publish(conn, lines, task, log, *event, now, events)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Log(new) => {
                insert_logs(conn, lines, new)?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Remove(ids) => {
                // Only an ended row goes (with its log lines): a removal
                // waits for its slice of a commit ([`crate::store::batch`])
                // and a write queued after it (a retry) may commit first.
                let mut rows = conn.prepare_cached(REMOVE_ENDED)?;
                let mut logs = conn.prepare_cached(REMOVE_LOGS)?;
                for id in ids {
                    if rows.execute([id.as_bytes()])? > 0 {
                        logs.execute([id.as_bytes()])?;
                    }
                }
                out.push(WriteOutcome::Done);
            }
            WriteOp::ReleaseKey { id, key } => {
                conn.prepare_cached(
                    "UPDATE tasks SET idempotency_key = NULL WHERE id = ?1 AND idempotency_key = ?2",
                )?
                .execute(params![id.as_bytes(), &**key])?;
                out.push(WriteOutcome::Done);
            }
            WriteOp::Quarantine { key, reason } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO quarantine (id, at, state, reason)
                     SELECT id, ?2, state, ?3 FROM tasks WHERE id = ?1",
                )?
                .execute(params![key, now, reason])?;
                conn.prepare_cached("UPDATE tasks SET state = ?2 WHERE id = ?1")?
                    .execute(params![key, QUARANTINED])?;
                out.push(WriteOutcome::Done);
            }
        }
    }
    Ok(out)
}

/// A new task, its payload given.
const INSERT_WITH_PAYLOAD: &str = "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id, session_id, idempotency_key, parent_id, spec, rt, payload, purge_at, schedule_id, error_kind, namespace)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
     ON CONFLICT DO NOTHING";

/// A new task with the payload of task `?14`.
const INSERT_COPYING_PAYLOAD: &str = "INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id, session_id, idempotency_key, parent_id, spec, rt, payload, purge_at, schedule_id, error_kind, namespace)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,
             COALESCE((SELECT payload FROM tasks WHERE id = ?14), '{}'), ?15, ?16, ?17, ?18)
     ON CONFLICT DO NOTHING";

/// Retention's removal of an ended task, and of its log.
const REMOVE_ENDED: &str = concat!("DELETE FROM tasks WHERE id = ?1 AND ", ended!("state"));
const REMOVE_LOGS: &str = "DELETE FROM task_logs WHERE task_id = ?1";

/// A log line.
const INSERT_LOG: &str =
    "INSERT INTO task_logs (task_id, line, time, source, level, attempt, message)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Every statement the writer runs for each task (the tests check that
/// none of them, with the triggers they fire, builds a temporary B-tree).
#[cfg(test)]
pub(super) const PER_TASK_WRITES: [&str; 7] = [
    INSERT_WITH_PAYLOAD,
    INSERT_COPYING_PAYLOAD,
    FULL_UPDATE,
    LIGHT_UPDATE,
    REMOVE_ENDED,
    REMOVE_LOGS,
    INSERT_LOG,
];

/// A row write: every mutable column. `OR FAIL`, which the ended-count
/// triggers it fires follow: no statement may ABORT, so SQLite keeps no
/// statement journal for it (see the schema); a failure rolls the whole
/// transaction back anyway.
const FULL_UPDATE: &str =
    "UPDATE OR FAIL tasks SET state = ?2, seq = ?3, source = ?4, rt = ?5, purge_at = ?6,
                                    error_kind = ?7
                   WHERE id = ?1";

/// A row write that keeps every indexed column but `seq` (the same
/// parameters as [`FULL_UPDATE`]): it changes nothing unless they are
/// unchanged. With no state in its SET list, the state triggers do not run.
const LIGHT_UPDATE: &str = "UPDATE tasks SET seq = ?3, rt = ?5
                    WHERE id = ?1 AND state = ?2 AND source = ?4 AND purge_at IS ?6
                      AND error_kind IS ?7";

/// Counts a task inserted in a final state in `ended_counts`, as the
/// update and delete triggers count the others (see the schema: an insert
/// trigger would cost every insert a statement journal).
fn count_ended_insert(conn: &Connection, task: &Task) -> Result<(), StoreError> {
    if !task.rt.state.is_final() {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO ended_counts VALUES (?1, ?2, ?3, 1) ON CONFLICT DO UPDATE SET n = n + 1",
    )?
    .execute(params![
        task.spec.task_type.code(),
        task.spec.name,
        task.rt.state.code()
    ])?;
    Ok(())
}

/// The `purge_at` column of a task's row: when retention may remove it.
pub(super) fn purge_at(retention: &RetentionPolicy, task: &Task) -> Option<i64> {
    retention.purge_at(&task.spec, task.rt.state, task.rt.finished_at?)
}

/// A task write's log lines, and its event queued for publication once the
/// commit is durable.
pub(super) fn log_and_publish(
    conn: &Connection,
    lines: &LogLines,
    task: &Task,
    log: &[LogEntry],
    event: Option<crate::domain::EventKind>,
    now: crate::domain::Micros,
    events: &mut Vec<Arc<TaskEvent>>,
) -> Result<(), StoreError> {
    insert_logs(conn, lines, log)?;
    if let Some(kind) = event {
        events.push(Arc::new(TaskEvent {
            seq: task.rt.seq,
            kind,
            time: now,
            task: task.clone(),
        }));
    }
    Ok(())
}

pub(super) fn corrupt(id: TaskId, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    }
}

pub(super) fn insert_logs(
    conn: &Connection,
    numbers: &LogLines,
    lines: &[LogEntry],
) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut st = conn.prepare_cached(INSERT_LOG)?;
    for l in lines {
        st.execute(params![
            l.task_id.as_bytes(),
            numbers.next(conn)?,
            l.time,
            l.source.code(),
            l.level,
            l.attempt,
            l.message
        ])?;
    }
    Ok(())
}

/// Log line numbers: one counter for the whole store, kept by the writer.
/// `task_logs` is keyed by (task, line), so SQLite cannot hand out the
/// next number as it does a rowid, and finding the largest one would read
/// the whole table. So the writer reserves numbers in blocks of
/// [`LogLines::BLOCK`] in `meta` (`log_lines_reserved`), in the transaction
/// that first uses a number of the block: every committed line is below
/// the reservation. At open the counter starts there, so a restart skips
/// the rest of the block (lines only increase, they are not contiguous:
/// `LogLine.line`). A transaction that does not commit takes its
/// reservation back ([`LogLines::kept_if`]); its numbers are not used again.
pub(super) struct LogLines {
    next: std::cell::Cell<i64>,
    reserved: std::cell::Cell<i64>,
}

impl LogLines {
    /// Numbers reserved at a time.
    pub(super) const BLOCK: i64 = 1 << 16;
    const KEY: &'static str = "log_lines_reserved";

    /// The counter of the store on `conn`, from its reservation.
    pub(super) fn open(conn: &Connection) -> Result<Self, StoreError> {
        let reserved: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [Self::KEY], |r| {
                r.get(0)
            })
            .optional()?;
        // Numbers start at 2: 1 is a task's derived first line
        // (`LogEntry::DERIVED_LINE`).
        let from = match reserved {
            None => 2,
            Some(v) => v.parse::<i64>().map_err(|_| StoreError::Open {
                path: "meta".into(),
                reason: format!("{} is {v:?}, not a number", Self::KEY),
            })?,
        }
        .max(2);
        Ok(LogLines {
            next: std::cell::Cell::new(from),
            reserved: std::cell::Cell::new(from),
        })
    }

    /// The next number, reserving a block first in the open transaction
    /// when the last one is used up.
    fn next(&self, conn: &Connection) -> Result<i64, StoreError> {
        let n = self.next.get();
        if n >= self.reserved.get() {
            let upto = n + Self::BLOCK;
            conn.prepare_cached("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)")?
                .execute(params![Self::KEY, upto.to_string()])?;
            self.reserved.set(upto);
        }
        self.next.set(n + 1);
        Ok(n)
    }

    /// Runs one transaction: a reservation it made is kept only if it
    /// `committed`; otherwise it is not in the file, and the next line
    /// reserves again.
    fn kept_if<T>(&self, transaction: impl FnOnce() -> T, committed: impl Fn(&T) -> bool) -> T {
        let before = self.reserved.get();
        let done = transaction();
        if !committed(&done) {
            self.reserved.set(before);
        }
        done
    }
}

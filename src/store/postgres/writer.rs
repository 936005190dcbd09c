//! The writer task: group commit on PostgreSQL.
//!
//! It drains the queued groups (up to `max_batch` operations), turns them
//! into arrays, one per column of each kind (inserts, updates, log lines),
//! and sends them as one statement ([`WRITE`]: the fence and an `unnest`
//! per kind, as data-modifying CTEs) in its own implicit transaction: a
//! batch costs one statement, one round trip and one WAL flush whatever its
//! size.
//!
//! A task written several times in a batch has its row written once, with
//! its latest image (every log line and event is kept, in order). A batch
//! that fails on the data (a constraint) is retried group by group, so only
//! the failing group is lost. A batch that fails because the connection is
//! gone is retried whole, in order, on a new connection until it commits:
//! a write is never dropped and never overtaken. Inserts are idempotent
//! (`ON CONFLICT DO NOTHING`, then a check of whose row it is), so a batch
//! whose `COMMIT` was sent but not acknowledged can be replayed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::{Fence, Group, Shared};
use crate::domain::retention::RetentionPolicy;
use crate::domain::{now_micros, Payload, Task, TaskEvent};
use crate::store::batch::{Batch, BatchFormer, Queued};
use crate::store::{StoreError, WriteOp, WriteOutcome};

/// How the writer batches.
pub(super) struct Limits {
    /// Most operations in one transaction.
    pub(super) max_batch: usize,
    /// The longest lazy writes wait for a commit to ride on.
    pub(super) lazy_within: Duration,
}

/// The SQLSTATE `switchyard_fence` raises.
const FENCED: &str = "SYF01";

/// The `state` of a quarantined row (no task state has this code).
const QUARANTINED: i16 = 100;

/// Why a batch did not commit.
enum Fail {
    /// Another replica's term: this one may never write again.
    Fenced(i64),
    /// The connection is gone or the server is restarting: retry.
    Connection(String),
    /// The data was refused: retry group by group.
    Data(StoreError),
}

fn classify(e: tokio_postgres::Error, fence: Option<&Fence>) -> Fail {
    if let Some(code) = e.code() {
        if code.code() == FENCED {
            return Fail::Fenced(fence.map_or(0, |f| f.term));
        }
        let c = code.code();
        if c.starts_with("08")
            || code == &SqlState::ADMIN_SHUTDOWN
            || code == &SqlState::CRASH_SHUTDOWN
            || code == &SqlState::CANNOT_CONNECT_NOW
            || code == &SqlState::TOO_MANY_CONNECTIONS
            || code == &SqlState::READ_ONLY_SQL_TRANSACTION
        {
            return Fail::Connection(e.to_string());
        }
        return Fail::Data(StoreError::Pg(e));
    }
    // No SQLSTATE: an I/O error, a closed connection, a timeout.
    Fail::Connection(e.to_string())
}

/// A batch in one statement. The fence (`f`), the inserts (`i`), the
/// updates (`w`) and the log lines (`l`) are data-modifying CTEs of one
/// `WITH`: all run, on one snapshot, in one implicit transaction. So that
/// no part needs to see another's rows, the plan folds an update of a task
/// inserted in the same batch into its insert, and a log line is written if
/// its task is inserted here (`i`) or was there before (a scalar subquery:
/// an `EXISTS` under `OR` is planned as a hash of every id in the table).
/// The fence raises if
/// this replica's term is over, which rolls the whole statement back; the
/// lease row it locks `FOR SHARE` stays locked until the commit, so a
/// takeover waits for it. `$3` NULL: no fence (a store without leases).
const WRITE: &str = "
WITH f AS (
    SELECT CASE WHEN $3::text IS NULL THEN NULL
                ELSE switchyard_fence($1::int4, $2::int8, $3::text) END),
i AS (
    INSERT INTO tasks (id, created_at, name, task_type, state, seq, source, user_id,
                       session_id, idempotency_key, parent_id, spec, rt, payload, term,
                       purge_at, schedule_id, error_kind, namespace)
    SELECT u.id, u.created_at, u.name, u.task_type, u.state, u.seq, u.source, u.user_id,
           u.session_id, u.idempotency_key, u.parent_id, u.spec, u.rt,
           COALESCE(u.payload, (SELECT t.payload FROM tasks t WHERE t.id = u.payload_of), '{}'),
           $2::int8, u.purge_at, u.schedule_id, u.error_kind, u.namespace
    FROM unnest($4::uuid[], $5::int8[], $6::text[], $7::int2[], $8::int2[], $9::int8[],
                $10::int2[], $11::text[], $12::text[], $13::text[], $14::uuid[], $15::text[],
                $16::text[], $17::text[], $18::uuid[], $30::int8[], $33::text[], $34::text[], $36::text[])
         AS u(id, created_at, name, task_type, state, seq, source, user_id, session_id,
              idempotency_key, parent_id, spec, rt, payload, payload_of, purge_at,
              schedule_id, error_kind, namespace)
    ON CONFLICT DO NOTHING
    RETURNING id),
w AS (
    UPDATE tasks t SET state = u.state, seq = u.seq, source = u.source, rt = u.rt,
                       term = $2::int8, purge_at = u.purge_at, error_kind = u.error_kind
    FROM unnest($19::uuid[], $20::int2[], $21::int8[], $22::int2[], $23::text[], $31::int8[],
                $35::text[])
         AS u(id, state, seq, source, rt, purge_at, error_kind)
    WHERE t.id = u.id
    RETURNING t.id),
l AS (
    INSERT INTO task_logs (task_id, time, source, level, attempt, message, term)
    SELECT u.task_id, u.time, u.source, u.level, u.attempt, u.message, $2::int8
    FROM unnest($24::uuid[], $25::int8[], $26::int2[], $27::text[], $28::int4[], $29::text[])
         WITH ORDINALITY AS u(task_id, time, source, level, attempt, message, ord)
    WHERE u.task_id IN (SELECT id FROM i)
       OR (SELECT true FROM tasks t WHERE t.id = u.task_id)
    ORDER BY u.ord),
d AS (
    DELETE FROM tasks WHERE id = ANY($32::uuid[]) AND state IN (3, 4, 5, 7)
    RETURNING id),
dl AS (
    DELETE FROM task_logs WHERE task_id IN (SELECT id FROM d))
SELECT (SELECT array_agg(id) FROM i), (SELECT array_agg(id) FROM w), (SELECT count(*) FROM f)";

/// The writer's prepared statements, per connection.
struct Stmts {
    write: Statement,
    quarantine: Statement,
    keys: Statement,
    release: Statement,
}

impl Stmts {
    async fn prepare(c: &Client) -> Result<Stmts, tokio_postgres::Error> {
        let (write, quarantine, keys, release) = futures::try_join!(
            c.prepare(WRITE),
            c.prepare(
                "WITH q AS (
                    INSERT INTO quarantine (id, at, state, reason)
                    SELECT t.id, $2::int8, t.state, u.reason
                    FROM tasks t JOIN unnest($1::uuid[], $3::text[]) AS u(id, reason) ON t.id = u.id
                    ON CONFLICT (id) DO UPDATE SET at = EXCLUDED.at, reason = EXCLUDED.reason
                    RETURNING id)
                 UPDATE tasks SET state = $4::int2 WHERE id IN (SELECT id FROM q)"
            ),
            c.prepare(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1::text[])"
            ),
            c.prepare(
                "UPDATE tasks t SET idempotency_key = NULL
                 FROM unnest($1::uuid[], $2::text[]) AS u(id, key)
                 WHERE t.id = u.id AND t.idempotency_key = u.key"
            ),
        )?;
        Ok(Stmts {
            write,
            quarantine,
            keys,
            release,
        })
    }
}

/// The columns of one batch, borrowing the strings of its queued writes
/// (only the JSON images are made here).
#[derive(Default)]
struct Plan<'a> {
    ins_id: Vec<Uuid>,
    ins_created: Vec<i64>,
    ins_name: Vec<&'a str>,
    ins_type: Vec<i16>,
    ins_state: Vec<i16>,
    ins_seq: Vec<i64>,
    ins_source: Vec<i16>,
    ins_user: Vec<Option<&'a str>>,
    ins_session: Vec<Option<&'a str>>,
    ins_schedule: Vec<Option<&'a str>>,
    ins_key: Vec<Option<&'a str>>,
    ins_parent: Vec<Option<Uuid>>,
    ins_spec: Vec<String>,
    ins_rt: Vec<String>,
    ins_payload: Vec<Option<&'a str>>,
    ins_payload_of: Vec<Option<Uuid>>,
    ins_purge: Vec<Option<i64>>,
    ins_error_kind: Vec<Option<&'a str>>,
    ins_namespace: Vec<Option<&'a str>>,
    /// Where each task inserted in this batch is in `ins_*`.
    ins_at: HashMap<Uuid, usize>,
    /// Where each task updated in this batch is in `upd_*`.
    upd_at: HashMap<Uuid, usize>,
    upd_id: Vec<Uuid>,
    upd_state: Vec<i16>,
    upd_seq: Vec<i64>,
    upd_source: Vec<i16>,
    upd_rt: Vec<String>,
    upd_purge: Vec<Option<i64>>,
    upd_error_kind: Vec<Option<&'a str>>,
    /// Tasks removed (retention).
    removed: Vec<Uuid>,
    log_task: Vec<Uuid>,
    log_time: Vec<i64>,
    log_source: Vec<i16>,
    log_level: Vec<&'a str>,
    log_attempt: Vec<i32>,
    log_message: Vec<&'a str>,
    q_id: Vec<Uuid>,
    q_reason: Vec<&'a str>,
    /// Idempotency keys whose window has passed, freed before the inserts.
    rel_id: Vec<Uuid>,
    rel_key: Vec<&'a str>,
    /// Row writes skipped because a later one of the batch carries the row.
    coalesced: u64,
    /// Stamps each ended row with its removal time.
    retention: Arc<RetentionPolicy>,
}

fn json<T: serde::Serialize>(id: Uuid, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

impl<'a> Plan<'a> {
    fn add_logs(&mut self, lines: &'a [crate::domain::LogEntry]) {
        for l in lines {
            self.log_task.push(l.task_id);
            self.log_time.push(l.time);
            self.log_source.push(l.source.code() as i16);
            self.log_level.push(&l.level);
            self.log_attempt.push(l.attempt.min(i32::MAX as u32) as i32);
            self.log_message.push(&l.message);
        }
    }

    /// Adds a group's writes; on a value that cannot be written, nothing of
    /// the group is added.
    fn add(&mut self, ops: &'a [WriteOp]) -> Result<(), StoreError> {
        // Serialise first, so a failure leaves the plan untouched.
        let mut images = Vec::with_capacity(ops.len());
        for op in ops {
            images.push(match op {
                WriteOp::Insert { task, .. } => {
                    Some((Some(json(task.id, &*task.spec)?), json(task.id, &task.rt)?))
                }
                WriteOp::Update { task, .. } => Some((None, json(task.id, &task.rt)?)),
                _ => None,
            });
        }
        for (op, image) in ops.iter().zip(images) {
            match (op, image) {
                (
                    WriteOp::Insert {
                        task, payload, log, ..
                    },
                    Some((Some(spec), rt)),
                ) => {
                    self.ins_at.insert(task.id, self.ins_id.len());
                    self.ins_id.push(task.id);
                    self.ins_created.push(task.created_at);
                    self.ins_name.push(&task.spec.name);
                    self.ins_type.push(task.spec.task_type.code() as i16);
                    self.ins_state.push(task.rt.state.code() as i16);
                    self.ins_seq.push(task.rt.seq.min(i64::MAX as u64) as i64);
                    self.ins_source.push(task.rt.source.code() as i16);
                    self.ins_user.push(task.spec.user_id.as_deref());
                    self.ins_session.push(task.spec.session_id.as_deref());
                    self.ins_schedule.push(task.spec.schedule_id());
                    self.ins_key.push(task.spec.idempotency_key.as_deref());
                    self.ins_parent.push(task.spec.parent_id);
                    self.ins_spec.push(spec);
                    self.ins_rt.push(rt);
                    self.ins_purge.push(purge_at(&self.retention, task));
                    self.ins_error_kind.push(task.rt.error_kind());
                    self.ins_namespace.push(task.spec.namespace_column());
                    match payload {
                        Payload::Json(p) => {
                            self.ins_payload.push(Some(p));
                            self.ins_payload_of.push(None);
                        }
                        Payload::CopyOf(src) => {
                            self.ins_payload.push(None);
                            self.ins_payload_of.push(Some(*src));
                        }
                    }
                    self.add_logs(log);
                }
                (WriteOp::Update { task, log, .. }, Some((None, rt))) => {
                    let id = task.id;
                    let (state, seq, source) = (
                        task.rt.state.code() as i16,
                        task.rt.seq.min(i64::MAX as u64) as i64,
                        task.rt.source.code() as i16,
                    );
                    let purge = purge_at(&self.retention, task);
                    let error_kind = task.rt.error_kind();
                    if let Some(&i) = self.ins_at.get(&id) {
                        // Inserted in this batch: the insert carries it (the
                        // statement's parts do not see each other's rows).
                        self.ins_state[i] = state;
                        self.ins_seq[i] = seq;
                        self.ins_source[i] = source;
                        self.ins_rt[i] = rt;
                        self.ins_purge[i] = purge;
                        self.ins_error_kind[i] = error_kind;
                        self.coalesced += 1;
                        self.add_logs(log);
                        continue;
                    }
                    match self.upd_at.get(&id) {
                        Some(&i) => {
                            self.upd_state[i] = state;
                            self.upd_seq[i] = seq;
                            self.upd_source[i] = source;
                            self.upd_rt[i] = rt;
                            self.upd_purge[i] = purge;
                            self.upd_error_kind[i] = error_kind;
                            self.coalesced += 1;
                        }
                        None => {
                            self.upd_at.insert(id, self.upd_id.len());
                            self.upd_id.push(id);
                            self.upd_state.push(state);
                            self.upd_seq.push(seq);
                            self.upd_source.push(source);
                            self.upd_rt.push(rt);
                            self.upd_purge.push(purge);
                            self.upd_error_kind.push(error_kind);
                        }
                    }
                    self.add_logs(log);
                }
                (WriteOp::Log(lines), _) => self.add_logs(lines),
                // A task this batch writes (run again after it ended) is
                // not removed: its removal queued earlier but rides after
                // the ordinary writes ([`crate::store::batch`]), and one
                // statement must not both update and delete a row.
                (WriteOp::Remove(ids), _) => {
                    let upd_at = &self.upd_at;
                    self.removed
                        .extend(ids.iter().copied().filter(|id| !upd_at.contains_key(id)))
                }
                (WriteOp::ReleaseKey { id, key }, _) => {
                    self.rel_id.push(*id);
                    self.rel_key.push(key);
                }
                (WriteOp::Quarantine { key, reason }, _) => {
                    if let Ok(id) = Uuid::from_slice(key) {
                        self.q_id.push(id);
                        self.q_reason.push(reason);
                    }
                }
                _ => unreachable!("images follow their ops"),
            }
        }
        Ok(())
    }
}

/// The `purge_at` column of a task's row: when retention may remove it.
fn purge_at(retention: &RetentionPolicy, task: &Task) -> Option<i64> {
    retention.purge_at(&task.spec, task.rt.state, task.rt.finished_at?)
}

/// What one committed batch did.
struct Committed {
    inserted: HashSet<Uuid>,
    updated: HashSet<Uuid>,
}

/// Sends the whole batch as one statement ([`WRITE`]) in its own implicit
/// transaction: one message, one round trip, one WAL flush, and no `BEGIN`
/// or `COMMIT` for the database to run. The rare batch that sets rows aside
/// adds that statement in an explicit transaction, pipelined.
async fn commit(
    c: &Client,
    s: &Stmts,
    p: &Plan<'_>,
    fence: Option<&Fence>,
) -> Result<Committed, tokio_postgres::Error> {
    let (partition, term, holder) = match fence {
        Some(f) => (f.partition, f.term, Some(f.holder.as_str())),
        None => (0, 0, None),
    };
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 36] = [
        &partition,
        &term,
        &holder,
        &p.ins_id,
        &p.ins_created,
        &p.ins_name,
        &p.ins_type,
        &p.ins_state,
        &p.ins_seq,
        &p.ins_source,
        &p.ins_user,
        &p.ins_session,
        &p.ins_key,
        &p.ins_parent,
        &p.ins_spec,
        &p.ins_rt,
        &p.ins_payload,
        &p.ins_payload_of,
        &p.upd_id,
        &p.upd_state,
        &p.upd_seq,
        &p.upd_source,
        &p.upd_rt,
        &p.log_task,
        &p.log_time,
        &p.log_source,
        &p.log_level,
        &p.log_attempt,
        &p.log_message,
        &p.ins_purge,
        &p.upd_purge,
        &p.removed,
        &p.ins_schedule,
        &p.ins_error_kind,
        &p.upd_error_kind,
        &p.ins_namespace,
    ];
    let write = c.query_one(&s.write, &params);
    let row = if !p.rel_id.is_empty() {
        // The rare batch that frees keys whose window has passed: freed
        // first, in the same transaction, so the inserts may take them
        // (the statement's parts see one snapshot, so it cannot be a part
        // of it). Pipelined as the quarantine is below.
        let now = now_micros();
        let q_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&p.q_id, &now, &p.q_reason, &QUARANTINED];
        let r_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&p.rel_id, &p.rel_key];
        let (b, r, row, q, e) = futures::join!(
            c.batch_execute("BEGIN"),
            c.execute(&s.release, &r_params),
            write,
            c.execute(&s.quarantine, &q_params),
            c.batch_execute("COMMIT"),
        );
        b?;
        r?;
        let row = row?;
        q?;
        e?;
        row
    } else if p.q_id.is_empty() {
        write.await?
    } else {
        // Polled together: every request leaves before the first answer
        // is awaited (tokio-postgres sends in first-poll order).
        let now = now_micros();
        let q_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&p.q_id, &now, &p.q_reason, &QUARANTINED];
        let (b, row, q, e) = futures::join!(
            c.batch_execute("BEGIN"),
            write,
            c.execute(&s.quarantine, &q_params),
            c.batch_execute("COMMIT"),
        );
        // The first failure is the cause; after it, the server refused the
        // rest of the transaction and turned COMMIT into a rollback.
        b?;
        let row = row?;
        q?;
        e?;
        row
    };
    let ids = |i: usize| -> Result<HashSet<Uuid>, tokio_postgres::Error> {
        Ok(row
            .try_get::<_, Option<Vec<Uuid>>>(i)?
            .unwrap_or_default()
            .into_iter()
            .collect())
    };
    Ok(Committed {
        inserted: ids(0)?,
        updated: ids(1)?,
    })
}

/// The writer's connection, reopened when lost.
struct Conn {
    cfg: tokio_postgres::Config,
    live: Option<(Client, Stmts)>,
}

impl Conn {
    async fn get(&mut self) -> Result<&(Client, Stmts), String> {
        if self.live.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.live = None;
        }
        if self.live.is_none() {
            let c = super::connect(&self.cfg).await.map_err(|e| e.to_string())?;
            let s = Stmts::prepare(&c).await.map_err(|e| e.to_string())?;
            self.live = Some((c, s));
        }
        Ok(self.live.as_ref().expect("just set"))
    }
}

fn set_writable(shared: &Shared, ok: bool, why: &str) {
    let was = shared.writable.swap(ok, Ordering::AcqRel);
    if was != ok {
        if let Some(s) = shared.stats.sink.get() {
            s.store_blocked(!ok);
        }
    }
    if !ok {
        *shared.unwritable_reason.lock() = format!("the database cannot be reached: {why}");
        if was {
            tracing::error!(
                cause = why,
                "the store cannot commit; writes are kept and retried"
            );
        }
    } else if !was {
        tracing::info!("the store commits again");
    }
}

/// Commits `groups` as one batch, retrying on a lost connection; returns
/// each group's outcome and the events to publish, or the fence.
async fn commit_groups(
    conn: &mut Conn,
    groups: &[Group],
    shared: &Shared,
    rx: &mpsc::UnboundedReceiver<Group>,
) -> (
    Vec<Result<Vec<WriteOutcome>, Arc<StoreError>>>,
    Vec<Arc<TaskEvent>>,
) {
    let fence = shared.fence.get();
    let mut plan = Plan {
        retention: shared.retention.clone(),
        ..Plan::default()
    };
    let mut bad: Vec<Option<StoreError>> = Vec::with_capacity(groups.len());
    for g in groups {
        bad.push(plan.add(&g.ops).err());
    }
    let mut attempt = 0u32;
    let since = Instant::now();
    let done = loop {
        let res = match conn.get().await {
            Ok((c, s)) => match commit(c, s, &plan, fence).await {
                Ok(done) => Ok(done),
                Err(e) => Err(classify(e, fence)),
            },
            Err(why) => Err(Fail::Connection(why)),
        };
        match res {
            Ok(done) => break Ok(done),
            Err(Fail::Connection(why)) => {
                conn.live = None;
                set_writable(shared, false, &why);
                shared.stats.retries.fetch_add(1, Ordering::Relaxed);
                // At shutdown (nobody can submit any more) an outage is not
                // waited out for ever: what was not committed is not
                // acknowledged, and a restart rebuilds from the store.
                if rx.is_closed() && since.elapsed() > Duration::from_secs(30) {
                    break Err(Arc::new(StoreError::Unavailable(why)));
                }
                attempt += 1;
                let backoff = Duration::from_millis((50u64 << attempt.min(5)).min(1000));
                tokio::time::sleep(backoff).await;
            }
            Err(Fail::Fenced(term)) => {
                shared.fenced.send_replace(Some(term));
                tracing::error!(
                    term,
                    "fenced: another replica took over; this one writes nothing more"
                );
                break Err(Arc::new(StoreError::Fenced { term }));
            }
            Err(Fail::Data(e)) if groups.len() > 1 => {
                tracing::warn!(cause = %e, "a batch was refused; committing its groups one by one");
                let mut results = Vec::with_capacity(groups.len());
                let mut events = Vec::new();
                for g in groups {
                    let (mut r, ev) =
                        Box::pin(commit_groups(conn, std::slice::from_ref(g), shared, rx)).await;
                    results.push(r.remove(0));
                    events.extend(ev);
                }
                return (results, events);
            }
            Err(Fail::Data(e)) => {
                tracing::error!(cause = %e, "store write group rolled back");
                break Err(Arc::new(e));
            }
        }
    };
    set_writable(shared, true, "");
    shared
        .stats
        .coalesced
        .fetch_add(plan.coalesced, Ordering::Relaxed);
    let done = match done {
        Ok(d) => d,
        Err(e) => return (groups.iter().map(|_| Err(e.clone())).collect(), Vec::new()),
    };
    // Inserts that did not happen: whose is the key (or the id)?
    let retried = attempt > 0;
    let mut missing_keys: Vec<String> = Vec::new();
    for (i, id) in plan.ins_id.iter().enumerate() {
        if !done.inserted.contains(id) {
            if let Some(k) = &plan.ins_key[i] {
                missing_keys.push(k.to_string());
            }
        }
    }
    let mut owners: HashMap<String, Uuid> = HashMap::new();
    if !missing_keys.is_empty() {
        if let Ok((c, s)) = conn.get().await {
            match c.query(&s.keys, &[&missing_keys]).await {
                Ok(rows) => {
                    owners = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                }
                Err(e) => tracing::warn!(cause = %e, "reading the owners of idempotency keys"),
            }
        }
    }
    let now = now_micros();
    let mut events = Vec::new();
    let mut results = Vec::with_capacity(groups.len());
    let mut exists: HashSet<Uuid> = done.inserted.clone();
    exists.extend(done.updated.iter().copied());
    for (g, bad) in groups.iter().zip(bad) {
        if let Some(e) = bad {
            results.push(Err(Arc::new(e)));
            continue;
        }
        let mut out = Vec::with_capacity(g.ops.len());
        for op in &g.ops {
            match op {
                WriteOp::Insert { task, event, .. } => {
                    let mine = done.inserted.contains(&task.id)
                        || (retried
                            && match &task.spec.idempotency_key {
                                Some(k) => owners.get(&**k) == Some(&task.id),
                                // An id is ours alone: a conflict on it after
                                // a retry is our own unacknowledged commit.
                                None => true,
                            });
                    if mine {
                        // Its updates in this batch rode on the insert.
                        exists.insert(task.id);
                        if let Some(kind) = event {
                            events.push(Arc::new(TaskEvent {
                                seq: task.rt.seq,
                                kind: *kind,
                                time: now,
                                task: task.clone(),
                            }));
                        }
                        out.push(WriteOutcome::Done);
                    } else {
                        let owner = task
                            .spec
                            .idempotency_key
                            .as_ref()
                            .and_then(|k| owners.get(&**k).copied())
                            .unwrap_or(task.id);
                        out.push(WriteOutcome::Existing(owner));
                    }
                }
                WriteOp::Update { task, event, .. } => {
                    if exists.contains(&task.id) {
                        if let Some(kind) = event {
                            events.push(Arc::new(TaskEvent {
                                seq: task.rt.seq,
                                kind: *kind,
                                time: now,
                                task: task.clone(),
                            }));
                        }
                    }
                    out.push(WriteOutcome::Done);
                }
                WriteOp::Log(_)
                | WriteOp::Quarantine { .. }
                | WriteOp::Remove(_)
                | WriteOp::ReleaseKey { .. } => out.push(WriteOutcome::Done),
            }
        }
        results.push(Ok(out));
    }
    (results, events)
}

impl Queued for Group {
    fn ops(&self) -> &[WriteOp] {
        &self.ops
    }
    fn lazy(&self) -> bool {
        self.lazy
    }
}

/// The writer: forms batches ([`crate::store::batch`]) and commits them.
pub(super) async fn run(
    client: Client,
    cfg: tokio_postgres::Config,
    mut rx: mpsc::UnboundedReceiver<Group>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let stmts = match Stmts::prepare(&client).await {
        Ok(s) => Some((client, s)),
        Err(e) => {
            tracing::warn!(cause = %e, "preparing the writer's statements; retrying on use");
            None
        }
    };
    let mut conn = Conn { cfg, live: stmts };
    let mut former = BatchFormer::new();
    loop {
        // Wait for a write, unless removals wait for a commit already.
        if !former.removals_waiting() {
            match rx.recv().await {
                Some(g) => former.push(g),
                None => break,
            }
        }
        // Everything queued now joins (removals aside); only lazy writes
        // so far: wait (a little) for one that needs a commit.
        let lazy_until = tokio::time::Instant::now() + limits.lazy_within;
        while !former.full(limits.max_batch) {
            let next = match rx.try_recv() {
                Ok(g) => Some(g),
                Err(mpsc::error::TryRecvError::Empty) if former.lazy_only() => {
                    tokio::time::timeout_at(lazy_until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            match next {
                Some(g) => former.push(g),
                None => break,
            }
        }
        let Batch {
            groups, weight: n, ..
        } = former.take();
        if groups.is_empty() {
            continue;
        }
        if let Some(term) = *shared.fenced.borrow() {
            for g in groups {
                if let Some(done) = g.done {
                    let _ = done.send(Err(Arc::new(StoreError::Fenced { term })));
                }
            }
            continue;
        }
        let started = Instant::now();
        let (results, events) = commit_groups(&mut conn, &groups, &shared, &rx).await;
        let stats = &shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats.ops.fetch_add(n as u64, Ordering::Relaxed);
        stats
            .commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Some(s) = stats.sink.get() {
            s.store_commit(started.elapsed(), n);
        }
        // Publish, then answer: once a caller hears its write is durable, a
        // watcher that starts then sees its event.
        if !events.is_empty() {
            if let Some(l) = shared.listener.get() {
                l.committed(events);
            }
        }
        for (g, r) in groups.into_iter().zip(results) {
            if let Some(done) = g.done {
                let _ = done.send(r);
            }
        }
    }
}

//! The writer task: group commit on PostgreSQL.
//!
//! It drains the queued groups (up to `max_batch` operations), turns them
//! into arrays, one per column of each kind (inserts, updates, log lines,
//! quarantines), and sends them in one call of `switchyard_write` (migration
//! V3), which checks the fence and runs one `unnest` statement per kind as
//! one implicit transaction: a batch costs one statement, one round trip and
//! one WAL flush whatever its size.
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
use crate::domain::{now_micros, Payload, TaskEvent};
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

/// The writer's prepared statements, per connection.
struct Stmts {
    /// `switchyard_write`: a whole batch in one statement (migration V3).
    write: Statement,
    keys: Statement,
}

impl Stmts {
    async fn prepare(c: &Client) -> Result<Stmts, tokio_postgres::Error> {
        let (write, keys) = futures::try_join!(
            c.prepare(
                "SELECT inserted, updated FROM switchyard_write(
                    $1::int4, $2::int8, $3::text,
                    $4::uuid[], $5::int8[], $6::text[], $7::int2[], $8::int2[], $9::int8[],
                    $10::int2[], $11::text[], $12::text[], $13::text[], $14::uuid[], $15::text[],
                    $16::text[], $17::text[], $18::uuid[],
                    $19::uuid[], $20::int2[], $21::int8[], $22::int2[], $23::text[],
                    $24::uuid[], $25::int8[], $26::int2[], $27::text[], $28::int4[], $29::text[],
                    $30::uuid[], $31::int8, $32::text[], $33::int2)"
            ),
            c.prepare(
                "SELECT idempotency_key, id FROM tasks WHERE idempotency_key = ANY($1::text[])"
            ),
        )?;
        Ok(Stmts { write, keys })
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
    ins_key: Vec<Option<&'a str>>,
    ins_parent: Vec<Option<Uuid>>,
    ins_spec: Vec<String>,
    ins_rt: Vec<String>,
    ins_payload: Vec<Option<&'a str>>,
    ins_payload_of: Vec<Option<Uuid>>,
    upd_at: HashMap<Uuid, usize>,
    upd_id: Vec<Uuid>,
    upd_state: Vec<i16>,
    upd_seq: Vec<i64>,
    upd_source: Vec<i16>,
    upd_rt: Vec<String>,
    log_task: Vec<Uuid>,
    log_time: Vec<i64>,
    log_source: Vec<i16>,
    log_level: Vec<&'a str>,
    log_attempt: Vec<i32>,
    log_message: Vec<&'a str>,
    q_id: Vec<Uuid>,
    q_reason: Vec<&'a str>,
    /// Row writes skipped because a later one of the batch carries the row.
    coalesced: u64,
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
                    self.ins_id.push(task.id);
                    self.ins_created.push(task.created_at);
                    self.ins_name.push(&task.spec.name);
                    self.ins_type.push(task.spec.task_type.code() as i16);
                    self.ins_state.push(task.rt.state.code() as i16);
                    self.ins_seq.push(task.rt.seq.min(i64::MAX as u64) as i64);
                    self.ins_source.push(task.rt.source.code() as i16);
                    self.ins_user.push(task.spec.user_id.as_deref());
                    self.ins_session.push(task.spec.session_id.as_deref());
                    self.ins_key.push(task.spec.idempotency_key.as_deref());
                    self.ins_parent.push(task.spec.parent_id);
                    self.ins_spec.push(spec);
                    self.ins_rt.push(rt);
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
                    match self.upd_at.get(&id) {
                        Some(&i) => {
                            self.upd_state[i] = state;
                            self.upd_seq[i] = seq;
                            self.upd_source[i] = source;
                            self.upd_rt[i] = rt;
                            self.coalesced += 1;
                        }
                        None => {
                            self.upd_at.insert(id, self.upd_id.len());
                            self.upd_id.push(id);
                            self.upd_state.push(state);
                            self.upd_seq.push(seq);
                            self.upd_source.push(source);
                            self.upd_rt.push(rt);
                        }
                    }
                    self.add_logs(log);
                }
                (WriteOp::Log(lines), _) => self.add_logs(lines),
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

/// What one committed batch did.
struct Committed {
    inserted: HashSet<Uuid>,
    updated: HashSet<Uuid>,
}

/// Sends the whole batch as one statement, `switchyard_write` (the fence,
/// the inserts, the updates, the log lines and the rows set aside, in that
/// order), in its own implicit transaction: one message, one round trip,
/// one WAL flush, and no `BEGIN` or `COMMIT` for the database to run.
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
    let row = c
        .query_one(
            &s.write,
            &[
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
                &p.q_id,
                &now_micros(),
                &p.q_reason,
                &QUARANTINED,
            ],
        )
        .await?;
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
    let mut plan = Plan::default();
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
                                Some(k) => owners.get(k) == Some(&task.id),
                                // An id is ours alone: a conflict on it after
                                // a retry is our own unacknowledged commit.
                                None => true,
                            });
                    if mine {
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
                            .and_then(|k| owners.get(k).copied())
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
                WriteOp::Log(_) | WriteOp::Quarantine { .. } => out.push(WriteOutcome::Done),
            }
        }
        results.push(Ok(out));
    }
    (results, events)
}

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
    while let Some(first) = rx.recv().await {
        let mut groups = vec![first];
        let mut n = groups[0].ops.len();
        let mut lazy_only = groups[0].lazy;
        let lazy_until = tokio::time::Instant::now() + limits.lazy_within;
        while n < limits.max_batch {
            let next = match rx.try_recv() {
                Ok(g) => Some(g),
                Err(mpsc::error::TryRecvError::Empty) if lazy_only => {
                    tokio::time::timeout_at(lazy_until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            match next {
                Some(g) => {
                    n += g.ops.len();
                    lazy_only &= g.lazy;
                    groups.push(g);
                }
                None => break,
            }
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

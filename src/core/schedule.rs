//! Scheduling: accepting new tasks (from clients and from inside the
//! server), admission checks, cleanup tasks.
//!
//! Owns: [`Core::schedule`], [`Core::schedule_many`] (one group commit for
//! many), [`Core::schedule_internal`] and the withdrawal of a task whose
//! insert failed.
//! Must not: dispatch (that happens in `Core::with_state`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::domain::debounce;
use crate::domain::Payload;
use crate::domain::*;
use crate::store::{Completion, WriteOp, WriteOutcome};

use super::state::State;
use super::transitions::CleanupReason;
use super::{CancelReason, Core, CoreError, EngineKind, Push};

/// An executor's check of a task routed to its queue key, run by
/// [`Core::schedule`] before anything is written: a task its executor could
/// never run (an unknown workflow type, say) is refused with a clear error
/// instead of failing later.
pub type Admission = Arc<dyn Fn(&TaskSpec) -> Result<(), CoreError> + Send + Sync>;

/// How a new task was taken.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The task (the existing one if `existing`).
    pub task: Task,
    /// Whether the idempotency key (or a THROTTLE key) matched an existing
    /// task.
    pub existing: bool,
    /// What happened, in one word.
    pub outcome: Outcome,
    /// The pending tasks of its debounce key the new task superseded
    /// (cancelled, committed before the answer).
    pub superseded: Vec<TaskId>,
}

/// What scheduling a task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new task.
    Created,
    /// Its idempotency key matched an existing task, within the key's
    /// window: nothing new.
    Existing,
    /// A new task, which superseded the older pending task of its debounce
    /// key.
    SupersededOthers,
    /// Its THROTTLE key's first task is within its period: nothing new.
    Throttled,
}

/// How many times a task whose idempotency key's window has passed is
/// tried again (the key freed, then inserted): two concurrent schedules of
/// such a key race, the loser finds the winner's task.
const KEY_ROUNDS: usize = 3;

impl Core {
    /// Accepts a task: commits it durably before answering.
    ///
    /// A task on a worker queue of the embedded engine is placed in its
    /// queue in the same critical section that submits its insert (see
    /// [`overlaps_commit`]): a worker may start it while the group commit is
    /// under way, so the commit's wait is not added to schedule-to-start.
    /// Its RUNNING write queues behind the insert, so no event of it is
    /// published, and the caller is not answered, before the insert is
    /// durable. Should the commit fail, the task is withdrawn (its worker is
    /// told to stop) and the caller gets the error. Tasks with an
    /// idempotency key (which may turn out to be an existing task) and tasks
    /// for an engine or in-process executor (whose side effects must never
    /// belong to a task the store does not have) are queued only once their
    /// insert is durable.
    pub async fn schedule(&self, new: NewTask) -> Result<Scheduled, CoreError> {
        let (_, engine) = self.admit(&new.spec)?;
        // A store that cannot commit now (its database is unreachable)
        // keeps what it has; new work is refused until it can.
        self.inner.store.writable()?;
        self.commit_new(vec![(new, engine)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(CoreError::Unavailable("the task was not settled".into())))
    }

    /// Accepts several tasks at once (`ScheduleTasks`): each is admitted on
    /// its own, as [`Core::schedule`] admits one, and the admitted ones are
    /// submitted as one group (one store submission, so one group commit)
    /// and awaited once; then each is placed as [`Core::schedule`] places
    /// one. One result per item, in order: a refused item (admission) does
    /// not stop the others. The whole call fails, and nothing of it is
    /// scheduled, when the store cannot take writes now, the server drains,
    /// or the commit fails (the group commits or fails as a whole).
    ///
    /// Two items with the same idempotency key: the store inserts the first
    /// and answers the second with the first's id, as it would a second
    /// `schedule`.
    pub async fn schedule_many(
        &self,
        items: Vec<NewTask>,
    ) -> Result<Vec<Result<Scheduled, CoreError>>, CoreError> {
        let mut out: Vec<Result<Scheduled, CoreError>> = Vec::with_capacity(items.len());
        let mut admitted = Vec::with_capacity(items.len());
        let mut slots = Vec::with_capacity(items.len());
        for new in items {
            match self.admit(&new.spec) {
                Ok((_, engine)) => {
                    slots.push(out.len());
                    admitted.push((new, engine));
                    out.push(Err(CoreError::Unavailable("not settled".into())));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if admitted.is_empty() {
            return Ok(out);
        }
        self.inner.store.writable()?;
        for (slot, r) in slots.into_iter().zip(self.commit_new(admitted).await?) {
            out[slot] = r;
        }
        Ok(out)
    }

    /// Submits the inserts of admitted new tasks as one group, awaits its
    /// commit once and places each task: the part [`Core::schedule`] and
    /// [`Core::schedule_many`] share. `Err` when the group did not commit
    /// (nothing of it is scheduled); otherwise one result per task, in
    /// order (an existing task's status may fail to be read).
    ///
    /// An insert whose idempotency key belongs to a task whose key window
    /// has passed (`TaskOptions.idempotency_ttl`, a THROTTLE period) is
    /// submitted again after the key is freed (`WriteOp::ReleaseKey`, in
    /// the same group). A new task that superseded pending tasks of its
    /// debounce key is answered once their cancels are durable too.
    async fn commit_new(
        &self,
        items: Vec<(NewTask, EngineKind)>,
    ) -> Result<Vec<Result<Scheduled, CoreError>>, CoreError> {
        let mut fresh = Vec::with_capacity(items.len());
        let mut any_early = false;
        for (mut new, engine) in items {
            let early = overlaps_commit(engine, &new.spec);
            any_early |= early;
            // Without a delay, the first line is derived when the log is
            // read (`TaskSpec::first_line_derived`): no log row.
            let msg = (!new.delay.is_zero()).then(|| {
                format!(
                    "{}, delayed {}",
                    LogEntry::scheduled(new.spec.task_type),
                    humantime::format_duration(new.delay)
                )
            });
            new.spec.first_line_derived = msg.is_none();
            let cached = cached_payload(&new.payload);
            let task = pending_task(new.spec, new.delay, engine.source(), now_micros());
            fresh.push(Fresh {
                task,
                payload: new.payload,
                msg,
                cached,
                early,
            });
        }
        let n = fresh.len();
        let mut settled = self.insert_group(fresh, Vec::new(), any_early).await?;
        // Where each settled task goes in `out`: in the first round its own
        // place; in a later one, the places of the tasks tried again.
        let mut slots: Option<Vec<usize>> = None;
        let mut out: Vec<Option<Result<Scheduled, CoreError>>> = (0..n).map(|_| None).collect();
        let mut any_superseded = false;
        for round in 1..=KEY_ROUNDS {
            let mut again = Vec::new();
            let mut again_slots = Vec::new();
            let mut release = Vec::new();
            for (i, s) in settled.into_iter().enumerate() {
                let slot = slots.as_ref().map_or(i, |v| v[i]);
                let r = match s {
                    Settled::New(task, superseded) => {
                        any_superseded |= !superseded.is_empty();
                        Ok(Scheduled {
                            task,
                            existing: false,
                            outcome: if superseded.is_empty() {
                                Outcome::Created
                            } else {
                                Outcome::SupersededOthers
                            },
                            superseded,
                        })
                    }
                    Settled::Existing(owner, mine) => match self.status(owner).await {
                        Ok(old) => {
                            let throttled = mine.as_ref().is_some_and(|(t, _)| {
                                t.spec.debounce_mode() == Some(debounce::Mode::Throttle)
                            });
                            match mine {
                                Some((mut task, Some(payload)))
                                    if round < KEY_ROUNDS
                                        && debounce::key_expired(
                                            &old.spec,
                                            old.created_at,
                                            task.created_at,
                                        ) =>
                                {
                                    if let Some(key) = &task.spec.idempotency_key {
                                        release.push(WriteOp::ReleaseKey {
                                            id: owner,
                                            key: key.clone(),
                                        });
                                    }
                                    // This first line says more: stored.
                                    Arc::make_mut(&mut task.spec).first_line_derived = false;
                                    let msg = Some(format!(
                                        "{}; the key window of task {owner} had passed",
                                        LogEntry::scheduled(task.spec.task_type)
                                    ));
                                    again.push(Fresh {
                                        task,
                                        payload: Payload::Json(payload.clone()),
                                        msg,
                                        cached: Some(payload),
                                        early: false,
                                    });
                                    again_slots.push(slot);
                                    continue;
                                }
                                _ => Ok(Scheduled {
                                    task: old,
                                    existing: true,
                                    outcome: if throttled {
                                        Outcome::Throttled
                                    } else {
                                        Outcome::Existing
                                    },
                                    superseded: Vec::new(),
                                }),
                            }
                        }
                        Err(e) => Err(e),
                    },
                    Settled::ToQueue(..) => Err(CoreError::Unavailable("not queued".into())),
                };
                out[slot] = Some(r);
            }
            if again.is_empty() {
                break;
            }
            match self.insert_group(again, release, false).await {
                Ok(s) => settled = s,
                Err(e) => {
                    // The first group committed; only these are not.
                    let why = e.to_string();
                    let mut e = Some(e);
                    for slot in again_slots {
                        out[slot] = Some(Err(e
                            .take()
                            .unwrap_or_else(|| CoreError::Unavailable(why.clone()))));
                    }
                    break;
                }
            }
            slots = Some(again_slots);
        }
        if any_superseded {
            // The superseded tasks' cancels were submitted when the new
            // ones were placed: durable before the answer.
            self.inner.store.flush().await.map_err(CoreError::Store)?;
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(CoreError::Unavailable("not settled".into()))))
            .collect())
    }

    /// Submits `release` (keys to free) and the inserts of `fresh` as one
    /// group, awaits its commit and settles each task (see
    /// [`Core::commit_new`]).
    async fn insert_group(
        &self,
        fresh: Vec<Fresh>,
        release: Vec<WriteOp>,
        any_early: bool,
    ) -> Result<Vec<Settled>, CoreError> {
        let (tx, rx) = oneshot::channel();
        let skip = release.len();
        // The early ones are queued in the critical section that submits
        // the inserts; `with_state` dispatches after the closure, and
        // submits what the dispatch wrote (RUNNING transitions) after them.
        let placed = if any_early {
            self.with_state(|st| self.submit_inserts(st, release, fresh, tx))?
        } else {
            self.submit_inserts(&mut self.inner.state.lock(), release, fresh, tx)?
        };
        // What follows the commit (queueing the tasks, or withdrawing them)
        // must happen even if the caller goes away meanwhile (a client's
        // deadline while the database is slow or down): should this future
        // be dropped before the inserts are settled, `Tail` hands the rest
        // to a task of its own. Otherwise it runs here, without a task hop.
        let mut tail = Tail(Some(Pending {
            core: self.clone(),
            rx,
            skip,
            placed,
        }));
        let res = (&mut tail.0.as_mut().expect("armed").rx).await;
        let pending = tail.0.take().expect("armed");
        pending.settle(res)
    }

    /// The queue key and engine of a new task, once its engine is running
    /// here and admits it.
    fn admit<'a>(
        &self,
        spec: &'a TaskSpec,
    ) -> Result<(std::borrow::Cow<'a, str>, EngineKind), CoreError> {
        let (key, engine) = self.inner.cfg.routes.route(spec);
        if engine.in_process() && !self.has_consumer(&key) {
            return Err(CoreError::FailedPrecondition(format!(
                "no executor for {} tasks is running on this server (queue {key})",
                spec.task_type.as_str()
            )));
        }
        self.inner.cfg.routes.check_settings(spec, engine)?;
        if let Some(admit) = self.inner.admissions.read().get(&*key) {
            admit(spec)?;
        }
        Ok((key, engine))
    }

    /// Gives each new task its sequence number and submits their inserts
    /// (each with its payload and first log line), after `release`, as one
    /// group, to be
    /// answered on `done`; places the early ones (see [`overlaps_commit`])
    /// in their queues. Called under the state lock: the store sees
    /// sequence order.
    fn submit_inserts(
        &self,
        st: &mut State,
        release: Vec<WriteOp>,
        fresh: Vec<Fresh>,
        done: Completion,
    ) -> Result<Vec<Placed>, CoreError> {
        if st.draining {
            return Err(CoreError::Unavailable("the server is shutting down".into()));
        }
        let mut ops = release;
        ops.reserve(fresh.len());
        let mut kept = Vec::with_capacity(fresh.len());
        for mut f in fresh {
            f.task.rt.seq = st.seq();
            ops.push(WriteOp::Insert {
                task: f.task.clone(),
                payload: f.payload,
                log: f
                    .msg
                    .map(|m| LogEntry::system(f.task.id, 0, m))
                    .into_iter()
                    .collect(),
                event: Some(EventKind::Scheduled),
            });
            kept.push((f.task, f.cached, f.early));
        }
        self.inner.store.submit(ops, Some(done));
        Ok(kept
            .into_iter()
            .map(|(task, cached, early)| {
                if early {
                    Placed::Queued(st.queue_accepted(task, cached).0)
                } else {
                    Placed::AfterCommit(task, cached)
                }
            })
            .collect())
    }

    /// Takes back a task that was queued before its insert was durable and
    /// whose insert then failed: it leaves memory without a write (the store
    /// has no row to change), and a worker that started it is told to stop.
    pub(super) fn withdraw(&self, id: TaskId, why: &str) {
        self.with_state(|st| {
            let Some(a) = st.tasks.get(&id) else {
                return;
            };
            let (state, attempt) = (a.task.rt.state, a.task.rt.attempt);
            let holder = a.worker;
            st.end_run(id, "withdrawn");
            st.unplace(id);
            st.set_deadline(id, None);
            st.release_slot(id);
            if let Some(w) = holder {
                st.push_to(
                    w,
                    Push::Cancel {
                        task_id: id,
                        attempt,
                        reason: CancelReason::NotAccepted(why.to_string()),
                        force: true,
                    },
                );
            }
            if let Some(a) = st.tasks.remove(&id) {
                if let Some(p) = &a.payload {
                    st.cached_bytes = st.cached_bytes.saturating_sub(p.len());
                }
                st.counts
                    .remove(a.task.spec.task_type, &a.task.spec.name, state);
                st.unindex_owner(&a.task);
            }
            tracing::error!(task_id = %id, why, "task withdrawn: it was queued before its insert was durable, and the insert failed");
        });
    }

    /// Schedules a task from inside the server (cleanups, workflow steps):
    /// queued in order behind the write that caused it, not awaited.
    pub fn schedule_internal(&self, new: NewTask) -> Task {
        self.with_state(|st| st.schedule_internal(new))
    }

    /// Sets the admission check of the tasks routed to an in-process engine.
    pub fn set_admission(&self, engine: EngineKind, admit: Admission) {
        if let Some(key) = engine.key() {
            self.inner.admissions.write().insert(key.to_string(), admit);
        }
    }

    pub(super) fn has_consumer(&self, key: &str) -> bool {
        let st = self.inner.state.lock();
        st.queues.get(key).is_some_and(|q| !q.workers.is_empty())
    }
}

/// Where a new task is while its insert commits.
type InsertRx = oneshot::Receiver<Result<Vec<WriteOutcome>, Arc<crate::store::StoreError>>>;

/// A new task before its insert is submitted.
struct Fresh {
    task: Task,
    payload: Payload,
    /// Its first log line, unless it is derived
    /// (`TaskSpec::first_line_derived`).
    msg: Option<String>,
    cached: Option<Arc<str>>,
    /// Queued before its insert is durable (see [`overlaps_commit`]).
    early: bool,
}

/// New tasks whose inserts are submitted (one group) but not yet settled.
struct Pending {
    core: Core,
    rx: InsertRx,
    /// The operations of the group before its inserts (keys freed).
    skip: usize,
    /// In submission order, one per insert of the group.
    placed: Vec<Placed>,
}

/// How a new task's insert settled.
enum Settled {
    /// Inserted; the task as queued, and the tasks of its debounce key it
    /// superseded.
    New(Task, Vec<TaskId>),
    /// Inserted; to be queued now (with its payload).
    ToQueue(Task, Option<Arc<str>>),
    /// Its idempotency key belongs to this existing task; the task that
    /// was not inserted, with its payload, to try again should the key's
    /// window have passed.
    Existing(TaskId, Option<(Task, Option<Arc<str>>)>),
}

impl Pending {
    /// What follows the inserts: each task is queued (if it was not yet),
    /// or withdrawn (if it was queued early and the group failed).
    fn settle(
        self,
        res: Result<
            Result<Vec<WriteOutcome>, Arc<crate::store::StoreError>>,
            oneshot::error::RecvError,
        >,
    ) -> Result<Vec<Settled>, CoreError> {
        let Pending {
            core, placed, skip, ..
        } = self;
        let withdraw_early = |why: &str| {
            for p in &placed {
                if let Placed::Queued(t) = p {
                    core.withdraw(t.id, why);
                }
            }
        };
        let outcome = match res {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                withdraw_early(&format!("its insert failed: {e}"));
                return Err(CoreError::Store(e));
            }
            Err(_) => {
                withdraw_early("the store closed before its insert was durable");
                return Err(CoreError::Unavailable("the store is closed".into()));
            }
        };
        let mut settled: Vec<Settled> = placed
            .into_iter()
            .enumerate()
            .map(|(i, p)| match (outcome.get(skip + i), p) {
                (Some(WriteOutcome::Existing(existing)), p) => match p {
                    Placed::Queued(t) => {
                        // Not expected without an idempotency key (the id is new).
                        core.withdraw(t.id, "the store holds another task under its key");
                        Settled::Existing(*existing, None)
                    }
                    Placed::AfterCommit(task, cached) => {
                        Settled::Existing(*existing, Some((task, cached)))
                    }
                },
                (_, Placed::Queued(task)) => Settled::New(task, Vec::new()),
                (_, Placed::AfterCommit(task, cached)) => Settled::ToQueue(task, cached),
            })
            .collect();
        if settled.iter().any(|s| matches!(s, Settled::ToQueue(..))) {
            settled = core.with_state(|st| {
                settled
                    .into_iter()
                    .map(|s| match s {
                        Settled::ToQueue(task, cached) => {
                            let (task, superseded) = st.queue_accepted(task, cached);
                            Settled::New(task, superseded)
                        }
                        s => s,
                    })
                    .collect()
            });
        }
        Ok(settled)
    }
}

/// Armed while [`Core::schedule`]'s (or [`Core::schedule_many`]'s) caller
/// awaits the inserts: dropped armed (the caller went away), it settles
/// them on a task of its own.
struct Tail(Option<Pending>);

impl Drop for Tail {
    fn drop(&mut self) {
        let Some(mut pending) = self.0.take() else {
            return;
        };
        // Outside a runtime (it is shutting down) there is nothing to
        // settle: a restart rebuilds from the store.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let res = (&mut pending.rx).await;
                let _ = pending.settle(res);
            });
        }
    }
}

enum Placed {
    /// In its queue already; the task as accepted.
    Queued(Task),
    /// To be queued once the insert is durable, with its payload.
    AfterCommit(Task, Option<Arc<str>>),
}

/// The payload to keep in memory, if the new task carries its own.
fn cached_payload(p: &Payload) -> Option<Arc<str>> {
    match p {
        Payload::Json(p) => Some(p.clone()),
        Payload::CopyOf(_) => None,
    }
}

/// A new PENDING task created at `now`, runnable after `delay`. Its id
/// (a UUIDv7) comes from the clock: it only has to be unique and sort by
/// creation.
fn pending_task(spec: TaskSpec, delay: Duration, source: Source, now: Micros) -> Task {
    let reason = if delay.is_zero() {
        WaitingReason::Queued
    } else {
        WaitingReason::Delayed
    };
    Task {
        id: TaskId::now_v7(),
        created_at: now,
        spec: Arc::new(spec),
        rt: TaskRuntime::new_pending(add_micros(now, delay), source, reason),
    }
}

/// Whether a task accepted by [`Core::schedule`] is queued while its insert
/// commits, rather than after: a task for a worker queue of the embedded
/// queue with no idempotency key and no debounce key (a debounce key's task
/// supersedes the older one when it is placed, which must follow the
/// commits of both).
pub(super) fn overlaps_commit(engine: EngineKind, spec: &TaskSpec) -> bool {
    !engine.in_process() && spec.idempotency_key.is_none() && spec.dedup.is_none()
}

impl State {
    /// Schedules a task from inside the server: its insert is queued with
    /// the current critical section's writes, and it is queued at once.
    pub(super) fn schedule_internal(&mut self, new: NewTask) -> Task {
        let source = self.cfg.routes.route(&new.spec).1.source();
        // Its first line, "scheduled (TYPE)", is derived when the log is
        // read (`TaskSpec::first_line_derived`).
        let mut spec = new.spec;
        spec.first_line_derived = true;
        let mut task = pending_task(spec, new.delay, source, self.now);
        task.rt.seq = self.seq();
        let cached = cached_payload(&new.payload);
        self.push_op(WriteOp::Insert {
            task: task.clone(),
            payload: new.payload,
            log: Vec::new(),
            event: Some(EventKind::Scheduled),
        });
        self.counts
            .add(task.spec.task_type, &task.spec.name, TaskState::Pending, 1);
        self.add_pending(task.clone(), cached);
        task
    }

    /// Counts an accepted task and puts it in its queue; returns it as
    /// accepted (with its waiting reason), and the tasks of its debounce
    /// key it superseded.
    fn queue_accepted(&mut self, task: Task, cached: Option<Arc<str>>) -> (Task, Vec<TaskId>) {
        self.counts
            .add(task.spec.task_type, &task.spec.name, TaskState::Pending, 1);
        let mut snapshot = task.clone();
        let superseded = self.add_pending(task, cached);
        if let Some(a) = self.tasks.get(&snapshot.id) {
            snapshot.rt.waiting_reason = self.derived_reason(a);
            snapshot.rt.hold = self.hold_of(a, false).map(|(_, h)| Box::new(h));
        } else if let Some(t) = self.finishing.get(&snapshot.id) {
            // Superseded at once by a newer task of its debounce key.
            snapshot = t.clone();
        }
        (snapshot, superseded)
    }
    /// Schedules the cleanup task of a task that failed for good or was cancelled.
    pub(super) fn schedule_cleanup(&mut self, id: TaskId, why: CleanupReason) {
        let Some(t) = self.finishing.get(&id) else {
            return;
        };
        let Some(cleanup) = t.spec.cleanup.clone() else {
            return;
        };
        let spec = &t.spec;
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("cleanup_of".to_string(), id.to_string());
        labels.insert("cleanup_reason".to_string(), why.as_str().to_string());
        // The cleanup task runs in its task's namespace.
        if let Some(ns) = spec.namespace_column() {
            labels.insert(crate::domain::namespace::LABEL.into(), ns.into());
        }
        let new_spec = TaskSpec {
            priority: spec.priority,
            max_attempts: spec.max_attempts.max(3),
            backoff: spec.backoff,
            execution_timeout: spec.execution_timeout,
            labels,
            traceparent: spec.traceparent.clone(),
            ..TaskSpec::new(
                cleanup.to_string(),
                TaskType::Simple,
                Target::Simple { queue: None },
            )
        };
        let new = NewTask {
            spec: new_spec,
            payload: Payload::CopyOf(id),
            delay: Duration::ZERO,
        };
        let task = self.schedule_internal(new);
        self.log(LogEntry::system(
            id,
            0,
            format!("cleanup task {cleanup} scheduled as {}", task.id),
        ));
    }
}

//! The core's in-memory state ([`State`]) and its bookkeeping: sequence
//! numbers, the writes and events a transition queues, derived waiting
//! reasons, owner indexes.
//!
//! Owns: the `State` struct, the per-task record ([`Active`]) and the
//! [`Effects`] a critical section hands back.
//! Must not: await, lock, read the clock, or talk to the store or a
//! worker directly. A transition is handed the time ([`State::now`]) and
//! queues its writes (`pending_ops`) and its pushes to workers
//! (`pushes`); [`State::step`] returns them as [`Effects`], which
//! `Core::with_state` carries out. The state machine is thus tested
//! without a runtime or a clock (see `core/machine_tests.rs`).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::domain::*;
use crate::store::WriteOp;

use super::flow::Flow;
use super::metrics::{Counts, Throughput, Window};
use super::queue::Queue;
use super::workers::WorkerSlot;
use super::{CoreConfig, Push};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeadlineKind {
    /// The attempt's execution timeout.
    Execution,
    /// A requested cancel not acknowledged in time.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotKind {
    Normal,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QKey {
    pub(super) lane: u8,
    pub(super) prio: Reverse<i32>,
    pub(super) created: Micros,
    pub(super) id: TaskId,
}

pub(super) struct Active {
    pub(super) task: Task,
    pub(super) key: Arc<str>,
    pub(super) payload: Option<Arc<str>>,
    pub(super) worker: Option<u64>,
    pub(super) slot: SlotKind,
    /// Handed out before without a known outcome (offered again after its
    /// engine was unreachable or busy, or requeued after its worker was
    /// lost or the server restarted): see [`Assignment::again`].
    pub(super) again: bool,
    pub(super) deadline: Option<(Micros, DeadlineKind)>,
    /// Set while the task is in its queue's ready set.
    pub(super) queued: Option<QKey>,
    /// Set while the task waits on a timer (delay or backoff).
    pub(super) timer: Option<Micros>,
    /// Ready but held: its name or queue is paused (`core::flow`).
    pub(super) held: bool,
    /// It keeps a slot of its concurrency key: it was running (or with its
    /// backend) when the server stopped, and is not handed out again yet
    /// (`State::reserve`).
    pub(super) reserved: bool,
    /// When it became runnable (for schedule-to-start).
    pub(super) ready_since: Micros,
}

pub(super) struct State {
    /// Boxed: the table then holds 24 bytes per bucket, not an `Active`
    /// (~450 bytes) per bucket of its power-of-two capacity, which halved
    /// the RSS with 1,000,000 pending tasks.
    pub(super) tasks: HashMap<TaskId, Box<Active>>,
    pub(super) finishing: HashMap<TaskId, Task>,
    pub(super) queues: HashMap<Arc<str>, Queue>,
    pub(super) timers: BTreeSet<(Micros, TaskId)>,
    pub(super) deadlines: BTreeSet<(Micros, TaskId)>,
    pub(super) workers: HashMap<u64, WorkerSlot>,
    pub(super) worker_ids: HashMap<Arc<str>, u64>,
    pub(super) next_worker: u64,
    pub(super) by_user: HashMap<String, HashSet<TaskId>>,
    pub(super) by_session: HashMap<String, HashSet<TaskId>>,
    pub(super) next_seq: u64,
    pub(super) cached_bytes: usize,
    pub(super) counts: Counts,
    pub(super) s2s: Window,
    pub(super) run_time: Window,
    pub(super) throughput: Throughput,
    pub(super) draining: bool,
    /// Writes queued by the current critical section, submitted at its end.
    pub(super) pending_ops: Vec<WriteOp>,
    /// Whether writes queued now need not start a commit (see
    /// [`State::lazily`]).
    pub(super) lazy: bool,
    /// Whether `pending_ops` holds a write that must start a commit.
    pub(super) eager: bool,
    /// Tasks whose queue may now dispatch.
    pub(super) dirty_keys: Vec<Arc<str>>,
    /// When the timer loop next wakes on its own.
    pub(super) timer_wake: Micros,
    /// The core's configuration (routing, timeouts, limits).
    pub(super) cfg: Arc<CoreConfig>,
    /// The `task.run` span of each running attempt, while tracing is on
    /// (empty otherwise).
    pub(super) runs: HashMap<TaskId, tracing::Span>,
    /// The time of the current critical section (set by [`State::step`]).
    pub(super) now: Micros,
    /// Messages to workers queued by the current critical section, in
    /// order: the worker's number, its channel, the message.
    pub(super) pushes: Vec<(u64, mpsc::UnboundedSender<Push>, Push)>,
    /// Flow control: keys' running counts, paused names, the rules.
    pub(super) flow: Flow,
    /// The newest pending task of each debounce key (see `debounce.rs`).
    pub(super) debounce: HashMap<Box<str>, TaskId>,
}

/// What one critical section of the state machine asks its caller to carry
/// out, in this order: submit the writes, then send the pushes, then wake
/// the timer loop.
pub(super) struct Effects {
    /// Writes, in sequence order.
    pub(super) ops: Vec<WriteOp>,
    /// Whether a write needs a commit of its own (else they ride on the
    /// next one, see [`State::lazily`]).
    pub(super) eager: bool,
    /// Messages to workers, in the order they were decided: the worker's
    /// number, its channel (a worker removed in the same section still
    /// gets its `Close`), the message.
    pub(super) pushes: Vec<(u64, mpsc::UnboundedSender<Push>, Push)>,
    /// A timer or deadline now comes before the timer loop's next wake-up.
    pub(super) wake: bool,
}

pub(super) fn lane(t: &Task) -> u8 {
    if t.spec.immediate {
        0
    } else {
        1
    }
}

impl State {
    /// An empty state whose sequence numbers continue after `next_seq`.
    pub(super) fn new(cfg: Arc<CoreConfig>, next_seq: u64) -> State {
        State {
            tasks: HashMap::new(),
            finishing: HashMap::new(),
            queues: HashMap::new(),
            timers: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            workers: HashMap::new(),
            worker_ids: HashMap::new(),
            next_worker: 0,
            by_user: HashMap::new(),
            by_session: HashMap::new(),
            next_seq,
            cached_bytes: 0,
            counts: Counts::default(),
            s2s: Window::new(5),
            run_time: Window::new(5),
            throughput: Throughput::default(),
            draining: false,
            pending_ops: Vec::new(),
            lazy: false,
            eager: false,
            dirty_keys: Vec::new(),
            timer_wake: 0,
            cfg,
            runs: HashMap::new(),
            now: 0,
            pushes: Vec::new(),
            flow: Flow::default(),
            debounce: HashMap::new(),
        }
    }

    /// One critical section: runs `f` at time `now`, dispatches what became
    /// runnable, and returns `f`'s answer with the effects to carry out.
    pub(super) fn step<R>(&mut self, now: Micros, f: impl FnOnce(&mut State) -> R) -> (R, Effects) {
        self.now = now;
        let r = f(self);
        self.dispatch();
        (r, self.take_effects())
    }

    /// The effects queued so far; the state keeps none of them.
    fn take_effects(&mut self) -> Effects {
        let earliest = [
            self.timers.first().map(|t| t.0),
            self.deadlines.first().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .min();
        let wake = earliest.is_some_and(|e| e < self.timer_wake);
        if let Some(e) = earliest.filter(|_| wake) {
            self.timer_wake = e;
        }
        Effects {
            ops: std::mem::take(&mut self.pending_ops),
            eager: std::mem::take(&mut self.eager),
            pushes: std::mem::take(&mut self.pushes),
            wake,
        }
    }

    /// Queues a message to worker `wid` (dropped if it is gone).
    pub(super) fn push_to(&mut self, wid: u64, push: Push) {
        if let Some(w) = self.workers.get(&wid) {
            self.pushes.push((wid, w.tx.clone(), push));
        }
    }

    pub(super) fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Queues the write of a transition of an active task, with its event.
    pub(super) fn emit(&mut self, id: TaskId, kind: EventKind, log: Vec<LogEntry>) {
        let seq = self.seq();
        let reason = self.tasks.get(&id).and_then(|a| self.derived_reason(a));
        let hold = self
            .tasks
            .get(&id)
            .and_then(|a| self.hold_of(a, false))
            .map(|(_, h)| Box::new(h));
        let Some(a) = self.tasks.get_mut(&id) else {
            return;
        };
        a.task.rt.seq = seq;
        if a.task.rt.state == TaskState::Pending {
            a.task.rt.waiting_reason = reason;
            a.task.rt.hold = hold;
        } else {
            a.task.rt.waiting_reason = None;
            a.task.rt.hold = None;
        }
        let op = WriteOp::Update {
            task: a.task.clone(),
            log,
            event: Some(kind),
        };
        self.push_op(op);
    }

    pub(super) fn log(&mut self, line: LogEntry) {
        self.push_op(WriteOp::Log(vec![line]));
    }

    pub(super) fn push_op(&mut self, op: WriteOp) {
        self.eager |= !self.lazy;
        self.pending_ops.push(op);
    }

    /// Runs `f` with its writes marked lazy: facts that can be rebuilt after
    /// a crash (an engine has the task), committed with the next write that
    /// needs a commit (see [`Store::submit_lazy`]). The state in memory, and
    /// so `GetTaskStatus`, has them at once; their events wait for the commit.
    pub(super) fn lazily<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        let was = std::mem::replace(&mut self.lazy, true);
        let r = f(self);
        self.lazy = was;
        r
    }

    /// A task as its status shows it: with its waiting reason and, while
    /// a flow rule holds it, the rule (`ahead`: with its place in line,
    /// which costs a walk of the line).
    pub(super) fn shown(&self, a: &Active, ahead: bool) -> Task {
        let mut t = a.task.clone();
        t.rt.waiting_reason = self.derived_reason(a);
        t.rt.hold = self.hold_of(a, ahead).map(|(_, h)| Box::new(h));
        t
    }

    pub(super) fn derived_reason(&self, a: &Active) -> Option<WaitingReason> {
        if a.task.rt.state != TaskState::Pending {
            return None;
        }
        if a.held
            || (a.queued.is_some() && a.task.spec.concurrency_key.is_some())
            || (a.timer.is_some() && self.flow.rate_held.contains_key(&a.task.id))
        {
            if let Some((r, _)) = self.hold_of(a, false) {
                return Some(r);
            }
        }
        match a.task.rt.waiting_reason {
            Some(WaitingReason::Delayed) | Some(WaitingReason::BackingOff) if a.timer.is_some() => {
                a.task.rt.waiting_reason
            }
            // Held by a backend: the engine's own reason.
            _ if a.worker.is_some() => a.task.rt.waiting_reason,
            Some(WaitingReason::EngineUnreachable) => a.task.rt.waiting_reason,
            _ => {
                let q = self.queues.get(&a.key);
                let workers = q.map(|q| q.workers.as_slice()).unwrap_or(&[]);
                if workers.is_empty() {
                    Some(WaitingReason::NoWorker)
                } else if workers
                    .iter()
                    .filter_map(|w| self.workers.get(w))
                    .any(|w| w.can_take(lane(&a.task)))
                {
                    Some(WaitingReason::Queued)
                } else {
                    Some(WaitingReason::CapacityFull)
                }
            }
        }
    }

    pub(super) fn index_owner(&mut self, t: &Task) {
        if let Some(u) = &t.spec.user_id {
            self.by_user.entry(u.clone()).or_default().insert(t.id);
        }
        if let Some(s) = &t.spec.session_id {
            self.by_session.entry(s.clone()).or_default().insert(t.id);
        }
    }

    pub(super) fn unindex_owner(&mut self, t: &Task) {
        if t.spec.dedup.is_some() {
            self.debounce_forget(t);
        }
        if let Some(u) = &t.spec.user_id {
            if let Some(set) = self.by_user.get_mut(u) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_user.remove(u);
                }
            }
        }
        if let Some(s) = &t.spec.session_id {
            if let Some(set) = self.by_session.get_mut(s) {
                set.remove(&t.id);
                if set.is_empty() {
                    self.by_session.remove(s);
                }
            }
        }
    }

    pub(super) fn set_state(&mut self, id: TaskId, to: TaskState) {
        if let Some(a) = self.tasks.get_mut(&id) {
            let from = a.task.rt.state;
            a.task.rt.state = to;
            let (t, name) = (a.task.spec.task_type, a.task.spec.name.clone());
            self.counts.moved(t, &name, from, to);
        }
    }
}

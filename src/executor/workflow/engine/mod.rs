//! The workflow engine: one Tokio task that holds every running workflow as
//! a local worker of the core and drives its steps.
//!
//! Everything the engine decides goes through the core first
//! ([`Core::update_workflow`], [`Core::start_child`], [`Core::report`]), each
//! call one atomic write queued in sequence order; the engine's own memory is
//! only a copy of what it handed the core, so a restart loses nothing but
//! timers, which it re-arms from the `wake_at` the steps recorded.
//!
//! It must not touch the store or the worker protocol: child tasks are plain
//! tasks for the core, run by whoever serves their names.
//!
//! This file is the actor: the [`Engine`], its loop, the dispatch of each
//! push, the timer set, the core calls every handler goes through, and what
//! happens when the engine loses hold of a workflow. Each push is handled in
//! its own file (`start.rs`, `children.rs`, `signal.rs`, `cancel.rs`, `timer.rs`),
//! going forward in `advance.rs`; the pure run transitions are in
//! `transitions.rs`, the held workflow and the child tasks it builds in
//! `flow.rs`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::definition::Workflow;
use super::registry::Registry;
use crate::core::{Core, CoreError, Push, Report};
use crate::domain::*;

mod advance;
mod cancel;
mod children;
mod flow;
mod signal;
mod start;
mod timer;
mod transitions;

use flow::Flow;
use transitions::running_children;
pub(crate) use transitions::{replay_from, ReplayRefusal};

/// What a timer wakes: a step's timer or timeout, or the workflow's own
/// deadline. (A step's timer sorts before the deadline due at the same
/// instant.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    /// Step `i`: a timer step, or a signal step's timeout.
    Step(usize),
    /// The workflow's `timeout`.
    Deadline,
}

/// The engine. See the module docs.
pub struct Engine {
    core: Core,
    /// Its worker id with the core.
    wid: String,
    registry: Registry,
    flows: HashMap<TaskId, Flow>,
    /// (when, workflow, what); stale entries are skipped when they fire.
    timers: BTreeSet<(Micros, TaskId, Wake)>,
}

impl Engine {
    /// An engine registered with the core as worker `worker_id`.
    pub fn new(core: Core, worker_id: String, registry: Registry) -> Engine {
        Engine {
            core,
            wid: worker_id,
            registry,
            flows: HashMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Runs until the core closes the engine's channel (`Push::Close` on
    /// shutdown): the core requeues the workflows it held, durably.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Push>) {
        loop {
            self.fire_timers().await;
            let push = match self.timers.first().map(|t| t.0) {
                None => rx.recv().await,
                Some(at) => {
                    let wait = Duration::from_micros((at - now_micros()).max(0) as u64);
                    tokio::select! {
                        p = rx.recv() => p,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            match push {
                None => break,
                Some(Push::Close(why)) => {
                    tracing::info!(
                        why,
                        workflows = self.flows.len(),
                        "workflow engine stopping"
                    );
                    break;
                }
                Some(p) => self.handle(p).await,
            }
        }
    }

    async fn handle(&mut self, push: Push) {
        let (id, r) = match push {
            Push::Assign(a) => {
                let id = a.task.id;
                (id, self.on_assign(a).await)
            }
            Push::ChildDone { parent, child } => (parent, self.on_child_done(parent, child).await),
            Push::Signal { task_id, name } => (task_id, self.on_signal(task_id, &name).await),
            Push::Cancel {
                task_id, reason, ..
            } => (task_id, self.on_cancel(task_id, &reason).await),
            Push::Rejected {
                task_id,
                code,
                message,
            } => {
                tracing::warn!(
                    task_id,
                    code,
                    message,
                    "the core refused a workflow engine report"
                );
                return;
            }
            Push::Close(_) => return,
        };
        if let Err(e) = r {
            self.lost(id, e).await;
        }
    }

    async fn fire_timers(&mut self) {
        let now = now_micros();
        while let Some(&(at, id, wake)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let r = match wake {
                Wake::Deadline => self.on_deadline(id, at).await,
                Wake::Step(i) => self.on_step_timer(id, i, at).await,
            };
            if let Err(e) = r {
                self.lost(id, e).await;
            }
        }
    }

    /// A core call about a workflow failed: the engine no longer holds it.
    /// If it ended (a forced cancel), its running steps are stopped; else the
    /// core requeued it and will assign it again.
    async fn lost(&mut self, id: TaskId, err: CoreError) {
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        match self.core.status(id).await {
            Ok(t) if t.rt.state.is_final() => {
                let running = running_children(&flow.run);
                tracing::info!(
                    task_id = %id,
                    state = t.rt.state.as_str(),
                    steps = running.len(),
                    "workflow ended outside the engine; stopping its running steps"
                );
                for c in running {
                    let _ = self.core.cancel(c, "its workflow ended", true).await;
                }
            }
            _ => {
                tracing::warn!(task_id = %id, cause = %err, "workflow engine lost hold of a workflow")
            }
        }
    }

    /// Records a change to a run with the core, and keeps the copy.
    fn update<R>(
        &mut self,
        id: TaskId,
        f: impl FnOnce(&mut WorkflowRun, &Workflow) -> (R, Vec<String>),
    ) -> Result<R, CoreError> {
        let flow = self
            .flows
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        let wf = flow.wf.clone();
        let (r, run) = self.core.update_workflow(&self.wid, id, |run| {
            let (r, logs) = f(run, &wf);
            ((r, run.clone()), logs)
        })?;
        flow.set_run(run);
        Ok(r)
    }

    /// Schedules a child task and records it in the run, atomically.
    fn start_child(
        &mut self,
        id: TaskId,
        new: NewTask,
        f: impl FnOnce(&mut WorkflowRun, TaskId) -> Vec<String>,
    ) -> Result<TaskId, CoreError> {
        let flow = self
            .flows
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        let mut copy = None;
        let child = self.core.start_child(&self.wid, id, new, |run, child| {
            let logs = f(run, child);
            copy = Some(run.clone());
            logs
        })?;
        if let Some(run) = copy {
            flow.set_run(run);
        }
        Ok(child)
    }

    /// Ends a workflow in a final state and forgets it.
    fn end(
        &mut self,
        id: TaskId,
        state: TaskState,
        result: Option<Value>,
        error: Option<TaskError>,
        message: String,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.remove(&id) else {
            return Ok(());
        };
        self.core.report(
            &self.wid,
            id,
            flow.attempt,
            Report::End {
                state,
                result,
                error,
                message,
            },
        )
    }

    /// Asks running step tasks to stop (their end arrives as `ChildDone`).
    fn cancel_children(&self, children: Vec<TaskId>, why: &str) {
        if children.is_empty() {
            return;
        }
        let core = self.core.clone();
        let why = why.to_string();
        // `cancel` only awaits for tasks that are no longer active; the
        // request itself is made before the spawned task first yields.
        tokio::spawn(async move {
            for c in children {
                if let Err(e) = core.cancel(c, &why, false).await {
                    tracing::debug!(task_id = %c, cause = %e, "cancel of a step task");
                }
            }
        });
    }
}

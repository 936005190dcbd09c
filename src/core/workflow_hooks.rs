//! Hooks for the workflow engine: run updates and child tasks.
//!
//! Owns: the workflow run stored in a COMPLEX task's runtime detail, as far
//! as the core changes it.
//! Must not: interpret a workflow definition (that is the engine's job).

use crate::domain::*;

use super::state::State;
use super::{Core, CoreError};

impl Core {
    /// Changes the workflow run of an active COMPLEX task held by `worker_id`
    /// and records it (an `UPDATED` event, with `logs` in the task's log).
    pub fn update_workflow<R>(
        &self,
        worker_id: &str,
        id: TaskId,
        f: impl FnOnce(&mut WorkflowRun) -> (R, Vec<String>),
    ) -> Result<R, CoreError> {
        self.with_state(|st| {
            let mut run = st.held_workflow(worker_id, id)?;
            let (r, logs) = f(&mut run);
            st.store_run(id, &run, logs)?;
            Ok(r)
        })
    }

    /// Schedules a child task (a workflow step or compensation) of a workflow
    /// held by `worker_id`, and records it in the run with `f`, in one
    /// atomic write group.
    pub fn start_child(
        &self,
        worker_id: &str,
        parent: TaskId,
        mut new: NewTask,
        f: impl FnOnce(&mut WorkflowRun, TaskId) -> Vec<String>,
    ) -> Result<TaskId, CoreError> {
        self.with_state(|st| {
            let mut run = st.held_workflow(worker_id, parent)?;
            new.spec.parent_id = Some(parent);
            let child = st.schedule_internal(new);
            let logs = f(&mut run, child.id);
            st.store_run(parent, &run, logs)?;
            Ok(child.id)
        })
    }

    /// The workflow run of a task (from memory or the store).
    pub async fn workflow_run(&self, id: TaskId) -> Result<WorkflowRun, CoreError> {
        let t = self.status(id).await?;
        Ok(WorkflowRun::from_detail(t.rt.detail.as_deref()))
    }
}

impl State {
    pub(super) fn held_workflow(
        &self,
        worker_id: &str,
        id: TaskId,
    ) -> Result<WorkflowRun, CoreError> {
        let n = self.worker_ids.get(worker_id).copied();
        let a = self
            .tasks
            .get(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        if n.is_none() || a.worker != n {
            return Err(CoreError::FailedPrecondition(format!(
                "worker {worker_id} does not hold workflow {id}"
            )));
        }
        Ok(WorkflowRun::from_detail(a.task.rt.detail.as_deref()))
    }
}

impl State {
    /// Writes a workflow run back to its task and records the change (an
    /// `UPDATED` event with `logs`).
    pub(super) fn store_run(
        &mut self,
        id: TaskId,
        run: &WorkflowRun,
        logs: Vec<String>,
    ) -> Result<(), CoreError> {
        let a = self
            .tasks
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        a.task.rt.detail = serde_json::to_value(run).ok().map(Box::new);
        let attempt = a.task.rt.attempt;
        let logs = logs
            .into_iter()
            .map(|m| LogEntry::system(id, attempt, m))
            .collect();
        self.emit(id, EventKind::Updated, logs);
        Ok(())
    }
}

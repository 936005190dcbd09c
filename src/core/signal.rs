//! `SignalTask`: a signal for an active COMPLEX task.
//!
//! The embedded workflow engine takes signals through the core: the signal
//! is stored in the task's workflow run and the engine is woken
//! (`Push::Signal`). An engine that keeps its own workflows (an external
//! one) registers a [`SignalHook`] instead; the core then hands it the
//! signal and records it only once the hook says the engine accepted it, so
//! an answer is never a success the engine did not see.
//!
//! Owns: [`Core::signal`] and the per-engine hooks.
//! Must not: know how an engine delivers a signal (that is the hook's).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::domain::*;

use super::{Core, CoreError, EngineKind, Push};

/// A signal on its way to the engine that runs its task.
#[derive(Debug, Clone)]
pub struct Signal {
    /// The task as it is now (its target, its engine's external id).
    pub task: Task,
    /// The signal's name.
    pub name: String,
    /// The signal's payload (a JSON object).
    pub payload: serde_json::Value,
}

/// What a [`SignalHook`] returns: once the engine accepted the signal, the
/// log line that says where it went; else the error the caller gets.
pub type SignalDelivery = Pin<Box<dyn Future<Output = Result<String, CoreError>> + Send>>;

/// Delivers a signal to the engine that runs its task, resolving once the
/// engine accepted or refused it. An error goes to the caller as it is
/// (`Unavailable` when the engine cannot be reached, `FailedPrecondition`
/// with the engine's reason when it refuses), and nothing is recorded.
pub type SignalHook = Arc<dyn Fn(Signal) -> SignalDelivery + Send + Sync>;

impl Core {
    /// Sets how signals reach the tasks that `engine` runs (instead of the
    /// core's own record and `Push::Signal`).
    pub fn on_signal(&self, engine: EngineKind, hook: SignalHook) {
        self.inner.signal_hooks.write().insert(engine, hook);
    }

    /// Signals an active COMPLEX task. Without a hook for its engine the
    /// signal is recorded durably in its workflow run and the executor that
    /// holds it is woken; with one, the hook delivers it and the core logs
    /// the delivery (durably) once the engine accepted it. A task that ended
    /// while its engine took the signal is answered as it is then.
    pub async fn signal(
        &self,
        id: TaskId,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Task, CoreError> {
        let active = {
            let st = self.inner.state.lock();
            match st.tasks.get(&id) {
                Some(a) if a.task.spec.task_type != TaskType::Complex => {
                    return Err(CoreError::FailedPrecondition(format!(
                        "task {id} is not a workflow (COMPLEX) task"
                    )))
                }
                Some(a) => Some((EngineKind::of_key(&a.key), a.task.clone())),
                None => None,
            }
        };
        let Some((engine, task)) = active else {
            return Err(self.not_active(id).await);
        };
        let hook = self.inner.signal_hooks.read().get(&engine).cloned();
        if let Some(hook) = hook {
            let line = hook(Signal {
                task,
                name: name.to_string(),
                payload,
            })
            .await?;
            self.with_state(|st| {
                if let Some(attempt) = st.tasks.get(&id).map(|a| a.task.rt.attempt) {
                    let log = LogEntry::system(id, attempt, line);
                    st.emit(id, EventKind::Updated, vec![log]);
                }
            });
        } else {
            let recorded = self.with_state(|st| {
                let a = st.tasks.get_mut(&id)?;
                let mut run = WorkflowRun::from_detail(a.task.rt.detail.as_deref());
                run.signals.push(SignalRecord {
                    name: name.to_string(),
                    payload,
                    received_at: st.now,
                    consumed_by: None,
                });
                a.task.rt.detail = serde_json::to_value(&run).ok().map(Box::new);
                let attempt = a.task.rt.attempt;
                let holder = a.worker;
                st.emit(
                    id,
                    EventKind::Updated,
                    vec![LogEntry::system(
                        id,
                        attempt,
                        format!("signal {name:?} received"),
                    )],
                );
                if let Some(w) = holder {
                    st.push_to(
                        w,
                        Push::Signal {
                            task_id: id,
                            name: name.to_string(),
                        },
                    );
                }
                Some(())
            });
            if recorded.is_none() {
                return Err(self.not_active(id).await);
            }
        }
        self.inner.store.flush().await.map_err(CoreError::Store)?;
        self.status(id).await
    }

    /// Why a task that is not active takes no signal.
    async fn not_active(&self, id: TaskId) -> CoreError {
        match self.status(id).await {
            Ok(t) => CoreError::FailedPrecondition(format!(
                "task {id} is {}; only an active workflow takes signals",
                t.rt.state.as_str()
            )),
            Err(e) => e,
        }
    }
}

//! The scheduler core: the task state machine, per-name priority queues, the
//! immediate lane, worker slots and leases, timers (delays, backoff,
//! execution timeouts), cancellation and the event log.
//!
//! The core owns the in-memory state of every active task and is the only
//! writer of task state: every transition is queued to the store in the same
//! critical section that assigns its sequence number, so the store commits
//! transitions in sequence order and the event hub publishes them only once
//! durable. It knows nothing of gRPC; executors that run inside the process
//! (webhooks, workflows) consume tasks through the same worker interface as
//! remote workers.
//!
//! This file owns [`Core`] itself: start-up, the critical section
//! (`with_state`) and shutdown. Each concern has its own file:
//!
//! | file | owns |
//! | --- | --- |
//! | `error` | [`CoreError`] |
//! | `config` | [`CoreConfig`], [`Routes`] |
//! | `engine` | [`EngineKind`]: the engines and their queue keys |
//! | `protocol` | [`Push`], [`Report`], [`Assignment`], worker handles |
//! | `state` | `State`, the per-task record, queued writes and events |
//! | `queue` | per-key queues and timers |
//! | `flow` | concurrency keys, round-robin between keys, pauses |
//! | `workers` | registration, leases, removal |
//! | `dispatch` | handing ready tasks to workers |
//! | `transitions` | finish, release, back to pending, requeue |
//! | `schedule` | accepting tasks, admission, cleanups |
//! | `report` | what a worker's report does |
//! | `cancel` | `CancelTask`, `Disconnect` |
//! | `retry` | `RetryTask`, `ReplayWorkflow`: an ended task run again |
//! | `timers` | the timer loop, deadlines, lease expiry |
//! | `signal` | `SignalTask`, per-engine signal hooks |
//! | `workflow_hooks` | run updates, child tasks |
//! | `recovery` | the active tasks at start-up |
//! | `retention` | the sweeper that removes ended tasks |
//! | `queries` | status, lists, logs, metrics |
//! | `watch` | payloads for assignments, watch replay pages |
//! | `events` | the event hub |
//! | `metrics` | counters and latency windows |
//!
//! Must not: know about gRPC, HTTP or SQL.

mod cancel;
mod config;
mod debounce;
mod dispatch;
mod engine;
mod error;
pub mod events;
mod flow;
#[cfg(test)]
mod machine_tests;
pub mod metrics;
mod note;
mod protocol;
mod queries;
mod queue;
mod recovery;
mod report;
mod retention;
mod retry;
mod schedule;
mod signal;
mod state;
#[cfg(test)]
mod tests;
mod timers;
mod transitions;
mod watch;
mod workers;
mod workflow_hooks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::domain::*;
use crate::store::{CommitListener, Store, StoreError};
use events::EventHub;
use recovery::RECOVERY_CHUNK;
use state::State;

pub use config::{CoreConfig, Routes};
pub use engine::EngineKind;
pub use error::{CoreError, FieldViolation};
pub use protocol::{Assignment, CancelReason, Push, Report, WorkerInfo, WorkerLink};
pub use queries::{KeyPending, MetricsSnapshot, QueueFlowInfo, QueueInfo, RateTokens};
pub use retention::RemovalHook;
pub use retry::ReplayHook;
pub use schedule::{Admission, Outcome, Scheduled};
pub use signal::{Signal, SignalDelivery, SignalHook};
pub use watch::REPLAY_PAGE;

/// The scheduler core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    hub: Arc<EventHub>,
    cfg: Arc<CoreConfig>,
    wake: Notify,
    started_at: Micros,
    closed: AtomicBool,
    /// Admission checks per queue key, set by executors (see
    /// [`Core::set_admission`]).
    admissions: parking_lot::RwLock<HashMap<String, Admission>>,
    /// Told of the tasks retention removed that an engine ran (see
    /// [`Core::on_removed`]).
    removal_hooks: parking_lot::RwLock<HashMap<Source, RemovalHook>>,
    /// How signals reach the tasks of engines that take them themselves
    /// (see [`Core::on_signal`]).
    signal_hooks: parking_lot::RwLock<HashMap<EngineKind, SignalHook>>,
    /// How the workflow engine rewrites a run for a replay (see
    /// [`Core::on_replay`]).
    replay_hook: parking_lot::RwLock<Option<ReplayHook>>,
    /// The flow rules in force, for the engines that mirror some of them
    /// (see [`Core::watch_flow_rules`]).
    flow_rules: tokio::sync::watch::Sender<Arc<crate::domain::flow::FlowRules>>,
}

struct Listener {
    hub: Arc<EventHub>,
    core: Weak<Inner>,
}

impl CommitListener for Listener {
    fn committed(&self, events: Vec<Arc<TaskEvent>>) {
        if let Some(core) = self.core.upgrade() {
            let mut st = core.state.lock();
            for e in &events {
                if e.task.rt.state.is_final() {
                    if let Some(t) = st.finishing.get(&e.task.id) {
                        if t.rt.seq <= e.seq {
                            st.finishing.remove(&e.task.id);
                        }
                    }
                }
            }
        }
        self.hub.publish(events);
    }
}

impl Core {
    /// Loads the active tasks from the store and starts the core's loops.
    pub async fn start(store: Arc<dyn Store>, cfg: CoreConfig) -> Result<Core, CoreError> {
        let max_seq = store.max_seq().await?;
        let cfg = Arc::new(cfg);
        let hub = Arc::new(EventHub::new(cfg.event_history, max_seq));
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(cfg.clone(), max_seq)),
            store: store.clone(),
            hub: hub.clone(),
            cfg,
            wake: Notify::new(),
            started_at: now_micros(),
            closed: AtomicBool::new(false),
            admissions: Default::default(),
            removal_hooks: Default::default(),
            signal_hooks: Default::default(),
            replay_hook: Default::default(),
            flow_rules: tokio::sync::watch::Sender::new(Default::default()),
        });
        store.set_listener(Arc::new(Listener {
            hub,
            core: Arc::downgrade(&inner),
        }));
        let core = Core { inner };
        // Start-up with a million tasks takes seconds, so three things run
        // side by side: the store reads and decodes the active tasks in
        // chunks, this task places each chunk as it comes (and the memory of
        // one chunk is reused for the next), and another connection counts
        // the finished tasks.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Task>>(2);
        let (mut n, mut requeued) = (0usize, 0usize);
        let place = async {
            while let Some(chunk) = rx.recv().await {
                n += chunk.len();
                requeued += core.recover(chunk);
            }
            Ok::<(), StoreError>(())
        };
        let (finished, (), ()) = tokio::try_join!(
            store.final_counts(),
            store.stream_active(RECOVERY_CHUNK, tx),
            place
        )?;
        core.with_state(|st| {
            for (t, name, s, n) in finished {
                st.counts.add(t, &name, s, n);
            }
        });
        if n > 0 {
            tracing::info!(active = n, requeued, "recovered tasks from the store");
        }
        let loop_core = core.clone();
        // Policy on shutdown: stops by itself once `shutdown` closes the core.
        tokio::spawn(tracing::Instrument::instrument(
            async move { loop_core.timer_loop().await },
            tracing::info_span!("core-timers"),
        ));
        let sweep_core = core.clone();
        // Policy on shutdown: stops by itself once `shutdown` closes the core.
        tokio::spawn(tracing::Instrument::instrument(
            async move { sweep_core.sweep_loop().await },
            tracing::info_span!("core-retention"),
        ));
        Ok(core)
    }

    /// Runs `f` on the state, then submits its writes and dispatches.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.inner.state.lock();
        let (r, fx) = st.step(now_micros(), f);
        // Carried out under the lock, so the store sees writes in sequence
        // order and each worker its messages in the order decided.
        if !fx.ops.is_empty() {
            if fx.eager {
                self.inner.store.submit(fx.ops, None);
            } else {
                self.inner.store.submit_lazy(fx.ops);
            }
        }
        for (_, tx, push) in fx.pushes {
            let _ = tx.send(push);
        }
        drop(st);
        if fx.wake {
            self.inner.wake.notify_one();
        }
        r
    }

    /// The event hub.
    pub fn events(&self) -> &Arc<EventHub> {
        &self.inner.hub
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.inner.cfg
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.inner.state.lock().draining
    }

    /// Starts a drain: nothing new is accepted or dispatched; running tasks get
    /// until `grace` to finish, then are requeued durably and their workers
    /// told to stop. Resolves once the store has committed everything.
    pub async fn shutdown(&self, grace: Duration) {
        self.with_state(|st| st.draining = true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let running = self
                .inner
                .state
                .lock()
                .tasks
                .values()
                // Workflows and engine-held tasks cannot progress during a
                // drain; they are requeued and resume after the restart.
                .filter(|a| {
                    a.worker.is_some()
                        && !EngineKind::of_key(&a.key).is_backend()
                        && a.task.spec.task_type != TaskType::Complex
                })
                .count();
            if running == 0 {
                break;
            }
            tracing::info!(running, "draining: waiting for running tasks");
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.with_state(|st| {
            let ids: Vec<String> = st.workers.values().map(|w| w.id.to_string()).collect();
            for id in ids {
                st.remove_worker(&id, "server shutting down", false);
            }
        });
        if let Err(e) = self.inner.store.flush().await {
            tracing::error!(cause = %e, "final flush failed");
        }
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

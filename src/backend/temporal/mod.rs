//! The Temporal backend: COMPLEX tasks whose workflow type is listed in
//! `temporal.workflow_types` run as workflows on a real Temporal cluster.
//!
//! It is an in-process local worker for the internal key
//! [`EngineKind::Temporal`](crate::core::EngineKind::Temporal)'s key: the core pushes it every
//! routed task (`Push::Assign`, again after a restart or after
//! `Report::Unreachable`) and every cancel of one. For each task a follower
//! starts the workflow (idempotently: the request id is the task id), reports
//! the run id as the external id, and then waits on one long poll for the
//! run's close event, which it maps to the task's final state. Pending
//! activities are reported as progress from a jittered
//! DescribeWorkflowExecution every `progress_interval`. `SignalTask` on a
//! routed task is a SignalWorkflowExecution (`signal.rs`), registered with
//! the core as the engine's signal hook. All calls share one connection
//! (one HTTP/2 channel).
//!
//! Owns: the connection to Temporal, the followers, the mapping of Temporal
//! states to Switchyard's. Must not: keep task state of its own beyond a run
//! (the core's store is the truth), or touch the store.

mod config;
mod convert;
mod follow;
mod signal;
mod tracking;

pub use config::{TemporalConfig, TemporalTls};
pub use tracking::{BullmqTrackingSink, NoopTrackingSink, TrackingEvent, TrackingSink};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use temporalio_client::{Connection, ConnectionOptions};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::core::{Core, CoreError, EngineKind, Push};
use crate::domain::{text, Target, TaskId, TaskSpec};
use follow::{Ctl, Follower};

/// Starts the backend with no tracking sink (see [`start_with_sink`]).
pub fn start(core: &Core, cfg: &TemporalConfig) -> Result<JoinHandle<()>, CoreError> {
    start_with_sink(core, cfg, Arc::new(NoopTrackingSink))
}

/// Registers the backend as the worker of `#temporal` and starts its loop.
/// Connection settings (TLS files, API key) are checked now; Temporal itself
/// need not be up: tasks then wait as ENGINE_UNREACHABLE. Shutdown policy:
/// abort (followers stop; the core requeues their tasks, and after a restart
/// they resume following their runs).
pub fn start_with_sink(
    core: &Core,
    cfg: &TemporalConfig,
    sink: Arc<dyn TrackingSink>,
) -> Result<JoinHandle<()>, CoreError> {
    let opts = cfg
        .connection_options()
        .map_err(CoreError::FailedPrecondition)?;
    if cfg.workflow_types.is_empty() {
        tracing::warn!("temporal.enabled is set but temporal.workflow_types is empty: nothing is routed to Temporal");
    }
    let link = core.register_engine(EngineKind::Temporal, None)?;
    let shared = Arc::new(Shared {
        core: core.clone(),
        cfg: cfg.clone(),
        worker_id: link.id,
        conn: Connector::new(opts, cfg.connect_timeout),
        outage: Mutex::new(HashMap::new()),
        tracking: sink.enabled(),
        followed: AtomicUsize::new(0),
    });
    // Settings this backend cannot honour are refused when the task is
    // scheduled, not failed (or dropped) once it starts.
    core.set_admission(EngineKind::Temporal, {
        let tracking = shared.tracking;
        let default_queue = cfg.default_task_queue.is_some();
        Arc::new(move |spec: &TaskSpec| admit(spec, tracking, default_queue))
    });
    // SignalTask on a routed task is a signal in Temporal, answered once
    // Temporal accepted it.
    core.on_signal(EngineKind::Temporal, signal::hook(&shared));
    tracing::info!(address = %cfg.address, namespace = %cfg.namespace, types = ?cfg.workflow_types, "temporal backend started");
    let span = tracing::info_span!("temporal-backend");
    Ok(tokio::spawn(tracing::Instrument::instrument(
        run(shared, link.rx, sink),
        span,
    )))
}

/// The backend's check of a task routed to it: `complex.tracking_queue`
/// needs a BullMQ connection to publish to, and a task queue is needed,
/// the task's or `temporal.default_task_queue`.
fn admit(spec: &TaskSpec, tracking: bool, default_queue: bool) -> Result<(), CoreError> {
    let Target::Complex {
        workflow_type,
        task_queue,
        tracking_queue,
        ..
    } = &spec.target
    else {
        return Ok(());
    };
    if tracking_queue.is_some() && !tracking {
        return Err(CoreError::FailedPrecondition(
            "complex.tracking_queue: no BullMQ connection is configured ([bullmq] enabled) \
             to publish the workflow's state changes to"
                .into(),
        ));
    }
    if task_queue.is_none() && !default_queue {
        return Err(CoreError::FailedPrecondition(format!(
            "complex.task_queue: workflow type {} runs on Temporal and needs a task queue: \
             set complex.task_queue, or temporal.default_task_queue in the server's configuration",
            text::quote(workflow_type)
        )));
    }
    Ok(())
}

/// What the followers share.
pub(crate) struct Shared {
    core: Core,
    cfg: TemporalConfig,
    worker_id: String,
    conn: Connector,
    /// Consecutive unreachable starts per task (for the outbox's delay).
    outage: Mutex<HashMap<TaskId, u32>>,
    /// Whether a tracking sink publishes.
    tracking: bool,
    /// How many tasks have a follower (spreads the progress describes).
    followed: AtomicUsize,
}

impl Shared {
    async fn connect(&self) -> Result<Connection, String> {
        self.conn.get().await
    }

    /// Counts an unreachable start of `id`; the delay before the next.
    fn unreachable(&self, id: TaskId) -> Duration {
        let mut o = self.outage.lock();
        let n = o.entry(id).or_insert(0);
        let d = convert::unreachable_backoff(*n);
        *n += 1;
        d
    }

    fn reachable(&self, id: TaskId) {
        self.outage.lock().remove(&id);
    }
}

/// One shared connection, made on first use and kept: tonic reconnects the
/// channel by itself when Temporal comes back. While no connection was ever
/// made, attempts are throttled so an outage does not cause a connect storm.
struct Connector {
    opts: ConnectionOptions,
    timeout: Duration,
    current: RwLock<Option<Connection>>,
    /// Held while connecting; remembers the last failure.
    connecting: tokio::sync::Mutex<Option<(tokio::time::Instant, String)>>,
}

impl Connector {
    fn new(opts: ConnectionOptions, timeout: Duration) -> Connector {
        Connector {
            opts,
            timeout,
            current: RwLock::new(None),
            connecting: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Connection, String> {
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        let mut last = self.connecting.lock().await;
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        if let Some((at, msg)) = last.as_ref() {
            if at.elapsed() < Duration::from_millis(250) {
                return Err(msg.clone());
            }
        }
        let r = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            Connection::connect(self.opts.clone()),
        )
        .await;
        match r {
            Ok(Ok(c)) => {
                tracing::info!(target = %self.opts.target, "connected to Temporal");
                *self.current.write() = Some(c.clone());
                *last = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                let msg = format!("cannot connect: {e}");
                *last = Some((tokio::time::Instant::now(), msg.clone()));
                Err(msg)
            }
            Err(_) => {
                let msg = format!("cannot connect: no answer within {:?}", self.timeout);
                *last = Some((tokio::time::Instant::now(), msg.clone()));
                Err(msg)
            }
        }
    }
}

/// The backend's loop: one follower per task it holds.
async fn run(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Push>, sink: Arc<dyn TrackingSink>) {
    // Policy on shutdown: aborted with the loop (it holds no state).
    let mut background = JoinSet::new();
    if sh.tracking {
        background.spawn(tracking::run(sh.core.clone(), sink));
    }
    // Followers: aborted with the loop when the backend stops.
    let mut followers: JoinSet<(TaskId, u64)> = JoinSet::new();
    let mut handles: HashMap<TaskId, (u64, mpsc::UnboundedSender<Ctl>)> = HashMap::new();
    let mut generation = 0u64;
    loop {
        tokio::select! {
            push = rx.recv() => match push {
                Some(Push::Assign(a)) => {
                    generation += 1;
                    let id = a.task.id;
                    if !sh.tracking {
                        if let Target::Complex { tracking_queue: Some(q), .. } = &a.task.spec.target {
                            let _ = sh.core.report(&sh.worker_id, id, a.task.rt.attempt, crate::core::Report::Log { source: crate::domain::LogSource::Worker,
                                level: "warn".into(),
                                message: format!("tracking_queue {q} is not published: no BullMQ connection is configured"),
                            });
                        }
                    }
                    let (tx, ctl) = mpsc::unbounded_channel();
                    handles.insert(id, (generation, tx));
                    sh.followed.store(handles.len(), Ordering::Relaxed);
                    let f = Follower::new(sh.clone(), a, ctl);
                    let g = generation;
                    followers.spawn(async move {
                        f.run().await;
                        (id, g)
                    });
                }
                Some(Push::Cancel { task_id, reason, force, .. }) => {
                    match handles.get(&task_id) {
                        Some((_, tx)) => {
                            let _ = tx.send(Ctl::Cancel {
                                force,
                                reason: reason.to_string(),
                            });
                        }
                        None => tracing::debug!(%task_id, "cancel for a task without a follower"),
                    }
                }
                Some(Push::Close(why)) => {
                    tracing::info!(why, "temporal backend removed by the core; stopping its followers");
                    return;
                }
                Some(_) => {}
                None => return,
            },
            Some(done) = followers.join_next(), if !followers.is_empty() => {
                match done {
                    Ok((id, g)) => {
                        if handles.get(&id).is_some_and(|(hg, _)| *hg == g) {
                            handles.remove(&id);
                            sh.followed.store(handles.len(), Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.is_panic() => tracing::error!(cause = %e, "a temporal follower panicked"),
                    Err(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskType;

    #[test]
    fn the_backend_refuses_what_it_cannot_honour() {
        let mut spec = crate::domain::TaskSpec::new(
            "wf",
            TaskType::Complex,
            Target::Complex {
                workflow_type: "Order".into(),
                workflow_args: vec![],
                task_queue: None,
                tracking_queue: Some("track".into()),
                workflow_id: None,
            },
        );
        let msg = |r: Result<(), CoreError>| match r {
            Err(CoreError::FailedPrecondition(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(admit(&spec, false, true)).starts_with("complex.tracking_queue: "));
        assert!(admit(&spec, true, true).is_ok());
        assert!(msg(admit(&spec, true, false)).starts_with("complex.task_queue: "));
        if let Target::Complex { task_queue, .. } = &mut spec.target {
            *task_queue = Some("orders".into());
        }
        assert!(admit(&spec, true, false).is_ok());
    }
}

//! The embedded workflow engine: runs COMPLEX tasks as durable workflows of
//! steps, with saga-style compensation.
//!
//! This module owns the definitions ([`definition`], [`template`]), their
//! versioned registry ([`registry`], `workflows.db` in the data directory)
//! and the engine ([`engine`]), which registers with the core as an
//! in-process worker for `#workflow`. It must not touch the store's tables or
//! the core's internals: every transition goes through the core's workflow
//! calls (`update_workflow`, `start_child`, `report`), and a run's whole
//! state lives in its task (`TaskRuntime::detail`, a
//! [`WorkflowRun`](crate::domain::WorkflowRun)).
//!
//! # Definitions
//!
//! A workflow type is defined in TOML or JSON, loaded from the files of
//! `workflows.dir` at start (`*.toml`, `*.json`; a bad file stops the server
//! with an error naming the file and the step) or registered with
//! `RegisterWorkflow`. Each registration of a changed definition makes a new
//! version (1, 2, …); an identical one (in either format) makes none. A run
//! pins the latest version when it starts and finishes on it.
//!
//! ```toml
//! name = "order"            # the workflow type (ComplexTarget.workflow_type)
//! timeout = "1h"            # optional: the whole workflow; then it fails and compensates
//! output = { charge = "{{steps.charge.output}}" }  # optional result template
//!
//! [[steps]]
//! id = "reserve"            # unique; letters, digits, _ and -; at most 64 bytes
//! task = "reserve-stock"    # a task name run by workers (a SIMPLE child task)
//! input = { sku = "{{args.0.sku}}", order = "{{args.0}}" }
//! retry = { attempts = 3, backoff = "exponential", base = "1s", max = "1m" }
//! timeout = "30s"           # per attempt
//! compensate = { task = "release-stock", input = { sku = "{{args.0.sku}}" } }
//!
//! [[steps]]
//! id = "approve"
//! signal = "approval"       # waits for SignalTask(signal = "approval")
//! timeout = "1h"            # optional; on timeout the step fails…
//! on_timeout = "continue"   # …unless this says continue (output null)
//! depends_on = ["reserve"]
//!
//! [[steps]]
//! id = "cool-off"
//! timer = "10s"
//!
//! [[steps]]
//! id = "notify"
//! webhook = { url = "https://hooks.example.com/orders", source = "github" }
//! # or webhook = { workflow_id = "n8n-workflow" }; an INTEGRATION child task
//! ```
//!
//! - **Kinds.** Each step has exactly one of `task`, `webhook`, `timer`
//!   (a duration) and `signal` (a signal name).
//! - **Order.** A definition that sets `depends_on` on no step is a
//!   sequence, in the order written. Once any step sets it, each step
//!   depends on exactly the steps it lists (none: it starts at once), and
//!   the steps form a DAG: independent steps run in parallel. Unknown
//!   dependencies and cycles are errors.
//! - **Input** (task and webhook steps): a JSON value with `{{path}}`
//!   placeholders. A string that is one placeholder becomes the value itself;
//!   inside text the value is written out. Roots: `args` (the
//!   `workflow_args` list), `payload` (the ScheduleTask payload),
//!   `steps.<id>.output` (a step the step depends on, directly or not),
//!   `workflow.id` / `task_id` / `type` / `version`. A path that leads
//!   nowhere gives `null`. The task's payload is the rendered input if it is
//!   an object, else `{"input": value}`. Without `input`: `{"args": [...],
//!   "steps": {<dependency id>: <output>}}`.
//! - **Retry and timeout**: `retry.attempts` 1–100 (default 1 for a task, 5
//!   for a webhook), `backoff` `exponential` (default) or `fixed`, `base`
//!   (default 1s), `max` (default 5m); `timeout` is the limit of one attempt
//!   (at most 7 days). The core runs the retries; a step fails when its task
//!   fails for good.
//! - **Compensation**: `compensate = { task, input?, retry?, timeout? }`, a
//!   task that undoes the step (default 3 attempts). Its input may also use
//!   the step's own `steps.<id>.output`; without `input` it gets
//!   `{"step": id, "args": [...], "output": <the step's output>}`.
//! - **Durations**: `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`, more than 0.
//! - **Result**: `output` (rendered when every step completed), else
//!   `{"steps": {<id>: <output>, …}}`.
//!
//! # Running
//!
//! Each step task carries the label `workflow_step = "<workflow id>:<step id>"`
//! (`…:compensate` for a compensation), so its worker sees the idempotency
//! key `<workflow id>:<step id>:<attempt>`; the workflow id is
//! `ComplexTarget.workflow_id`, by default the task id. Steps run as child
//! tasks (`parent_id`), owned by no user or session.
//!
//! When a step fails for good (or a signal wait times out), or the workflow
//! is cancelled (`CancelTask`, `Disconnect`) or times out, it stops going
//! forward: steps not started are SKIPPED, running ones are cancelled (and
//! awaited), then the compensations of COMPLETED steps run one at a time,
//! latest completed first, and the workflow is COMPENSATING. All done:
//! COMPENSATED (with the failing step's error, if one failed). Nothing to
//! compensate: FAILED, or CANCELLED after a cancel. A compensation that
//! fails for good ends the workflow FAILED, its error naming that
//! compensation; its step is COMPENSATION_FAILED and the remaining ones are
//! left as they are. A cancel that arrives while compensating does not stop
//! the compensations. A forced cancel ends the workflow at once: its running
//! steps are cancelled too, and nothing is compensated.
//!
//! Each transition is one write through the core, committed in order: an
//! `UPDATED` event and a log line. After a restart the core requeues the
//! workflow and the engine resumes from its committed state: completed steps
//! never run again, a step whose task was in flight is awaited (that task
//! alone may run twice, with the same idempotency key), timers re-arm from
//! their recorded `wake_at`.
//!
//! An ended run can run again (the core's `RetryTask` and
//! `ReplayWorkflow`): a retry drops the run, so the engine starts a new one
//! on the latest definition; a replay from a step rewrites the run
//! (`engine::replay_from`, through the hook registered here with
//! `Core::on_replay`): earlier steps keep their outputs, the step, the ones
//! after it and those that depend on them start over, and the engine takes
//! the task up as it resumes any run. The task's run number (`run<n>`) is
//! part of its step tasks' `workflow_step` label, so their workers'
//! idempotency keys differ from the earlier runs'.

pub mod definition;
pub mod engine;
pub mod registry;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::core::{Core, CoreError, EngineKind};
use crate::domain::{Micros, Target, Task, TaskSpec, WorkflowRun};

pub use registry::Registry;

/// The workflow engine's settings (`[workflows]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Run the engine. Default true.
    pub enabled: bool,
    /// A directory of definitions (`*.toml`, `*.json`) registered at start.
    /// Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        WorkflowsConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// Where the registry keeps the definitions.
pub enum RegistryAt<'a> {
    /// Nowhere (a memory store).
    Memory,
    /// A SQLite file (`workflows.db` beside the store).
    File(&'a std::path::Path),
    /// The PostgreSQL store, shared by every replica.
    Postgres(&'a crate::store::postgres::PgStore),
}

/// Opens the registry (`db`: a file, the PostgreSQL store, or memory; loading `workflows.dir`), registers the engine with
/// the core and spawns it. Policy on shutdown: the engine stops when the
/// core closes its channel (the core requeues the workflows it held); it is
/// aborted if the server drops it first.
pub fn start(
    core: &Core,
    config: &WorkflowsConfig,
    db: RegistryAt<'_>,
) -> Result<(Registry, tokio::task::JoinHandle<()>), CoreError> {
    let registry = match db {
        RegistryAt::Memory => Registry::in_memory(),
        RegistryAt::File(path) => Registry::open(path)?,
        RegistryAt::Postgres(store) => Registry::open_postgres(store)?,
    };
    if let Some(dir) = &config.dir {
        registry.load_dir(dir)?;
    }
    let link = core.register_engine(EngineKind::Workflow, None)?;
    // A COMPLEX task for this engine must name a registered workflow type
    // (tasks routed to Temporal never reach this key, so they are not
    // checked: Temporal's workers know their own types).
    core.set_admission(EngineKind::Workflow, {
        let registry = registry.clone();
        Arc::new(move |spec: &TaskSpec| match &spec.target {
            Target::Complex { workflow_type, .. } if registry.latest(workflow_type).is_none() => {
                Err(CoreError::field(
                    "complex.workflow_type",
                    format!(
                        "no workflow definition named {workflow_type:?} is registered \
                         (RegisterWorkflow, or a file in workflows.dir)"
                    ),
                ))
            }
            _ => Ok(()),
        })
    });
    // ReplayWorkflow: the run is rewritten against the version it pinned.
    core.on_replay({
        let registry = registry.clone();
        Arc::new(move |task: &Task, from: &str, now: Micros| {
            let Target::Complex { workflow_type, .. } = &task.spec.target else {
                return Err(CoreError::FailedPrecondition(format!(
                    "task {} is not a workflow",
                    task.id
                )));
            };
            let mut run = WorkflowRun::from_detail(task.rt.detail.as_deref());
            if run.version == 0 {
                return Err(CoreError::FailedPrecondition(format!(
                    "workflow task {} never started a run: retry it (RetryTask) instead",
                    task.id
                )));
            }
            let wf = registry.get(workflow_type, run.version).ok_or_else(|| {
                CoreError::FailedPrecondition(format!(
                    "version {} of workflow {workflow_type:?} is not registered",
                    run.version
                ))
            })?;
            let line = engine::replay_from(&mut run, &wf, from, now).map_err(|r| match r {
                engine::ReplayRefusal::UnknownStep(m) => CoreError::field("from_step", m),
                engine::ReplayRefusal::NotReplayable(m) => CoreError::FailedPrecondition(m),
            })?;
            let detail = serde_json::to_value(&run)
                .map_err(|e| CoreError::Unavailable(format!("the run cannot be written: {e}")))?;
            Ok((detail, line))
        })
    });
    let engine = engine::Engine::new(core.clone(), link.id, registry.clone());
    let task = tokio::spawn(
        engine
            .run(link.rx)
            .instrument(tracing::info_span!("workflow-engine")),
    );
    Ok((registry, task))
}

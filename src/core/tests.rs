//! Unit tests of the core that need a store: the commit overlap, withdrawal,
//! lazy writes and recovery.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::state::Active;
use super::*;
use crate::domain::Payload;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Completion, Counts as StoreCounts};
use crate::store::{ListQuery, WriteOp};
use async_trait::async_trait;

/// A store whose writer can be paused: while paused, submitted groups
/// wait in order; on resume they are applied in that order, or groups
/// with an insert fail without being written (a full disk, say).
struct PausableStore {
    inner: Arc<SqliteStore>,
    held: parking_lot::Mutex<Option<Vec<HeldGroup>>>,
}

/// A submitted group waiting for the paused writer.
type HeldGroup = (Vec<WriteOp>, Option<Completion>);

impl PausableStore {
    fn pause(&self) {
        *self.held.lock() = Some(Vec::new());
    }
    fn resume(&self, fail_inserts: bool) {
        let held = self.held.lock().take().unwrap_or_default();
        for (ops, done) in held {
            let insert = ops.iter().any(|o| matches!(o, WriteOp::Insert { .. }));
            if fail_inserts && insert {
                if let Some(done) = done {
                    let _ = done.send(Err(Arc::new(StoreError::Closed)));
                }
            } else {
                self.inner.submit(ops, done);
            }
        }
    }
}

#[async_trait]
impl Store for PausableStore {
    fn submit(&self, ops: Vec<WriteOp>, done: Option<Completion>) {
        let mut held = self.held.lock();
        match held.as_mut() {
            Some(v) => v.push((ops, done)),
            None => self.inner.submit(ops, done),
        }
    }
    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        self.inner.set_listener(listener)
    }
    async fn flush(&self) -> Result<(), Arc<StoreError>> {
        self.inner.flush().await
    }
    async fn get(&self, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError> {
        self.inner.get(id).await
    }
    async fn payload(&self, id: TaskId) -> Result<Option<Arc<str>>, StoreError> {
        self.inner.payload(id).await
    }
    async fn list(&self, q: ListQuery) -> Result<Vec<Task>, StoreError> {
        self.inner.list(q).await
    }
    async fn logs(
        &self,
        id: TaskId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.logs(id, after, limit).await
    }
    async fn load_active(&self) -> Result<Vec<Task>, StoreError> {
        self.inner.load_active().await
    }
    async fn changed_since(
        &self,
        after: u64,
        up_to: u64,
        filter: TaskFilter,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        self.inner.changed_since(after, up_to, filter, limit).await
    }
    async fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.counts().await
    }
    async fn max_seq(&self) -> Result<u64, StoreError> {
        self.inner.max_seq().await
    }
    async fn due_for_removal(
        &self,
        now: Micros,
        limit: usize,
    ) -> Result<Vec<crate::store::Ended>, StoreError> {
        self.inner.due_for_removal(now, limit).await
    }
    async fn oldest_ended(
        &self,
        state: TaskState,
        name: &str,
        limit: usize,
    ) -> Result<Vec<crate::store::Ended>, StoreError> {
        self.inner.oldest_ended(state, name, limit).await
    }
}

fn spec(name: &str, idempotency_key: Option<&str>) -> TaskSpec {
    TaskSpec::test_simple(name, idempotency_key)
}

async fn core_on_pausable_store() -> (Core, Arc<PausableStore>) {
    let store = Arc::new(PausableStore {
        inner: SqliteStore::open(SqliteOptions::default()).unwrap(),
        held: parking_lot::Mutex::new(None),
    });
    let core = Core::start(store.clone(), CoreConfig::default())
        .await
        .unwrap();
    (core, store)
}

fn schedule_in_background(
    core: &Core,
    spec: TaskSpec,
) -> tokio::task::JoinHandle<Result<Scheduled, CoreError>> {
    let core = core.clone();
    tokio::spawn(async move {
        core.schedule(NewTask {
            spec,
            payload: Payload::Json(Arc::from("{}")),
            delay: Duration::ZERO,
        })
        .await
    })
}

async fn next_push(rx: &mut mpsc::UnboundedReceiver<Push>) -> Push {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a push within 5 s")
        .expect("the worker's channel is open")
}

/// Whether the worker is pushed nothing for `d`.
async fn no_push_within(rx: &mut mpsc::UnboundedReceiver<Push>, d: Duration) -> bool {
    tokio::time::timeout(d, rx.recv()).await.is_err()
}

/// A core with one worker for `t`, the store paused, and a task being
/// scheduled that the worker has been handed.
async fn started_while_paused() -> (
    Core,
    Arc<PausableStore>,
    WorkerLink,
    tokio::task::JoinHandle<Result<Scheduled, CoreError>>,
    Assignment,
) {
    let (core, store) = core_on_pausable_store().await;
    let mut link = core.register_worker("w", &["t".to_string()], 1, 0).unwrap();
    store.pause();
    let call = schedule_in_background(&core, spec("t", None));
    let Push::Assign(a) = next_push(&mut link.rx).await else {
        panic!("expected an assignment");
    };
    (core, store, link, call, a)
}

/// A worker starts a task while its insert is still being committed;
/// the caller is answered, and the task's events published, only once
/// the insert is durable, and the store then holds it RUNNING.
#[tokio::test]
async fn a_task_starts_while_its_insert_commits_and_is_answered_once_durable() {
    let (_core, store, _link, mut call, a) = started_while_paused().await;
    let id = a.task.id;
    assert_eq!(a.task.rt.state, TaskState::Running);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut call)
            .await
            .is_err(),
        "answered before the insert was durable"
    );
    assert!(store.inner.get(id).await.unwrap().is_none());
    store.resume(false);
    let scheduled = call.await.unwrap().unwrap();
    assert_eq!(scheduled.task.id, id);
    assert!(!scheduled.existing);
    store.flush().await.unwrap();
    let (stored, _) = store.inner.get(id).await.unwrap().unwrap();
    assert_eq!(stored.rt.state, TaskState::Running);
    let logs = crate::store::log_messages(&*store, id).await;
    assert!(logs[0].starts_with("scheduled"), "{logs:?}");
    assert!(logs[1].starts_with("attempt 1 started"), "{logs:?}");
}

/// When the insert of a task that a worker already started fails, the
/// caller gets the error, the worker is told to stop, its report is
/// refused, and nothing of the task remains: no status, no count, no row.
#[tokio::test]
async fn a_started_task_whose_insert_fails_is_withdrawn() {
    let (core, store, mut link, call, a) = started_while_paused().await;
    let id = a.task.id;
    store.resume(true);
    assert!(matches!(call.await.unwrap(), Err(CoreError::Store(_))));
    match next_push(&mut link.rx).await {
        Push::Cancel { task_id, force, .. } => {
            assert_eq!(task_id, id);
            assert!(force);
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(core
        .report(&link.id, id, 1, Report::Complete(serde_json::json!({})))
        .is_err());
    store.flush().await.unwrap();
    assert!(matches!(core.status(id).await, Err(CoreError::NotFound(_))));
    assert_eq!(core.metrics().counts.total(), [0; 7]);
    // The slot is free again: the next task starts on the same worker.
    let call = schedule_in_background(&core, spec("t", None));
    assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
    assert!(call.await.unwrap().is_ok());
}

fn many_in_background(
    core: &Core,
    specs: Vec<TaskSpec>,
) -> tokio::task::JoinHandle<Result<Vec<Result<Scheduled, CoreError>>, CoreError>> {
    let core = core.clone();
    tokio::spawn(async move {
        core.schedule_many(
            specs
                .into_iter()
                .map(|spec| NewTask {
                    spec,
                    payload: Payload::Json(Arc::from("{}")),
                    delay: Duration::ZERO,
                })
                .collect(),
        )
        .await
    })
}

/// A bulk's inserts are one submission (one group, so one commit), in
/// order; its tasks without a key start while it commits, the keyed ones
/// after; a repeated key answers the first item's task.
#[tokio::test]
async fn a_bulk_is_one_group_and_a_repeated_key_is_the_first_items_task() {
    let (core, store) = core_on_pausable_store().await;
    let mut link = core.register_worker("w", &["t".to_string()], 8, 0).unwrap();
    store.pause();
    let call = many_in_background(
        &core,
        vec![
            spec("t", None),
            spec("t", Some("k")),
            spec("t", None),
            spec("t", Some("k")),
        ],
    );
    // The two without a key are handed out before the commit.
    for _ in 0..2 {
        assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
    }
    {
        let held = store.held.lock();
        let groups = held.as_ref().unwrap();
        let inserts: Vec<usize> = groups
            .iter()
            .map(|(ops, _)| {
                ops.iter()
                    .filter(|o| matches!(o, WriteOp::Insert { .. }))
                    .count()
            })
            .filter(|n| *n > 0)
            .collect();
        assert_eq!(inserts, vec![4], "one group of four inserts");
    }
    store.resume(false);
    let out = call.await.unwrap().unwrap();
    let ids: Vec<(TaskId, bool)> = out
        .iter()
        .map(|r| {
            let s = r.as_ref().unwrap();
            (s.task.id, s.existing)
        })
        .collect();
    assert!(!ids[0].1 && !ids[1].1 && !ids[2].1);
    assert_eq!(ids[3], (ids[1].0, true), "the second k is the first's");
    // The keyed one is queued after the commit, once.
    assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
    assert!(no_push_within(&mut link.rx, Duration::from_millis(100)).await);
    let total: u64 = core.metrics().counts.total().iter().sum();
    assert_eq!(total, 3, "three tasks");
}

/// A bulk whose group fails: the call fails, the tasks that had started
/// are withdrawn, nothing of the bulk remains.
#[tokio::test]
async fn a_bulk_whose_commit_fails_is_withdrawn_whole() {
    let (core, store) = core_on_pausable_store().await;
    let mut link = core.register_worker("w", &["t".to_string()], 8, 0).unwrap();
    store.pause();
    let call = many_in_background(&core, vec![spec("t", None), spec("t", None)]);
    let mut started = Vec::new();
    for _ in 0..2 {
        let Push::Assign(a) = next_push(&mut link.rx).await else {
            panic!("expected an assignment");
        };
        started.push(a.task.id);
    }
    store.resume(true);
    assert!(matches!(call.await.unwrap(), Err(CoreError::Store(_))));
    for _ in 0..2 {
        match next_push(&mut link.rx).await {
            Push::Cancel { task_id, force, .. } => {
                assert!(started.contains(&task_id));
                assert!(force);
            }
            other => panic!("expected a cancel, got {other:?}"),
        }
    }
    store.flush().await.unwrap();
    assert_eq!(core.metrics().counts.total(), [0; 7]);
}

/// A task with an idempotency key may turn out to be an existing one:
/// it is queued only once the store has said it is new.
#[tokio::test]
async fn a_task_with_an_idempotency_key_waits_for_its_commit() {
    let (core, store) = core_on_pausable_store().await;
    let mut link = core.register_worker("w", &["t".to_string()], 1, 0).unwrap();
    store.pause();
    let call = schedule_in_background(&core, spec("t", Some("k1")));
    assert!(
        no_push_within(&mut link.rx, Duration::from_millis(100)).await,
        "dispatched before its commit"
    );
    store.resume(false);
    let first = call.await.unwrap().unwrap();
    assert!(matches!(next_push(&mut link.rx).await, Push::Assign(_)));
    let again = schedule_in_background(&core, spec("t", Some("k1")))
        .await
        .unwrap()
        .unwrap();
    assert!(again.existing);
    assert_eq!(again.task.id, first.task.id);
    assert!(
        no_push_within(&mut link.rx, Duration::from_millis(100)).await,
        "the existing task ran again"
    );
}

/// A caller that goes away while its task's insert commits (a deadline
/// while the database is slow) does not leave a committed task that is
/// never queued: once the insert is durable, the task reaches its worker.
#[tokio::test]
async fn a_task_whose_caller_left_before_its_commit_is_still_queued() {
    let (core, store) = core_on_pausable_store().await;
    let mut link = core.register_worker("w", &["t".to_string()], 1, 0).unwrap();
    store.pause();
    // With a key it is queued only after its commit (the path that needs
    // the rest of `schedule` to run).
    let call = schedule_in_background(&core, spec("t", Some("left")));
    // Its insert is submitted (held by the paused writer) before it leaves.
    while store.held.lock().as_ref().is_none_or(|h| h.is_empty()) {
        tokio::task::yield_now().await;
    }
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert!(
        no_push_within(&mut link.rx, Duration::from_millis(50)).await,
        "dispatched before its commit"
    );
    store.resume(false);
    let Push::Assign(a) = next_push(&mut link.rx).await else {
        panic!("expected an assignment");
    };
    assert_eq!(a.task.spec.idempotency_key.as_deref(), Some("left"));
    store.flush().await.unwrap();
    assert!(store.inner.get(a.task.id).await.unwrap().is_some());
}

/// The same for a task started while its insert commits: its caller left,
/// the insert failed, and the task is still withdrawn from its worker.
#[tokio::test]
async fn a_started_task_whose_caller_left_is_withdrawn_if_its_insert_fails() {
    let (core, store, mut link, call, a) = started_while_paused().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    store.resume(true);
    match next_push(&mut link.rx).await {
        Push::Cancel { task_id, force, .. } => {
            assert_eq!(task_id, a.task.id);
            assert!(force);
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(matches!(
        core.status(a.task.id).await,
        Err(CoreError::NotFound(_))
    ));
}

/// Every pending task holds one `Box<Active>` and one `Arc<TaskSpec>`,
/// so their sizes decide the RSS with a million pending tasks. mimalloc
/// serves them from size classes 64 bytes apart at this size (320, 384,
/// 448, 512): a field that pushes either past its class costs 64 MiB
/// per million tasks, not 8. Box rare fields instead of growing these.
#[test]
fn a_pending_task_fits_its_allocator_size_classes() {
    let active = std::mem::size_of::<Active>();
    // An Arc's allocation is the value plus two reference counts.
    let spec = std::mem::size_of::<TaskSpec>() + 2 * std::mem::size_of::<usize>();
    assert!(active <= 320, "Active is {active} bytes");
    assert!(spec <= 384, "Arc<TaskSpec>'s allocation is {spec} bytes");
}

fn routed_to_bullmq() -> CoreConfig {
    CoreConfig {
        routes: Routes {
            bullmq_queues: vec!["t".into()],
            temporal_workflows: vec![],
        },
        ..CoreConfig::default()
    }
}

/// The backend's "the engine has the job" is written lazily: the core
/// answers with it at once, and the store has it with the next commit.
#[tokio::test]
async fn forwarded_is_shown_at_once_and_rides_on_the_next_commit() {
    let store = SqliteStore::open(SqliteOptions {
        lazy_within: Duration::from_secs(30),
        ..Default::default()
    })
    .unwrap();
    let core = Core::start(store.clone(), routed_to_bullmq())
        .await
        .unwrap();
    let mut link = core.register_engine(EngineKind::Bullmq, Some(100)).unwrap();
    let first = schedule_in_background(&core, spec("t", None))
        .await
        .unwrap()
        .unwrap();
    let Push::Assign(a) = next_push(&mut link.rx).await else {
        panic!("expected an assignment");
    };
    assert_eq!(a.task.id, first.task.id);
    assert!(!a.again);
    let id = a.task.id;
    let forwarded = Report::Forwarded {
        external_id: id.to_string(),
        waiting_reason: WaitingReason::Delayed,
    };
    core.report(&link.id, id, a.task.rt.attempt, forwarded)
        .unwrap();
    let shown = core.status(id).await.unwrap();
    assert_eq!(shown.rt.state, TaskState::Pending);
    assert_eq!(shown.rt.external_id.as_deref(), Some(&*id.to_string()));
    assert_eq!(shown.rt.waiting_reason, Some(WaitingReason::Delayed));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (stored, _) = store.get(id).await.unwrap().unwrap();
    assert!(!stored.rt.forwarded && stored.rt.external_id.is_none());
    // The hand-over to the backend was lazy too (and the first line,
    // "scheduled", is derived: none is stored).
    assert_eq!(store.logs(id, 0, 10).await.unwrap().len(), 0);
    // The next write that needs a commit (another task's insert)
    // carries it.
    schedule_in_background(&core, spec("t", None))
        .await
        .unwrap()
        .unwrap();
    let (stored, _) = store.get(id).await.unwrap().unwrap();
    assert!(stored.rt.forwarded);
    assert_eq!(stored.rt.external_id.as_deref(), Some(&*id.to_string()));
    let logs = crate::store::log_messages(&*store, id).await;
    assert_eq!(logs, ["scheduled (SIMPLE)", "handed to the bullmq backend"]);
}

/// After a restart, a task its backend may have had (handed to it, the
/// lazy "forwarded" not yet written) is offered again as `again`, so the
/// backend reads where its job is; a forwarded one is resumed.
#[tokio::test]
async fn a_backend_task_not_known_forwarded_is_offered_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions {
        path: Some(dir.path().join("t.db")),
        ..Default::default()
    };
    let store = SqliteStore::open(opts.clone()).unwrap();
    let mut ids = Vec::new();
    for forwarded in [false, true] {
        let mut rt = TaskRuntime::new_pending(0, Source::Bullmq, WaitingReason::Queued);
        rt.forwarded = forwarded;
        ids.push(store_raw(&store, spec("t", None), rt));
    }
    store.close();
    drop(store);
    let store = SqliteStore::open(opts).unwrap();
    let core = Core::start(store, routed_to_bullmq()).await.unwrap();
    let mut link = core.register_engine(EngineKind::Bullmq, Some(100)).unwrap();
    let mut again = HashMap::new();
    for _ in 0..2 {
        let Push::Assign(a) = next_push(&mut link.rx).await else {
            panic!("expected an assignment");
        };
        again.insert(a.task.id, (a.again, a.task.rt.forwarded));
    }
    assert_eq!(again[&ids[0]], (true, false), "not known forwarded");
    assert_eq!(again[&ids[1]], (false, true), "forwarded: resumed");
}

/// Writes a task as a server that stopped would have left it; its id.
fn store_raw(store: &SqliteStore, spec: TaskSpec, rt: TaskRuntime) -> TaskId {
    let t = Task {
        id: TaskId::now_v7(),
        created_at: now_micros(),
        spec: Arc::new(spec),
        rt,
    };
    let id = t.id;
    store.submit(
        vec![WriteOp::Insert {
            task: t,
            payload: Payload::Json(Arc::from("{}")),
            log: vec![],
            event: None,
        }],
        None,
    );
    id
}

/// A task whose cancel was pending when the server stopped ends CANCELLED
/// at start-up, and its cleanup task is scheduled like any other cancel's.
#[tokio::test]
async fn a_cancel_pending_at_a_restart_ends_cancelled_with_its_cleanup() {
    let store = SqliteStore::open(SqliteOptions::default()).unwrap();
    let mut spec = spec("t", None);
    spec.cleanup = Some(Box::new("undo".into()));
    let mut rt = TaskRuntime::new_pending(0, Source::Embedded, WaitingReason::Queued);
    rt.state = TaskState::Running;
    rt.attempt = 1;
    rt.cancel_requested = true;
    let id = store_raw(&store, spec, rt);
    store.flush().await.unwrap();
    let core = Core::start(store.clone(), CoreConfig::default())
        .await
        .unwrap();
    drop(core);
    store.flush().await.unwrap();
    let (ended, _) = store.get(id).await.unwrap().expect("stored");
    assert_eq!(ended.rt.state, TaskState::Cancelled);
    let all = store
        .list(ListQuery {
            filter: Default::default(),
            limit: 10,
            before: None,
        })
        .await
        .unwrap();
    let cleanup: Vec<_> = all.iter().filter(|t| &*t.spec.name == "undo").collect();
    assert_eq!(cleanup.len(), 1, "one cleanup task");
    assert_eq!(
        cleanup[0]
            .spec
            .labels
            .get("cleanup_reason")
            .map(String::as_str),
        Some("cancelled")
    );
    assert_eq!(
        cleanup[0].spec.labels.get("cleanup_of"),
        Some(&id.to_string())
    );
}

//! The retention sweeper: removes ended tasks once their removal time has
//! come, and the oldest ended tasks of a name past its count cap.
//!
//! The store stamps each ended row with its removal time (`purge_at`, from
//! the policy, when the task ends); the sweeper lists what is due, a batch
//! at a time, and submits [`WriteOp::Remove`] for it: each batch rides on
//! a group commit like any other write, so a small batch holds no commit up
//! for long. A workflow's steps are listed with it and go with it. The
//! counts of `GetMetrics` drop once the removal is durable.
//!
//! Must not: decide ages (that is `domain::retention`), or remove a task
//! that has not ended.

use tokio::sync::oneshot;

use super::*;
use crate::store::{Ended, WriteOp};

/// Removing writes a sweep queues at once (each of `sweep_batch` tasks):
/// the writer takes them a slice per commit ([`crate::store::batch`]).
const IN_FLIGHT: usize = 25;

/// Told, once their removal is durable, of the removed tasks an engine ran
/// (so it can drop what it keeps of them: BullMQ's job). Must not block.
pub type RemovalHook = Arc<dyn Fn(Vec<Ended>) + Send + Sync>;

impl Core {
    /// Sets what is told of the removed tasks that `source` ran.
    pub fn on_removed(&self, source: Source, hook: RemovalHook) {
        self.inner.removal_hooks.write().insert(source, hook);
    }

    /// Removes, every `sweep_every`, what retention says may go; stops once
    /// the core is closed.
    pub(super) async fn sweep_loop(self) {
        let every = self.inner.cfg.sweep_every;
        loop {
            tokio::time::sleep(every).await;
            if self.inner.closed.load(Ordering::Acquire) {
                break;
            }
            if self.is_draining() {
                continue;
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(cause = %e, "retention sweep failed; retried at the next one");
            }
        }
    }

    /// One sweep: every task due for removal, then every name over its
    /// count cap. Returns how many tasks were removed.
    pub async fn sweep(&self) -> Result<usize, CoreError> {
        let batch = self.inner.cfg.sweep_batch.max(1);
        let listed = batch * IN_FLIGHT;
        let mut removed = 0;
        loop {
            let due = self
                .inner
                .store
                .due_for_removal(now_micros(), listed)
                .await?;
            let n = due.len();
            removed += self.remove(due).await?;
            if n < listed {
                break;
            }
        }
        let policy = self.inner.cfg.retention.clone();
        if !policy.has_caps() {
            return Ok(removed);
        }
        let over: Vec<(String, TaskState, u64)> = {
            let st = self.inner.state.lock();
            let mut over = Vec::new();
            for name in st.counts.by_name.keys() {
                for state in TaskState::ALL.into_iter().filter(|s| s.is_final()) {
                    let Some(max) = policy.max_kept(name, state) else {
                        continue;
                    };
                    let n = st.counts.of_name(name, state);
                    if n > max {
                        over.push((name.clone(), state, n - max));
                    }
                }
            }
            over
        };
        for (name, state, mut excess) in over {
            while excess > 0 {
                let rows = self
                    .inner
                    .store
                    .oldest_ended(state, &name, (excess as usize).min(batch))
                    .await?;
                // Only the tasks of the name count against its cap; their
                // workflow steps go with them.
                let top = rows
                    .iter()
                    .filter(|e| e.name == name && e.state == state)
                    .count();
                if top == 0 {
                    break;
                }
                excess = excess.saturating_sub(top as u64);
                removed += self.remove(rows).await?;
            }
        }
        Ok(removed)
    }

    /// Removes the listed tasks durably, `sweep_batch` per write, all the
    /// writes queued at once: the store's writer sets them aside and adds
    /// a slice of them to each commit, after the writes that came
    /// ([`crate::store::batch`]), so none of them makes a commit long or
    /// makes a write wait behind it. Each
    /// chunk, once durable, leaves the counts; a chunk that fails stays
    /// (the next sweep lists it again) and the sweep reports the failure.
    async fn remove(&self, mut rows: Vec<Ended>) -> Result<usize, CoreError> {
        let batch = self.inner.cfg.sweep_batch.max(1);
        let mut chunks = Vec::new();
        while !rows.is_empty() {
            let rest = rows.split_off(batch.min(rows.len()));
            let (done, wait) = oneshot::channel();
            self.inner.store.submit(
                vec![WriteOp::Remove(rows.iter().map(|e| e.id).collect())],
                Some(done),
            );
            chunks.push((std::mem::replace(&mut rows, rest), wait));
        }
        let (mut removed, mut failed) = (0, None);
        for (rows, wait) in chunks {
            match wait.await {
                Ok(Ok(_)) => removed += self.removed(rows),
                Ok(Err(e)) => failed = Some(CoreError::Store(e)),
                Err(_) => failed = Some(CoreError::Store(Arc::new(StoreError::Closed))),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Takes durably removed tasks out of the counts and tells the engines
    /// that ran them; how many there were.
    fn removed(&self, rows: Vec<Ended>) -> usize {
        {
            let mut st = self.inner.state.lock();
            for e in &rows {
                st.counts.remove(e.task_type, &e.name, e.state);
            }
        }
        let n = rows.len();
        let mut by_source: HashMap<Source, Vec<Ended>> = HashMap::new();
        for e in rows {
            by_source.entry(e.source).or_default().push(e);
        }
        let hooks = self.inner.removal_hooks.read();
        for (source, ended) in by_source {
            if let Some(hook) = hooks.get(&source) {
                hook(ended);
            }
        }
        n
    }
}

//! Workers: registration, leases (`touch`), draining and removal.
//!
//! Owns: the worker slots ([`WorkerSlot`]) and what happens to a worker's
//! tasks when it goes away.
//! Must not: decide retries (that is `transitions::requeue_lost`).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::domain::*;

use super::state::State;
use super::{Core, CoreError, EngineKind, Push, WorkerInfo, WorkerLink};

/// A registered worker (remote, or an in-process engine) and its slots.
pub(super) struct WorkerSlot {
    pub(super) id: Arc<str>,
    pub(super) name: String,
    pub(super) keys: Vec<Arc<str>>,
    pub(super) slots: u32,
    pub(super) imm_slots: u32,
    pub(super) used: u32,
    pub(super) used_imm: u32,
    pub(super) tx: mpsc::UnboundedSender<Push>,
    pub(super) running: HashSet<TaskId>,
    pub(super) last_seen: Micros,
    pub(super) draining: bool,
    /// The in-process engine it is, if any.
    pub(super) engine: Option<EngineKind>,
}

/// The slots of an engine registered without a concurrency limit.
pub(super) const UNBOUNDED: u32 = u32::MAX;

impl WorkerSlot {
    /// Whether it runs inside the server.
    pub(super) fn local(&self) -> bool {
        self.engine.is_some()
    }
    /// Whether it takes any number of tasks.
    pub(super) fn unbounded(&self) -> bool {
        self.slots == UNBOUNDED
    }
    pub(super) fn free_normal(&self) -> u32 {
        self.slots.saturating_sub(self.used)
    }
    pub(super) fn free_imm(&self) -> u32 {
        self.imm_slots.saturating_sub(self.used_imm)
    }
    pub(super) fn can_take(&self, lane: u8) -> bool {
        !self.draining && (self.free_normal() > 0 || (lane == 0 && self.free_imm() > 0))
    }
}

impl Core {
    /// Registers a remote worker for queue keys (task names); returns its id
    /// and push channel.
    pub fn register_worker(
        &self,
        name: &str,
        keys: &[String],
        slots: u32,
        immediate_slots: u32,
    ) -> Result<WorkerLink, CoreError> {
        self.register(name, keys, slots, immediate_slots, None)
    }

    /// Registers an in-process engine for its queue key, taking up to
    /// `concurrency` tasks at once (`None`: no limit; the engine paces
    /// itself). An engine's leases never run out.
    pub fn register_engine(
        &self,
        kind: EngineKind,
        concurrency: Option<u32>,
    ) -> Result<WorkerLink, CoreError> {
        let Some(key) = kind.key() else {
            return Err(CoreError::FailedPrecondition(
                "the embedded queue's workers register with register_worker".into(),
            ));
        };
        let slots = concurrency.unwrap_or(UNBOUNDED);
        self.register(kind.worker_name(), &[key.to_string()], slots, 0, Some(kind))
    }

    fn register(
        &self,
        name: &str,
        keys: &[String],
        slots: u32,
        immediate_slots: u32,
        engine: Option<EngineKind>,
    ) -> Result<WorkerLink, CoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.with_state(|st| {
            if st.draining {
                return Err(CoreError::Unavailable("the server is shutting down".into()));
            }
            let wid = st.add_worker(name, keys, (slots, immediate_slots), engine, tx);
            tracing::info!(worker_id = %wid, worker_name = name, slots, immediate_slots, "worker registered");
            Ok(wid.to_string())
        })?;
        Ok(WorkerLink { id, rx })
    }

    /// A message arrived from a worker: its leases are renewed.
    pub fn touch(&self, worker_id: &str) {
        let mut st = self.inner.state.lock();
        if let Some(n) = st.worker_ids.get(worker_id).copied() {
            if let Some(w) = st.workers.get_mut(&n) {
                w.last_seen = now_micros();
            }
        }
    }

    /// The worker takes no more tasks.
    pub fn drain_worker(&self, worker_id: &str) {
        self.with_state(|st| {
            if let Some(n) = st.worker_ids.get(worker_id).copied() {
                if let Some(w) = st.workers.get_mut(&n) {
                    w.draining = true;
                }
            }
        })
    }

    /// The worker's stream closed: its tasks are requeued.
    pub fn worker_gone(&self, worker_id: &str, why: &str) {
        self.with_state(|st| st.remove_worker(worker_id, why, true))
    }

    /// Workers, for metrics and the dashboard.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let st = self.inner.state.lock();
        st.workers
            .values()
            .map(|w| WorkerInfo {
                id: w.id.to_string(),
                name: w.name.clone(),
                keys: w.keys.iter().map(|k| k.to_string()).collect(),
                slots: (!w.unbounded()).then_some(w.slots),
                engine: w.engine,
                immediate_slots: w.imm_slots,
                running: w.running.len(),
                local: w.local(),
            })
            .collect()
    }
}

impl State {
    /// Adds a worker serving `keys` with `(slots, immediate slots)`; its
    /// messages go to `tx`. Returns its id.
    pub(super) fn add_worker(
        &mut self,
        name: &str,
        keys: &[String],
        (slots, imm_slots): (u32, u32),
        engine: Option<EngineKind>,
        tx: mpsc::UnboundedSender<Push>,
    ) -> Arc<str> {
        self.next_worker += 1;
        let n = self.next_worker;
        let wid: Arc<str> = Arc::from(format!(
            "w{n}-{}",
            &TaskId::now_v7().simple().to_string()[20..]
        ));
        let mut kv: Vec<Arc<str>> = Vec::new();
        for k in keys {
            let key: Arc<str> = match self.queues.get_key_value(k.as_str()) {
                Some((key, _)) => key.clone(),
                None => Arc::from(k.as_str()),
            };
            if !kv.contains(&key) {
                self.queue(&key).workers.push(n);
                kv.push(key.clone());
                self.dirty_keys.push(key);
            }
        }
        self.workers.insert(
            n,
            WorkerSlot {
                id: wid.clone(),
                name: name.to_string(),
                keys: kv,
                slots,
                imm_slots,
                used: 0,
                used_imm: 0,
                tx,
                running: HashSet::new(),
                last_seen: self.now,
                draining: false,
                engine,
            },
        );
        self.worker_ids.insert(wid.clone(), n);
        wid
    }

    pub(super) fn remove_worker(&mut self, worker_id: &str, why: &str, counts_as_loss: bool) {
        let Some(n) = self.worker_ids.remove(worker_id) else {
            return;
        };
        let Some(w) = self.workers.remove(&n) else {
            return;
        };
        for k in &w.keys {
            if let Some(q) = self.queues.get_mut(k) {
                q.workers.retain(|x| *x != n);
            }
        }
        // The worker is gone from the table: its channel comes with the
        // message.
        self.pushes
            .push((n, w.tx.clone(), Push::Close(why.to_string())));
        let mut running: Vec<TaskId> = w.running.iter().copied().collect();
        running.sort();
        if !running.is_empty() {
            tracing::warn!(
                worker_id,
                tasks = running.len(),
                why,
                "worker removed; requeueing its tasks"
            );
        }
        for id in running {
            // The worker is gone: its slot accounting went with it.
            if let Some(a) = self.tasks.get_mut(&id) {
                a.worker = None;
                let key = a.key.clone();
                let q = self.queue(&key);
                q.running = q.running.saturating_sub(1);
            }
            self.requeue_lost(
                id,
                &format!("worker {worker_id} lost ({why})"),
                counts_as_loss,
            );
        }
    }
}

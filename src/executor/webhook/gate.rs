//! The per-host gate: at most `webhook.per_host_concurrency` calls to one
//! `host:port` at a time, and as many waiting; a call beyond that fails at
//! once (`host_busy`), so the core offers the task again later without
//! using an attempt.
//!
//! It owns the gates (one semaphore and a waiting count per host, pruned
//! when idle past [`MAX_GATES`]); it must not send anything nor decide a
//! task's outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::call::Failure;
use crate::domain::FailureKind;

/// Host gates kept before idle ones are pruned.
const MAX_GATES: usize = 4096;

/// The calls to one host: a semaphore, and how many wait for it.
struct HostGate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Every host's gate.
pub(super) struct Gates {
    per_host: usize,
    gates: Mutex<HashMap<String, Arc<HostGate>>>,
}

impl Gates {
    pub(super) fn new(per_host: usize) -> Gates {
        Gates {
            per_host,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for one call to `host`; fails at once (`host_busy`) when the
    /// host has `per_host_concurrency` calls in flight and as many waiting.
    pub(super) async fn permit(&self, host: String) -> Result<OwnedSemaphorePermit, Failure> {
        let gate = self.gate(&host);
        if let Ok(p) = gate.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        if gate.waiting.fetch_add(1, Ordering::AcqRel) >= self.per_host {
            gate.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Failure::new(
                FailureKind::HostBusy,
                true,
                format!(
                    "{host} already has {} calls in flight and {} waiting (webhook.per_host_concurrency)",
                    self.per_host, self.per_host
                ),
            ));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&gate.waiting);
        gate.sem.clone().acquire_owned().await.map_err(|_| {
            Failure::new(
                FailureKind::HostBusy,
                true,
                "the webhook executor is closing",
            )
        })
    }

    /// The host's gate, made if it has none (idle gates are pruned first
    /// when there are too many).
    fn gate(&self, host: &str) -> Arc<HostGate> {
        let mut gates = self.gates.lock();
        if let Some(g) = gates.get(host) {
            return g.clone();
        }
        if gates.len() >= MAX_GATES {
            let max = self.per_host;
            gates.retain(|_, g| Arc::strong_count(g) > 1 || g.sem.available_permits() < max);
        }
        let g = Arc::new(HostGate {
            sem: Arc::new(Semaphore::new(self.per_host)),
            waiting: AtomicUsize::new(0),
        });
        gates.insert(host.to_string(), g.clone());
        g
    }
}

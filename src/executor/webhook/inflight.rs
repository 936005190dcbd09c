//! The calls in flight: one [`Flight`] per task being called (its attempt,
//! its cancel token and reason, how far the exchange got, the status and
//! URL it reached), in a table by task id that `Push::Cancel` looks up.
//!
//! It owns that table and what a flight records; it must not send anything
//! nor report to the core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU8};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::core::CancelReason;
use crate::domain::TaskId;

/// The phase of a call: waiting for capacity, request sent, answer coming.
pub(super) const QUEUED: u8 = 0;
pub(super) const SENDING: u8 = 1;
pub(super) const RECEIVING: u8 = 2;

/// A call in flight.
pub(super) struct Flight {
    pub(super) attempt: u32,
    pub(super) token: CancellationToken,
    /// Set by `Push::Cancel`; unset when the executor is closing.
    pub(super) cancel_reason: OnceLock<CancelReason>,
    pub(super) phase: AtomicU8,
    pub(super) status: AtomicU16,
    pub(super) url: OnceLock<String>,
    /// The `traceparent` header: the `webhook.call` span's while tracing is
    /// on, else the one the task was scheduled with.
    pub(super) traceparent: Option<String>,
}

impl Flight {
    pub(super) fn new(
        attempt: u32,
        token: CancellationToken,
        traceparent: Option<String>,
    ) -> Flight {
        Flight {
            attempt,
            token,
            cancel_reason: OnceLock::new(),
            phase: AtomicU8::new(QUEUED),
            status: AtomicU16::new(0),
            url: OnceLock::new(),
            traceparent,
        }
    }
}

/// The calls in flight, by task.
#[derive(Default)]
pub(super) struct Inflight(Mutex<HashMap<TaskId, Arc<Flight>>>);

impl Inflight {
    pub(super) fn insert(&self, id: TaskId, flight: Arc<Flight>) {
        self.0.lock().insert(id, flight);
    }

    pub(super) fn get(&self, id: &TaskId) -> Option<Arc<Flight>> {
        self.0.lock().get(id).cloned()
    }

    /// Takes a finished call out, unless a newer one of the task took its
    /// place.
    pub(super) fn remove(&self, id: &TaskId, flight: &Arc<Flight>) {
        let mut m = self.0.lock();
        if m.get(id).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            m.remove(id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

//! Data the edges read through the core rather than from the store: a
//! task's payload for an assignment, and the store pages a watcher replays
//! after a gap in the event history.
//!
//! Owns: [`Core::load_payload`] and [`Core::changed_since`].
//! Must not: change state, or know about gRPC streams (the edges page
//! through these).

use std::sync::Arc;

use crate::domain::*;

use super::{Core, CoreError};

/// Tasks per page of a watch replay.
pub const REPLAY_PAGE: usize = 1000;

impl Core {
    /// The payload of an assigned task: `cached` (the assignment's), else
    /// the store's. A task scheduled inside the server may not be committed
    /// yet, so a miss waits for the store to catch up once; still missing,
    /// it is `NotFound`. The one way the worker stream, the webhook caller,
    /// the workflow engine and BullMQ read a payload.
    pub async fn load_payload(
        &self,
        id: TaskId,
        cached: Option<Arc<str>>,
    ) -> Result<Arc<str>, CoreError> {
        if let Some(p) = cached {
            return Ok(p);
        }
        if let Some(p) = self.inner.store.payload(id).await? {
            return Ok(p);
        }
        if let Err(e) = self.inner.store.flush().await {
            tracing::warn!(task_id = %id, cause = %e, "store flush failed while looking for a payload");
        }
        self.inner
            .store
            .payload(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("the payload of task {id}")))
    }

    /// One page (up to [`REPLAY_PAGE`] tasks, in sequence order) of the
    /// latest status of every task matching `filter` that changed in
    /// `(after, up_to]`: what a watcher replays after a gap. An empty page
    /// ends the replay; the next starts after the last task's sequence.
    pub async fn changed_since(
        &self,
        after: u64,
        up_to: u64,
        filter: &TaskFilter,
    ) -> Result<Vec<Task>, CoreError> {
        Ok(self
            .inner
            .store
            .changed_since(after, up_to, filter.clone(), REPLAY_PAGE)
            .await?)
    }
}

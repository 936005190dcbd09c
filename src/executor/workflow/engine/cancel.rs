//! `Push::Cancel`: the workflow task is cancelled. A running workflow stops
//! going forward and compensates; one that is already stopping carries on.
//!
//! It must not end the task itself: the wind-down does, in `advance.rs`.

use super::transitions::{apply_abort, Abort, Cause};
use super::Engine;
use crate::core::{CancelReason, CoreError};
use crate::domain::*;

impl Engine {
    pub(super) async fn on_cancel(
        &mut self,
        id: TaskId,
        reason: &CancelReason,
    ) -> Result<(), CoreError> {
        let Some(flow) = self.flows.get(&id) else {
            return Ok(());
        };
        let why = match reason {
            CancelReason::Cancelled => "cancelled".to_string(),
            CancelReason::Disconnected => "cancelled (disconnected)".to_string(),
            other => format!("cancelled ({other})"),
        };
        let es = flow.es.clone();
        if let Some(a) = &es.abort {
            // Compensation is under way: it must finish to leave a
            // consistent state.
            return self.update(id, |_, _| {
                (
                    (),
                    vec![format!(
                        "{why} while stopping ({}); the workflow winds down and compensates as planned",
                        a.reason
                    )],
                )
            });
        }
        let abort = Abort {
            cause: Cause::Cancelled,
            step: None,
            error: None,
            reason: why,
        };
        let now = now_micros();
        let cancel = self.update(id, |run, wf| apply_abort(run, &es, wf, &abort, None, now))?;
        self.cancel_children(cancel, "its workflow was cancelled");
        self.advance(id).await
    }
}

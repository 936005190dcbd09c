//! Pauses mirrored in BullMQ: a BullMQ-routed queue paused through
//! `FlowService` is paused in BullMQ too (BullMQ 5's own pause, see
//! `conn::PAUSE`), so the jobs already handed to BullMQ do not start on a
//! Node worker either; a resume resumes it.
//!
//! One loop per backend follows the core's flow rules. It owns the list
//! of the queues Switchyard paused in Redis (`<prefix>:switchyard:paused`):
//! at start-up it puts BullMQ where the rules (durable, in the flow store)
//! say, pausing what is paused and resuming what Switchyard paused before
//! a restart and is no longer paused. A queue someone else paused in
//! BullMQ is left paused. The core holds the tasks of a paused queue
//! whatever Redis says; this only reaches what BullMQ already has. It must
//! not hold or release a task.
//!
//! Only `default`'s pauses are mirrored. A BullMQ queue is shared by every
//! namespace whose tasks are routed to it (BullMQ has no namespaces), so a
//! pause of another namespace does not pause it: the core still holds that
//! namespace's pending tasks of the paused name or queue, and the jobs of
//! that namespace BullMQ already has run on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;
use crate::domain::flow::FlowRules;
use crate::domain::namespace::DEFAULT;

/// How often every pause is put in BullMQ again (BullMQ's pause is
/// idempotent): after Redis lost its data, or a failed call.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a failed pause or resume is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Whether tasks of queue `q` go to BullMQ under `queues` (`*`: all).
fn routed(queues: &[String], q: &str) -> bool {
    queues.iter().any(|r| r == "*" || r == q)
}

/// The BullMQ queues to pause: `default`'s paused names that are routed
/// queues (another namespace's pause leaves the shared queue running).
fn wanted(queues: &[String], rules: &FlowRules) -> BTreeSet<String> {
    rules
        .paused_in(DEFAULT)
        .filter(|p| routed(queues, p))
        .cloned()
        .collect()
}

/// Follows the rules until the backend stops.
pub(super) async fn run(
    shared: Arc<Shared>,
    queues: Vec<String>,
    mut rules: watch::Receiver<Arc<FlowRules>>,
) {
    // What BullMQ has, as far as this loop knows; `None`: not known (the
    // queues Switchyard paused before a restart, until looked at).
    let mut known: HashMap<String, Option<bool>> = HashMap::new();
    let mut listed = false;
    loop {
        let want = wanted(&queues, &rules.borrow_and_update());
        let mut failed = !listed;
        if !listed {
            match shared.conn.paused_queues().await {
                Ok(qs) => {
                    listed = true;
                    failed = false;
                    for q in qs {
                        known.entry(q).or_insert(None);
                    }
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot read which BullMQ queues Switchyard paused; trying again");
                }
            }
        }
        let mut todo: BTreeSet<String> = want.clone();
        todo.extend(known.keys().cloned());
        for q in todo {
            let pause = want.contains(&q);
            if known.get(&q) == Some(&Some(pause)) {
                continue;
            }
            match shared.conn.set_paused(&q, pause).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(queue = %q, paused = pause, "BullMQ queue paused or resumed as in Switchyard");
                    }
                    if pause {
                        known.insert(q, Some(true));
                    } else {
                        known.remove(&q);
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(queue = %q, paused = pause, cause = %e, "cannot pause or resume the BullMQ queue now; trying again");
                }
            }
        }
        let again = if failed { RETRY } else { RESYNC };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = rules.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(again) => {
                // Look again: BullMQ's pause is idempotent.
                for v in known.values_mut() {
                    *v = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paused_names_that_are_routed_queues_are_paused_in_bullmq() {
        let mut rules = FlowRules {
            paused: [(
                DEFAULT.to_string(),
                ["emails".to_string(), "resize".to_string()].into(),
            )]
            .into(),
            ..Default::default()
        };
        let q = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            wanted(&q(&["emails", "other"]), &rules),
            ["emails".to_string()].into()
        );
        assert_eq!(wanted(&q(&["*"]), &rules).len(), 2);
        assert!(wanted(&q(&[]), &rules).is_empty());
        // Another namespace's pause leaves BullMQ's shared queue running.
        rules
            .paused
            .insert("acme".into(), ["other".to_string()].into());
        assert_eq!(
            wanted(&q(&["emails", "other"]), &rules),
            ["emails".to_string()].into()
        );
    }
}

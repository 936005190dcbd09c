//! The runner: one loop that sleeps until the earliest fire of any active
//! schedule (or a change wakes it), then takes the schedules that are due
//! (the agenda keeps them by time), up to 256 side by side, asks
//! `domain::schedule` which ticks are due and what the overlap policy makes
//! of each, and carries that out: fire (a task through the core), skip,
//! buffer, or cancel the previous fire and fire.
//!
//! Must not: write tasks other than through [`Core::schedule`] and
//! [`Core::cancel`].

use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{FireState, Schedule, Schedules, LABEL_SCHEDULE, LABEL_TICK};
use crate::core::{CoreError, Scheduled};
use crate::domain::schedule::{self as rules, Decision, Overlap};
use crate::domain::{now_micros, Micros, TaskId};

/// How often a schedule with a buffered tick looks at its previous fire,
/// and how soon a failed fire is tried again.
const RECHECK: Duration = Duration::from_millis(200);
/// The longest sleep: the loop also looks again after this.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Schedules a pass takes at once: their steps run side by side, and their
/// fire states are written in one transaction.
const PASS_CHUNK: usize = 256;

impl Schedules {
    /// The loop; ends when `stop` is cancelled.
    pub(super) async fn run(&self, stop: CancellationToken) {
        loop {
            let wake = self.pass().await;
            let now = now_micros();
            let sleep = Duration::from_micros(wake.saturating_sub(now).max(0) as u64);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep.min(MAX_SLEEP)) => {}
            }
        }
    }

    /// One pass over the schedules that are due, `PASS_CHUNK` at a time:
    /// the steps of a chunk run side by side (their fires meet in the
    /// store's group commits) and their fire states are written in one
    /// transaction. Answers when the next schedule is due.
    async fn pass(&self) -> Micros {
        let due = self.inner.agenda.lock().take_due(now_micros());
        for chunk in due.chunks(PASS_CHUNK) {
            let _g = self.inner.ops.lock().await;
            let looked: Vec<(String, FireState, Micros)> = stream::iter(chunk.to_vec())
                .map(|id| {
                    let this = self.clone();
                    async move {
                        // Deleted or paused since it was put on the agenda:
                        // nothing to do, and it is not put back.
                        let s = this.get(&id).ok().filter(|s| !s.paused)?;
                        let mut st = s.state.clone();
                        let retry = this.step(&s, &mut st, now_micros()).await;
                        let next = next_wake(&s, &st, retry);
                        Some((id, st, next))
                    }
                })
                .buffer_unordered(PASS_CHUNK)
                .filter_map(std::future::ready)
                .collect()
                .await;
            let next: Vec<(String, Micros)> =
                looked.iter().map(|(id, _, n)| (id.clone(), *n)).collect();
            self.save_states(looked.into_iter().map(|(id, st, _)| (id, st)).collect())
                .await;
            let map = self.inner.map.lock();
            let mut agenda = self.inner.agenda.lock();
            for (id, when) in next {
                if map.get(&id).is_some_and(|s| !s.paused) {
                    agenda.set(&id, when);
                }
            }
        }
        self.inner.agenda.lock().earliest()
    }

    /// Carries out what is due for one schedule at `now`. True when a fire
    /// failed (the tick stays due and is tried again soon).
    async fn step(&self, s: &Schedule, st: &mut FireState, now: Micros) -> bool {
        // A buffered tick fires once the previous fire has ended.
        if let Some(b) = st.buffered {
            if !self.active(st.last_task).await {
                if self.fire_tick(s, st, b).await.is_err() {
                    return true;
                }
                st.buffered = None;
            }
        }
        let from = st.last_tick.map_or(st.since, |t| t.max(st.since));
        let due = rules::due(&s.id, &s.spec, from, now);
        st.missed += due.missed;
        if let Some(first) = due.fire.first() {
            // Everything before the first fire is passed.
            st.last_tick = Some(first - 1);
        }
        for t in due.fire {
            // Only a policy that looks at the previous fire asks about it.
            let previous = s.spec.overlap != Overlap::AllowAll && self.active(st.last_task).await;
            match rules::decide(s.spec.overlap, previous, st.buffered.is_some()) {
                Decision::Fire => {
                    if self.fire_tick(s, st, t).await.is_err() {
                        return true;
                    }
                }
                Decision::Skip => st.skipped += 1,
                Decision::Buffer => st.buffered = Some(t),
                Decision::CancelPreviousAndFire => {
                    if let Some(p) = st.last_task {
                        let why =
                            "a later fire of its schedule replaced it (overlap: cancel_other)";
                        if let Err(e) = self.inner.core.cancel(p, why, false).await {
                            tracing::warn!(schedule = %s.id, task_id = %p, cause = %e, "the previous fire was not cancelled");
                        }
                    }
                    if self.fire_tick(s, st, t).await.is_err() {
                        return true;
                    }
                }
            }
            st.last_tick = Some(t);
        }
        if let Some(t) = due.through {
            st.last_tick = Some(st.last_tick.map_or(t, |l| l.max(t)));
        }
        false
    }

    /// Fires tick `t` (its key and label are the tick's).
    async fn fire_tick(&self, s: &Schedule, st: &mut FireState, t: Micros) -> Result<(), ()> {
        let label = chrono::DateTime::from_timestamp_micros(t)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_default();
        self.fire(s, st, &t.to_string(), &label).await.map(drop).map_err(|e| {
            tracing::warn!(schedule = %s.id, tick = %label, cause = %e, "a schedule's fire failed; it is tried again");
        })
    }

    /// Schedules one fire: the template's task with the key
    /// `schedule:<id>:<key>` and the schedule's labels. Records it in `st`.
    pub(super) async fn fire(
        &self,
        s: &Schedule,
        st: &mut FireState,
        key: &str,
        tick_label: &str,
    ) -> Result<Scheduled, CoreError> {
        let done = async {
            let mut new = (self.inner.compile)(&s.template)?;
            new.spec.idempotency_key = Some(format!("schedule:{}:{key}", s.id).into_boxed_str());
            new.spec
                .labels
                .insert(LABEL_SCHEDULE.to_string(), s.id.clone());
            new.spec
                .labels
                .insert(LABEL_TICK.to_string(), tick_label.to_string());
            // A fire belongs to its schedule's namespace (`id@ns`).
            crate::domain::namespace::stamp(
                &mut new.spec,
                crate::domain::namespace::split(&s.id).1,
            );
            self.inner.core.schedule(new).await
        }
        .await;
        match &done {
            Ok(r) => {
                st.last_task = Some(r.task.id);
                st.last_fire_at = Some(now_micros());
                st.last_error = None;
                if !r.existing {
                    st.fires += 1;
                }
                tracing::debug!(schedule = %s.id, tick = %tick_label, task_id = %r.task.id, existing = r.existing, "schedule fired");
            }
            Err(e) => st.last_error = Some(crate::domain::text::cut(&e.to_string(), 512)),
        }
        done
    }

    /// Whether a fire is still active (not in a final state).
    async fn active(&self, task: Option<TaskId>) -> bool {
        match task {
            Some(id) => match self.inner.core.status(id).await {
                Ok(t) => !t.rt.state.is_final(),
                Err(_) => false,
            },
            None => false,
        }
    }
}

/// When the loop must look at `s` again.
fn next_wake(s: &Schedule, st: &FireState, retry: bool) -> Micros {
    let now = now_micros();
    let soon = now + RECHECK.as_micros() as i64;
    if retry || st.buffered.is_some() {
        return soon;
    }
    let from = st.last_tick.map_or(st.since, |t| t.max(st.since));
    match rules::next_tick(&s.spec, from) {
        Some(t) => rules::fire_at(&s.id, &s.spec, t),
        None => i64::MAX,
    }
}

//! Schedules: task templates fired on a cron expression or an interval.
//!
//! Owns the schedules (their definitions and fire state, kept in memory and
//! persisted through [`db`]), their operations (create, update, pause,
//! resume, delete, trigger) and the runner (`runner.rs`), one timer loop
//! that fires each due tick as an ordinary task through
//! [`Core::schedule`]. The rules (when ticks fall, jitter, catch-up,
//! overlap) are `domain::schedule`'s; this module carries them out.
//!
//! **Exactly once per tick.** A fire is a task whose idempotency key is
//! `schedule:<id>:<tick µs>`, so the store's unique index makes a second
//! insert of the same tick answer the first task. The runner records the
//! last tick it considered after the fire is committed; a crash in between
//! replays that tick on restart, and the key turns the replay into the
//! existing task. The runner runs only where the core runs: on the leader
//! replica, whose writes are fenced.
//!
//! Must not: touch the task store or decide anything about a task once it
//! is scheduled (the core does); know about gRPC (the template is opaque
//! bytes here, compiled into a task by the function the server passes in).

mod agenda;
mod db;
mod runner;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::{Core, CoreError, Scheduled};
use crate::domain::schedule::ScheduleSpec;
use crate::domain::{now_micros, Micros, NewTask, TaskId};
use crate::store::postgres::schedules::ScheduleRow;
use agenda::Agenda;
pub use db::Db;

/// The label every fire carries: its schedule's id.
pub const LABEL_SCHEDULE: &str = crate::domain::schedule::LABEL;
/// The label every fire carries: its tick (RFC 3339, UTC), or `trigger`.
pub const LABEL_TICK: &str = "switchyard.schedule_tick";
/// The file of `schedules.db` in the data directory (SQLite store).
pub const FILE: &str = "schedules.db";

/// Turns a stored template into a new task (the edge's validation).
pub type Compile = Arc<dyn Fn(&[u8]) -> Result<NewTask, CoreError> + Send + Sync>;

/// Where a schedule is in its firing. Persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireState {
    /// Ticks at or before this are never fired: when the schedule was
    /// created, last updated or resumed (no backfill of those).
    pub since: Micros,
    /// The last tick considered (fired, skipped, buffered or missed).
    pub last_tick: Option<Micros>,
    /// The most recent fire's task: the "previous run" of the overlap
    /// policy.
    pub last_task: Option<TaskId>,
    /// A tick waiting for the previous fire to end (overlap `buffer_one`).
    pub buffered: Option<Micros>,
    /// Fires so far (triggers included).
    pub fires: u64,
    /// Ticks skipped by the overlap policy.
    pub skipped: u64,
    /// Ticks passed over by catch-up (outside the window, or collapsed by
    /// `catchup = one`); a long outage counts once.
    pub missed: u64,
    /// When the last fire was made (µs).
    pub last_fire_at: Option<Micros>,
    /// Why the last fire failed, until one succeeds.
    pub last_error: Option<String>,
}

/// One schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Its id, chosen by the caller.
    pub id: String,
    /// Timing and policies.
    pub spec: ScheduleSpec,
    /// The task template, as the edge encoded it.
    pub template: Arc<[u8]>,
    /// Paused schedules do not fire (a trigger still does).
    pub paused: bool,
    /// The note of the last pause or resume.
    pub note: String,
    /// When it was created (µs).
    pub created_at: Micros,
    /// When its definition last changed (µs).
    pub updated_at: Micros,
    /// Its fire state.
    pub state: FireState,
}

impl Schedule {
    fn row(&self) -> ScheduleRow {
        ScheduleRow {
            id: self.id.clone(),
            spec: serde_json::to_string(&self.spec).unwrap_or_default(),
            template: self.template.to_vec(),
            paused: self.paused,
            note: self.note.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            state: serde_json::to_string(&self.state).unwrap_or_default(),
        }
    }

    fn from_row(r: ScheduleRow) -> Result<Schedule, String> {
        Ok(Schedule {
            spec: serde_json::from_str(&r.spec).map_err(|e| format!("spec: {e}"))?,
            state: serde_json::from_str(&r.state).map_err(|e| format!("state: {e}"))?,
            id: r.id,
            template: r.template.into(),
            paused: r.paused,
            note: r.note,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }

    /// The next `n` fire times from `now` (none while paused).
    pub fn upcoming(&self, now: Micros, n: usize) -> Vec<Micros> {
        if self.paused {
            return Vec::new();
        }
        let from = now.max(self.state.since);
        crate::domain::schedule::upcoming(&self.id, &self.spec, from, n)
    }
}

/// The schedules and their runner. Cheap to clone.
#[derive(Clone)]
pub struct Schedules {
    inner: Arc<Inner>,
}

struct Inner {
    map: Mutex<BTreeMap<String, Schedule>>,
    db: Db,
    /// Serialises changes to one schedule: the runner's step and the
    /// operations (held across their awaits).
    ops: tokio::sync::Mutex<()>,
    /// When each active schedule is due a look (the runner visits only
    /// those due).
    agenda: Mutex<Agenda>,
    wake: Notify,
    core: Core,
    compile: Compile,
}

fn store_err(e: crate::store::StoreError) -> CoreError {
    CoreError::Unavailable(format!("schedules: {e}"))
}

fn absent(id: &str) -> CoreError {
    CoreError::Absent(format!(
        "schedule {} not found",
        crate::domain::text::quote(id)
    ))
}

impl Schedules {
    /// Loads the stored schedules and starts the runner, which stops when
    /// `stop` is cancelled (policy: abort between steps; a tick cut short
    /// is fired on the next start, once, by its idempotency key).
    pub async fn start(
        core: Core,
        db: Db,
        compile: Compile,
        stop: CancellationToken,
    ) -> Result<Schedules, CoreError> {
        let mut map = BTreeMap::new();
        for row in db.all().await.map_err(store_err)? {
            let id = row.id.clone();
            match Schedule::from_row(row) {
                Ok(s) => {
                    map.insert(id, s);
                }
                Err(e) => {
                    tracing::error!(schedule = %id, cause = %e, "a stored schedule cannot be read; it is not run")
                }
            }
        }
        tracing::info!(schedules = map.len(), "schedules loaded");
        // Every active schedule is looked at once at start.
        let mut agenda = Agenda::default();
        for s in map.values().filter(|s| !s.paused) {
            agenda.set(&s.id, 0);
        }
        let this = Schedules {
            inner: Arc::new(Inner {
                map: Mutex::new(map),
                db,
                ops: tokio::sync::Mutex::new(()),
                agenda: Mutex::new(agenda),
                wake: Notify::new(),
                core,
                compile,
            }),
        };
        let runner = this.clone();
        // Policy on shutdown: stops when `stop` is cancelled, between steps.
        tokio::spawn(tracing::Instrument::instrument(
            async move { runner.run(stop).await },
            tracing::info_span!("schedules"),
        ));
        Ok(this)
    }

    /// Opens the storage for `data_dir` (SQLite) or the PostgreSQL store.
    pub fn open_sqlite(data_dir: &Path) -> Result<Db, CoreError> {
        Db::open_sqlite(&data_dir.join(FILE)).map_err(store_err)
    }

    /// Creates a schedule; ALREADY_EXISTS if the id is taken.
    pub async fn create(
        &self,
        id: String,
        spec: ScheduleSpec,
        template: Arc<[u8]>,
        paused: bool,
    ) -> Result<Schedule, CoreError> {
        let _g = self.inner.ops.lock().await;
        self.create_locked(id, spec, template, paused).await
    }

    async fn create_locked(
        &self,
        id: String,
        spec: ScheduleSpec,
        template: Arc<[u8]>,
        paused: bool,
    ) -> Result<Schedule, CoreError> {
        if self.inner.map.lock().contains_key(&id) {
            return Err(CoreError::AlreadyExists(format!(
                "schedule {} already exists",
                crate::domain::text::quote(&id)
            )));
        }
        let now = now_micros();
        let s = Schedule {
            id,
            spec,
            template,
            paused,
            note: String::new(),
            created_at: now,
            updated_at: now,
            state: FireState {
                since: now,
                ..FireState::default()
            },
        };
        self.save(s).await
    }

    /// Replaces a schedule's timing, policies and template; its fire state
    /// stays, and ticks of the new timing before now never fire. With
    /// `create_if_missing` an unknown id is created (not paused). Answers
    /// whether it was created.
    pub async fn update(
        &self,
        id: &str,
        spec: ScheduleSpec,
        template: Arc<[u8]>,
        create_if_missing: bool,
    ) -> Result<(Schedule, bool), CoreError> {
        let _g = self.inner.ops.lock().await;
        let mut s = match self.get(id) {
            Ok(s) => s,
            Err(_) if create_if_missing => {
                let s = self
                    .create_locked(id.to_string(), spec, template, false)
                    .await?;
                return Ok((s, true));
            }
            Err(e) => return Err(e),
        };
        let now = now_micros();
        s.spec = spec;
        s.template = template;
        s.updated_at = now;
        s.state.since = now;
        s.state.buffered = None;
        Ok((self.save(s).await?, false))
    }

    /// Pauses or resumes a schedule. A resumed schedule does not fire the
    /// ticks that fell while it was paused.
    pub async fn set_paused(
        &self,
        id: &str,
        paused: bool,
        note: String,
    ) -> Result<Schedule, CoreError> {
        let _g = self.inner.ops.lock().await;
        let mut s = self.get(id)?;
        if s.paused && !paused {
            s.state.since = now_micros();
            s.state.buffered = None;
        }
        s.paused = paused;
        s.note = note;
        self.save(s).await
    }

    /// Deletes a schedule. Its fires already made are ordinary tasks and
    /// stay.
    pub async fn delete(&self, id: &str) -> Result<(), CoreError> {
        let _g = self.inner.ops.lock().await;
        self.get(id)?;
        self.inner.db.delete(id).await.map_err(store_err)?;
        self.inner.map.lock().remove(id);
        self.inner.agenda.lock().remove(id);
        Ok(())
    }

    /// Fires a schedule now, outside its timing and its overlap policy
    /// (paused or not); the fire becomes its previous run.
    pub async fn trigger(&self, id: &str) -> Result<Scheduled, CoreError> {
        let _g = self.inner.ops.lock().await;
        let s = self.get(id)?;
        let mut st = s.state.clone();
        let now = now_micros();
        let done = self
            .fire(&s, &mut st, &format!("trigger:{now}"), "trigger")
            .await;
        self.save_states(vec![(s.id.clone(), st)]).await;
        if !s.paused {
            // A buffered tick may now wait on this fire.
            self.inner.agenda.lock().set(&s.id, 0);
            self.inner.wake.notify_one();
        }
        done
    }

    /// One schedule.
    pub fn get(&self, id: &str) -> Result<Schedule, CoreError> {
        self.inner
            .map
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| absent(id))
    }

    /// Up to `limit` schedules after the id `after`, by id.
    pub fn list(&self, after: &str, limit: usize) -> Vec<Schedule> {
        self.page(after, limit, |_| true)
    }

    /// A page of namespace `ns`'s schedules in id order: ids after `after`
    /// (a qualified id; empty: from the first), at most `limit`.
    pub fn list_in(&self, ns: &str, after: &str, limit: usize) -> Vec<Schedule> {
        self.page(after, limit, |id| {
            crate::domain::namespace::split(id).1 == ns
        })
    }

    /// Up to `limit` schedules whose id `keep`s, after the id `after`.
    fn page(&self, after: &str, limit: usize, keep: impl Fn(&str) -> bool) -> Vec<Schedule> {
        use std::ops::Bound;
        let map = self.inner.map.lock();
        let from = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_string())
        };
        map.range((from, Bound::Unbounded))
            .filter(|(id, _)| keep(id))
            .take(limit)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Writes a whole schedule, then keeps it and wakes the runner.
    async fn save(&self, s: Schedule) -> Result<Schedule, CoreError> {
        self.inner.db.put(s.row()).await.map_err(store_err)?;
        self.inner.map.lock().insert(s.id.clone(), s.clone());
        {
            let mut agenda = self.inner.agenda.lock();
            if s.paused {
                agenda.remove(&s.id);
            } else {
                agenda.set(&s.id, 0);
            }
        }
        self.inner.wake.notify_one();
        Ok(s)
    }

    /// Writes the fire states that changed, of schedules that still exist,
    /// in one transaction. A failed write is logged: the states in memory go
    /// on, and a restart replays from the last states written, which the
    /// fires' idempotency keys make safe.
    async fn save_states(&self, states: Vec<(String, FireState)>) {
        let changed: Vec<(String, FireState)> = {
            let map = self.inner.map.lock();
            states
                .into_iter()
                .filter(|(id, st)| map.get(id).is_some_and(|s| s.state != *st))
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let rows = changed
            .iter()
            .map(|(id, st)| (id.clone(), serde_json::to_string(st).unwrap_or_default()))
            .collect();
        if let Err(e) = self.inner.db.put_states(rows).await {
            tracing::warn!(schedules = changed.len(), cause = %e, "schedules' fire states were not written");
        }
        let mut map = self.inner.map.lock();
        for (id, st) in changed {
            if let Some(s) = map.get_mut(&id) {
                s.state = st;
            }
        }
    }
}

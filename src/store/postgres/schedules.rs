//! Schedule rows in PostgreSQL (`schedules`), for the schedules runner:
//! one connection of its own, opened on first use and again after it was
//! lost; every write is one transaction fenced by the leader's term, as the
//! task writer's are, so a deposed leader records no fire.
//!
//! Owns the SQL of the `schedules` table; what a row means is the runner's.

use super::side::SideConn;
use super::PgStore;
use crate::store::StoreError;

/// One stored schedule, as columns: the runner serialises its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRow {
    /// The schedule id.
    pub id: String,
    /// Its timing and policies, as JSON.
    pub spec: String,
    /// Its task template, as the edge encoded it.
    pub template: Vec<u8>,
    /// Whether it is paused.
    pub paused: bool,
    /// The note of the last pause or resume.
    pub note: String,
    /// When it was created (µs).
    pub created_at: i64,
    /// When its definition last changed (µs).
    pub updated_at: i64,
    /// Its fire state, as JSON.
    pub state: String,
}

/// The schedules of one schema.
pub struct ScheduleRows {
    conn: SideConn,
}

impl ScheduleRows {
    /// The rows of `store`'s schema, written under its fence.
    pub fn open(store: &PgStore) -> Result<ScheduleRows, StoreError> {
        Ok(ScheduleRows {
            conn: SideConn::open(store, "schedules")?,
        })
    }

    /// Every stored schedule, by id.
    pub async fn all(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        self.conn
            .with_client(async |c| {
                let rows = c
                    .query(
                        "SELECT id, spec, template, paused, note, created_at, updated_at, state
                     FROM schedules ORDER BY id",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| ScheduleRow {
                        id: r.get(0),
                        spec: r.get(1),
                        template: r.get(2),
                        paused: r.get(3),
                        note: r.get(4),
                        created_at: r.get(5),
                        updated_at: r.get(6),
                        state: r.get(7),
                    })
                    .collect())
            })
            .await
    }

    /// Inserts or replaces a whole schedule.
    pub async fn put(&self, row: &ScheduleRow) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn.fenced(async |tx| {
            tx.execute(
                "INSERT INTO schedules (id, spec, template, paused, note, created_at, updated_at, state, term)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET spec = $2, template = $3, paused = $4, note = $5,
                     updated_at = $7, state = $8, term = $9",
                &[
                    &row.id,
                    &row.spec,
                    &row.template,
                    &row.paused,
                    &row.note,
                    &row.created_at,
                    &row.updated_at,
                    &row.state,
                    &term,
                ],
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Replaces the fire state of a schedule that still exists (one deleted
    /// meanwhile stays deleted).
    pub async fn put_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        let term = self.conn.term();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "UPDATE schedules SET state = $2, term = $3 WHERE id = $1",
                    &[&id, &state, &term],
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Replaces the fire states of several schedules in one transaction
    /// (the runner's pass); ids deleted meanwhile stay deleted.
    pub async fn put_states(&self, states: &[(String, String)]) -> Result<(), StoreError> {
        let term = self.conn.term();
        let (ids, states): (Vec<&str>, Vec<&str>) = states
            .iter()
            .map(|(id, st)| (id.as_str(), st.as_str()))
            .unzip();
        self.conn
            .fenced(async |tx| {
                tx.execute(
                    "UPDATE schedules AS s SET state = u.state, term = $3
                 FROM UNNEST($1::text[], $2::text[]) AS u(id, state)
                 WHERE s.id = u.id",
                    &[&ids, &states, &term],
                )
                .await
                .map(drop)
            })
            .await
    }

    /// Deletes a schedule.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.conn
            .fenced(async |tx| {
                tx.execute("DELETE FROM schedules WHERE id = $1", &[&id])
                    .await
                    .map(drop)
            })
            .await
    }
}

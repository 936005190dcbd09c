//! Queries: one task, lists, logs, the start-up scan, counts. Filters are
//! `= ANY($n)` over arrays, one parameter per field.

use std::sync::Arc;

use futures::{pin_mut, TryStreamExt};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::PgStore;
use crate::domain::{
    LogEntry, LogSource, Task, TaskFilter, TaskId, TaskRuntime, TaskSpec, TaskState, TaskType,
};
use crate::store::{page_sql, Counts, Ended, ListQuery, StoreError, WriteOp};

pub(super) const TASK_COLUMNS: &str = "id, created_at, spec, rt";

pub(super) fn decode(
    id: TaskId,
    created_at: i64,
    spec: &str,
    rt: &str,
) -> Result<Task, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        id: id.to_string(),
        reason: e.to_string(),
    };
    let spec: TaskSpec = serde_json::from_str(spec).map_err(corrupt)?;
    let rt: TaskRuntime = serde_json::from_str(rt).map_err(corrupt)?;
    Ok(Task {
        id,
        created_at,
        spec: Arc::new(spec),
        rt,
    })
}

fn row_task(r: &Row) -> Result<Task, StoreError> {
    decode(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)
}

/// Reads every row as a task; a row that cannot be decoded is left out
/// (start-up quarantines it; `get` reports it).
fn tasks_of(rows: Vec<Row>) -> Result<Vec<Task>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        match row_task(r) {
            Ok(t) => out.push(t),
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(cause = %e, "a stored row cannot be read; left out")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// The WHERE clause of a filter (without `WHERE`) and its parameters,
/// numbered from `$1`. A field of one value is `col = $n` (a plain index
/// condition, which a backward index scan orders by `id`), of several
/// `col = ANY($n)`.
pub(super) fn filter_sql(f: &TaskFilter) -> (Vec<String>, Params) {
    let mut w = Where::default();
    if let Some(u) = &f.user_id {
        w.add("user_id", "text", vec![u.clone()]);
    }
    if let Some(s) = &f.session_id {
        w.add("session_id", "text", vec![s.clone()]);
    }
    if let Some(s) = &f.schedule_id {
        w.add("schedule_id", "text", vec![s.clone()]);
    }
    if let Some(k) = &f.error_kind {
        w.add("error_kind", "text", vec![k.clone()]);
    }
    match f.namespace.as_deref() {
        None => {}
        Some(crate::domain::namespace::DEFAULT) => w.clauses.push("namespace IS NULL".into()),
        Some(ns) => w.add("namespace", "text", vec![ns.to_string()]),
    }
    w.add("id", "uuid", f.task_ids.clone());
    w.add("name", "text", f.names.clone());
    let small = |v: Vec<i64>| v.into_iter().map(|c| c as i16).collect::<Vec<i16>>();
    w.add(
        "task_type",
        "int2",
        small(f.task_types.iter().map(|t| t.code()).collect()),
    );
    w.add(
        "state",
        "int2",
        small(f.states.iter().map(|s| s.code()).collect()),
    );
    w.add(
        "source",
        "int2",
        small(f.sources.iter().map(|s| s.code()).collect()),
    );
    (w.clauses, w.params)
}

#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    params: Params,
}

impl Where {
    fn add<T>(&mut self, col: &str, cast: &str, mut v: Vec<T>)
    where
        T: ToSql + Sync + Send + 'static,
        Vec<T>: ToSql + Sync + Send,
    {
        if v.len() == 1 {
            self.params.push(Box::new(v.pop().expect("one value")));
            self.clauses.push(format!("{col} = ${}", self.params.len()));
        } else if !v.is_empty() {
            self.params.push(Box::new(v));
            self.clauses
                .push(format!("{col} = ANY(${}::{cast}[])", self.params.len()));
        }
    }
}

fn refs(p: &Params) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

pub(super) async fn get(s: &PgStore, id: TaskId) -> Result<Option<(Task, Arc<str>)>, StoreError> {
    let c = s.reader().await?;
    let st = c
        .prepare_cached("SELECT id, created_at, spec, rt, payload FROM tasks WHERE id = $1")
        .await?;
    match c.query_opt(&st, &[&id]).await? {
        Some(r) => {
            let t = row_task(&r)?;
            let p: String = r.try_get(4)?;
            Ok(Some((t, Arc::from(p))))
        }
        None => Ok(None),
    }
}

pub(super) async fn payload(s: &PgStore, id: TaskId) -> Result<Option<Arc<str>>, StoreError> {
    let c = s.reader().await?;
    let st = c
        .prepare_cached("SELECT payload FROM tasks WHERE id = $1")
        .await?;
    Ok(c.query_opt(&st, &[&id])
        .await?
        .map(|r| r.try_get::<_, String>(0))
        .transpose()?
        .map(Arc::from))
}

pub(super) async fn list(s: &PgStore, q: ListQuery) -> Result<Vec<Task>, StoreError> {
    let (sql, params) = list_sql(&q);
    let c = s.reader().await?;
    tasks_of(c.query(&sql, &refs(&params)).await?)
}

/// A page of tasks, newest first, and its parameters. Every filter has an
/// index ending in `id` (migration V3), so a page of one value is a
/// backward walk of that index that stops at the limit. With several values
/// of the one field that drives (`state = ANY(…)`), the field's index is
/// walked once per value, each walk capped at the limit, and the pages
/// merged ([`crate::store::Split`]), rather than every row of those values sorted.
pub(super) fn list_sql(q: &ListQuery) -> (String, Params) {
    let (mut clauses, mut params) = filter_sql(&q.filter);
    if let Some(b) = q.before {
        params.push(Box::new(b));
        clauses.push(format!("id < ${}", params.len()));
    }
    let sql = page_sql(
        &q.filter,
        TASK_COLUMNS,
        &clauses,
        q.limit.max(1),
        |name| {
            params.push(Box::new(name));
            format!("${}", params.len())
        },
        |walk| format!("({walk})"),
    );
    (sql, params)
}

pub(super) async fn logs(
    s: &PgStore,
    id: TaskId,
    after: u64,
    limit: usize,
) -> Result<Vec<LogEntry>, StoreError> {
    let c = s.reader().await?;
    let st = c
        .prepare_cached(
            "SELECT line, time, source, level, attempt, message FROM task_logs
             WHERE task_id = $1 AND line > $2 ORDER BY line LIMIT $3",
        )
        .await?;
    let rows = c
        .query(
            &st,
            &[
                &id,
                &(after.min(i64::MAX as u64) as i64),
                &(limit.min(i64::MAX as usize) as i64),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LogEntry {
                task_id: id,
                line: r.try_get::<_, i64>(0)?.max(0) as u64,
                time: r.try_get(1)?,
                source: LogSource::from_code(i64::from(r.try_get::<_, i16>(2)?)),
                level: r.try_get(3)?,
                attempt: r.try_get::<_, i32>(4)?.max(0) as u32,
                message: r.try_get(5)?,
            })
        })
        .collect()
}

/// Streams the active tasks in chunks; returns the quarantine writes of the
/// rows that could not be decoded.
pub(super) async fn stream_active(
    s: &PgStore,
    chunk: usize,
    tx: mpsc::Sender<Vec<Task>>,
) -> Result<Vec<WriteOp>, StoreError> {
    let chunk = chunk.max(1);
    let c = s.reader().await?;
    let rows = c
        .query_raw(
            &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE state IN (1, 2, 6)"),
            std::iter::empty::<i32>(),
        )
        .await?;
    pin_mut!(rows);
    let mut bad = Vec::new();
    let mut buf = Vec::with_capacity(chunk);
    while let Some(r) = rows.try_next().await? {
        let id: TaskId = r.try_get(0)?;
        match row_task(&r) {
            Ok(t) => buf.push(t),
            Err(e) => {
                tracing::error!(
                    cause = %e,
                    "a stored task cannot be read back: quarantined \
                     (its row stays; GetTaskStatus reports it)"
                );
                bad.push(WriteOp::Quarantine {
                    key: id.as_bytes().to_vec(),
                    reason: crate::domain::text::cut(&e.to_string(), 1024),
                });
            }
        }
        if buf.len() == chunk {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(chunk));
            if tx.send(full).await.is_err() {
                return Ok(bad);
            }
        }
    }
    if !buf.is_empty() {
        let _ = tx.send(buf).await;
    }
    Ok(bad)
}

pub(super) async fn changed_since(
    s: &PgStore,
    after: u64,
    up_to: u64,
    filter: TaskFilter,
    limit: usize,
) -> Result<Vec<Task>, StoreError> {
    let (mut clauses, mut params) = filter_sql(&filter);
    params.push(Box::new(after.min(i64::MAX as u64) as i64));
    clauses.push(format!("seq > ${}", params.len()));
    params.push(Box::new(up_to.min(i64::MAX as u64) as i64));
    clauses.push(format!("seq <= ${}", params.len()));
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE {} ORDER BY seq LIMIT {}",
        clauses.join(" AND "),
        limit.max(1)
    );
    let c = s.reader().await?;
    tasks_of(c.query(&sql, &refs(&params)).await?)
}

/// The ended tasks per type, name and state, as the triggers of migration
/// V3 keep them (no count of the rows).
pub(super) async fn ended_counts(s: &PgStore) -> Result<Counts, StoreError> {
    let c = s.reader().await?;
    let rows = c
        .query(
            "SELECT task_type, name, state, n FROM ended_counts WHERE n > 0",
            &[],
        )
        .await?;
    counts_of(rows)
}

/// Rows of `task_type, name, state, count` as counts.
fn counts_of(rows: Vec<Row>) -> Result<Counts, StoreError> {
    let mut out = Vec::new();
    for r in rows {
        let (Some(t), Some(st)) = (
            TaskType::from_code(i64::from(r.try_get::<_, i16>(0)?)),
            TaskState::from_code(i64::from(r.try_get::<_, i16>(2)?)),
        ) else {
            continue;
        };
        out.push((t, r.try_get(1)?, st, r.try_get::<_, i64>(3)?.max(0) as u64));
    }
    Ok(out)
}

pub(super) async fn counts(s: &PgStore, filter: &str) -> Result<Counts, StoreError> {
    let c = s.reader().await?;
    let rows = c
        .query(
            &format!(
                "SELECT task_type, name, state, count(*) FROM tasks {filter} \
                 GROUP BY task_type, name, state"
            ),
            &[],
        )
        .await?;
    counts_of(rows)
}

/// The columns of an [`Ended`] row: the queue only for a task that ran on
/// BullMQ (a JSON read the others do not pay).
pub(super) const ENDED_COLUMNS: &str = "id, task_type, name, state, source,
     CASE WHEN source = 2
          THEN COALESCE(spec::jsonb #>> '{target,Simple,queue}', name) END";

/// The ended tasks whose removal time has come (`$1` now, `$2` limit).
pub(super) fn due_sql() -> String {
    format!("SELECT {ENDED_COLUMNS} FROM tasks WHERE purge_at <= $1 ORDER BY purge_at LIMIT $2")
}

/// The tasks of one name (`$1`) that ended first in `state` (`$2` limit),
/// on the partial index `tasks_ended` (its condition repeated, the state a
/// literal, as for SQLite).
pub(super) fn oldest_sql(state: TaskState) -> String {
    format!(
        "SELECT {ENDED_COLUMNS} FROM tasks
         WHERE state IN (3, 4, 5, 7) AND state = {} AND name = $1 AND parent_id IS NULL
         ORDER BY seq LIMIT $2",
        state.code()
    )
}

/// Runs a query selecting `id, task_type, name, state` of ended tasks and
/// adds, after each, its workflow steps (and theirs) that have ended.
pub(super) async fn ended_with_steps(
    s: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Ended>, StoreError> {
    let c = s.reader().await?;
    let read = |r: &Row| -> Result<Option<Ended>, StoreError> {
        let (Some(task_type), Some(state)) = (
            TaskType::from_code(i64::from(r.try_get::<_, i16>(1)?)),
            TaskState::from_code(i64::from(r.try_get::<_, i16>(3)?)),
        ) else {
            return Ok(None);
        };
        Ok(Some(Ended {
            id: r.try_get(0)?,
            task_type,
            name: r.try_get(2)?,
            state,
            source: crate::domain::Source::from_code(i64::from(r.try_get::<_, i16>(4)?)),
            queue: r.try_get(5)?,
        }))
    };
    let top = c.query(sql, params).await?;
    if top.is_empty() {
        return Ok(Vec::new());
    }
    // Only a workflow (COMPLEX) has steps.
    let mut ids: Vec<TaskId> = Vec::new();
    for r in &top {
        if i64::from(r.try_get::<_, i16>(1)?) == TaskType::Complex.code() {
            ids.push(r.try_get(0)?);
        }
    }
    let mut by_root: std::collections::HashMap<TaskId, Vec<Ended>> = Default::default();
    if !ids.is_empty() {
        let steps = c
            .prepare_cached(&format!(
                "WITH RECURSIVE tree(root, tid) AS (
                     SELECT t.parent_id, t.id FROM tasks t WHERE t.parent_id = ANY($1::uuid[])
                     UNION ALL SELECT tree.root, t.id FROM tasks t JOIN tree ON t.parent_id = tree.tid
                 )
                 SELECT {ENDED_COLUMNS}, tree.root FROM tasks
                 JOIN tree ON tasks.id = tree.tid WHERE tasks.state IN (3, 4, 5, 7)"
            ))
            .await?;
        for r in c.query(&steps, &[&ids]).await? {
            if let Some(e) = read(&r)? {
                by_root.entry(r.try_get(6)?).or_default().push(e);
            }
        }
    }
    let mut out = Vec::with_capacity(top.len());
    for r in &top {
        if let Some(e) = read(r)? {
            let id = e.id;
            out.push(e);
            out.extend(by_root.remove(&id).unwrap_or_default());
        }
    }
    Ok(out)
}

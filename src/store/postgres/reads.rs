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
use crate::store::{Counts, ListQuery, StoreError, WriteOp};

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
/// numbered from `$1`.
pub(super) fn filter_sql(f: &TaskFilter) -> (Vec<String>, Params) {
    let mut clauses = Vec::new();
    let mut params: Params = Vec::new();
    let mut add = |col: &str, cast: &str, v: Box<dyn ToSql + Sync + Send>, params: &mut Params| {
        params.push(v);
        clauses.push(format!("{col} = ANY(${}::{cast}[])", params.len()));
    };
    if let Some(u) = &f.user_id {
        add("user_id", "text", Box::new(vec![u.clone()]), &mut params);
    }
    if let Some(s) = &f.session_id {
        add("session_id", "text", Box::new(vec![s.clone()]), &mut params);
    }
    if !f.task_ids.is_empty() {
        add("id", "uuid", Box::new(f.task_ids.clone()), &mut params);
    }
    if !f.names.is_empty() {
        add("name", "text", Box::new(f.names.clone()), &mut params);
    }
    let small = |v: Vec<i64>| -> Box<dyn ToSql + Sync + Send> {
        Box::new(v.into_iter().map(|c| c as i16).collect::<Vec<i16>>())
    };
    if !f.task_types.is_empty() {
        add(
            "task_type",
            "int2",
            small(f.task_types.iter().map(|t| t.code()).collect()),
            &mut params,
        );
    }
    if !f.states.is_empty() {
        add(
            "state",
            "int2",
            small(f.states.iter().map(|s| s.code()).collect()),
            &mut params,
        );
    }
    if !f.sources.is_empty() {
        add(
            "source",
            "int2",
            small(f.sources.iter().map(|s| s.code()).collect()),
            &mut params,
        );
    }
    (clauses, params)
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
    let (mut clauses, mut params) = filter_sql(&q.filter);
    if let Some(b) = q.before {
        params.push(Box::new(b));
        clauses.push(format!("id < ${}", params.len()));
    }
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks {}{} ORDER BY id DESC LIMIT {}",
        if clauses.is_empty() { "" } else { "WHERE " },
        clauses.join(" AND "),
        q.limit.max(1)
    );
    let c = s.reader().await?;
    tasks_of(c.query(&sql, &refs(&params)).await?)
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

//! Rows ⇄ tasks: the codec of a stored task, the counts, the queries of
//! lists and the WHERE clause of a filter.

use super::*;

pub(super) const TASK_COLUMNS: &str = "id, created_at, spec, rt";

pub(super) fn row_to_task(r: &Row<'_>) -> Result<Task, StoreError> {
    let idb: Vec<u8> = r.get(0)?;
    let spec: String = r.get(2)?;
    let rt: String = r.get(3)?;
    decode_task(&idb, r.get(1)?, &spec, &rt)
}

pub(super) fn decode_task(
    idb: &[u8],
    created_at: i64,
    spec: &str,
    rt: &str,
) -> Result<Task, StoreError> {
    let id = TaskId::from_slice(idb).map_err(|e| StoreError::Corrupt {
        id: format!("{idb:?}"),
        reason: e.to_string(),
    })?;
    let spec: TaskSpec = serde_json::from_str(spec).map_err(|e| corrupt(id, e))?;
    let rt: TaskRuntime = serde_json::from_str(rt).map_err(|e| corrupt(id, e))?;
    Ok(Task {
        id,
        created_at,
        spec: Arc::new(spec),
        rt,
    })
}

/// Tasks counted by type, name and state, of the rows `filter` (a `WHERE`
/// clause, or empty for all) selects.
pub(super) fn count_tasks(conn: &Connection, filter: &str) -> Result<Counts, StoreError> {
    counts_of(
        conn,
        &format!(
            "SELECT task_type, name, state, count(*) FROM tasks {filter} \
             GROUP BY task_type, name, state"
        ),
    )
}

/// Runs a query of `task_type, name, state, count` rows.
pub(super) fn counts_of(conn: &Connection, sql: &str) -> Result<Counts, StoreError> {
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (Some(t), Some(s)) = (
            TaskType::from_code(r.get(0)?),
            TaskState::from_code(r.get(2)?),
        ) else {
            continue;
        };
        out.push((t, r.get(1)?, s, r.get::<_, i64>(3)? as u64));
    }
    Ok(out)
}

/// Runs a query selecting `TASK_COLUMNS` and reads every row as a task.
pub(super) fn query_tasks(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Task>, StoreError> {
    let mut st = conn.prepare(sql)?;
    let mut rows = st.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        match row_to_task(r) {
            Ok(t) => out.push(t),
            // One unreadable row must not hide every other: it is left out
            // of lists (start-up quarantines it; `get` reports it).
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(cause = %e, "a stored row cannot be read; left out")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Builds the WHERE clause of a filter; returns the clause and its values.
pub(super) fn filter_sql(f: &TaskFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut clauses: Vec<String> = Vec::new();
    let mut vals: Vec<Value> = Vec::new();
    let mut push_in = |col: &str, items: Vec<Value>, clauses: &mut Vec<String>| {
        if items.is_empty() {
            return;
        }
        let start = vals.len();
        let ph: Vec<String> = (0..items.len())
            .map(|i| format!("?{}", start + i + 1))
            .collect();
        vals.extend(items);
        clauses.push(match ph.as_slice() {
            [one] => format!("{col} = {one}"),
            _ => format!("{col} IN ({})", ph.join(", ")),
        });
    };
    if let Some(u) = &f.user_id {
        push_in("user_id", vec![Value::Text(u.clone())], &mut clauses);
    }
    if let Some(s) = &f.session_id {
        push_in("session_id", vec![Value::Text(s.clone())], &mut clauses);
    }
    if let Some(s) = &f.schedule_id {
        push_in("schedule_id", vec![Value::Text(s.clone())], &mut clauses);
    }
    if let Some(k) = &f.error_kind {
        push_in("error_kind", vec![Value::Text(k.clone())], &mut clauses);
    }
    match f.namespace.as_deref() {
        None => {}
        Some(crate::domain::namespace::DEFAULT) => clauses.push("namespace IS NULL".into()),
        Some(ns) => push_in("namespace", vec![Value::Text(ns.to_string())], &mut clauses),
    }
    push_in(
        "id",
        f.task_ids
            .iter()
            .map(|i| Value::Blob(i.as_bytes().to_vec()))
            .collect(),
        &mut clauses,
    );
    push_in(
        "name",
        f.names.iter().map(|n| Value::Text(n.clone())).collect(),
        &mut clauses,
    );
    push_in(
        "task_type",
        f.task_types
            .iter()
            .map(|t| Value::Integer(t.code()))
            .collect(),
        &mut clauses,
    );
    push_in(
        "state",
        f.states.iter().map(|s| Value::Integer(s.code())).collect(),
        &mut clauses,
    );
    push_in(
        "source",
        f.sources.iter().map(|s| Value::Integer(s.code())).collect(),
        &mut clauses,
    );
    (clauses.join(" AND "), vals)
}

/// The query of a page of tasks: newest first, after `before`.
///
/// Every filter has an index ending in `id` (see the schema), so a page of
/// one filter value is a walk of that index that stops at the limit. A
/// filter of several values on one field (`state IN (…)`) would make SQLite
/// read every row of those values and sort them; instead the field's index
/// is walked once per value, each walk capped at the limit, and the pages
/// merged ([`crate::store::Split`]).
pub(super) fn list_sql(q: &ListQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let (clause, mut vals) = filter_sql(&q.filter);
    let mut clauses: Vec<String> = (!clause.is_empty()).then_some(clause).into_iter().collect();
    if let Some(b) = q.before {
        vals.push(Value::Blob(b.as_bytes().to_vec()));
        clauses.push(format!("id < ?{}", vals.len()));
    }
    let sql = page_sql(
        &q.filter,
        TASK_COLUMNS,
        &clauses,
        q.limit.max(1),
        |name| {
            vals.push(Value::Text(name));
            format!("?{}", vals.len())
        },
        |walk| format!("SELECT * FROM ({walk})"),
    );
    (sql, vals)
}

/// The columns of an [`Ended`] row: the queue only for a task that ran on
/// BullMQ (a JSON read the others do not pay).
pub(super) const ENDED_COLUMNS: &str = "id, task_type, name, state, source,
     CASE WHEN source = 2
          THEN COALESCE(json_extract(spec, '$.target.Simple.queue'), name) END";

/// The ended tasks whose removal time has come (`?1` now, `?2` limit).
pub(super) fn due_sql() -> String {
    format!("SELECT {ENDED_COLUMNS} FROM tasks WHERE purge_at <= ?1 ORDER BY purge_at LIMIT ?2")
}

/// The tasks of one name (`?1`) that ended first in `state` (`?2` limit).
/// The state is a literal and the partial index's own condition is
/// repeated: SQLite uses a partial index only when the query's terms
/// imply its condition, and it cannot see that `state = ?` does.
pub(super) fn oldest_sql(state: TaskState) -> String {
    format!(
        "SELECT {ENDED_COLUMNS} FROM tasks
         WHERE {} AND state = {} AND name = ?1 AND parent_id IS NULL
         ORDER BY seq LIMIT ?2",
        ended!("state"),
        state.code()
    )
}

/// Runs a query selecting [`ENDED_COLUMNS`] of ended tasks and
/// adds, after each workflow (COMPLEX: the only tasks with steps), its
/// steps (and theirs) that have ended.
pub(super) fn ended_with_steps(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Ended>, StoreError> {
    let read = |r: &Row<'_>| -> rusqlite::Result<Option<Ended>> {
        let id: Vec<u8> = r.get(0)?;
        let (Ok(id), Some(task_type), Some(state)) = (
            TaskId::from_slice(&id),
            TaskType::from_code(r.get(1)?),
            TaskState::from_code(r.get(3)?),
        ) else {
            return Ok(None);
        };
        Ok(Some(Ended {
            id,
            task_type,
            name: r.get(2)?,
            state,
            source: crate::domain::Source::from_code(r.get(4)?),
            queue: r.get(5)?,
        }))
    };
    let mut st = conn.prepare(sql)?;
    let top: Vec<Ended> = st
        .query_map(params, read)?
        .filter_map(|r| r.transpose())
        .collect::<Result<_, _>>()?;
    let mut steps = conn.prepare_cached(&format!(
        "WITH RECURSIVE tree(id) AS (
             SELECT ?1
             UNION ALL SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id
         )
         SELECT {ENDED_COLUMNS} FROM tasks WHERE id IN (SELECT id FROM tree)
         AND id <> ?1 AND {}",
        ended!("state")
    ))?;
    let mut out = Vec::with_capacity(top.len());
    for e in top {
        let (id, complex) = (e.id, e.task_type == TaskType::Complex);
        out.push(e);
        // Only a workflow (COMPLEX) has steps.
        if !complex {
            continue;
        }
        for s in steps.query_map([id.as_bytes()], read)? {
            if let Some(s) = s? {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Gives the ended rows of a file written before retention existed their
/// removal time, once (the upgrade sets `adopt_ended`).
pub(super) fn adopt_ended(conn: &Connection, policy: &RetentionPolicy) -> Result<(), StoreError> {
    let pending: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'adopt_ended'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if pending.is_none() {
        return Ok(());
    }
    let started = Instant::now();
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let done = (|| -> Result<usize, StoreError> {
        let mut read = conn.prepare(concat!(
            "SELECT id, created_at, spec, rt FROM tasks WHERE ",
            ended!("state"),
            " AND parent_id IS NULL"
        ))?;
        let mut set = conn.prepare("UPDATE tasks SET purge_at = ?2 WHERE id = ?1")?;
        let mut rows = read.query([])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let Ok(t) = row_to_task(r) else { continue };
            if let Some(at) = writer::purge_at(policy, &t) {
                set.execute(params![t.id.as_bytes(), at])?;
                n += 1;
            }
        }
        conn.execute("DELETE FROM meta WHERE key = 'adopt_ended'", [])?;
        Ok(n)
    })();
    match done {
        Ok(n) => {
            conn.execute_batch("COMMIT")?;
            tracing::info!(
                tasks = n,
                took_ms = started.elapsed().as_millis() as u64,
                "ended tasks of an earlier version given their removal time"
            );
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

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
    let mut st = conn.prepare(&format!(
        "SELECT task_type, name, state, count(*) FROM tasks {filter} \
         GROUP BY task_type, name, state"
    ))?;
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
        clauses.push(format!("{col} IN ({})", ph.join(", ")));
    };
    if let Some(u) = &f.user_id {
        push_in("user_id", vec![Value::Text(u.clone())], &mut clauses);
    }
    if let Some(s) = &f.session_id {
        push_in("session_id", vec![Value::Text(s.clone())], &mut clauses);
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

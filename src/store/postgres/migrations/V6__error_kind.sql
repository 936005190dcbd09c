-- Retry: the kind of a task's last error (`TaskError.kind`, kept in the
-- runtime's JSON) in a column of its own, written by the writer with every
-- row image, with an index ending in id like every other ListTasks filter,
-- so "the failed tasks of this kind" is one walk. Rows of earlier versions
-- get it from their runtime here.
ALTER TABLE tasks ADD COLUMN error_kind text;
UPDATE tasks SET error_kind = NULLIF((rt::jsonb) #>> '{last_error,kind}', '')
    WHERE rt LIKE '%"last_error":{%';
CREATE INDEX tasks_error_kind ON tasks (error_kind, id) WHERE error_kind IS NOT NULL;

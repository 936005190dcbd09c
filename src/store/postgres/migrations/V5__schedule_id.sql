-- Schedules: the schedule that fired a task (its `switchyard.schedule`
-- label) in a column of its own, with an index ending in id like every
-- other ListTasks filter. Rows of earlier versions were fired by none.
ALTER TABLE tasks ADD COLUMN schedule_id text;
CREATE INDEX tasks_schedule_id ON tasks (schedule_id, id) WHERE schedule_id IS NOT NULL;

-- Namespaces: a task of a namespace other than `default` keeps its name
-- here (tasks of `default`, and every row of earlier versions, keep NULL).
-- Lists of such a namespace walk this index; `default`'s walk the filter's
-- own index with `namespace IS NULL`.
ALTER TABLE tasks ADD COLUMN namespace text;
CREATE INDEX tasks_namespace ON tasks (namespace, id) WHERE namespace IS NOT NULL;

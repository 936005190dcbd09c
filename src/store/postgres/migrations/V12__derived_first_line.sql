-- A new task's first log line is derived when the log is read, numbered 1
-- (`LogEntry::DERIVED_LINE`), so stored lines start at 2: a database whose
-- counter never handed out a number moves it past 1 (one that did is past
-- it already).
DO $$
DECLARE
    seq text := pg_get_serial_sequence('task_logs', 'line');
    called boolean;
BEGIN
    EXECUTE format('SELECT is_called FROM %s', seq) INTO called;
    IF NOT called THEN
        PERFORM setval(seq, 1, true);
    END IF;
END $$;

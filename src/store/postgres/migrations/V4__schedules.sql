-- Schedules (cron or interval, with their task template) and each one's
-- fire state, shared by every replica, so a new leader fires what the old
-- one would have, from the last tick the old one recorded.
CREATE TABLE schedules (
    id text PRIMARY KEY,
    spec text NOT NULL,
    template bytea NOT NULL,
    paused boolean NOT NULL,
    note text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    state text NOT NULL,
    term bigint NOT NULL
);

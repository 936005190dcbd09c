-- Flow rules set at run time (FlowService): concurrency policies (kind
-- 'concurrency', name = the pattern, value = the limit) and paused task
-- names or queues (kind 'paused'), shared by every replica, so a new leader
-- holds tasks as the old one did.
CREATE TABLE flow_rules (
    kind text NOT NULL,
    name text NOT NULL,
    value text NOT NULL,
    seq bigint NOT NULL,
    term bigint NOT NULL,
    PRIMARY KEY (kind, name)
);

-- The embedded workflow engine's definitions, shared by every replica, so a
-- new leader runs the workflows the old one registered.
CREATE TABLE workflow_versions (
    name text NOT NULL,
    version integer NOT NULL,
    definition text NOT NULL,
    created_at bigint NOT NULL,
    term bigint NOT NULL,
    PRIMARY KEY (name, version)
);

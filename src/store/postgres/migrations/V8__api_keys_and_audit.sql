-- Scoped API keys (KeysService): the secret's SHA-256 (hex), never the
-- secret; and the audit log of who cancelled, paused, retried, signalled,
-- changed a key or registered a worker. Shared by every replica, so a new
-- leader knows every key and a revoked one stays revoked. `namespace` is
-- 'default' until namespaces exist.
CREATE TABLE api_keys (
    id text PRIMARY KEY,
    namespace text NOT NULL DEFAULT 'default',
    hash text NOT NULL UNIQUE,
    role text NOT NULL,
    user_id text,
    names text NOT NULL DEFAULT '',
    expires_at bigint,
    created_at bigint NOT NULL,
    last_used_at bigint,
    revoked_at bigint,
    term bigint NOT NULL
);
CREATE TABLE audit_events (
    seq bigserial PRIMARY KEY,
    at bigint NOT NULL,
    namespace text NOT NULL DEFAULT 'default',
    key_id text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail text NOT NULL,
    term bigint NOT NULL
);

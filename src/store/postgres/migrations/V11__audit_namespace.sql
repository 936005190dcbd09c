-- The audit log per namespace (ListAuditEvents of a namespace's admin):
-- its events newest first, walked by this index.
CREATE INDEX audit_events_namespace ON audit_events (namespace, seq);

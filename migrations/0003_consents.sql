-- Consent: a reader shares its state (and optionally its interactions) with
-- another reader. A grant is live while revoked_at is NULL; revoking stamps
-- revoked_at and keeps the row as history. Changing the scope of a live grant
-- revokes the old row and inserts a new one, so every row has one scope for
-- its whole life.

CREATE TABLE consents (
    id         TEXT PRIMARY KEY,
    granter_id TEXT NOT NULL REFERENCES users(id),
    grantee_id TEXT NOT NULL REFERENCES users(id),
    scope      TEXT NOT NULL CHECK (scope IN ('state', 'state_and_interactions')),
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    CHECK (granter_id != grantee_id),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

-- At most one live grant per (granter, grantee); serves the check on every
-- shared read.
CREATE UNIQUE INDEX idx_consents_live ON consents(granter_id, grantee_id) WHERE revoked_at IS NULL;
-- Both sides' lists, newest first (ids are time-ordered).
CREATE INDEX idx_consents_granter ON consents(granter_id, id);
CREATE INDEX idx_consents_grantee ON consents(grantee_id, id);

-- ListAuditLogs pages newest first on (created_at, id) and filters by actor
-- or target; these serve the order with and without a filter.
CREATE INDEX idx_audit_logs_created_id ON audit_logs(created_at, id);
CREATE INDEX idx_audit_logs_actor ON audit_logs(actor_type, actor_id, created_at, id);
CREATE INDEX idx_audit_logs_target ON audit_logs(target_type, target_id, created_at, id);

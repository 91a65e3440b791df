-- Readers assigned to consultants (issue 13): at most one consultant per
-- reader; admins and supervisors assign and unassign (audited). "My
-- readers" filters join on it from the consultant's side, so the index is
-- (consultant_id, reader_id).
CREATE TABLE reader_assignments (
    reader_id     TEXT PRIMARY KEY REFERENCES users(id),
    consultant_id TEXT NOT NULL REFERENCES consultants(id),
    assigned_by   TEXT REFERENCES consultants(id),
    assigned_at   TEXT NOT NULL
);
CREATE INDEX idx_reader_assignments_consultant ON reader_assignments(consultant_id, reader_id);

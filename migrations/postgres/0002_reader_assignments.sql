-- Readers assigned to consultants, as migrations/0007_reader_assignments.sql
-- for SQLite: at most one consultant per reader, indexed from the
-- consultant's side for the "my readers" filters.
CREATE TABLE reader_assignments (
    reader_id     text COLLATE "C" PRIMARY KEY REFERENCES users(id),
    consultant_id text COLLATE "C" NOT NULL REFERENCES consultants(id),
    assigned_by   text COLLATE "C" REFERENCES consultants(id),
    assigned_at   timestamptz NOT NULL
);
CREATE INDEX idx_reader_assignments_consultant ON reader_assignments(consultant_id, reader_id);

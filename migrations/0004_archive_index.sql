-- Archival (cursor-grpc archive; docs/operations.md): which archive file
-- holds which interactions. Old interactions move out of this database into
-- one SQLite file per quarter (archive_YYYY_QN.db); each row here says which
-- time range and which seq range a file holds, so history reads know which
-- files to ATTACH for a page. Updated in the same transaction that deletes
-- the moved rows from `interactions`.

CREATE TABLE archive_index (
    -- Relative to this database's folder when the file is inside it, else absolute.
    file           TEXT PRIMARY KEY,
    period         TEXT NOT NULL CHECK (period GLOB '[0-9][0-9][0-9][0-9]-Q[1-4]'),
    min_seq        INTEGER NOT NULL,
    max_seq        INTEGER NOT NULL CHECK (max_seq >= min_seq),
    min_created_at TEXT NOT NULL,
    max_created_at TEXT NOT NULL CHECK (max_created_at >= min_created_at),
    row_count      INTEGER NOT NULL CHECK (row_count >= 0),
    updated_at     TEXT NOT NULL
);
CREATE INDEX idx_archive_index_seq ON archive_index(max_seq, min_seq);

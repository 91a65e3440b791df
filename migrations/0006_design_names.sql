-- The design's names (issue 14), in one transaction.
--
--   * interactions.user_id and reader_states.user_id become reader_id.
--     ALTER TABLE ... RENAME COLUMN rewrites only the schema text: the
--     indexes (idx_interactions_user_seq, idx_reader_states_last_seen) and the
--     append-only trigger follow the new name, no row is touched. The index
--     names stay (see docs/storage.md, "Schema names").
--   * reader_states and messages get the design's metadata column back.
--   * messages.direction stores the design's values: 'to_reader' becomes
--     'consultant_to_user', 'from_reader' becomes 'user_to_consultant'
--     ('system' stays). The CHECK constraint can only change by rebuilding the
--     table; messages is rebuilt here in one statement, not in chunks: it holds
--     people's conversations, orders of magnitude fewer rows than interactions
--     (100 000 messages copy in well under a second), and the rename above
--     means no earlier server can write beside this migration anyway.
--   * the stored message events (events.data of kind 'message') carry the
--     same direction text, so replayed history matches the messages table.
--
-- Archive files (archive_YYYY_QN.db) are not changed here: they may be
-- offline. The archiver renames interactions.user_id inside a file when it
-- next writes into it; history pages read files with either name.

ALTER TABLE interactions RENAME COLUMN user_id TO reader_id;

ALTER TABLE reader_states RENAME COLUMN user_id TO reader_id;
ALTER TABLE reader_states ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata));

CREATE TABLE messages__0006 (
    id            TEXT PRIMARY KEY,
    reader_id     TEXT NOT NULL REFERENCES users(id),
    consultant_id TEXT REFERENCES consultants(id),
    direction     TEXT NOT NULL CHECK (direction IN ('consultant_to_user', 'user_to_consultant', 'system')),
    body          TEXT NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    created_at    TEXT NOT NULL,
    read_at       TEXT,
    seq           INTEGER,
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata))
);
INSERT INTO messages__0006(rowid, id, reader_id, consultant_id, direction, body, created_at, read_at, seq)
SELECT rowid, id, reader_id, consultant_id,
       CASE direction WHEN 'to_reader' THEN 'consultant_to_user'
                      WHEN 'from_reader' THEN 'user_to_consultant'
                      ELSE direction END,
       body, created_at, read_at, seq
FROM messages
ORDER BY rowid;
-- Nothing references messages, so dropping it with foreign keys on checks nothing.
DROP TABLE messages;
ALTER TABLE messages__0006 RENAME TO messages;
CREATE INDEX idx_messages_reader_created ON messages(reader_id, created_at);
CREATE UNIQUE INDEX idx_messages_reader_seq ON messages(reader_id, seq);

UPDATE events
SET data = json_set(data, '$.direction',
                    CASE json_extract(data, '$.direction') WHEN 'to_reader' THEN 'consultant_to_user'
                                                           ELSE 'user_to_consultant' END)
WHERE kind = 'message' AND json_extract(data, '$.direction') IN ('to_reader', 'from_reader');

-- Live monitoring: one sequence for every event, in commit order.
--
-- The single writer assigns `seq` values from one counter to interactions
-- (interactions.seq) and to every other event (events.seq), so the two tables
-- merged by seq are the full event history in commit order. Interactions are not
-- copied into events: an interaction row is its own event, and the reader-state
-- change it caused is derived from its payload when replaying.
--
-- A consultant's cursor is (epoch, seq). The epoch changes when a backup is
-- restored, so a cursor from another history is recognised instead of silently
-- skipping or repeating events.

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('state', 'message', 'message_read', 'presence')),
    reader_id  TEXT NOT NULL REFERENCES users(id),
    ref_id     TEXT,
    summary    TEXT NOT NULL DEFAULT '',
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data)),
    created_at TEXT NOT NULL
);
CREATE INDEX idx_events_reader_seq ON events(reader_id, seq);

-- Small key/value facts about this database (event_epoch; later others).
CREATE TABLE cursor_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO cursor_meta(key, value) VALUES ('event_epoch', lower(hex(randomblob(8))));

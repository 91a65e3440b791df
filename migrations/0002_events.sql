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

-- Presence is judged from what a reader sends: reading (recent non-heartbeat
-- activity), online (heartbeats only), idle (nothing for the idle time).
ALTER TABLE reader_states ADD COLUMN presence TEXT NOT NULL DEFAULT 'idle'
    CHECK (presence IN ('reading', 'online', 'idle'));
-- Last non-heartbeat activity, for telling reading from online.
ALTER TABLE reader_states ADD COLUMN last_active_at TEXT;

-- Messages take their position in the conversation from the event sequence.
ALTER TABLE messages ADD COLUMN seq INTEGER;
CREATE UNIQUE INDEX idx_messages_reader_seq ON messages(reader_id, seq);

-- Read position per participant and conversation: "which consultant has seen what".
CREATE TABLE message_reads (
    reader_id        TEXT NOT NULL REFERENCES users(id),
    participant_type TEXT NOT NULL CHECK (participant_type IN ('reader', 'consultant')),
    participant_id   TEXT NOT NULL,
    last_read_seq    INTEGER NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (reader_id, participant_type, participant_id)
);

-- Small key/value facts about this database (event_epoch; later others).
CREATE TABLE cursor_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO cursor_meta(key, value) VALUES ('event_epoch', lower(hex(randomblob(8))));

-- The presence sweep looks only at readers that are not idle yet.
CREATE INDEX idx_reader_states_present ON reader_states(last_seen_at) WHERE presence != 'idle';
CREATE INDEX idx_reader_states_reading ON reader_states(last_active_at) WHERE presence = 'reading';

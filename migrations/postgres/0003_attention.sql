-- Attention signals, as migrations/0008_attention.sql for SQLite: raised
-- once and cleared once, each an event of kind 'attention'; at most one
-- open signal per reader and rule (the partial unique index).
CREATE TABLE attention_signals (
    id              text COLLATE "C" PRIMARY KEY,
    reader_id       text COLLATE "C" NOT NULL REFERENCES users(id),
    rule            text COLLATE "C" NOT NULL CHECK (rule IN ('stuck', 'struggling', 'stalled', 'asked_for_help')),
    summary         text COLLATE "C" NOT NULL,
    evidence        text COLLATE "C" NOT NULL DEFAULT '[]' CHECK (evidence IS JSON ARRAY),
    raised_seq      bigint NOT NULL,
    raised_at       timestamptz NOT NULL,
    acknowledged_by text COLLATE "C" REFERENCES consultants(id),
    acknowledged_at timestamptz,
    cleared_at      timestamptz,
    clear_reason    text COLLATE "C"
);
CREATE UNIQUE INDEX idx_attention_open ON attention_signals(reader_id, rule) WHERE cleared_at IS NULL;
CREATE INDEX idx_attention_open_seq ON attention_signals(raised_seq) WHERE cleared_at IS NULL;
CREATE INDEX idx_attention_reader ON attention_signals(reader_id, raised_seq);

-- What the rules keep per reader beside its state (see the SQLite file).
ALTER TABLE reader_states ADD COLUMN attention text COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE reader_states ADD COLUMN progress_at timestamptz;
ALTER TABLE reader_states ADD COLUMN pace_seconds double precision;
ALTER TABLE reader_states ADD COLUMN pace_steps integer NOT NULL DEFAULT 0;
ALTER TABLE reader_states ADD COLUMN wrong_streak integer NOT NULL DEFAULT 0;
ALTER TABLE reader_states ADD COLUMN wrong_seqs text COLLATE "C" NOT NULL DEFAULT '[]' CHECK (wrong_seqs IS JSON ARRAY);
-- Every reader has a state row since registration; one made before that
-- rule gets it now, so the open rules always have a row to live in.
INSERT INTO reader_states(reader_id, updated_at)
    SELECT id, created_at FROM users WHERE id NOT IN (SELECT reader_id FROM reader_states);
CREATE INDEX idx_reader_states_progress ON reader_states(progress_at) WHERE presence != 'idle';

ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('state', 'message', 'message_read', 'presence', 'attention'));

-- Attention signals (issue 13): the server tells consultants who needs help
-- now. A signal is raised once and cleared once, each an event of kind
-- 'attention' in the commit-ordered history; at most one signal per reader
-- and rule is open at a time (the partial unique index), so two servers
-- deciding the same thing cannot both raise it.
CREATE TABLE attention_signals (
    id              TEXT PRIMARY KEY,
    reader_id       TEXT NOT NULL REFERENCES users(id),
    rule            TEXT NOT NULL CHECK (rule IN ('stuck', 'struggling', 'stalled', 'asked_for_help')),
    summary         TEXT NOT NULL,
    -- seqs of the events that raised it, oldest first, as a JSON array
    evidence        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(evidence)),
    raised_seq      INTEGER NOT NULL,
    raised_at       TEXT NOT NULL,
    acknowledged_by TEXT REFERENCES consultants(id),
    acknowledged_at TEXT,
    cleared_at      TEXT,
    clear_reason    TEXT
);
CREATE UNIQUE INDEX idx_attention_open ON attention_signals(reader_id, rule) WHERE cleared_at IS NULL;
-- ListAttention: the open signals, longest waiting first.
CREATE INDEX idx_attention_open_seq ON attention_signals(raised_seq) WHERE cleared_at IS NULL;
CREATE INDEX idx_attention_reader ON attention_signals(reader_id, raised_seq);

-- What the rules keep per reader, beside its state and in the same row, so
-- recording an interaction reads and writes one row as before:
--   attention     the rules with an open signal, space-separated (a copy of
--                 the open rows above, kept in the same transactions);
--   progress_at   when the step or progress last changed;
--   pace_seconds  the reader's usual time per step (moving average) over
--   pace_steps    this many steps;
--   wrong_streak  wrong answers in a row, and wrong_seqs their seqs.
ALTER TABLE reader_states ADD COLUMN attention TEXT NOT NULL DEFAULT '';
ALTER TABLE reader_states ADD COLUMN progress_at TEXT;
ALTER TABLE reader_states ADD COLUMN pace_seconds REAL;
ALTER TABLE reader_states ADD COLUMN pace_steps INTEGER NOT NULL DEFAULT 0;
ALTER TABLE reader_states ADD COLUMN wrong_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE reader_states ADD COLUMN wrong_seqs TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(wrong_seqs));
-- Every reader has a state row since registration; one made before that
-- rule gets it now, so the open rules always have a row to live in.
INSERT INTO reader_states(reader_id, updated_at)
    SELECT id, created_at FROM users WHERE id NOT IN (SELECT reader_id FROM reader_states);
-- The stuck rule looks only at readers who are not idle.
CREATE INDEX idx_reader_states_progress ON reader_states(progress_at) WHERE presence != 'idle';

-- Cursor schema, version 1: the eight tables and six indexes of the design,
-- with two of the design's defects fixed:
--   * sessions.actor_id no longer REFERENCES users(id): a session belongs to a
--     reader (users) or a consultant (consultants), told apart by actor_type;
--     with foreign keys on, the old reference rejected every consultant session.
--   * every timestamp is ISO-8601 UTC text with milliseconds,
--     'YYYY-MM-DDTHH:MM:SS.sssZ', exactly what strftime('%Y-%m-%dT%H:%M:%fZ', …)
--     produces, so comparisons in SQL compare like with like (the design compared
--     '…T…Z' text with datetime(), which formats with a space).
-- IDs are TEXT UUIDs (time-ordered UUIDv7 when the server makes them).

CREATE TABLE IF NOT EXISTS schema_migrations (
    name       TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

-- Readers.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- Consultants; user_id links one promoted from a reader (same person, same email).
CREATE TABLE consultants (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('consultant', 'supervisor', 'admin')),
    user_id       TEXT UNIQUE REFERENCES users(id),
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- Sessions: only a SHA-256 hash of the bearer token is stored.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    token_hash     BLOB NOT NULL UNIQUE,
    actor_type     TEXT NOT NULL CHECK (actor_type IN ('reader', 'consultant')),
    actor_id       TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    last_active_at TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    revoke_reason  TEXT
);

-- Interactions: append-only. seq is the commit order (the writer is the only
-- writer), used for newest-first keyset paging; AUTOINCREMENT so a seq is
-- never reused after old rows are archived.
CREATE TABLE interactions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL REFERENCES users(id),
    type       TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    payload    TEXT NOT NULL CHECK (json_valid(payload)),
    summary    TEXT NOT NULL DEFAULT '',
    processed  INTEGER NOT NULL DEFAULT 0 CHECK (processed IN (0, 1)),
    created_at TEXT NOT NULL
);

CREATE TRIGGER interactions_append_only
BEFORE UPDATE ON interactions
WHEN NEW.seq IS NOT OLD.seq OR NEW.id IS NOT OLD.id OR NEW.user_id IS NOT OLD.user_id
  OR NEW.type IS NOT OLD.type OR NEW.payload IS NOT OLD.payload
  OR NEW.summary IS NOT OLD.summary OR NEW.created_at IS NOT OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'interactions are append-only: only processed may change');
END;

-- One row per reader, changed in the same transaction as each interaction.
CREATE TABLE reader_states (
    user_id             TEXT PRIMARY KEY REFERENCES users(id),
    status              TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'paused')),
    progress            REAL NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    current_step        INTEGER NOT NULL DEFAULT 0,
    last_interaction_id TEXT,
    last_seen_at        TEXT,
    updated_at          TEXT NOT NULL
);

CREATE TABLE messages (
    id            TEXT PRIMARY KEY,
    reader_id     TEXT NOT NULL REFERENCES users(id),
    consultant_id TEXT REFERENCES consultants(id),
    direction     TEXT NOT NULL CHECK (direction IN ('to_reader', 'from_reader', 'system')),
    body          TEXT NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    created_at    TEXT NOT NULL,
    read_at       TEXT
);

CREATE TABLE audit_logs (
    id          TEXT PRIMARY KEY,
    actor_type  TEXT NOT NULL CHECK (actor_type IN ('reader', 'consultant', 'system')),
    actor_id    TEXT,
    action      TEXT NOT NULL,
    target_type TEXT,
    target_id   TEXT,
    details     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    created_at  TEXT NOT NULL
);

-- The six indexes.
CREATE INDEX idx_interactions_user_seq ON interactions(user_id, seq);
CREATE INDEX idx_interactions_type_seq ON interactions(type, seq);
CREATE INDEX idx_reader_states_last_seen ON reader_states(last_seen_at, user_id);
CREATE INDEX idx_sessions_actor ON sessions(actor_type, actor_id);
CREATE INDEX idx_messages_reader_created ON messages(reader_id, created_at);
CREATE INDEX idx_audit_logs_created ON audit_logs(created_at);

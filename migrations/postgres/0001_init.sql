-- Cursor schema for PostgreSQL (16 or later; written for 18): the schema that
-- SQLite migrations 0001-0006 build, in one file, with the same tables,
-- columns (in the same order), constraints, defaults, indexes and index names.
-- Type choices:
--   * every timestamp is timestamptz. The application sends and expects ISO
--     text 'YYYY-MM-DDTHH:MM:SS.sssZ' (a loader on its connections turns
--     timestamptz back into that text), so comparisons with text parameters
--     compare instants, as the SQLite text compared in UTC order.
--   * ids and other text are text COLLATE "C": SQLite compares text byte by
--     byte, and keyset paging on (created_at, id), the seq-ordered ids and
--     lower(email) (ASCII-only in SQLite and under "C") must mean the same here,
--     whatever the database's default collation.
--   * seq columns (and the archive's seq range and counts) are bigint; integer
--     flags stay integer with the same CHECK (x IN (0, 1)): the SQL compares
--     them with 0/1; progress is double precision; token_hash is bytea.
--   * JSON columns stay text with CHECK (x IS JSON [OBJECT]), not jsonb: the
--     application returns the stored text verbatim (jsonb would reorder keys
--     and respace). OBJECT where SQLite checked json_type(x) = 'object'.
--   * no sequences: the writer numbers interactions and events itself from
--     event_sequence, one commit-ordered counter for the cluster.

CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text COLLATE "C" PRIMARY KEY,
    checksum   text COLLATE "C" NOT NULL,
    applied_at timestamptz NOT NULL
);

-- Readers.
CREATE TABLE users (
    id            text COLLATE "C" PRIMARY KEY,
    email         text COLLATE "C" NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash text COLLATE "C" NOT NULL,
    display_name  text COLLATE "C" NOT NULL,
    metadata      text COLLATE "C" NOT NULL DEFAULT '{}' CHECK (metadata IS JSON OBJECT),
    is_active     integer NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Consultants; user_id links one promoted from a reader (same person, same email).
CREATE TABLE consultants (
    id            text COLLATE "C" PRIMARY KEY,
    email         text COLLATE "C" NOT NULL UNIQUE CHECK (email = lower(email)),
    password_hash text COLLATE "C" NOT NULL,
    display_name  text COLLATE "C" NOT NULL,
    role          text COLLATE "C" NOT NULL CHECK (role IN ('consultant', 'supervisor', 'admin')),
    user_id       text COLLATE "C" UNIQUE REFERENCES users(id),
    is_active     integer NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Sessions: only a SHA-256 hash of the bearer token is stored. actor_id is a
-- reader (users) or a consultant (consultants), told apart by actor_type.
CREATE TABLE sessions (
    id             text COLLATE "C" PRIMARY KEY,
    token_hash     bytea NOT NULL UNIQUE,
    actor_type     text COLLATE "C" NOT NULL CHECK (actor_type IN ('reader', 'consultant')),
    actor_id       text COLLATE "C" NOT NULL,
    created_at     timestamptz NOT NULL,
    last_active_at timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoke_reason  text COLLATE "C"
);

-- Interactions: append-only. seq is the commit order, from event_sequence,
-- never reused after old rows are archived.
CREATE TABLE interactions (
    seq        bigint PRIMARY KEY,
    id         text COLLATE "C" NOT NULL UNIQUE,
    reader_id  text COLLATE "C" NOT NULL REFERENCES users(id),
    type       text COLLATE "C" NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    payload    text COLLATE "C" NOT NULL CHECK (payload IS JSON OBJECT),
    summary    text COLLATE "C" NOT NULL DEFAULT '',
    processed  integer NOT NULL DEFAULT 0 CHECK (processed IN (0, 1)),
    created_at timestamptz NOT NULL
);

-- Only processed may change. SQLite's RAISE(ABORT) is a constraint error;
-- this raises integrity_constraint_violation (SQLSTATE 23000) likewise.
CREATE FUNCTION interactions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'interactions are append-only: only processed may change'
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER interactions_append_only
BEFORE UPDATE ON interactions
FOR EACH ROW
WHEN (NEW.seq IS DISTINCT FROM OLD.seq OR NEW.id IS DISTINCT FROM OLD.id
      OR NEW.reader_id IS DISTINCT FROM OLD.reader_id OR NEW.type IS DISTINCT FROM OLD.type
      OR NEW.payload IS DISTINCT FROM OLD.payload OR NEW.summary IS DISTINCT FROM OLD.summary
      OR NEW.created_at IS DISTINCT FROM OLD.created_at)
EXECUTE FUNCTION interactions_append_only();

-- One row per reader, changed in the same transaction as each interaction.
-- presence: reading (recent non-heartbeat activity), online (heartbeats
-- only), idle (nothing for the idle time); last_active_at is the last
-- non-heartbeat activity.
CREATE TABLE reader_states (
    reader_id           text COLLATE "C" PRIMARY KEY REFERENCES users(id),
    status              text COLLATE "C" NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'completed', 'paused')),
    progress            double precision NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
    current_step        integer NOT NULL DEFAULT 0,
    last_interaction_id text COLLATE "C",
    last_seen_at        timestamptz,
    updated_at          timestamptz NOT NULL,
    presence            text COLLATE "C" NOT NULL DEFAULT 'idle' CHECK (presence IN ('reading', 'online', 'idle')),
    last_active_at      timestamptz,
    metadata            text COLLATE "C" NOT NULL DEFAULT '{}' CHECK (metadata IS JSON)
);

-- Messages take their position in the conversation (seq) from the event sequence.
CREATE TABLE messages (
    id            text COLLATE "C" PRIMARY KEY,
    reader_id     text COLLATE "C" NOT NULL REFERENCES users(id),
    consultant_id text COLLATE "C" REFERENCES consultants(id),
    direction     text COLLATE "C" NOT NULL
                  CHECK (direction IN ('consultant_to_user', 'user_to_consultant', 'system')),
    body          text COLLATE "C" NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    created_at    timestamptz NOT NULL,
    read_at       timestamptz,
    seq           bigint,
    metadata      text COLLATE "C" NOT NULL DEFAULT '{}' CHECK (metadata IS JSON)
);

CREATE TABLE audit_logs (
    id          text COLLATE "C" PRIMARY KEY,
    actor_type  text COLLATE "C" NOT NULL CHECK (actor_type IN ('reader', 'consultant', 'system')),
    actor_id    text COLLATE "C",
    action      text COLLATE "C" NOT NULL,
    target_type text COLLATE "C",
    target_id   text COLLATE "C",
    details     text COLLATE "C" NOT NULL DEFAULT '{}' CHECK (details IS JSON),
    created_at  timestamptz NOT NULL
);

-- Every event other than an interaction; merged with interactions by seq,
-- the full event history in commit order.
CREATE TABLE events (
    seq        bigint PRIMARY KEY,
    kind       text COLLATE "C" NOT NULL CHECK (kind IN ('state', 'message', 'message_read', 'presence')),
    reader_id  text COLLATE "C" NOT NULL REFERENCES users(id),
    ref_id     text COLLATE "C",
    summary    text COLLATE "C" NOT NULL DEFAULT '',
    data       text COLLATE "C" NOT NULL DEFAULT '{}' CHECK (data IS JSON),
    created_at timestamptz NOT NULL
);

-- Read position per participant and conversation: "which consultant has seen what".
CREATE TABLE message_reads (
    reader_id        text COLLATE "C" NOT NULL REFERENCES users(id),
    participant_type text COLLATE "C" NOT NULL CHECK (participant_type IN ('reader', 'consultant')),
    participant_id   text COLLATE "C" NOT NULL,
    last_read_seq    bigint NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (reader_id, participant_type, participant_id)
);

-- Small key/value facts about this database: event_epoch (changes when a
-- backup is restored, so a consultant's cursor from another history is
-- recognised), and history_floor_seq once the archiver has run.
CREATE TABLE cursor_meta (
    key   text COLLATE "C" PRIMARY KEY,
    value text COLLATE "C" NOT NULL
);
-- 16 lowercase hex characters, as SQLite's lower(hex(randomblob(8))), from
-- gen_random_uuid()'s strong random bytes.
INSERT INTO cursor_meta(key, value) VALUES ('event_epoch', substr(md5(gen_random_uuid()::text), 1, 16));

-- The cluster-wide commit-ordered event counter: every transaction that
-- stores events locks this row (SELECT ... FOR UPDATE), numbers its events
-- from last_seq and updates it before COMMIT, so seq order is commit order.
CREATE TABLE event_sequence (
    id       smallint PRIMARY KEY CHECK (id = 1),
    last_seq bigint NOT NULL CHECK (last_seq >= 0)
);
INSERT INTO event_sequence(id, last_seq) VALUES (1, 0);

-- Consent: a reader shares its state (and optionally its interactions) with
-- another reader. A grant is live while revoked_at is NULL.
CREATE TABLE consents (
    id         text COLLATE "C" PRIMARY KEY,
    granter_id text COLLATE "C" NOT NULL REFERENCES users(id),
    grantee_id text COLLATE "C" NOT NULL REFERENCES users(id),
    scope      text COLLATE "C" NOT NULL CHECK (scope IN ('state', 'state_and_interactions')),
    created_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CHECK (granter_id != grantee_id),
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);

-- Which archive file holds which interactions (cursor-grpc archive): the
-- time range and seq range of each quarterly file.
CREATE TABLE archive_index (
    -- Relative to the database's folder when the file is inside it, else absolute.
    file           text COLLATE "C" PRIMARY KEY,
    period         text COLLATE "C" NOT NULL CHECK (period ~ '^[0-9]{4}-Q[1-4]$'),
    min_seq        bigint NOT NULL,
    max_seq        bigint NOT NULL CHECK (max_seq >= min_seq),
    min_created_at timestamptz NOT NULL,
    max_created_at timestamptz NOT NULL CHECK (max_created_at >= min_created_at),
    row_count      bigint NOT NULL CHECK (row_count >= 0),
    updated_at     timestamptz NOT NULL
);

-- The indexes, with SQLite's names (idx_interactions_user_seq and
-- idx_reader_states_last_seen kept theirs when user_id became reader_id).
CREATE INDEX idx_interactions_user_seq ON interactions(reader_id, seq);
CREATE INDEX idx_interactions_type_seq ON interactions(type, seq);
CREATE INDEX idx_reader_states_last_seen ON reader_states(last_seen_at, reader_id);
CREATE INDEX idx_sessions_actor ON sessions(actor_type, actor_id);
CREATE INDEX idx_messages_reader_created ON messages(reader_id, created_at);
CREATE UNIQUE INDEX idx_messages_reader_seq ON messages(reader_id, seq);
CREATE INDEX idx_audit_logs_created ON audit_logs(created_at);
CREATE INDEX idx_audit_logs_created_id ON audit_logs(created_at, id);
CREATE INDEX idx_audit_logs_actor ON audit_logs(actor_type, actor_id, created_at, id);
CREATE INDEX idx_audit_logs_target ON audit_logs(target_type, target_id, created_at, id);
CREATE INDEX idx_events_reader_seq ON events(reader_id, seq);
-- The presence sweep looks only at readers that are not idle yet.
CREATE INDEX idx_reader_states_present ON reader_states(last_seen_at) WHERE presence != 'idle';
CREATE INDEX idx_reader_states_reading ON reader_states(last_active_at) WHERE presence = 'reading';
-- At most one live grant per (granter, grantee); both sides' lists by id.
CREATE UNIQUE INDEX idx_consents_live ON consents(granter_id, grantee_id) WHERE revoked_at IS NULL;
CREATE INDEX idx_consents_granter ON consents(granter_id, id);
CREATE INDEX idx_consents_grantee ON consents(grantee_id, id);
CREATE INDEX idx_archive_index_seq ON archive_index(max_seq, min_seq);

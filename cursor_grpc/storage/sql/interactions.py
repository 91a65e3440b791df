"""SQL for interactions and the reader_states row they move.

An interaction and its reader's state change in one write task, so they
commit (or roll back) together.
"""

from __future__ import annotations

import json
import time
from typing import Any

from cursor_grpc.clock import iso_from_ns
from cursor_grpc.config import AttentionSettings
from cursor_grpc.storage.records import (
    KIND_INTERACTION,
    KIND_PRESENCE,
    KIND_STATE,
    Event,
    InteractionRecord,
    NewInteractionData,
    ReaderStateRecord,
    RecordOutcome,
)
from cursor_grpc.storage.sql import attention
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.events import SequenceAllocator, insert_event, state_data
from cursor_grpc.storage.sql.keyset import Where, newest_first

INTERACTION_COLUMNS = "seq, id, reader_id, type, payload, summary, created_at"

_INSERT = (
    "INSERT INTO interactions(seq, id, reader_id, type, payload, summary, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO NOTHING"
)
_EXISTING = f"SELECT {INTERACTION_COLUMNS} FROM interactions WHERE id = ?"
_PREVIOUS = f"SELECT presence, last_active_at, {attention.TRACKED_COLUMNS} FROM reader_states WHERE reader_id = ?"

# A paused reader stays paused (a consultant paused it); otherwise a progress
# payload decides between active and completed, and other types keep the status.
_UPDATE_STATE = """
INSERT INTO reader_states(reader_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at,
                          presence, last_active_at, progress_at, pace_seconds, pace_steps, wrong_streak, wrong_seqs)
VALUES (?1, CASE WHEN ?2 >= 1.0 THEN 'completed' ELSE 'active' END, coalesce(?2, 0), coalesce(?3, 0), ?4, ?5, ?5,
        ?6, ?7, ?8, ?9, ?10, ?11, ?12)
ON CONFLICT(reader_id) DO UPDATE SET
    status = CASE
        WHEN reader_states.status = 'paused' THEN 'paused'
        WHEN ?2 IS NULL THEN reader_states.status
        WHEN ?2 >= 1.0 THEN 'completed'
        ELSE 'active' END,
    progress = coalesce(?2, reader_states.progress),
    current_step = coalesce(?3, reader_states.current_step),
    last_interaction_id = ?4,
    last_seen_at = ?5,
    updated_at = CASE WHEN ?2 IS NULL AND ?3 IS NULL THEN reader_states.updated_at ELSE ?5 END,
    presence = ?6,
    last_active_at = ?7,
    progress_at = ?8,
    pace_seconds = ?9,
    pace_steps = ?10,
    wrong_streak = ?11,
    wrong_seqs = ?12
RETURNING reader_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at, presence
"""


def interaction_from_row(row: tuple[Any, ...]) -> InteractionRecord:
    return InteractionRecord(*row)


def _state_summary(state: ReaderStateRecord) -> str:
    return f"{state.status}, {state.progress:.0%}, step {state.current_step}"


def record_interactions(
    conn: Connection,
    seqs: SequenceAllocator,
    reader_id: str,
    items: list[NewInteractionData],
    reading_window_ns: int,
    rules: AttentionSettings,
) -> RecordOutcome:
    """Store `items` in order for one reader, move its state and presence
    once, and return the events committed with them.

    An id already stored for this reader is a duplicate (the stored row is
    returned, nothing is written); an id stored for another reader is a
    conflict. Runs on the writer, inside the caller's savepoint."""
    now_ns = time.time_ns()
    now = iso_from_ns(now_ns)
    stored: list[InteractionRecord] = []
    duplicates: list[InteractionRecord] = []
    conflicts: list[tuple[int, str]] = []
    events: list[Event] = []
    answers: list[attention.Answer] = []
    percent: float | None = None
    step: int | None = None
    active = False
    rows = [(seqs.next(), item.id, reader_id, item.type, item.payload, item.summary, now) for item in items]
    # One executemany for the chunk; ids already taken (a retried upload, or
    # another reader's) are skipped by ON CONFLICT and found afterwards.
    before = conn.total_changes()
    conn.executemany(_INSERT, rows)
    inserted: set[int] | None = None
    if rows and conn.total_changes() - before != len(rows):
        inserted = {seq for (seq,) in fetch_all(
            conn, "SELECT seq FROM interactions WHERE seq BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))}
    for values, item in zip(rows, items, strict=True):
        if inserted is None or values[0] in inserted:
            record = InteractionRecord(*values)
            stored.append(record)
            events.append(Event(record.seq, KIND_INTERACTION, reader_id, now, item.summary, record))
            if item.type != "heartbeat":
                active = True
            if item.percent is not None:
                percent = item.percent
            if item.step is not None:
                step = item.step
            if item.correct is not None:
                answers.append(attention.Answer(record.seq, item.correct, item.question))
            continue
        existing = interaction_from_row(fetch_all(conn, _EXISTING, (item.id,))[0])
        if existing.user_id == reader_id:
            duplicates.append(existing)
        else:
            conflicts.append((item.position, item.id))
    state = None
    if stored:
        previous = fetch_all(conn, _PREVIOUS, (reader_id,))
        if previous:
            was, last_active = previous[0][0], previous[0][1]
            tracked = attention.Tracked.from_row(previous[0][2:])
        else:
            was, last_active, tracked = "idle", None, attention.Tracked.new()
        if active:
            last_active = now
        recent = last_active is not None and last_active >= iso_from_ns(now_ns - reading_window_ns)
        presence = "reading" if recent else "online"
        came_back = was == "idle"
        progress_at, pace, pace_steps = attention.paced(tracked, percent, step, now_ns, rules)
        if came_back and progress_at is not None:
            progress_at = now  # time away from the app is not time stuck
        struggling = attention.count_answers(tracked, answers, rules.attention_wrong_answers)
        row = fetch_all(conn, _UPDATE_STATE, (
            reader_id, percent, step, stored[-1].id, now, presence, last_active, progress_at, pace, pace_steps,
            tracked.wrong_streak, json.dumps(tracked.wrong_seqs),
        ))[0]
        state = ReaderStateRecord(*row)
        if percent is not None or step is not None:
            events.append(insert_event(
                conn, seqs.next(), KIND_STATE, reader_id, stored[-1].id, _state_summary(state), state_data(state), now
            ))
        if presence != was:
            events.append(insert_event(
                conn, seqs.next(), KIND_PRESENCE, reader_id, None, presence,
                {"presence": presence, "previous": was}, now,
            ))
        if struggling or tracked.attention:
            events += attention.after_interactions(
                conn, seqs, reader_id, tracked, struggling, attention.moved(tracked, percent, step), came_back,
                state.status, state.current_step, state.progress, now)
    return RecordOutcome(stored, duplicates, conflicts, state, events)


# Every count from an index: the partial presence indexes hold only the
# readers who are not idle (few); counting all rows walks a whole index
# (about 35 ms per million readers), so the metrics endpoint caches it.
_PRESENCE_COUNTS = """
SELECT (SELECT count(*) FROM reader_states WHERE presence = 'reading'),
       (SELECT count(*) FROM reader_states WHERE presence != 'idle'),
       (SELECT count(*) FROM reader_states)
"""


def readers_by_presence(conn: Connection) -> dict[str, int]:
    """Readers reading, online and idle now, for the metrics endpoint."""
    reading, present, everyone = fetch_all(conn, _PRESENCE_COUNTS)[0]
    return {"reading": reading, "online": present - reading, "idle": everyone - present}


def sweep_presence(
    conn: Connection, seqs: SequenceAllocator, idle_ns: int, reading_window_ns: int, rules: AttentionSettings,
) -> list[Event]:
    """Announce time-based changes: readers silent for the idle time become
    idle (which may stall them, see attention.went_idle); readers whose only
    recent traffic is heartbeats go from reading to online; present readers
    without progress for too long are stuck. Served by partial indexes on
    the readers who are not idle, so it costs only those."""
    now_ns = time.time_ns()
    now = iso_from_ns(now_ns)
    events: list[Event] = []
    idle_cutoff = iso_from_ns(now_ns - idle_ns)
    reading_cutoff = iso_from_ns(now_ns - reading_window_ns)
    going_idle = fetch_all(
        conn,
        "SELECT reader_id, presence, status, progress, current_step, last_active_at, attention FROM reader_states "
        "WHERE presence != 'idle' AND last_seen_at < ?",
        (idle_cutoff,),
    )
    for reader_id, was, status, progress, step, last_active_at, open_rules in going_idle:
        event = _presence_change(conn, seqs, reader_id, was, "idle", now)
        events.append(event)
        events += attention.went_idle(conn, seqs, reader_id, event.seq, status, progress, step, last_active_at,
                                      open_rules, now_ns, idle_ns, rules)
    for (reader_id,) in fetch_all(
        conn,
        "SELECT reader_id FROM reader_states WHERE presence = 'reading' "
        "AND (last_active_at IS NULL OR last_active_at < ?) AND last_seen_at >= ?",
        (reading_cutoff, idle_cutoff),
    ):
        events.append(_presence_change(conn, seqs, reader_id, "reading", "online", now))
    events += attention.sweep_stuck(conn, seqs, now_ns, rules)
    return events


def _presence_change(conn: Connection, seqs: SequenceAllocator, reader_id: str, was: str, presence: str,
                     now: str) -> Event:
    conn.execute("UPDATE reader_states SET presence = ? WHERE reader_id = ?", (presence, reader_id))
    return insert_event(conn, seqs.next(), KIND_PRESENCE, reader_id, None, presence,
                        {"presence": presence, "previous": was}, now)


# The column that names an interaction's reader: `reader_id` since migration
# 0006, `user_id` in an archive file made before it and not written since.
READER_ID_COLUMNS = ("reader_id", "user_id")


def reader_column_of(conn: Connection, schema: str = "main") -> str:
    """Which of READER_ID_COLUMNS `schema`.interactions has."""
    if not schema.isidentifier():
        raise ValueError(f"not a schema name: {schema!r}")
    names = {str(r[1]) for r in fetch_all(conn, f"PRAGMA {schema}.table_info(interactions)")}
    for name in READER_ID_COLUMNS:
        if name in names:
            return name
    raise ValueError(f"{schema}.interactions has neither of {READER_ID_COLUMNS}")


def list_interactions(
    conn: Connection, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int,
    schema: str | None = None, reader_column: str = "reader_id",
) -> list[InteractionRecord]:
    """Newest first, keyset on seq. `reader_id=None` lists every reader's.
    `schema` names an ATTACHed archive file to read instead of the main
    database (cursor_grpc/storage/sqlite/history.py walks history into archives);
    `reader_column` is `user_id` for an archive file made before migration 0006
    (`reader_column_of` tells which)."""
    if schema is not None and not schema.isidentifier():
        raise ValueError(f"not a schema name: {schema!r}")
    if reader_column not in READER_ID_COLUMNS:
        raise ValueError(f"not a reader column: {reader_column!r}")
    columns = INTERACTION_COLUMNS if reader_column == "reader_id" else INTERACTION_COLUMNS.replace(
        "reader_id", f"{reader_column} AS reader_id")
    sql, params = newest_first(
        f"SELECT {columns} FROM {schema + '.' if schema else ''}interactions",
        Where().equals(reader_column, reader_id).equals("type", type_), ("seq",),
        None if before_seq is None else (before_seq,), limit,
    )
    return [interaction_from_row(r) for r in fetch_all(conn, sql, params)]

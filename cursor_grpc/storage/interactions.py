"""SQL for interactions and the reader_states row they move.

An interaction and its reader's state change in one write task, so they
commit (or roll back) together.
"""

from __future__ import annotations

from typing import Any

import apsw

from cursor_grpc.clock import now_iso
from cursor_grpc.storage.connection import fetch_all
from cursor_grpc.storage.records import (
    InteractionRecord,
    NewInteractionData,
    ReaderStateRecord,
    RecordOutcome,
)

INTERACTION_COLUMNS = "seq, id, user_id, type, payload, summary, created_at"

_INSERT = (
    "INSERT INTO interactions(id, user_id, type, payload, summary, created_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO NOTHING RETURNING seq"
)
_EXISTING = f"SELECT {INTERACTION_COLUMNS} FROM interactions WHERE id = ?"  # noqa: S608

# A paused reader stays paused (a consultant paused it); otherwise a progress
# payload decides between active and completed, and other types keep the status.
_UPDATE_STATE = """
INSERT INTO reader_states(user_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at)
VALUES (?1, CASE WHEN ?2 >= 1.0 THEN 'completed' ELSE 'active' END, coalesce(?2, 0), coalesce(?3, 0), ?4, ?5, ?5)
ON CONFLICT(user_id) DO UPDATE SET
    status = CASE
        WHEN reader_states.status = 'paused' THEN 'paused'
        WHEN ?2 IS NULL THEN reader_states.status
        WHEN ?2 >= 1.0 THEN 'completed'
        ELSE 'active' END,
    progress = coalesce(?2, reader_states.progress),
    current_step = coalesce(?3, reader_states.current_step),
    last_interaction_id = ?4,
    last_seen_at = ?5,
    updated_at = ?5
RETURNING user_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at
"""


def interaction_from_row(row: tuple[Any, ...]) -> InteractionRecord:
    return InteractionRecord(*row)


def record_interactions(conn: apsw.Connection, reader_id: str, items: list[NewInteractionData]) -> RecordOutcome:
    """Store `items` in order for one reader and move its state once.

    An id already stored for this reader is a duplicate (the stored row is
    returned, nothing is written); an id stored for another reader is a
    conflict. Runs on the writer, inside the caller's savepoint."""
    now = now_iso()
    stored: list[InteractionRecord] = []
    duplicates: list[InteractionRecord] = []
    conflicts: list[tuple[int, str]] = []
    percent: float | None = None
    step: int | None = None
    for item in items:
        rows = fetch_all(conn, _INSERT, (item.id, reader_id, item.type, item.payload, item.summary, now))
        if rows:
            stored.append(InteractionRecord(rows[0][0], item.id, reader_id, item.type, item.payload, item.summary, now))
            if item.percent is not None:
                percent = item.percent
            if item.step is not None:
                step = item.step
            continue
        existing = interaction_from_row(fetch_all(conn, _EXISTING, (item.id,))[0])
        if existing.user_id == reader_id:
            duplicates.append(existing)
        else:
            conflicts.append((item.index, item.id))
    state = None
    if stored:
        row = fetch_all(conn, _UPDATE_STATE, (reader_id, percent, step, stored[-1].id, now))[0]
        state = ReaderStateRecord(*row)
    return RecordOutcome(stored, duplicates, conflicts, state)


def list_interactions(
    conn: apsw.Connection, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
) -> list[InteractionRecord]:
    """Newest first, keyset on seq. `reader_id=None` lists every reader's."""
    clauses: list[str] = []
    params: list[Any] = []
    if reader_id is not None:
        clauses.append("user_id = ?")
        params.append(reader_id)
    if type_ is not None:
        clauses.append("type = ?")
        params.append(type_)
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {INTERACTION_COLUMNS} FROM interactions {where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
    return [interaction_from_row(r) for r in fetch_all(conn, sql, (*params, limit))]

"""The event history: one commit-order sequence over interactions and the
`events` table, the epoch that names this history, and replay.

Sequence numbers are made inside the write transaction: at the start of
every group commit that stores events, holding the lock that orders such
commits, the backend resumes `SequenceAllocator` from the highest seq the
database holds, and the batch's events number on from there. So `seq`
order is commit order whichever process writes, and nothing rests on one
process's memory. A seq taken by a task that
rolled back is simply never used: cursors need order, not density.
"""

from __future__ import annotations

import json
from typing import Any

from cursor_grpc.storage.records import (
    ALL_KINDS,
    KIND_INTERACTION,
    Event,
    EventFilter,
    InteractionRecord,
    ReaderStateRecord,
)
from cursor_grpc.storage.sql.connection import Connection, fetch_all, stream_rows


class SequenceAllocator:
    """Hands out seq values on the writer thread. The backend moves it to
    what the database holds at the start of each group commit that stores
    events (`resume`), under the lock that orders commits: SQLite's write
    lock, PostgreSQL's event counter row."""

    def __init__(self, last: int = 0) -> None:
        self._last = last

    def resume(self, last: int) -> None:
        """Go on from `last` (a lost batch's numbers are free again, and
        were never published)."""
        self._last = last

    def next(self) -> int:
        self._last += 1
        return self._last

    @property
    def last(self) -> int:
        return self._last


def epoch(conn: Connection) -> str:
    return str(fetch_all(conn, "SELECT value FROM cursor_meta WHERE key = 'event_epoch'")[0][0])


def history_floor(conn: Connection) -> int:
    """Events at or below this seq are no longer held (archived)."""
    found = fetch_all(conn, "SELECT value FROM cursor_meta WHERE key = 'history_floor_seq'")
    return int(found[0][0]) if found else 0


def insert_event(
    conn: Connection, seq: int, kind: str, reader_id: str, ref_id: str | None, summary: str,
    data: dict[str, Any], created_at: str,
) -> Event:
    conn.execute(
        "INSERT INTO events(seq, kind, reader_id, ref_id, summary, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (seq, kind, reader_id, ref_id, summary, json.dumps(data, separators=(",", ":")), created_at),
    )
    return Event(seq, kind, reader_id, created_at, summary, None, data)


def state_data(state: ReaderStateRecord) -> dict[str, Any]:
    return {
        "status": state.status,
        "progress": state.progress,
        "current_step": state.current_step,
        "last_interaction_id": state.last_interaction_id,
        "last_seen_at": state.last_seen_at,
        "updated_at": state.updated_at,
        "presence": state.presence,
    }


def replay(conn: Connection, after: int, upto: int, wanted: EventFilter,
           max_bytes: int | None = None) -> tuple[list[Event], int]:
    """Committed events with after < seq <= upto that match, in seq order,
    and how far they reach. With `max_bytes`, reading stops at the event
    that brings the payloads and summaries read to that many bytes (so at
    least one event); the second value is then its seq, else `upto`."""
    parts: list[str] = []
    params: list[Any] = []
    reader_clause = ""
    reader_params: list[Any] = []
    if wanted.reader_ids:
        reader_clause = f" AND {{col}} IN ({','.join('?' * len(wanted.reader_ids))})"
        reader_params = sorted(wanted.reader_ids)
    kinds = wanted.kinds or ALL_KINDS
    if KIND_INTERACTION in kinds:
        sql = (
            "SELECT seq, 'interaction', reader_id, id, type, payload, summary, created_at FROM interactions "
            "WHERE seq > ? AND seq <= ?" + reader_clause.format(col="reader_id")
        )
        params += [after, upto, *reader_params]
        if wanted.interaction_types:
            sql += f" AND type IN ({','.join('?' * len(wanted.interaction_types))})"
            params += sorted(wanted.interaction_types)
        parts.append(sql)
    other = sorted(kinds - {KIND_INTERACTION})
    if other:
        parts.append(
            "SELECT seq, kind, reader_id, ref_id, NULL, data, summary, created_at FROM events "
            f"WHERE seq > ? AND seq <= ? AND kind IN ({','.join('?' * len(other))})"
            + reader_clause.format(col="reader_id")
        )
        params += [after, upto, *other, *reader_params]
    if not parts:
        return [], upto
    found = []
    size = 0
    # Rows are stepped through, not fetched at once, so stopping early
    # leaves the rest unread.
    rows = stream_rows(conn, " UNION ALL ".join(parts) + " ORDER BY 1", params)
    try:
        for seq, kind, reader_id, ref_id, type_, body, summary, created_at in rows:
            if kind == KIND_INTERACTION:
                record = InteractionRecord(seq, ref_id, reader_id, type_, body, summary, created_at)
                found.append(Event(seq, kind, reader_id, created_at, summary, record))
            else:
                found.append(Event(seq, kind, reader_id, created_at, summary, None, json.loads(body)))
            size += len(body) + len(summary)
            if max_bytes is not None and size >= max_bytes and seq < upto:
                return found, int(seq)
    finally:
        rows.close()
    return found, upto

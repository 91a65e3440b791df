"""SQL behind the dashboard stream (WatchReaders): the latest of a set of
readers in a few queries, whatever their number, and which readers changed
in a range of the history.

The stream sends the latest state, not events, so these read the record:
whatever an update says is what the database holds at least as of the
cursor it goes out with."""

from __future__ import annotations

from cursor_grpc.storage.records import ReaderUpdateRecord
from cursor_grpc.storage.sql import attention
from cursor_grpc.storage.sql.accounts import READER_COLUMNS, READER_FROM, reader_from_row
from cursor_grpc.storage.sql.connection import Connection, fetch_all, placeholders

# Bound values per statement, well under SQLite's and PostgreSQL's limits.
CHUNK = 500

# The last interaction other than a heartbeat, per reader: a correlated
# subquery walking idx_interactions_user_seq backwards from each reader's
# newest row (past its heartbeats), then those rows by seq.
_LAST_ACTIVITY = """
SELECT reader_id, type, summary, created_at FROM interactions WHERE seq IN (
    SELECT (SELECT x.seq FROM interactions x WHERE x.reader_id = u.id AND x.type != 'heartbeat'
            ORDER BY x.seq DESC LIMIT 1)
    FROM users u WHERE u.id IN ({ids}))
"""


def reader_updates(conn: Connection, reader_ids: list[str]) -> list[ReaderUpdateRecord]:
    """The latest of each reader that exists among `reader_ids`: account and
    state, last non-heartbeat activity, open attention signals; in the
    order asked."""
    found: dict[str, ReaderUpdateRecord] = {}
    for start in range(0, len(reader_ids), CHUNK):
        chunk = reader_ids[start:start + CHUNK]
        ids = placeholders(len(chunk))
        for row in fetch_all(conn, f"SELECT {READER_COLUMNS} {READER_FROM} WHERE u.id IN ({ids})", chunk):
            reader = reader_from_row(row)
            found[reader.id] = ReaderUpdateRecord(reader, None, None, None, [])
        for reader_id, type_, summary, created_at in fetch_all(conn, _LAST_ACTIVITY.format(ids=ids), chunk):
            update = found.get(str(reader_id))
            if update is not None:
                update.activity_type, update.activity_summary, update.activity_at = type_, summary, created_at
        for signal in attention.list_open(conn, frozenset(), None, frozenset(chunk), None, len(chunk) * 4):
            found[signal.reader_id].attention.append(signal)
    return [found[r] for r in reader_ids if r in found]


def changed_readers(conn: Connection, after: int, upto: int) -> list[str]:
    """Readers with an event other than a heartbeat in after < seq <= upto
    (both tables by primary key range)."""
    rows = fetch_all(
        conn,
        "SELECT reader_id FROM interactions WHERE seq > ? AND seq <= ? AND type != 'heartbeat' "
        "UNION SELECT reader_id FROM events WHERE seq > ? AND seq <= ?",
        (after, upto, after, upto),
    )
    return sorted(str(r[0]) for r in rows)


def readers_with_attention(conn: Connection, limit: int) -> list[str]:
    """Readers with an open signal, longest waiting first (for a snapshot)."""
    seen: dict[str, None] = {}
    for signal in attention.list_open(conn, frozenset(), None, None, None, limit):
        seen.setdefault(signal.reader_id)
    return list(seen)

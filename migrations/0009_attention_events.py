"""Events: the kind 'attention' joins the CHECK on events.kind (0008 added
the signals; this lets their events be stored).

SQLite cannot change a CHECK in place, and events is about as large as
interactions (a state event per progress), so it is rebuilt with the chunked
pattern of 0005: a new table, a backfill in chunks (each its own short
transaction; a crash resumes where it stopped; triggers carry writes made
meanwhile), then a swap in one transaction that also records this migration.
Its index carries over.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from cursor_grpc.ops.rebuild import TableRebuild, rebuild_table

EVENTS = """
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('state', 'message', 'message_read', 'presence', 'attention')),
    reader_id  TEXT NOT NULL REFERENCES users(id),
    ref_id     TEXT,
    summary    TEXT NOT NULL DEFAULT '',
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data)),
    created_at TEXT NOT NULL
)
"""


def migrate(conn: apsw.Connection, record: Callable[[apsw.Connection], None]) -> None:
    rebuild_table(conn, TableRebuild("events", EVENTS, chunk_rows=5000), record=record)

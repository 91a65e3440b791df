"""Interactions: the payload must be a JSON object, as the API has always required.

SQLite cannot add a CHECK constraint to an existing table, and interactions is
the largest table, so it is rebuilt with the chunked pattern of
cursor_grpc/ops/rebuild.py: a new table, a backfill in chunks of 5000 rows
(each its own short transaction; a crash resumes where it stopped; triggers
carry writes made meanwhile), then a swap in one transaction that also records
this migration. Indexes, the append-only trigger and the AUTOINCREMENT counter
carry over. A stored payload that is not an object stops the migration with
nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable

import apsw

from cursor_grpc.ops.rebuild import TableRebuild, rebuild_table

INTERACTIONS = """
CREATE TABLE interactions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    user_id    TEXT NOT NULL REFERENCES users(id),
    type       TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 32),
    payload    TEXT NOT NULL CHECK (json_valid(payload) AND json_type(payload) = 'object'),
    summary    TEXT NOT NULL DEFAULT '',
    processed  INTEGER NOT NULL DEFAULT 0 CHECK (processed IN (0, 1)),
    created_at TEXT NOT NULL
)
"""


def migrate(conn: apsw.Connection, record: Callable[[apsw.Connection], None]) -> None:
    rebuild_table(conn, TableRebuild("interactions", INTERACTIONS, chunk_rows=5000), record=record)

"""SQL for reader_assignments: which consultant a reader is assigned to
(at most one). Assignment is by admins and supervisors, to an active
consultant; the store audits it in the same transaction."""

from __future__ import annotations

from cursor_grpc.clock import now_iso
from cursor_grpc.errors import FailedPrecondition, NotFound
from cursor_grpc.storage.records import AssignmentRecord
from cursor_grpc.storage.sql.connection import Connection, fetch_all

COLUMNS = "reader_id, consultant_id, assigned_by, assigned_at"


def assign(conn: Connection, reader_id: str, consultant_id: str, assigned_by: str | None) -> AssignmentRecord:
    """Assign (or move) `reader_id` to `consultant_id`."""
    if not fetch_all(conn, "SELECT 1 FROM users WHERE id = ?", (reader_id,)):
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    found = fetch_all(conn, "SELECT is_active FROM consultants WHERE id = ?", (consultant_id,))
    if not found:
        raise NotFound(f"consultant consultants/{consultant_id} does not exist", reason="CONSULTANT_NOT_FOUND")
    if not found[0][0]:
        raise FailedPrecondition(f"consultants/{consultant_id} is deactivated; assign the reader to an active "
                                 "consultant", reason="CONSULTANT_INACTIVE")
    rows = fetch_all(
        conn,
        f"INSERT INTO reader_assignments({COLUMNS}) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(reader_id) DO UPDATE SET consultant_id = excluded.consultant_id, "
        f"assigned_by = excluded.assigned_by, assigned_at = excluded.assigned_at RETURNING {COLUMNS}",
        (reader_id, consultant_id, assigned_by, now_iso()),
    )
    return AssignmentRecord(*rows[0])


def unassign(conn: Connection, reader_id: str) -> AssignmentRecord | None:
    """Remove the reader's assignment; the one removed, or None if it had none."""
    rows = fetch_all(conn, f"DELETE FROM reader_assignments WHERE reader_id = ? RETURNING {COLUMNS}", (reader_id,))
    return AssignmentRecord(*rows[0]) if rows else None


def assigned_readers(conn: Connection, consultant_id: str) -> frozenset[str]:
    """The ids of the readers assigned to `consultant_id` (index range on it)."""
    return frozenset(str(reader_id) for (reader_id,) in fetch_all(
        conn, "SELECT reader_id FROM reader_assignments WHERE consultant_id = ?", (consultant_id,)))


_LEAST_LOADED = """
SELECT c.id FROM consultants c LEFT JOIN reader_assignments a ON a.consultant_id = c.id
WHERE c.is_active = 1 AND c.role = 'consultant'
GROUP BY c.id ORDER BY count(a.reader_id), max(a.assigned_at) NULLS FIRST, c.id LIMIT 1
"""


def least_loaded(conn: Connection) -> str | None:
    """The active consultant (role consultant) with the fewest readers, the
    one assigned to longest ago among equals: round robin that stays even
    when consultants come and go. None when there is none."""
    found = fetch_all(conn, _LEAST_LOADED)
    return str(found[0][0]) if found else None

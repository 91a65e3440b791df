"""The audit log: written in the same transaction as the action it records."""

from __future__ import annotations

import json
from typing import Any

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.storage.records import AuditQuery, AuditRecord
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.keyset import Where, newest_first


def write_audit(
    conn: Connection,
    actor_type: str,
    actor_id: str | None,
    action: str,
    target_type: str | None = None,
    target_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO audit_logs(id, actor_type, actor_id, action, target_type, target_id, details, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (new_id(), actor_type, actor_id, action, target_type, target_id, json.dumps(details or {}), now_iso()),
    )


AUDIT_COLUMNS = "id, actor_type, actor_id, action, target_type, target_id, details, created_at"


def list_audit_logs(
    conn: Connection, query: AuditQuery, before: tuple[str, str] | None, limit: int
) -> list[AuditRecord]:
    """Newest first, keyset on (created_at, id); every filter is bound."""
    where = Where()
    if query.actor_type is not None:
        where.add("actor_type = ?", query.actor_type).same("actor_id", query.actor_id)
    where.equals("action", query.action)
    if query.target_type is not None:
        where.add("target_type = ?", query.target_type).same("target_id", query.target_id)
    if query.start is not None:
        where.add("created_at >= ?", query.start)
    if query.end is not None:
        where.add("created_at < ?", query.end)
    sql, params = newest_first(f"SELECT {AUDIT_COLUMNS} FROM audit_logs", where, ("created_at", "id"), before, limit)
    return [AuditRecord(*row) for row in fetch_all(conn, sql, params)]

"""The audit log: written in the same transaction as the action it records."""

from __future__ import annotations

import json
from typing import Any

import apsw

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.storage.records import AuditQuery, AuditRecord
from cursor_grpc.storage.sqlite.connection import fetch_all


def write_audit(
    conn: apsw.Connection,
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
    conn: apsw.Connection, query: AuditQuery, before: tuple[str, str] | None, limit: int
) -> list[AuditRecord]:
    """Newest first, keyset on (created_at, id); every filter is bound."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.actor_type is not None:
        clauses.append("actor_type = ?")
        params.append(query.actor_type)
        clauses.append("actor_id IS ?")
        params.append(query.actor_id)
    if query.action is not None:
        clauses.append("action = ?")
        params.append(query.action)
    if query.target_type is not None:
        clauses.append("target_type = ?")
        params.append(query.target_type)
        clauses.append("target_id IS ?")
        params.append(query.target_id)
    if query.start is not None:
        clauses.append("created_at >= ?")
        params.append(query.start)
    if query.end is not None:
        clauses.append("created_at < ?")
        params.append(query.end)
    if before is not None:
        clauses.append("(created_at, id) < (?, ?)")
        params += [before[0], before[1]]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit_logs {where} ORDER BY created_at DESC, id DESC LIMIT ?"
    return [AuditRecord(*row) for row in fetch_all(conn, sql, (*params, limit))]

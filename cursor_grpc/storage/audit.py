"""The audit log: written in the same transaction as the action it records."""

from __future__ import annotations

import json
from typing import Any

import apsw

from cursor_grpc.clock import new_id, now_iso


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

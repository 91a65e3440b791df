"""SQL for the sessions table. Only a hash of each token is ever stored."""

from __future__ import annotations

from collections.abc import Iterable

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.storage.records import SessionRecord
from cursor_grpc.storage.sql.connection import Connection, fetch_all

_SELECT = """
SELECT s.id, s.actor_type, s.actor_id, s.created_at, s.last_active_at, s.expires_at, s.revoked_at,
       CASE s.actor_type WHEN 'reader' THEN u.is_active ELSE c.is_active END,
       CASE s.actor_type WHEN 'reader' THEN 'reader' ELSE c.role END
FROM sessions s
LEFT JOIN users u ON s.actor_type = 'reader' AND u.id = s.actor_id
LEFT JOIN consultants c ON s.actor_type = 'consultant' AND c.id = s.actor_id
"""


def create_session(
    conn: Connection, token_hash: bytes, actor_type: str, actor_id: str, expires_at: str
) -> str:
    session_id, now = new_id(), now_iso()
    conn.execute(
        "INSERT INTO sessions(id, token_hash, actor_type, actor_id, created_at, last_active_at, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, token_hash, actor_type, actor_id, now, now, expires_at),
    )
    return session_id


def session_by_token_hash(conn: Connection, token_hash: bytes) -> SessionRecord | None:
    rows = fetch_all(conn, _SELECT + " WHERE s.token_hash = ?", (token_hash,))
    if not rows:
        return None
    row = rows[0]
    return SessionRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])


def revoke_session(conn: Connection, session_id: str, reason: str) -> bool:
    conn.execute(
        "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL",
        (now_iso(), reason, session_id),
    )
    return bool(conn.changes())


def revoke_actor_sessions(
    conn: Connection, actor_type: str, actor_id: str, reason: str, keep: str | None = None
) -> int:
    """End every live session of an account, except `keep` if given."""
    conn.execute(
        "UPDATE sessions SET revoked_at = ?, revoke_reason = ? "
        "WHERE actor_type = ? AND actor_id = ? AND revoked_at IS NULL AND id IS DISTINCT FROM ?",
        (now_iso(), reason, actor_type, actor_id, keep),
    )
    return int(conn.changes())


def touch_sessions(conn: Connection, touches: Iterable[tuple[str, str]]) -> None:
    """Record (session_id, last_active_at) pairs; never moves time backwards."""
    conn.executemany(
        "UPDATE sessions SET last_active_at = ?2 WHERE id = ?1 AND last_active_at < ?2",
        list(touches),
    )


def ended_sessions(conn: Connection, session_ids: list[str], now: str) -> list[tuple[str, str]]:
    """Of these sessions, those that no longer authenticate, each with why:
    'missing', 'revoked', 'inactive' (the account) or 'expired'. One query
    for all of them, by primary key."""
    if not session_ids:
        return []
    active = "coalesce(CASE s.actor_type WHEN 'reader' THEN u.is_active ELSE c.is_active END, 0)"
    return [(str(session_id), str(why)) for session_id, why in fetch_all(
        conn,
        "SELECT j.column1, CASE WHEN s.id IS NULL THEN 'missing' WHEN s.revoked_at IS NOT NULL THEN 'revoked' "
        f"WHEN {active} = 0 THEN 'inactive' ELSE 'expired' END "
        f"FROM (VALUES {', '.join(['(?)'] * len(session_ids))}) j LEFT JOIN sessions s ON s.id = j.column1 "
        "LEFT JOIN users u ON s.actor_type = 'reader' AND u.id = s.actor_id "
        "LEFT JOIN consultants c ON s.actor_type = 'consultant' AND c.id = s.actor_id "
        f"WHERE s.id IS NULL OR s.revoked_at IS NOT NULL OR {active} = 0 OR s.expires_at <= ?",
        (*session_ids, now),
    )]

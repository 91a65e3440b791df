"""SQL for consents: a reader (granter) lets another reader (grantee) read its
state, or its state and interactions, while the grant is live.

A grant is live while `revoked_at` is NULL; at most one per pair (a partial
unique index). Changing the scope revokes the old row and inserts a new one,
so a row's scope never changes and the table is the history of every grant.
"""

from __future__ import annotations

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.errors import InvalidArgument, NotFound, PermissionDenied
from cursor_grpc.storage.records import SCOPES, ConsentRecord, GrantOutcome
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.keyset import Where, newest_first

CONSENT_COLUMNS = "id, granter_id, grantee_id, scope, created_at, revoked_at"


def live_consent(conn: Connection, granter_id: str, grantee_id: str) -> ConsentRecord | None:
    rows = fetch_all(
        conn,
        f"SELECT {CONSENT_COLUMNS} FROM consents WHERE granter_id = ? AND grantee_id = ? AND revoked_at IS NULL",
        (granter_id, grantee_id),
    )
    return ConsentRecord(*rows[0]) if rows else None


def consents_in_force(conn: Connection, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ConsentRecord]:
    """Of these (granter, grantee) pairs, those with a live consent from an
    active granter, in one query (what an open shared stream still needs)."""
    if not pairs:
        return {}
    rows = fetch_all(
        conn,
        f"SELECT {', '.join('c.' + c.strip() for c in CONSENT_COLUMNS.split(','))} FROM consents c "
        "JOIN users u ON u.id = c.granter_id AND u.is_active = 1 WHERE c.revoked_at IS NULL "
        f"AND (c.granter_id, c.grantee_id) IN (VALUES {', '.join(['(?, ?)'] * len(pairs))})",
        [value for pair in pairs for value in pair],
    )
    found = [ConsentRecord(*row) for row in rows]
    return {(consent.granter_id, consent.grantee_id): consent for consent in found}


def require_consent(conn: Connection, granter_id: str, grantee_id: str, *, interactions: bool) -> ConsentRecord:
    """The live consent that lets `grantee_id` read `granter_id`, or
    PERMISSION_DENIED. An unknown reader gets the same answer as one that
    shares nothing, so the check reveals nothing about other accounts."""
    consent = live_consent(conn, granter_id, grantee_id)
    if consent is None:
        raise PermissionDenied(
            f"readers/{granter_id} does not share anything with you (no consent, or it was revoked)",
            reason="NO_CONSENT",
        )
    if not fetch_all(conn, "SELECT 1 FROM users WHERE id = ? AND is_active = 1", (granter_id,)):
        # The grant stays (the reader never revoked it) but shares nothing
        # while an admin keeps the account deactivated.
        raise PermissionDenied(
            f"readers/{granter_id} is deactivated; what it shares is hidden until it is active again",
            reason="GRANTER_INACTIVE",
        )
    if interactions and not consent.shares_interactions:
        raise PermissionDenied(
            f"readers/{granter_id} shares its state with you, not its interactions", reason="CONSENT_SCOPE"
        )
    return consent


def grant(conn: Connection, granter_id: str, grantee_id: str, scope: str) -> GrantOutcome:
    if scope not in SCOPES:
        raise ValueError(f"unknown consent scope {scope!r}")
    if granter_id == grantee_id:
        raise InvalidArgument("a reader cannot give a consent to itself", field="grantee", reason="SELF_CONSENT")
    if not fetch_all(conn, "SELECT 1 FROM users WHERE id = ?", (grantee_id,)):
        raise NotFound(f"reader readers/{grantee_id} does not exist", reason="READER_NOT_FOUND")
    current = live_consent(conn, granter_id, grantee_id)
    if current is not None and current.scope == scope:
        return GrantOutcome(current, None, False)
    now = now_iso()
    replaced = None
    if current is not None:
        conn.execute("UPDATE consents SET revoked_at = ? WHERE id = ?", (now, current.id))
        replaced = ConsentRecord(current.id, granter_id, grantee_id, current.scope, current.created_at, now)
    consent = ConsentRecord(new_id(), granter_id, grantee_id, scope, now, None)
    conn.execute(
        "INSERT INTO consents(id, granter_id, grantee_id, scope, created_at) VALUES (?, ?, ?, ?, ?)",
        (consent.id, granter_id, grantee_id, scope, now),
    )
    return GrantOutcome(consent, replaced, True)


def revoke(conn: Connection, granter_id: str, grantee_id: str) -> ConsentRecord:
    current = live_consent(conn, granter_id, grantee_id)
    if current is None:
        raise NotFound(f"you have no live consent for readers/{grantee_id}", reason="CONSENT_NOT_FOUND")
    now = now_iso()
    conn.execute("UPDATE consents SET revoked_at = ? WHERE id = ?", (now, current.id))
    return ConsentRecord(current.id, granter_id, grantee_id, current.scope, current.created_at, now)


def list_consents(
    conn: Connection, reader_id: str, received: bool, show_revoked: bool, before_id: str | None, limit: int
) -> list[ConsentRecord]:
    """The consents a reader gave (or received), newest first, keyset on id
    (ids are time-ordered)."""
    where = Where().add(f"{'grantee_id' if received else 'granter_id'} = ?", reader_id)
    if not show_revoked:
        where.add("revoked_at IS NULL")
    sql, params = newest_first(
        f"SELECT {CONSENT_COLUMNS} FROM consents", where, ("id",), None if before_id is None else (before_id,), limit
    )
    return [ConsentRecord(*row) for row in fetch_all(conn, sql, params)]

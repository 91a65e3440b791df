"""SQL for the account tables: users (readers) and consultants. Each function
takes a connection: write functions run on the writer's, reads on a read
connection."""

from __future__ import annotations

from typing import Any

from cursor_grpc.clock import new_id, now_iso
from cursor_grpc.errors import AlreadyExists, FailedPrecondition, NotFound
from cursor_grpc.storage.records import ConsultantRecord, Credential, ReaderRecord, ReaderStateRecord
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.keyset import Where, newest_first

READER_COLUMNS = """
    u.id, u.email, u.display_name, u.is_active, u.created_at,
    s.reader_id, s.status, s.progress, s.current_step, s.last_interaction_id, s.last_seen_at, s.updated_at,
    s.presence
"""
STATE_COLUMNS = "reader_id, status, progress, current_step, last_interaction_id, last_seen_at, updated_at, presence"
READER_FROM = "FROM users u LEFT JOIN reader_states s ON s.reader_id = u.id"
CONSULTANT_COLUMNS = "id, email, display_name, role, is_active, user_id, created_at"


def state_from_row(row: tuple[Any, ...]) -> ReaderStateRecord:
    return ReaderStateRecord(*row)


def reader_from_row(row: tuple[Any, ...]) -> ReaderRecord:
    state = ReaderStateRecord(*row[5:]) if row[5] is not None else None
    return ReaderRecord(row[0], row[1], row[2], bool(row[3]), row[4], state)


def consultant_from_row(row: tuple[Any, ...]) -> ConsultantRecord:
    return ConsultantRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


def _email_taken(conn: Connection, table: str, email: str) -> bool:
    return bool(fetch_all(conn, f"SELECT 1 FROM {table} WHERE email = ?", (email,)))


def create_reader(conn: Connection, email: str, password_hash: str, display_name: str) -> ReaderRecord:
    if _email_taken(conn, "users", email):
        raise AlreadyExists(f"a reader with email {email} already exists; log in instead", reason="EMAIL_TAKEN")
    reader_id, now = new_id(), now_iso()
    conn.execute(
        "INSERT INTO users(id, email, password_hash, display_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (reader_id, email, password_hash, display_name, now, now),
    )
    conn.execute("INSERT INTO reader_states(reader_id, updated_at) VALUES (?, ?)", (reader_id, now))
    return get_reader(conn, reader_id)


def get_reader(conn: Connection, reader_id: str) -> ReaderRecord:
    rows = fetch_all(conn, f"SELECT {READER_COLUMNS} {READER_FROM} WHERE u.id = ?", (reader_id,))
    if not rows:
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    return reader_from_row(rows[0])


def get_reader_state(conn: Connection, reader_id: str) -> ReaderStateRecord:
    rows = fetch_all(conn,
        f"SELECT {STATE_COLUMNS} FROM reader_states WHERE reader_id = ?",
        (reader_id,),
    )
    if not rows:
        raise NotFound(f"reader readers/{reader_id} has no state", reason="READER_NOT_FOUND")
    return state_from_row(rows[0])


_ASSIGNED_TO = "{column} IN (SELECT reader_id FROM reader_assignments WHERE consultant_id = ?)"


def assigned_to(where: Where, column: str, consultant_id: str | None) -> Where:
    """Only the readers assigned to `consultant_id` ("my readers"), when given."""
    return where if consultant_id is None else where.add(_ASSIGNED_TO.format(column=column), consultant_id)


def list_readers(
    conn: Connection, status: str | None, after_id: str | None, limit: int, assignee: str | None = None
) -> list[ReaderRecord]:
    """Newest account first (ids are time-ordered), keyset on id; with
    `assignee`, only the readers assigned to that consultant."""
    sql, params = newest_first(
        f"SELECT {READER_COLUMNS} {READER_FROM}", assigned_to(Where().equals("s.status", status), "u.id", assignee),
        ("u.id",), None if after_id is None else (after_id,), limit,
    )
    return [reader_from_row(r) for r in fetch_all(conn, sql, params)]


def list_active_readers(
    conn: Connection, since: str, after: tuple[str, str] | None, limit: int, assignee: str | None = None
) -> list[ReaderRecord]:
    """Readers seen at or after `since`, most recent first; keyset on
    (last_seen_at, reader_id), served by idx_reader_states_last_seen; with
    `assignee`, only the readers assigned to that consultant."""
    sql, params = newest_first(
        f"SELECT {READER_COLUMNS} FROM reader_states s JOIN users u ON u.id = s.reader_id",
        assigned_to(Where().add("s.last_seen_at >= ?", since), "s.reader_id", assignee),
        ("s.last_seen_at", "s.reader_id"), after, limit,
    )
    return [reader_from_row(r) for r in fetch_all(conn, sql, params)]


def credentials_for_email(conn: Connection, email: str) -> list[Credential]:
    found = [
        Credential("reader", row[0], row[1], bool(row[2]), "reader")
        for row in fetch_all(conn, "SELECT id, password_hash, is_active FROM users WHERE email = ?", (email,))
    ]
    found += [
        Credential("consultant", row[0], row[1], bool(row[2]), row[3])
        for row in fetch_all(
            conn, "SELECT id, password_hash, is_active, role FROM consultants WHERE email = ?", (email,)
        )
    ]
    return found


def credential_by_id(conn: Connection, kind: str, account_id: str) -> Credential:
    if kind == "reader":
        sql = "SELECT id, password_hash, is_active, 'reader' FROM users WHERE id = ?"
    else:
        sql = "SELECT id, password_hash, is_active, role FROM consultants WHERE id = ?"
    found = fetch_all(conn, sql, (account_id,))
    if not found:
        raise NotFound(f"account {kind}s/{account_id} does not exist", reason="ACCOUNT_NOT_FOUND")
    row = found[0]
    return Credential(kind, row[0], row[1], bool(row[2]), row[3])


def set_password_hash(conn: Connection, kind: str, account_id: str, password_hash: str) -> None:
    table = "users" if kind == "reader" else "consultants"
    conn.execute(
        f"UPDATE {table} SET password_hash = ?, updated_at = ? WHERE id = ?",
        (password_hash, now_iso(), account_id),
    )


def get_consultant(conn: Connection, consultant_id: str) -> ConsultantRecord:
    rows = fetch_all(conn, f"SELECT {CONSULTANT_COLUMNS} FROM consultants WHERE id = ?", (consultant_id,))
    if not rows:
        raise NotFound(f"consultant consultants/{consultant_id} does not exist", reason="CONSULTANT_NOT_FOUND")
    return consultant_from_row(rows[0])


def create_consultant(
    conn: Connection,
    email: str,
    password_hash: str,
    display_name: str,
    role: str,
    user_id: str | None = None,
) -> ConsultantRecord:
    if _email_taken(conn, "consultants", email):
        raise AlreadyExists(f"a consultant with email {email} already exists", reason="EMAIL_TAKEN")
    consultant_id, now = new_id(), now_iso()
    conn.execute(
        "INSERT INTO consultants(id, email, password_hash, display_name, role, user_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (consultant_id, email, password_hash, display_name, role, user_id, now, now),
    )
    return get_consultant(conn, consultant_id)


def promote_reader(conn: Connection, reader_id: str, role: str) -> ConsultantRecord:
    """The design's promote query, done right: a consultant row for the same
    person (same email, same password hash, linked by user_id), in one
    transaction, refusing a second promotion or a taken email."""
    rows = fetch_all(conn,
        "SELECT email, password_hash, display_name, is_active FROM users WHERE id = ?", (reader_id,)
    )
    if not rows:
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    email, password_hash, display_name, active = rows[0]
    if not active:
        raise FailedPrecondition(
            f"reader readers/{reader_id} is deactivated; activate it before promoting", reason="ACCOUNT_INACTIVE"
        )
    if fetch_all(conn, "SELECT 1 FROM consultants WHERE user_id = ?", (reader_id,)):
        raise AlreadyExists(f"reader readers/{reader_id} has already been promoted", reason="ALREADY_PROMOTED")
    return create_consultant(conn, email, password_hash, display_name, role, user_id=reader_id)


def set_active(conn: Connection, kind: str, account_id: str, active: bool) -> bool:
    """Returns whether the flag changed."""
    table = "users" if kind == "reader" else "consultants"
    exists = fetch_all(conn, f"SELECT is_active FROM {table} WHERE id = ?", (account_id,))
    if not exists:
        raise NotFound(f"account {kind}s/{account_id} does not exist", reason="ACCOUNT_NOT_FOUND")
    if bool(exists[0][0]) == active:
        return False
    conn.execute(
        f"UPDATE {table} SET is_active = ?, updated_at = ? WHERE id = ?",
        (int(active), now_iso(), account_id),
    )
    return True


def count_admins(conn: Connection) -> int:
    return int(fetch_all(conn, "SELECT count(*) FROM consultants WHERE role = 'admin' AND is_active = 1")[0][0])


def get_reader_metadata(conn: Connection, reader_id: str) -> str:
    """The reader's metadata JSON object text (a restricted field)."""
    rows = fetch_all(conn, "SELECT metadata FROM users WHERE id = ?", (reader_id,))
    if not rows:
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    return str(rows[0][0])


def update_reader_profile(
    conn: Connection, reader_id: str, display_name: str | None, email: str | None, metadata: str | None
) -> list[str]:
    """Set the restricted fields given (None leaves one as it is). Returns the
    names of the fields whose value changed. An email must stay unique among
    readers and must not be another person's consultant email."""
    rows = fetch_all(conn, "SELECT email, display_name, metadata FROM users WHERE id = ?", (reader_id,))
    if not rows:
        raise NotFound(f"reader readers/{reader_id} does not exist", reason="READER_NOT_FOUND")
    old_email, old_name, old_metadata = rows[0]
    changes: dict[str, Any] = {}
    if display_name is not None and display_name != old_name:
        changes["display_name"] = display_name
    if email is not None and email != old_email:
        taken = fetch_all(
            conn,
            "SELECT 1 FROM users WHERE email = ?1 AND id != ?2 "
            "UNION ALL SELECT 1 FROM consultants WHERE email = ?1 AND user_id IS DISTINCT FROM ?2",
            (email, reader_id),
        )
        if taken:
            raise AlreadyExists(f"email {email} is already used by another account", field="email",
                                reason="EMAIL_TAKEN")
        changes["email"] = email
    if metadata is not None and metadata != old_metadata:
        changes["metadata"] = metadata
    if changes:
        sets = ", ".join(f"{column} = ?" for column in changes)
        conn.execute(f"UPDATE users SET {sets}, updated_at = ? WHERE id = ?",
                     (*changes.values(), now_iso(), reader_id))
    return [{"metadata": "metadata_json"}.get(column, column) for column in changes]

"""`Store`: the narrow interface services use. It owns the writer and the
read pool; every method is one read or one write task (one transaction), so
an action and its audit row commit together. A PostgreSQL store would
implement the same methods."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import apsw

from cursor_grpc.config import StorageSettings
from cursor_grpc.storage import accounts, interactions, sessions
from cursor_grpc.storage.audit import write_audit
from cursor_grpc.storage.connection import open_connection
from cursor_grpc.storage.migrations import migrate, verify_current
from cursor_grpc.storage.reads import ReadPool
from cursor_grpc.storage.records import (
    ConsultantRecord,
    Credential,
    InteractionRecord,
    NewInteractionData,
    ReaderRecord,
    ReaderStateRecord,
    RecordOutcome,
    SessionRecord,
)
from cursor_grpc.storage.writer import Writer

log = logging.getLogger("cursor.storage")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does a write, for the audit log."""

    type: str  # 'reader' | 'consultant' | 'system'
    id: str | None


SYSTEM = Actor("system", None)


def apply_migrations(settings: StorageSettings) -> list[str]:
    """Apply pending migrations with a connection of our own (before the
    writer starts). Returns the names applied."""
    conn = open_connection(settings)
    try:
        return migrate(conn)
    finally:
        conn.close()


class Store:
    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        log.info("SQLite %s (APSW %s) at %s", apsw.sqlite_lib_version(), apsw.apsw_version(), settings.path)
        self.writer = Writer(settings)
        self.reads = ReadPool(settings)
        try:
            self.reads.run_sync(verify_current)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent."""
        self.writer.close()
        self.reads.close()

    # --- accounts ------------------------------------------------------------

    async def create_reader(self, email: str, password_hash: str, display_name: str) -> ReaderRecord:
        def write(conn: apsw.Connection) -> ReaderRecord:
            reader = accounts.create_reader(conn, email, password_hash, display_name)
            write_audit(conn, "reader", reader.id, "reader.register", "reader", reader.id)
            return reader

        return await self.writer.submit(write)

    async def credentials_for_email(self, email: str) -> list[Credential]:
        return await self.reads.run(lambda conn: accounts.credentials_for_email(conn, email))

    async def credential_by_id(self, kind: str, account_id: str) -> Credential:
        return await self.reads.run(lambda conn: accounts.credential_by_id(conn, kind, account_id))

    async def get_reader(self, reader_id: str) -> ReaderRecord:
        return await self.reads.run(lambda conn: accounts.get_reader(conn, reader_id))

    async def get_reader_state(self, reader_id: str) -> ReaderStateRecord:
        return await self.reads.run(lambda conn: accounts.get_reader_state(conn, reader_id))

    async def list_readers(self, status: str | None, after_id: str | None, limit: int) -> list[ReaderRecord]:
        return await self.reads.run(lambda conn: accounts.list_readers(conn, status, after_id, limit))

    async def list_active_readers(self, since: str, after: tuple[str, str] | None, limit: int) -> list[ReaderRecord]:
        return await self.reads.run(lambda conn: accounts.list_active_readers(conn, since, after, limit))

    async def create_consultant(
        self, actor: Actor, email: str, password_hash: str, display_name: str, role: str
    ) -> ConsultantRecord:
        def write(conn: apsw.Connection) -> ConsultantRecord:
            consultant = accounts.create_consultant(conn, email, password_hash, display_name, role)
            write_audit(conn, actor.type, actor.id, "consultant.create", "consultant", consultant.id, {"role": role})
            return consultant

        return await self.writer.submit(write)

    async def promote_reader(self, actor: Actor, reader_id: str, role: str) -> ConsultantRecord:
        def write(conn: apsw.Connection) -> ConsultantRecord:
            consultant = accounts.promote_reader(conn, reader_id, role)
            write_audit(
                conn, actor.type, actor.id, "reader.promote", "reader", reader_id,
                {"consultant_id": consultant.id, "role": role},
            )
            return consultant

        return await self.writer.submit(write)

    async def set_account_active(self, actor: Actor, kind: str, account_id: str, active: bool) -> int:
        """Returns how many sessions deactivation ended."""

        def write(conn: apsw.Connection) -> int:
            changed = accounts.set_active(conn, kind, account_id, active)
            revoked = 0 if active else sessions.revoke_actor_sessions(conn, kind, account_id, "account deactivated")
            write_audit(
                conn, actor.type, actor.id, "account.activate" if active else "account.deactivate", kind, account_id,
                {"changed": changed, "revoked_sessions": revoked},
            )
            return revoked

        return await self.writer.submit(write)

    # --- sessions ------------------------------------------------------------

    async def start_session(
        self, credential: Credential, token_hash: bytes, expires_at: str, new_password_hash: str | None
    ) -> str:
        """A new session after a successful login; stores a rehashed password
        when the hashing parameters changed. Consultant logins are audited."""

        def write(conn: apsw.Connection) -> str:
            if new_password_hash is not None:
                accounts.set_password_hash(conn, credential.kind, credential.id, new_password_hash)
            session_id = sessions.create_session(conn, token_hash, credential.kind, credential.id, expires_at)
            if credential.kind == "consultant":
                write_audit(conn, "consultant", credential.id, "session.login", "session", session_id)
            return session_id

        return await self.writer.submit(write)

    async def session_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        return await self.reads.run(lambda conn: sessions.session_by_token_hash(conn, token_hash))

    async def end_session(self, session_id: str, reason: str) -> None:
        await self.writer.submit(lambda conn: sessions.revoke_session(conn, session_id, reason))

    async def replace_session(
        self,
        old_session_id: str,
        kind: str,
        account_id: str,
        token_hash: bytes,
        expires_at: str,
        reason: str,
        new_password_hash: str | None = None,
        end_other_sessions: bool = False,
    ) -> tuple[str, int]:
        """End a session and start its successor in one transaction (rotation,
        password change). Returns (new session id, other sessions ended)."""

        def write(conn: apsw.Connection) -> tuple[str, int]:
            ended = 0
            if new_password_hash is not None:
                accounts.set_password_hash(conn, kind, account_id, new_password_hash)
            sessions.revoke_session(conn, old_session_id, reason)
            if end_other_sessions:
                ended = sessions.revoke_actor_sessions(conn, kind, account_id, reason)
            new_id = sessions.create_session(conn, token_hash, kind, account_id, expires_at)
            if kind == "consultant" or new_password_hash is not None:
                write_audit(conn, kind, account_id, f"session.{reason.replace(' ', '_')}", "session", new_id)
            return new_id, ended

        return await self.writer.submit(write)

    async def touch_sessions(self, touches: list[tuple[str, str]]) -> None:
        await self.writer.submit(lambda conn: sessions.touch_sessions(conn, touches))

    # --- interactions ----------------------------------------------------------

    async def record_interactions(self, reader_id: str, items: list[NewInteractionData]) -> RecordOutcome:
        return await self.writer.submit(lambda conn: interactions.record_interactions(conn, reader_id, items))

    async def list_interactions(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> list[InteractionRecord]:
        return await self.reads.run(
            lambda conn: interactions.list_interactions(conn, reader_id, type_, before_seq, limit)
        )

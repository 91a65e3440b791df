"""The domain methods of the storage contract, written once for every SQL
backend: each is one read (the read pool) or one write task (the writer),
so an action and its audit row commit together. A write that stores events
goes through `submit_evented`, so its events reach `on_commit` listeners by
type, never by inspection. A backend subclasses `SqlStore` and gives it its
writer, read pool and sequence allocator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cursor_grpc.clock import now_iso
from cursor_grpc.config import AttentionSettings
from cursor_grpc.errors import FailedPrecondition
from cursor_grpc.storage.records import (
    ALL_RULES,
    Actor,
    AssignmentRecord,
    AttentionRecord,
    AuditQuery,
    AuditRecord,
    ConsentRecord,
    ConsultantRecord,
    Credential,
    Event,
    Evented,
    EventFilter,
    GrantOutcome,
    HistoryPage,
    InteractionRecord,
    MessageRecord,
    NewInteractionData,
    ReaderRecord,
    ReaderStateRecord,
    ReaderUpdateRecord,
    ReadPosition,
    RecordOutcome,
    SessionRecord,
)
from cursor_grpc.storage.sql import (
    accounts,
    assignments,
    attention,
    consents,
    dashboard,
    events,
    interactions,
    messages,
    sessions,
)
from cursor_grpc.storage.sql.audit import list_audit_logs, write_audit
from cursor_grpc.storage.sql.connection import Connection
from cursor_grpc.storage.sql.events import SequenceAllocator
from cursor_grpc.storage.sql.reads import ReadPool
from cursor_grpc.storage.sql.writer import Writer

# The attention rules' defaults, for callers that configure none.
DEFAULT_RULES = AttentionSettings()


class SqlStore:
    writer: Writer
    reads: ReadPool
    seqs: SequenceAllocator

    # --- accounts ------------------------------------------------------------

    async def create_reader(self, email: str, password_hash: str, display_name: str,
                            round_robin: bool = False) -> ReaderRecord:
        def write(conn: Connection) -> ReaderRecord:
            reader = accounts.create_reader(conn, email, password_hash, display_name)
            write_audit(conn, "reader", reader.id, "reader.register", "reader", reader.id)
            consultant_id = assignments.least_loaded(conn) if round_robin else None
            if consultant_id is not None:
                assignments.assign(conn, reader.id, consultant_id, None)
                write_audit(conn, "system", None, "reader.assign", "reader", reader.id,
                            {"consultant_id": consultant_id, "previous_consultant_id": None, "via": "round_robin"})
            return reader

        return await self.writer.submit(write)

    async def credentials_for_email(self, email: str) -> list[Credential]:
        return await self.reads.run(lambda conn: accounts.credentials_for_email(conn, email))

    async def credential_by_id(self, kind: str, account_id: str) -> Credential:
        return await self.reads.run(lambda conn: accounts.credential_by_id(conn, kind, account_id))

    async def get_reader(self, reader_id: str) -> ReaderRecord:
        return await self.reads.run(lambda conn: accounts.get_reader(conn, reader_id))

    async def get_reader_profile(self, reader_id: str) -> tuple[ReaderRecord, str]:
        """The reader and its metadata JSON, read together."""
        return await self.reads.run(
            lambda conn: (accounts.get_reader(conn, reader_id), accounts.get_reader_metadata(conn, reader_id))
        )

    async def get_reader_state(self, reader_id: str) -> ReaderStateRecord:
        return await self.reads.run(lambda conn: accounts.get_reader_state(conn, reader_id))

    async def list_readers(self, status: str | None, after_id: str | None, limit: int,
                           assignee: str | None = None) -> list[ReaderRecord]:
        return await self.reads.run(lambda conn: accounts.list_readers(conn, status, after_id, limit, assignee))

    async def list_active_readers(self, since: str, after: tuple[str, str] | None, limit: int,
                                  assignee: str | None = None) -> list[ReaderRecord]:
        return await self.reads.run(
            lambda conn: accounts.list_active_readers(conn, since, after, limit, assignee))

    async def create_consultant(
        self, actor: Actor, email: str, password_hash: str, display_name: str, role: str
    ) -> ConsultantRecord:
        def write(conn: Connection) -> ConsultantRecord:
            consultant = accounts.create_consultant(conn, email, password_hash, display_name, role)
            write_audit(conn, actor.type, actor.id, "consultant.create", "consultant", consultant.id, {"role": role})
            return consultant

        return await self.writer.submit(write)

    async def promote_reader(self, actor: Actor, reader_id: str, role: str) -> ConsultantRecord:
        def write(conn: Connection) -> ConsultantRecord:
            consultant = accounts.promote_reader(conn, reader_id, role)
            write_audit(
                conn, actor.type, actor.id, "reader.promote", "reader", reader_id,
                {"consultant_id": consultant.id, "role": role},
            )
            return consultant

        return await self.writer.submit(write)

    async def create_admin(
        self, email: str, password_hash: str, display_name: str, *, additional: bool = False
    ) -> ConsultantRecord:
        """An admin made by the system (`cursor-grpc create-admin`), audited;
        unless `additional`, refused while an active admin exists."""

        def write(conn: Connection) -> ConsultantRecord:
            if not additional and accounts.count_admins(conn):
                raise FailedPrecondition("an active admin exists already", reason="ADMIN_EXISTS")
            consultant = accounts.create_consultant(conn, email, password_hash, display_name, "admin")
            write_audit(conn, "system", None, "consultant.create", "consultant", consultant.id,
                        {"role": "admin", "via": "create-admin"})
            return consultant

        return await self.writer.submit(write)

    async def set_account_active(self, actor: Actor, kind: str, account_id: str, active: bool) -> int:
        """Returns how many sessions deactivation ended."""

        def write(conn: Connection) -> int:
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

        def write(conn: Connection) -> str:
            if new_password_hash is not None:
                accounts.set_password_hash(conn, credential.kind, credential.id, new_password_hash)
            session_id = sessions.create_session(conn, token_hash, credential.kind, credential.id, expires_at)
            if credential.kind == "consultant":
                write_audit(conn, "consultant", credential.id, "session.login", "session", session_id)
            return session_id

        return await self.writer.submit(write)

    async def session_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        return await self.reads.run(lambda conn: sessions.session_by_token_hash(conn, token_hash))

    async def ended_sessions(self, session_ids: list[str], now: str) -> list[tuple[str, str]]:
        """(session id, why) for each of these that no longer authenticates."""
        return await self.reads.run(lambda conn: sessions.ended_sessions(conn, session_ids, now))

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

        def write(conn: Connection) -> tuple[str, int]:
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

    async def record_interactions(
        self, reader_id: str, items: list[NewInteractionData], reading_window_ns: int,
        rules: AttentionSettings = DEFAULT_RULES,
    ) -> RecordOutcome:
        def write(conn: Connection) -> Evented[RecordOutcome]:
            outcome = interactions.record_interactions(conn, self.seqs, reader_id, items, reading_window_ns, rules)
            return Evented(outcome, outcome.events)

        return await self.writer.submit_evented(write)

    async def sweep_presence(self, idle_ns: int, reading_window_ns: int,
                             rules: AttentionSettings = DEFAULT_RULES) -> list[Event]:
        def write(conn: Connection) -> Evented[list[Event]]:
            changed = interactions.sweep_presence(conn, self.seqs, idle_ns, reading_window_ns, rules)
            return Evented(changed, changed)

        return await self.writer.submit_evented(write)

    # --- attention -------------------------------------------------------------

    async def list_attention(
        self, rules: frozenset[str], assignee: str | None, reader_ids: frozenset[str] | None,
        after_seq: int | None, limit: int,
    ) -> list[AttentionRecord]:
        return await self.reads.run(
            lambda conn: attention.list_open(conn, rules, assignee, reader_ids, after_seq, limit))

    async def acknowledge_attention(self, actor: Actor, reader_id: str, signal_id: str) -> AttentionRecord:
        assert actor.id is not None
        consultant_id = actor.id

        def write(conn: Connection) -> Evented[AttentionRecord]:
            taken, before = attention.acknowledge(conn, self.seqs, reader_id, signal_id, consultant_id, now_iso())
            if taken.events:
                write_audit(conn, actor.type, actor.id, "attention.acknowledge", "reader", reader_id,
                            {"signal_id": signal_id, "rule": taken.value.rule, "previous_acknowledged_by": before})
            return taken

        return await self.writer.submit_evented(write)

    # --- dashboards ------------------------------------------------------------

    async def reader_updates(self, reader_ids: list[str]) -> list[ReaderUpdateRecord]:
        return await self.reads.run(lambda conn: dashboard.reader_updates(conn, reader_ids))

    async def changed_readers(self, after: int, upto: int) -> list[str]:
        return await self.reads.run(lambda conn: dashboard.changed_readers(conn, after, upto))

    async def readers_with_attention(self, limit: int) -> list[str]:
        return await self.reads.run(lambda conn: dashboard.readers_with_attention(conn, limit))

    async def reader_with_attention(self, reader_id: str) -> tuple[ReaderRecord, str, list[AttentionRecord]]:
        return await self.reads.run(lambda conn: (
            accounts.get_reader(conn, reader_id), accounts.get_reader_metadata(conn, reader_id),
            attention.list_open(conn, frozenset(), None, frozenset({reader_id}), None, len(ALL_RULES)),
        ))

    # --- events ------------------------------------------------------------------

    async def replay(self, after: int, upto: int, wanted: EventFilter,
                     max_bytes: int | None = None) -> tuple[list[Event], int]:
        """Events after `after` up to `upto`, at most about `max_bytes` of
        them, and the seq they reach (see `events.replay`)."""
        return await self.reads.run(lambda conn: events.replay(conn, after, upto, wanted, max_bytes))

    # --- maintenance: what both backends answer alike -------------------------

    def readers_by_presence(self) -> dict[str, int]:
        return self.reads.run_sync(interactions.readers_by_presence)

    def observe_commits(self, observer: Callable[[int, float], None]) -> None:
        if observer not in self.writer.batch_observers:
            self.writer.batch_observers.append(observer)

    def on_failure(self, listener: Callable[[BaseException], None]) -> None:
        self.writer.on_failure(listener)

    def announce(self, note: str) -> None:
        """One process owns the database: nobody to tell."""

    def on_announcement(self, listener: Callable[[str], None]) -> None:
        """One process owns the database: nothing will be announced."""

    async def catch_up(self) -> None:
        """Every commit reached the listeners before its writer was answered."""
        return None

    async def history_floor(self) -> int:
        return await self.reads.run(events.history_floor)

    async def audit(self, actor: Actor, action: str, target_type: str | None, target_id: str | None,
                    details: dict[str, Any] | None = None) -> None:
        """An audit row for an action that writes nothing else (opening a watch)."""
        await self.writer.submit(
            lambda conn: write_audit(conn, actor.type, actor.id, action, target_type, target_id, details)
        )

    # --- conversations ---------------------------------------------------------

    async def send_message(self, actor: Actor, reader_id: str, direction: str, body: str) -> MessageRecord:
        def write(conn: Connection) -> Evented[MessageRecord]:
            consultant_id = actor.id if actor.type == "consultant" else None
            sent = messages.send_message(conn, self.seqs, reader_id, direction, consultant_id, body)
            sent.events += attention.message_written(conn, self.seqs, reader_id, direction, consultant_id, body,
                                                     sent.value.seq, sent.value.created_at)
            if actor.type == "consultant":
                write_audit(conn, actor.type, actor.id, "message.send", "reader", reader_id,
                            {"message_id": sent.value.id})
            return sent

        return await self.writer.submit_evented(write)

    async def list_messages(self, reader_id: str, before_seq: int | None, limit: int) -> list[MessageRecord]:
        return await self.reads.run(lambda conn: messages.list_messages(conn, reader_id, before_seq, limit))

    async def read_positions(self, reader_id: str) -> list[ReadPosition]:
        return await self.reads.run(lambda conn: messages.read_positions(conn, reader_id))

    async def mark_read(self, actor: Actor, reader_id: str, up_to: int) -> ReadPosition:
        assert actor.id is not None
        actor_id = actor.id
        def write(conn: Connection) -> Evented[ReadPosition]:
            moved = messages.mark_read(conn, self.seqs, reader_id, actor.type, actor_id, up_to)
            if actor.type == "consultant" and moved.events:
                moved.events += attention.conversation_read(conn, self.seqs, reader_id, actor_id,
                                                            moved.value.last_read_seq, now_iso())
            return moved

        return await self.writer.submit_evented(write)

    async def unread_counts(self, consultant_id: str) -> list[tuple[str, int]]:
        return await self.reads.run(lambda conn: messages.unread_counts(conn, consultant_id))

    async def set_reader_status(self, actor: Actor, reader_id: str, status: str) -> ReaderStateRecord:
        def write(conn: Connection) -> Evented[ReaderStateRecord]:
            changed = messages.set_reader_status(conn, self.seqs, reader_id, status)
            write_audit(conn, actor.type, actor.id, "reader.set_status", "reader", reader_id, {"status": status})
            return changed

        return await self.writer.submit_evented(write)

    async def list_interactions(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> list[InteractionRecord]:
        return await self.reads.run(
            lambda conn: interactions.list_interactions(conn, reader_id, type_, before_seq, limit)
        )

    async def list_interaction_history(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> HistoryPage:
        """Like `list_interactions`; a backend with archives walks into them."""
        return HistoryPage(await self.list_interactions(reader_id, type_, before_seq, limit), set())

    # --- reader profiles: the restricted fields --------------------------------

    async def update_reader_profile(
        self, actor: Actor, reader_id: str, display_name: str | None, email: str | None, metadata: str | None,
        notice: Callable[[list[str]], str] | None = None,
    ) -> tuple[ReaderRecord, str, list[str]]:
        """Change restricted fields (None: unchanged), audited; with `notice`,
        the reader gets a system message naming the fields that changed.
        Returns (reader, metadata, fields changed)."""

        def write(conn: Connection) -> Evented[tuple[ReaderRecord, str, list[str]]]:
            changed = accounts.update_reader_profile(conn, reader_id, display_name, email, metadata)
            requested = [name for name, value in
                         (("display_name", display_name), ("email", email), ("metadata_json", metadata))
                         if value is not None]
            write_audit(conn, actor.type, actor.id, "reader.update_profile", "reader", reader_id,
                        {"fields": requested, "changed": changed})
            sent: list[Event] = []
            if notice is not None and changed:
                sent = messages.send_message(conn, self.seqs, reader_id, "system", None, notice(changed)).events
            profile = (accounts.get_reader(conn, reader_id), accounts.get_reader_metadata(conn, reader_id), changed)
            return Evented(profile, sent)

        return await self.writer.submit_evented(write)

    async def activate_reader(self, actor: Actor, reader_id: str, notice: str) -> bool:
        """Re-activate a reader account (audited like set_account_active); when
        it was deactivated, the reader gets `notice` as a system message in the
        same transaction. Returns whether the flag changed."""

        def write(conn: Connection) -> Evented[bool]:
            changed = accounts.set_active(conn, "reader", reader_id, True)
            write_audit(conn, actor.type, actor.id, "account.activate", "reader", reader_id,
                        {"changed": changed, "revoked_sessions": 0})
            sent = messages.send_message(conn, self.seqs, reader_id, "system", None, notice).events if changed else []
            return Evented(changed, sent)

        return await self.writer.submit_evented(write)

    # --- consents ----------------------------------------------------------------

    async def grant_consent(self, granter_id: str, grantee_id: str, scope: str) -> GrantOutcome:
        """Give (or change) a consent, audited when anything changed."""

        def write(conn: Connection) -> GrantOutcome:
            outcome = consents.grant(conn, granter_id, grantee_id, scope)
            if outcome.changed:
                details: dict[str, Any] = {"consent_id": outcome.consent.id, "scope": scope}
                if outcome.replaced is not None:
                    details["replaced_consent_id"] = outcome.replaced.id
                    details["previous_scope"] = outcome.replaced.scope
                write_audit(conn, "reader", granter_id, "consent.grant", "reader", grantee_id, details)
            return outcome

        return await self.writer.submit(write)

    async def revoke_consent(self, granter_id: str, grantee_id: str) -> ConsentRecord:
        def write(conn: Connection) -> ConsentRecord:
            revoked = consents.revoke(conn, granter_id, grantee_id)
            write_audit(conn, "reader", granter_id, "consent.revoke", "reader", grantee_id,
                        {"consent_id": revoked.id, "scope": revoked.scope})
            return revoked

        return await self.writer.submit(write)

    async def list_consents(
        self, reader_id: str, received: bool, show_revoked: bool, before_id: str | None, limit: int
    ) -> list[ConsentRecord]:
        return await self.reads.run(
            lambda conn: consents.list_consents(conn, reader_id, received, show_revoked, before_id, limit)
        )

    async def require_consent(
        self, granter_id: str, grantee_id: str, *, interactions: bool = False
    ) -> ConsentRecord:
        """The live consent of granter to grantee (covering interactions if
        asked), or PERMISSION_DENIED."""
        return await self.reads.run(
            lambda conn: consents.require_consent(conn, granter_id, grantee_id, interactions=interactions)
        )

    async def consents_in_force(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ConsentRecord]:
        return await self.reads.run(lambda conn: consents.consents_in_force(conn, pairs))

    async def shared_state(self, granter_id: str, grantee_id: str) -> ReaderStateRecord:
        """The granter's state, checked against the consent in the same read."""

        def read(conn: Connection) -> ReaderStateRecord:
            consents.require_consent(conn, granter_id, grantee_id, interactions=False)
            return accounts.get_reader_state(conn, granter_id)

        return await self.reads.run(read)

    # --- assignments ---------------------------------------------------------------

    async def assign_reader(self, actor: Actor, reader_id: str, consultant_id: str) -> AssignmentRecord:
        """Assign (or move) a reader to a consultant, audited with the previous assignee."""

        def write(conn: Connection) -> AssignmentRecord:
            before = assignments.unassign(conn, reader_id)
            assigned = assignments.assign(conn, reader_id, consultant_id, actor.id)
            write_audit(conn, actor.type, actor.id, "reader.assign", "reader", reader_id,
                        {"consultant_id": consultant_id,
                         "previous_consultant_id": before.consultant_id if before else None})
            return assigned

        return await self.writer.submit(write)

    async def unassign_reader(self, actor: Actor, reader_id: str) -> AssignmentRecord | None:
        """Remove a reader's assignment (audited when there was one)."""

        def write(conn: Connection) -> AssignmentRecord | None:
            removed = assignments.unassign(conn, reader_id)
            if removed is not None:
                write_audit(conn, actor.type, actor.id, "reader.unassign", "reader", reader_id,
                            {"consultant_id": removed.consultant_id})
            return removed

        return await self.writer.submit(write)

    async def assigned_readers(self, consultant_id: str) -> frozenset[str]:
        return await self.reads.run(lambda conn: assignments.assigned_readers(conn, consultant_id))

    # --- audit log -----------------------------------------------------------------

    async def list_audit_logs(
        self, query: AuditQuery, before: tuple[str, str] | None, limit: int
    ) -> list[AuditRecord]:
        return await self.reads.run(lambda conn: list_audit_logs(conn, query, before, limit))

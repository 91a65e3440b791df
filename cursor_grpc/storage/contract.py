"""The storage contract: what the server needs of a database, whatever the
backend.

`Store` holds the domain methods services call (each one read or one write
transaction, so an action and its audit row commit together); `EventLog` is
the commit-ordered history the live engine reads; `Maintenance` is what
metrics and scheduled jobs need. Nothing here knows SQL, files or threads.
A backend implements all three (`cursor_grpc.storage.sqlite` does); what
else it must guarantee is in docs/storage.md. Its own exceptions never leave
it: it raises the `CursorError` tree (cursor_grpc/errors.py), and the two
errors below for the command line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cursor_grpc.config import AttentionSettings, OpsSettings
from cursor_grpc.storage.records import (
    Actor,
    AssignmentRecord,
    AttentionRecord,
    AuditQuery,
    AuditRecord,
    ConsentRecord,
    ConsultantRecord,
    Credential,
    Event,
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

# Called after every commit that carried events, with them, in commit order.
CommitListener = Callable[[list[Event]], None]
# Called by long runs (backup, restore, archive, migrate) with how much is
# done and how much there is in all, for a command's progress bar.
Progress = Callable[[int, int], None]


class MigrationError(RuntimeError):
    """The database and the code disagree about the schema (the command
    line prints it in one line and exits with status 3)."""


class DatabaseUnreachable(RuntimeError):
    """The database server cannot be reached (down, wrong address, refused
    credentials); the command line prints it in one line and exits with status 2."""


class DatabaseInUse(RuntimeError):
    """Another process owns the database (serving or restoring it); the
    command line prints it in one line and exits with status 2."""


class EventLog(Protocol):
    """The commit-ordered history of events: every seq is assigned inside
    the write transaction that stores it, so seq order is commit order."""

    @property
    def epoch(self) -> str:
        """Names this history; a restore from a backup starts a new one."""
        ...

    @property
    def head(self) -> int:
        """The highest seq committed so far (read from any thread)."""
        ...

    async def history_floor(self) -> int:
        """Events at or below this seq are no longer held (archived)."""
        ...

    async def replay(
        self, after: int, upto: int, wanted: EventFilter, max_bytes: int | None = None
    ) -> tuple[list[Event], int]:
        """Committed events with after < seq <= upto that `wanted` matches,
        in seq order, stopping at about `max_bytes`; and the seq reached."""
        ...

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener(events)` after every commit that carried events,
        in commit order, never before the commit (on the backend's thread)."""
        ...

    async def catch_up(self) -> None:
        """Return once every event committed anywhere before the call has
        gone to the listeners: at once for a backend whose only writer is
        this process; after a read of the database for one shared by
        several instances."""
        ...


@dataclass(frozen=True, slots=True)
class StorageStats:
    """What the metrics endpoint reports of the database, read at scrape time."""

    queue_depth: int
    busy_retries: int
    # Writes refused because their transaction was lost, by reason.
    refused_writes: dict[str, int] = field(default_factory=dict)
    size_bytes: int = 0
    log_bytes: int = 0


class Maintenance(Protocol):
    """What metrics and the scheduler need of a backend, so nothing above
    storage reaches into its writer or files."""

    def stats(self) -> StorageStats:
        ...

    def readers_by_presence(self) -> dict[str, int]:
        """How many readers are `reading`, `online` and `idle` (every other
        reader) now. Blocking, one cheap query: the metrics endpoint calls it
        at scrape time, off the event loop."""
        ...

    def observe_commits(self, observer: Callable[[int, float], None]) -> None:
        """Call `observer(tasks, seconds)` after every group commit."""
        ...

    def on_failure(self, listener: Callable[[BaseException], None]) -> None:
        """Call `listener(error)` if the backend can no longer write at all."""
        ...

    async def start_maintenance(self, ops: OpsSettings) -> None:
        """Start the scheduled jobs `ops` asks for (backups, archival, log
        housekeeping, statistics, compaction); they log and count their own
        failures and never take the server down."""
        ...

    async def stop_maintenance(self) -> None:
        """Stop scheduling and wait for a running job to end at its next
        step. Idempotent; before `close`."""
        ...


class Peers(Protocol):
    """Announcements between the instances that share one database (state
    that lives in memory, such as the login throttles). Best effort: a lost
    announcement weakens a limit for a moment, it never loses data. A
    backend owned by one process has no peers: `announce` does nothing."""

    def announce(self, note: str) -> None:
        """Tell every other instance `note` (a short text, at most 1 KiB). Any thread; never blocks."""
        ...

    def on_announcement(self, listener: Callable[[str], None]) -> None:
        """Call `listener(note)` for each note another instance announced (on the backend's thread)."""
        ...


class Store(EventLog, Maintenance, Peers, Protocol):
    """The domain methods: one transaction each."""

    def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent."""
        ...

    async def create_reader(self, email: str, password_hash: str, display_name: str,
                            round_robin: bool = False) -> ReaderRecord:
        """A new reader, audited; with `round_robin`, assigned to the least
        loaded active consultant in the same transaction."""
        ...

    async def credentials_for_email(self, email: str) -> list[Credential]:
        ...

    async def credential_by_id(self, kind: str, account_id: str) -> Credential:
        ...

    async def get_reader(self, reader_id: str) -> ReaderRecord:
        ...

    async def get_reader_profile(self, reader_id: str) -> tuple[ReaderRecord, str]:
        """The reader and its metadata JSON, read together."""
        ...

    async def get_reader_state(self, reader_id: str) -> ReaderStateRecord:
        ...

    async def list_readers(self, status: str | None, after_id: str | None, limit: int,
                           assignee: str | None = None) -> list[ReaderRecord]:
        """With `assignee`, only the readers assigned to that consultant."""
        ...

    async def list_active_readers(self, since: str, after: tuple[str, str] | None, limit: int,
                                  assignee: str | None = None) -> list[ReaderRecord]:
        """With `assignee`, only the readers assigned to that consultant."""
        ...

    async def create_consultant(
        self, actor: Actor, email: str, password_hash: str, display_name: str, role: str
    ) -> ConsultantRecord:
        ...

    async def promote_reader(self, actor: Actor, reader_id: str, role: str) -> ConsultantRecord:
        ...

    async def create_admin(
        self, email: str, password_hash: str, display_name: str, *, additional: bool = False
    ) -> ConsultantRecord:
        """An admin made by the system (`cursor-grpc create-admin`), audited.
        Unless `additional`, refused with FAILED_PRECONDITION / ADMIN_EXISTS
        while an active admin exists: later admins come through AdminService."""
        ...

    async def set_account_active(self, actor: Actor, kind: str, account_id: str, active: bool) -> int:
        """Returns how many sessions deactivation ended."""
        ...

    async def start_session(
        self, credential: Credential, token_hash: bytes, expires_at: str, new_password_hash: str | None
    ) -> str:
        """A new session after a successful login; stores a rehashed password
        when the hashing parameters changed. Consultant logins are audited."""
        ...

    async def session_by_token_hash(self, token_hash: bytes) -> SessionRecord | None:
        ...

    async def ended_sessions(self, session_ids: list[str], now: str) -> list[tuple[str, str]]:
        """(session id, why) for each of these that no longer authenticates."""
        ...

    async def end_session(self, session_id: str, reason: str) -> None:
        ...

    async def replace_session(
        self, old_session_id: str, kind: str, account_id: str, token_hash: bytes, expires_at: str, reason: str,
        new_password_hash: str | None = None, end_other_sessions: bool = False,
    ) -> tuple[str, int]:
        """End a session and start its successor in one transaction (rotation,
        password change). Returns (new session id, other sessions ended)."""
        ...

    async def touch_sessions(self, touches: list[tuple[str, str]]) -> None:
        ...

    async def record_interactions(
        self, reader_id: str, items: list[NewInteractionData], reading_window_ns: int,
        rules: AttentionSettings = ...,
    ) -> RecordOutcome:
        """Store interactions, move the reader's state and presence, and run
        the attention rules their evidence feeds, in one transaction."""
        ...

    async def sweep_presence(self, idle_ns: int, reading_window_ns: int,
                             rules: AttentionSettings = ...) -> list[Event]:
        """Time-based changes: presence, and the stuck and stalled rules."""
        ...

    async def list_attention(
        self, rules: frozenset[str], assignee: str | None, reader_ids: frozenset[str] | None,
        after_seq: int | None, limit: int,
    ) -> list[AttentionRecord]:
        """Open signals, longest waiting first (`assignee` `-`: unassigned readers)."""
        ...

    async def acknowledge_attention(self, actor: Actor, reader_id: str, signal_id: str) -> AttentionRecord:
        """A consultant takes an open signal, audited; FAILED_PRECONDITION once cleared."""
        ...

    async def audit(
        self, actor: Actor, action: str, target_type: str | None, target_id: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """An audit row for an action that writes nothing else (opening a watch)."""
        ...

    async def send_message(self, actor: Actor, reader_id: str, direction: str, body: str) -> MessageRecord:
        ...

    async def list_messages(self, reader_id: str, before_seq: int | None, limit: int) -> list[MessageRecord]:
        ...

    async def read_positions(self, reader_id: str) -> list[ReadPosition]:
        ...

    async def mark_read(self, actor: Actor, reader_id: str, up_to: int) -> ReadPosition:
        ...

    async def unread_counts(self, consultant_id: str) -> list[tuple[str, int]]:
        ...

    async def set_reader_status(self, actor: Actor, reader_id: str, status: str) -> ReaderStateRecord:
        ...

    async def list_interactions(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> list[InteractionRecord]:
        ...

    async def list_interaction_history(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> HistoryPage:
        """Like `list_interactions`, walking into archive files when the page
        reaches archived history (cursor_grpc/storage/sqlite/history.py)."""
        ...

    async def update_reader_profile(
        self, actor: Actor, reader_id: str, display_name: str | None, email: str | None, metadata: str | None,
        notice: Callable[[list[str]], str] | None = None,
    ) -> tuple[ReaderRecord, str, list[str]]:
        """Change restricted fields (None: unchanged), audited; with `notice`,
        the reader gets a system message naming the fields that changed.
        Returns (reader, metadata, fields changed)."""
        ...

    async def activate_reader(self, actor: Actor, reader_id: str, notice: str) -> bool:
        """Re-activate a reader account (audited like set_account_active); when
        it was deactivated, the reader gets `notice` as a system message in the
        same transaction. Returns whether the flag changed."""
        ...

    async def grant_consent(self, granter_id: str, grantee_id: str, scope: str) -> GrantOutcome:
        """Give (or change) a consent, audited when anything changed."""
        ...

    async def revoke_consent(self, granter_id: str, grantee_id: str) -> ConsentRecord:
        ...

    async def list_consents(
        self, reader_id: str, received: bool, show_revoked: bool, before_id: str | None, limit: int
    ) -> list[ConsentRecord]:
        ...

    async def require_consent(self, granter_id: str, grantee_id: str, *, interactions: bool = False) -> ConsentRecord:
        """The live consent of granter to grantee (covering interactions if
        asked), or PERMISSION_DENIED."""
        ...

    async def assign_reader(self, actor: Actor, reader_id: str, consultant_id: str) -> AssignmentRecord:
        """Assign (or move) a reader to an active consultant, audited;
        NOT_FOUND for either unknown, FAILED_PRECONDITION for a deactivated consultant."""
        ...

    async def unassign_reader(self, actor: Actor, reader_id: str) -> AssignmentRecord | None:
        """Remove a reader's assignment (audited); the one removed, or None."""
        ...

    async def reader_updates(self, reader_ids: list[str]) -> list[ReaderUpdateRecord]:
        """The latest of each of these readers for a dashboard, in one read."""
        ...

    async def changed_readers(self, after: int, upto: int) -> list[str]:
        """Readers with an event other than a heartbeat in after < seq <= upto."""
        ...

    async def readers_with_attention(self, limit: int) -> list[str]:
        """Readers with an open attention signal, longest waiting first."""
        ...

    async def reader_with_attention(self, reader_id: str) -> tuple[ReaderRecord, str, list[AttentionRecord]]:
        """The reader, its metadata and its open signals, read together."""
        ...

    async def assigned_readers(self, consultant_id: str) -> frozenset[str]:
        """The ids of the readers assigned to a consultant."""
        ...

    async def consents_in_force(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], ConsentRecord]:
        """Of these (granter, grantee) pairs, those whose consent is live and
        whose granter is active, with the consent (one read)."""
        ...

    async def shared_state(self, granter_id: str, grantee_id: str) -> ReaderStateRecord:
        """The granter's state, checked against the consent in the same read."""
        ...

    async def list_audit_logs(
        self, query: AuditQuery, before: tuple[str, str] | None, limit: int
    ) -> list[AuditRecord]:
        ...


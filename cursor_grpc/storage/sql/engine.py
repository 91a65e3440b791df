"""What a backend gives the shared writer and read pool: how to open a
connection, start and end a transaction, and what its exceptions mean.

Like an httpx transport: the writer's group commit, savepoints and
lost-transaction handling are written once; SQLite (`BEGIN IMMEDIATE`, the
write lock) and PostgreSQL (`BEGIN`, the event counter row) differ only
here."""

from __future__ import annotations

from typing import Any, Protocol

from cursor_grpc.errors import Unavailable

WRITING = "store this"
READING = "read this"


class StorageFailures:
    """A backend's table of the driver exceptions that say the storage, not
    the request, is at fault: each with its reason (a metric label and
    ErrorInfo reason) and the cause a client is told."""

    def __init__(self, table: tuple[tuple[type[BaseException], str, str], ...]) -> None:
        self._table = table
        # Every reason the writer refuses the writes of a lost transaction
        # with (COMMIT_FAILED: no failure said why), so the metric has them all from the start.
        self.reasons = (*dict.fromkeys(reason for _, reason, _ in table), "COMMIT_FAILED")

    def error(self, error: BaseException, action: str = WRITING) -> Unavailable | None:
        """The retryable error a client gets when the storage failed `action`
        (e.g. "the database could not store this (disk full); retry"), or
        None when `error` is not such a failure."""
        for kind, reason, cause in self._table:
            if isinstance(error, kind):
                return Unavailable(f"the database could not {action} ({cause}); retry", reason=reason)
        return None


class Engine(Protocol):
    # The driver's base exception: what a failed BEGIN/COMMIT/ROLLBACK raises.
    error: type[BaseException]

    def connect(self, *, readonly: bool = False) -> Any:
        """A configured connection (the writer's, or one for reads)."""
        ...

    def close(self, conn: Any) -> None: ...

    def begin(self, conn: Any) -> int:
        """Start the writer's transaction; returns how many busy retries it took."""
        ...

    def commit(self, conn: Any) -> int:
        """Commit; returns how many busy retries it took."""
        ...

    def begin_read(self, conn: Any) -> None:
        """Start a read transaction: every statement of one read sees one snapshot."""
        ...

    def end_read(self, conn: Any) -> None: ...

    def in_transaction(self, conn: Any) -> bool:
        """Whether a transaction is still open; False after the database
        rolled it back by itself (SQLite on a full disk, a lost PostgreSQL
        connection)."""
        ...

    def storage_error(self, error: BaseException, action: str = WRITING) -> Unavailable | None:
        """The retryable error for a failure of the storage itself, or None."""
        ...

    def to_cursor_error(self, error: BaseException, action: str = WRITING) -> BaseException:
        """What the caller sees for `error` (a CursorError where it means one)."""
        ...

"""The one place SQLite's exceptions become the service's (`CursorError`).

Like httpx mapping httpcore's exceptions at its transport boundary: the
writer and the read pools pass every exception through `to_cursor_error`,
so what leaves `SQLiteStore` is a `CursorError` a client can act on. A
failure of the storage itself (locked, disk full, I/O) is a retryable
UNAVAILABLE with a reason; a constraint that no domain check turned into a
specific error is ALREADY_EXISTS or FAILED_PRECONDITION. Anything else
(a bad statement, a Python error) is a bug and passes unchanged, so the RPC
layer logs it with its traceback and answers INTERNAL.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw

from cursor_grpc.errors import AlreadyExists, CursorError, FailedPrecondition
from cursor_grpc.storage.sql.engine import WRITING, StorageFailures

# SQLite errors that say the storage, not the request, is at fault.
_FAILURES = StorageFailures((
    (apsw.FullError, "DATABASE_FULL", "disk full"),
    (apsw.IOError, "STORAGE_IO_ERROR", "I/O error"),
    (apsw.NoMemError, "STORAGE_NO_MEMORY", "out of memory"),
    (apsw.BusyError, "DATABASE_LOCKED", "locked by another process"),
    (apsw.LockedError, "DATABASE_LOCKED", "locked by another connection"),
    (apsw.InterruptError, "STORAGE_INTERRUPTED", "interrupted"),
    (apsw.CantOpenError, "STORAGE_CANNOT_OPEN", "the file cannot be opened"),
))
REFUSAL_REASONS = _FAILURES.reasons
storage_error = _FAILURES.error


def constraint_error(error: apsw.ConstraintError) -> CursorError:
    """A constraint the domain code did not check first: a duplicate is
    ALREADY_EXISTS, any other rule (CHECK, NOT NULL, foreign key, trigger)
    FAILED_PRECONDITION. SQLite's text names the rule, never a value."""
    detail = str(error)
    if "UNIQUE" in detail or "PRIMARY KEY" in detail:
        return AlreadyExists(f"this already exists ({detail})", reason="ALREADY_EXISTS")
    return FailedPrecondition(f"the database refused this change ({detail})", reason="CONSTRAINT_VIOLATED")


def to_cursor_error(error: BaseException, action: str = WRITING) -> BaseException:
    """What the caller sees for `error`: a `CursorError` unchanged, a
    storage failure or a constraint as the service's error, and anything
    else (a bug) unchanged."""
    if isinstance(error, CursorError):
        return error
    if isinstance(error, apsw.ConstraintError):
        return constraint_error(error)
    return storage_error(error, action) or error


@contextlib.contextmanager
def service_errors(action: str) -> Iterator[None]:
    """Let what the block raises leave as `to_cursor_error` says (the read
    pools; the writer maps per task)."""
    try:
        yield
    except Exception as error:
        mapped = to_cursor_error(error, action)
        if mapped is error:
            raise
        raise mapped from error

"""The one place psycopg's exceptions become the service's (`CursorError`),
as cursor_grpc/storage/sqlite/errors.py does for SQLite: a failure of the
database itself (unreachable, restarting, disk full, a lock or
serialization conflict) is a retryable UNAVAILABLE with a reason; a
constraint that no domain check turned into a specific error is
ALREADY_EXISTS or FAILED_PRECONDITION; anything else is a bug and passes
unchanged (INTERNAL, logged with its traceback)."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg

from cursor_grpc.errors import AlreadyExists, CursorError, FailedPrecondition
from cursor_grpc.storage.sql.engine import WRITING, StorageFailures

_FAILURES = StorageFailures((
    (pg.DiskFull, "DATABASE_FULL", "disk full"),
    (pg.OutOfMemory, "STORAGE_NO_MEMORY", "out of memory"),
    (pg.InsufficientResources, "STORAGE_NO_MEMORY", "out of resources"),
    (pg.SerializationFailure, "DATABASE_LOCKED", "a concurrent change"),
    (pg.DeadlockDetected, "DATABASE_LOCKED", "a deadlock with another writer"),
    (pg.LockNotAvailable, "DATABASE_LOCKED", "locked by another connection"),
    (pg.QueryCanceled, "STORAGE_INTERRUPTED", "interrupted"),
    (pg.AdminShutdown, "DATABASE_UNAVAILABLE", "the database server ended the connection"),
    (pg.CannotConnectNow, "DATABASE_UNAVAILABLE", "the database server is starting"),
    (psycopg.OperationalError, "DATABASE_UNAVAILABLE", "the database server cannot be reached"),
))
REFUSAL_REASONS = _FAILURES.reasons
storage_error = _FAILURES.error


def constraint_error(error: psycopg.IntegrityError) -> CursorError:
    """PostgreSQL names the constraint (never a value) in `diag`."""
    rule = error.diag.constraint_name or error.diag.message_primary or "a constraint"
    if isinstance(error, pg.UniqueViolation):
        return AlreadyExists(f"this already exists ({rule})", reason="ALREADY_EXISTS")
    return FailedPrecondition(f"the database refused this change ({rule})", reason="CONSTRAINT_VIOLATED")


def to_cursor_error(error: BaseException, action: str = WRITING) -> BaseException:
    if isinstance(error, CursorError):
        return error
    if isinstance(error, psycopg.IntegrityError):
        return constraint_error(error)
    return storage_error(error, action) or error

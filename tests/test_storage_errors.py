"""What leaves the SQLite backend is the service's error (CursorError), not
APSW's: a locked database is UNAVAILABLE with DATABASE_LOCKED for reads too,
a constraint no domain check caught is ALREADY_EXISTS or FAILED_PRECONDITION,
and a bug stays itself (the RPC layer logs it and answers INTERNAL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import AlreadyExists, CursorError, FailedPrecondition, NotFound, Unavailable
from cursor_grpc.storage.sql import accounts
from cursor_grpc.storage.sql.engine import READING
from cursor_grpc.storage.sql.reads import ReadPool
from cursor_grpc.storage.sqlite.engine import SQLiteEngine
from cursor_grpc.storage.sqlite.errors import storage_error, to_cursor_error
from cursor_grpc.storage.sqlite.store import apply_migrations

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def locked_database(tmp_path: Path) -> Iterator[StorageSettings]:
    """A migrated database that another connection holds in EXCLUSIVE
    locking mode (as a `sqlite3` shell can), with a short busy timeout."""
    settings = StorageSettings(path=tmp_path / "locked.db", busy_timeout_ms=100)
    apply_migrations(settings)
    holder = apsw.Connection(str(settings.path))
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE cursor_meta SET value = value WHERE key = 'event_epoch'")
    try:
        yield settings
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_read_of_a_database_locked_past_the_busy_timeout_answers_unavailable(
    locked_database: StorageSettings,
) -> None:
    pool = ReadPool(SQLiteEngine(locked_database), threads=1)
    try:
        with pytest.raises(Unavailable) as refused:
            pool.run_sync(lambda conn: accounts.list_readers(conn, None, None, 10))
    finally:
        pool.close()
    assert refused.value.reason == "DATABASE_LOCKED"
    assert refused.value.message == "the database could not read this (locked by another process); retry"
    assert isinstance(refused.value.__cause__, apsw.BusyError)


def test_a_read_keeps_its_domain_error(tmp_path: Path) -> None:
    settings = StorageSettings(path=tmp_path / "c.db")
    apply_migrations(settings)
    pool = ReadPool(SQLiteEngine(settings), threads=1)
    try:
        with pytest.raises(NotFound):
            pool.run_sync(lambda conn: accounts.get_reader(conn, "nobody"))
    finally:
        pool.close()


def constraint(sql: str) -> apsw.ConstraintError:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE t(name TEXT UNIQUE, n INTEGER CHECK (n > 0), body TEXT NOT NULL)")
    conn.execute("INSERT INTO t VALUES ('one', 1, '')")
    try:
        conn.execute(sql)
    except apsw.ConstraintError as error:
        return error
    finally:
        conn.close()
    raise AssertionError(f"{sql} violated nothing")


def test_an_unchecked_unique_violation_is_already_exists() -> None:
    mapped = to_cursor_error(constraint("INSERT INTO t VALUES ('one', 2, '')"))
    assert isinstance(mapped, AlreadyExists)
    assert mapped.reason == "ALREADY_EXISTS"
    assert "UNIQUE constraint failed: t.name" in mapped.message


@pytest.mark.parametrize("sql", ["INSERT INTO t VALUES ('two', 0, '')", "INSERT INTO t VALUES ('two', 2, NULL)"])
def test_any_other_unchecked_constraint_is_failed_precondition(sql: str) -> None:
    mapped = to_cursor_error(constraint(sql))
    assert isinstance(mapped, FailedPrecondition)
    assert mapped.reason == "CONSTRAINT_VIOLATED"


@pytest.mark.parametrize(("error", "reason", "cause"), [
    (apsw.FullError("database or disk is full"), "DATABASE_FULL", "disk full"),
    (apsw.IOError("disk I/O error"), "STORAGE_IO_ERROR", "I/O error"),
    (apsw.NoMemError("out of memory"), "STORAGE_NO_MEMORY", "out of memory"),
    (apsw.BusyError("database is locked"), "DATABASE_LOCKED", "locked by another process"),
    (apsw.InterruptError("interrupted"), "STORAGE_INTERRUPTED", "interrupted"),
])
def test_storage_failures_are_retryable(error: apsw.Error, reason: str, cause: str) -> None:
    written = storage_error(error)
    assert isinstance(written, Unavailable)
    assert (written.reason, written.message) == (reason, f"the database could not store this ({cause}); retry")
    read = to_cursor_error(error, READING)
    assert isinstance(read, Unavailable)
    assert read.message == f"the database could not read this ({cause}); retry"


def test_service_errors_and_bugs_pass_unchanged() -> None:
    domain = NotFound("reader readers/x does not exist", reason="READER_NOT_FOUND")
    assert to_cursor_error(domain) is domain
    bug = TypeError("a bug")
    assert to_cursor_error(bug) is bug
    bad_sql = apsw.SQLError("no such table: nothing")
    assert to_cursor_error(bad_sql) is bad_sql
    assert not isinstance(to_cursor_error(bad_sql), CursorError)

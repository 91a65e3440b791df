"""The databases the storage-facing tests run against, one backend at a time.

A storage-facing test never opens a backend's files: it gets a
`TestDatabase` (through the `backend` fixture and `make_harness`, `database`
or `migrate_with_admin` in tests/conftest.py), passes `url` to a server,
reads with `rows` and `count`, and changes things behind the server's back
with `execute`. The SQL it gives them is the portable subset every backend
understands: `?` placeholders, no backend functions (`strftime`, `PRAGMA`,
`sqlite_master`). Tests that need more are about one backend and say so
(`sqlite_only`).

`CURSOR_TEST_BACKENDS` (comma-separated, default `sqlite,postgresql`)
selects the backends; PostgreSQL is the suite's own server
(tests/servers.py) unless `CURSOR_TEST_POSTGRES_URL` names one. Adding a
backend is a `Backend` that makes fresh databases and an entry in `BACKENDS`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import apsw
import psycopg
import pytest

from cursor_grpc import storage
from cursor_grpc.config import StorageSettings, database_fields
from cursor_grpc.storage.postgres.connection import PgConnection, connect_raw
from tests.servers import drop_postgres_database, new_postgres_database

Params = Sequence[Any] | Mapping[str, Any]


class TestDatabase(ABC):
    """One database of one backend, as a test sees it."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    backend: str

    @property
    @abstractmethod
    def url(self) -> str:
        """What `CURSOR_DB` and `--db` take to name this database."""

    @abstractmethod
    def storage_settings(self) -> StorageSettings:
        """Settings for a server in this process (`ServerThread`)."""

    def migrate(self) -> None:
        """Apply every migration, as `cursor-grpc migrate` does."""
        storage.migrate(self.storage_settings())

    @abstractmethod
    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """All rows of one query, read by a connection of the test's own."""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> int:
        """One statement in a transaction of its own, committed beside a
        running server (waiting for its locks); returns the rows it changed."""

    @abstractmethod
    def integrity_errors(self) -> list[str]:
        """What the backend's own consistency check finds wrong (none: [])."""

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) FROM {table}")[0][0])


class SQLiteDatabase(TestDatabase):
    """A SQLite file; tests about SQLite itself also use `path`."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def url(self) -> str:
        return str(self.path)

    def storage_settings(self) -> StorageSettings:
        return StorageSettings(path=self.path)

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return [tuple(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def execute(self, sql: str, params: Params = ()) -> int:
        conn = apsw.Connection(str(self.path))
        conn.set_busy_timeout(10_000)  # the server writes all the time; wait for a gap
        try:
            conn.execute("PRAGMA foreign_keys = ON")  # as the server's connections do
            conn.execute(sql, params)
            return conn.changes()
        finally:
            conn.close()

    def integrity_errors(self) -> list[str]:
        found = [str(problem) for (problem,) in self.rows("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found


class PostgresDatabase(TestDatabase):
    """A database of its own on the suite's PostgreSQL server; the test's
    SQL goes through the backend's own `?` translation."""

    backend = "postgresql"

    def __init__(self, url: str, broker: str | None = None) -> None:
        self._url = url
        self.broker = broker

    @property
    def url(self) -> str:
        return self._url

    def storage_settings(self) -> StorageSettings:
        return StorageSettings(**database_fields(self._url), broker=self.broker)  # type: ignore[arg-type]

    def _run(self, sql: str, params: Params) -> tuple[list[tuple[Any, ...]], int]:
        if isinstance(params, Mapping):
            raise TypeError("use ? placeholders: named ones are not portable")
        with connect_raw(self._url) as raw:
            conn = PgConnection(raw)
            cursor = conn.execute(sql, params)
            found = [tuple(row) for row in cursor.fetchall()] if cursor.description else []
            return found, conn.changes()

    def rows(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params)[0]

    def execute(self, sql: str, params: Params = ()) -> int:
        return self._run(sql, params)[1]

    def integrity_errors(self) -> list[str]:
        """PostgreSQL enforces every constraint as it writes and has no
        whole-database check to run; what can still be wrong is ours: the
        event counter behind a stored seq."""
        (last,), = self.rows("SELECT last_seq FROM event_sequence WHERE id = 1")
        (top,), = self.rows("SELECT greatest((SELECT max(seq) FROM interactions), (SELECT max(seq) FROM events))")
        return [] if top is None or top <= last else [f"event_sequence {last} is below a stored seq {top}"]


class Backend(ABC):
    """Makes fresh databases of one backend for the tests of one module."""

    name: str

    @abstractmethod
    def fresh_database(self, workdir: Path, name: str) -> TestDatabase:
        """A new, empty database (not migrated); `workdir` is the test's
        temporary folder, for backends that keep files."""

    @abstractmethod
    def close(self) -> None:
        """Drop what the databases left behind, once the module is done."""


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self) -> None:
        self._serial = itertools.count()

    def fresh_database(self, workdir: Path, name: str) -> TestDatabase:
        path = workdir / f"{name}.db"
        while path.exists():
            path = workdir / f"{name}-{next(self._serial)}.db"
        return SQLiteDatabase(path)

    def close(self) -> None:
        """Nothing to drop: the files go with each test's temporary folder."""


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, admin_url: str, broker: str | None = None) -> None:
        self._admin_url = admin_url
        self._broker = broker
        self._made: list[str] = []

    def fresh_database(self, workdir: Path, name: str) -> TestDatabase:
        """In-process servers on it use the suite's NATS as their doorbell;
        servers in subprocesses (which take only `url`) use LISTEN/NOTIFY."""
        url = new_postgres_database(self._admin_url)
        self._made.append(url)
        return PostgresDatabase(url, self._broker)

    def close(self) -> None:
        for url in self._made:
            with contextlib.suppress(psycopg.Error):  # the server went first
                drop_postgres_database(self._admin_url, url)
        self._made.clear()


# name -> how to make it; a backend that needs a server takes it from a
# session fixture through the request, so it starts only when selected.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {
    "sqlite": lambda request: SQLiteBackend(),
    "postgresql": lambda request: PostgresBackend(request.getfixturevalue("postgres_server"),
                                                  request.getfixturevalue("nats_url")),
}


def backends_under_test() -> list[str]:
    """The backends `CURSOR_TEST_BACKENDS` names (default: both)."""
    given = os.environ.get("CURSOR_TEST_BACKENDS", "sqlite,postgresql").split(",")
    names = list(dict.fromkeys(name.strip() for name in given if name.strip()))
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown or not names:
        raise pytest.UsageError(
            f"CURSOR_TEST_BACKENDS names {', '.join(unknown) or 'no backend'}; known: {', '.join(BACKENDS)}"
        )
    return names


def as_database(database: TestDatabase | Path) -> TestDatabase:
    """A SQLite file given by path (tests about SQLite files) as a `TestDatabase`."""
    return database if isinstance(database, TestDatabase) else SQLiteDatabase(database)


def sqlite_file(database: TestDatabase) -> Path:
    """The file of a SQLite database, for tests about SQLite itself."""
    if not isinstance(database, SQLiteDatabase):
        raise AssertionError(
            f"this test reads SQLite files but runs on {database.backend}: mark it sqlite_only"
        )
    return database.path

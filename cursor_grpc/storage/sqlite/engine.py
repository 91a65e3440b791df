"""SQLite's side of the shared writer and read pool: APSW connections
configured by cursor_grpc/storage/sqlite/connection.py, `BEGIN IMMEDIATE`
(the write lock is taken at the start, so the event sequence resumes under
it), busy retries, and SQLite's exceptions mapped by errors.py."""

from __future__ import annotations

import apsw

from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import Unavailable
from cursor_grpc.storage.sql.engine import WRITING
from cursor_grpc.storage.sqlite import errors
from cursor_grpc.storage.sqlite.connection import open_connection, retry_busy


class SQLiteEngine:
    error: type[BaseException] = apsw.Error

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings

    def connect(self, *, readonly: bool = False) -> apsw.Connection:
        return open_connection(self._settings, readonly=readonly)

    def close(self, conn: apsw.Connection) -> None:
        conn.close()

    def begin(self, conn: apsw.Connection) -> int:
        return retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), self._settings)

    def commit(self, conn: apsw.Connection) -> int:
        return retry_busy(lambda: conn.execute("COMMIT"), self._settings)

    def begin_read(self, conn: apsw.Connection) -> None:
        conn.execute("BEGIN")

    def end_read(self, conn: apsw.Connection) -> None:
        conn.execute("COMMIT")

    def in_transaction(self, conn: apsw.Connection) -> bool:
        return not conn.getautocommit()

    def storage_error(self, error: BaseException, action: str = WRITING) -> Unavailable | None:
        return errors.storage_error(error, action)

    def to_cursor_error(self, error: BaseException, action: str = WRITING) -> BaseException:
        return errors.to_cursor_error(error, action)

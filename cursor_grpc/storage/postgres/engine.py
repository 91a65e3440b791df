"""PostgreSQL's side of the shared writer and read pool.

The writer keeps one connection (reopened between batches if the server
dropped it); reads take connections from a psycopg_pool pool, which
replaces broken ones. Writes run at READ COMMITTED: the only cross-instance
ordering they need is the event counter row (cursor_grpc/storage/postgres/
store.py). A read is one REPEATABLE READ READ ONLY transaction, so its
statements see one snapshot, as a SQLite read transaction does."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from cursor_grpc.errors import Unavailable
from cursor_grpc.storage.postgres import errors
from cursor_grpc.storage.postgres.connection import SESSION_OPTIONS, PgConnection, configure, connect_raw
from cursor_grpc.storage.sql.engine import WRITING

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR, TransactionStatus.ACTIVE)


class PostgresEngine:
    error: type[BaseException] = psycopg.Error

    def __init__(self, url: str, read_connections: int, slow_query_ms: float | None = None) -> None:
        self.url = url
        self._slow_query_ms = slow_query_ms
        self._pool: ConnectionPool[Any] | None = None
        self._read_connections = read_connections

    def _reads(self) -> ConnectionPool[Any]:
        if self._pool is None:
            self._pool = ConnectionPool(
                self.url, min_size=1, max_size=max(1, self._read_connections), open=True, name="cursor-read",
                kwargs={"autocommit": True, "options": SESSION_OPTIONS}, configure=configure,
                check=ConnectionPool.check_connection, timeout=10.0,
            )
        return self._pool

    def connect(self, *, readonly: bool = False) -> PgConnection:
        if readonly:
            return PgConnection(self._reads().getconn(), slow_query_ms=self._slow_query_ms)
        return PgConnection(connect_raw(self.url), self.url, self._slow_query_ms)

    def close(self, conn: PgConnection) -> None:
        if conn._url is None and self._pool is not None:  # a pool connection goes back (or is discarded)
            self._pool.putconn(conn.raw)
        else:
            conn.close()

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def begin(self, conn: PgConnection) -> int:
        if conn.broken:
            conn.reopen()
        conn.execute("BEGIN")
        return 0

    def commit(self, conn: PgConnection) -> int:
        cursor = conn.execute("COMMIT")
        # COMMIT of a transaction that failed answers ROLLBACK instead of an error.
        if cursor.statusmessage != "COMMIT":
            raise psycopg.OperationalError("the transaction was rolled back instead of committed")
        return 0

    def begin_read(self, conn: PgConnection) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def end_read(self, conn: PgConnection) -> None:
        conn.execute("COMMIT")

    def in_transaction(self, conn: PgConnection) -> bool:
        return not conn.raw.closed and conn.status in _OPEN

    def storage_error(self, error: BaseException, action: str = WRITING) -> Unavailable | None:
        return errors.storage_error(error, action)

    def to_cursor_error(self, error: BaseException, action: str = WRITING) -> BaseException:
        return errors.to_cursor_error(error, action)

"""What the shared SQL needs of a connection: APSW's connection has it as
it is, and PostgreSQL's adapter (cursor_grpc/storage/postgres/connection.py)
provides the same surface over psycopg. Statements use `?` and `?N`
placeholders; `dialect` names the backend for the few statements that
must differ."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Rows(Protocol):
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def close(self) -> None: ...


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Any: ...
    def changes(self) -> int: ...
    def total_changes(self) -> int: ...


def fetch_all(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """All rows of one statement. Typed loosely: columns are whatever the
    schema says, and the record constructors give them types."""
    return list(conn.execute(sql, params).fetchall())


def stream_rows(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Rows:
    """Rows read as they are stepped through, not fetched at once: an APSW
    cursor is lazy as it is; a connection with `stream` (PostgreSQL's
    server-side cursor) says how it does it. Close what you do not finish."""
    stream = getattr(conn, "stream", None)
    rows: Rows = stream(sql, params) if stream is not None else conn.execute(sql, params)
    return rows


def placeholders(count: int) -> str:
    """`?, ?, …` for an IN list of `count` values (at least one)."""
    return ", ".join("?" * max(count, 1))

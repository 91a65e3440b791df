"""PostgreSQL connections with the surface the shared SQL expects
(cursor_grpc/storage/sql/connection.py): `execute` with `?`/`?N`
placeholders, `executemany`, `changes`, `total_changes`, and timestamps
read back as the service's canonical text (`YYYY-MM-DDTHH:MM:SS.sssZ`),
so a record is the same whichever backend made it.

Connections run in autocommit mode and the writer and read pool send
BEGIN/SAVEPOINT/COMMIT themselves, as they do with SQLite. Placeholder
translation is cached per statement text; psycopg prepares statements on
the server after a few uses.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.pq import TransactionStatus

log = logging.getLogger("cursor.storage")

# Every session speaks UTC and ISO dates, so the loader below can slice text.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD"

# A quoted literal or identifier (kept as is), a `?N`/`?` placeholder, or a `%`.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?(\d+)?|%")
_TRANSLATED: dict[str, tuple[str, bool, bool]] = {}


def translate(sql: str) -> tuple[str, bool, bool]:
    """(psycopg text, has placeholders, numbered) for statement `sql`:
    `?` becomes `%s`, `?N` becomes `%(pN)s`, a literal `%` becomes `%%`."""
    cached = _TRANSLATED.get(sql)
    if cached is not None:
        return cached
    kinds: set[bool] = set()

    def replace(match: re.Match[str]) -> str:
        piece = match.group(0)
        if piece == "%":
            return "%%"
        if piece.startswith("?"):
            number = match.group(1)
            kinds.add(number is not None)
            return "%s" if number is None else f"%(p{number})s"
        return piece

    text = _TOKENS.sub(replace, sql)
    if len(kinds) > 1:
        raise ValueError("a statement mixes ? and ?N placeholders")
    result = (text if kinds else sql, bool(kinds), kinds == {True})
    if len(_TRANSLATED) > 4096:
        _TRANSLATED.clear()
    _TRANSLATED[sql] = result
    return result


def _numbered(params: Sequence[Any]) -> dict[str, Any]:
    return {f"p{n}": value for n, value in enumerate(params, start=1)}


class IsoTimestampLoader(Loader):
    """timestamptz → `2026-12-01T23:11:58.120Z` (UTC, milliseconds), from
    PostgreSQL's ISO text `2026-12-01 23:11:58.12+00`."""

    def load(self, data: Any) -> str:
        text = bytes(data).decode("ascii")
        fraction = ""
        if len(text) > 19 and text[19] == ".":
            end = 20
            while end < len(text) and text[end].isdigit():
                end += 1
            fraction = text[20:end]
        return f"{text[:10]}T{text[11:19]}.{(fraction + '000')[:3]}Z"


def configure(raw: psycopg.Connection[Any]) -> None:
    """What every connection of the process needs (also the pool's `configure`)."""
    raw.adapters.register_loader("timestamptz", IsoTimestampLoader)


def connect_raw(url: str) -> psycopg.Connection[Any]:
    raw = psycopg.connect(url, autocommit=True, options=SESSION_OPTIONS)
    configure(raw)
    return raw


class PgConnection:
    """One psycopg connection behind the shared SQL's connection surface.
    The writer's can `reopen` itself after the server dropped it."""

    dialect = "postgresql"

    def __init__(
        self, raw: psycopg.Connection[Any], url: str | None = None, slow_query_ms: float | None = None
    ) -> None:
        self.raw = raw
        self._url = url
        # Statements slower than this are logged with their SQL, never their
        # values (those can be personal data), as SQLite's profile hook does.
        self._slow_ns = None if slow_query_ms is None else int(slow_query_ms * 1_000_000)
        self._changes = 0
        self._total = 0
        self._streams = 0

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        text, has_params, numbered = translate(sql)
        cursor = self.raw.cursor()
        started = time.perf_counter_ns()
        if has_params:
            cursor.execute(text, _numbered(params) if numbered else tuple(params))
        else:
            cursor.execute(text)
        self._slow(sql, started)
        self._count(cursor.rowcount)
        return cursor

    def stream(self, sql: str, params: Sequence[Any] = ()) -> psycopg.ServerCursor[Any]:
        """Rows fetched a few at a time by a server-side cursor (inside the
        read's transaction), so a reader that stops early, or a result
        larger than memory, costs only what was read."""
        text, has_params, numbered = translate(sql)
        self._streams += 1
        cursor = self.raw.cursor(name=f"cursor_stream_{self._streams}")
        cursor.itersize = 64
        cursor.execute(text, (_numbered(params) if numbered else tuple(params)) if has_params else None)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        text, _, numbered = translate(sql)
        batch = [_numbered(row) for row in rows] if numbered else [tuple(row) for row in rows]
        cursor = self.raw.cursor()
        started = time.perf_counter_ns()
        if batch:
            cursor.executemany(text, batch)
        self._slow(sql, started)
        self._count(cursor.rowcount)
        return cursor

    def _slow(self, sql: str, started: int) -> None:
        if self._slow_ns is not None:
            elapsed = time.perf_counter_ns() - started
            if elapsed >= self._slow_ns:
                log.warning("slow query %.1f ms: %s", elapsed / 1e6, " ".join(sql.split()))

    def _count(self, rowcount: int) -> None:
        self._changes = max(rowcount, 0)
        self._total += self._changes

    def changes(self) -> int:
        """Rows the last statement changed."""
        return self._changes

    def total_changes(self) -> int:
        """Rows changed since the connection opened."""
        return self._total

    @property
    def status(self) -> TransactionStatus:
        return self.raw.info.transaction_status

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken or self.status == TransactionStatus.UNKNOWN

    def reopen(self) -> None:
        """Replace a dropped connection with a new one (the writer's, between batches)."""
        if self._url is None:
            raise RuntimeError("this connection cannot reopen itself")
        try:
            self.raw.close()
        finally:
            self.raw = connect_raw(self._url)

    def close(self) -> None:
        self.raw.close()

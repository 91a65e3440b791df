"""Opening SQLite connections, every one configured the same way.

One small function per setting (as in APSW's `bestpractice`), applied in
order to every connection the process opens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from cursor_grpc.config import ConfigError, StorageSettings
from cursor_grpc.storage.sql.connection import fetch_all

log = logging.getLogger("cursor.storage")

ConnectionSetup = Callable[[apsw.Connection, StorageSettings], None]


def _wal(conn: apsw.Connection, settings: StorageSettings) -> None:
    mode = fetch_all(conn, "PRAGMA journal_mode=WAL")[0][0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"could not switch {settings.path} to WAL (journal_mode={mode})")


def _synchronous(conn: apsw.Connection, settings: StorageSettings) -> None:
    level = settings.synchronous.upper()
    if level not in {"NORMAL", "FULL"}:
        raise ConfigError(f"synchronous must be NORMAL or FULL, not {settings.synchronous!r}")
    conn.execute(f"PRAGMA synchronous={level}")


def _foreign_keys(conn: apsw.Connection, settings: StorageSettings) -> None:
    conn.execute("PRAGMA foreign_keys=ON")


def _temp_store(conn: apsw.Connection, settings: StorageSettings) -> None:
    conn.execute("PRAGMA temp_store=MEMORY")


def _cache_size(conn: apsw.Connection, settings: StorageSettings) -> None:
    conn.execute(f"PRAGMA cache_size=-{int(settings.cache_size_kib)}")


def _busy_timeout(conn: apsw.Connection, settings: StorageSettings) -> None:
    conn.set_busy_timeout(settings.busy_timeout_ms)


def _slow_query_log(conn: apsw.Connection, settings: StorageSettings) -> None:
    """Log statements slower than the threshold, with their SQL but never
    their bound values (those can be personal data)."""
    threshold_ns = int(settings.slow_query_ms * 1_000_000)

    def profile(statement: str, elapsed_ns: int) -> None:
        if elapsed_ns >= threshold_ns:
            log.warning("slow query %.1f ms: %s", elapsed_ns / 1e6, " ".join(statement.split()))

    conn.set_profile(profile)


WRITER_SETUP: tuple[ConnectionSetup, ...] = (
    _busy_timeout,
    _wal,
    _synchronous,
    _foreign_keys,
    _temp_store,
    _cache_size,
    _slow_query_log,
)
READER_SETUP: tuple[ConnectionSetup, ...] = (
    _busy_timeout,
    _foreign_keys,
    _temp_store,
    _cache_size,
    _slow_query_log,
)


def open_connection(settings: StorageSettings, *, readonly: bool = False) -> apsw.Connection:
    """A configured connection to `settings.path` (created if missing and not read-only)."""
    path = Path(settings.path)
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
    conn = apsw.Connection(str(path), flags=flags, statementcachesize=256)
    for setup in READER_SETUP if readonly else WRITER_SETUP:
        setup(conn, settings)
    return conn


def retry_busy(action: Callable[[], object], settings: StorageSettings) -> int:
    """Run `action`, retrying with doubling backoff while another process
    holds the lock (a backup, the sqlite3 shell), up to `lock_wait_seconds`.
    SQLite's own busy handler already waits `busy_timeout_ms` inside each try.
    Returns how many retries it took."""
    deadline = time.monotonic() + settings.lock_wait_seconds
    delay = 0.01
    retries = 0
    while True:
        try:
            action()
            return retries
        except apsw.BusyError:
            retries += 1
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database is locked by another connection; retrying in %.2f s", delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

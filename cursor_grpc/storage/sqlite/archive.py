"""Archival: old interactions move to one SQLite file per quarter.

`run_archive` moves interactions whose `created_at` is older than the
retention window into `archive_YYYY_QN.db` files (same table definition and
indexes as the main database, copied from its schema), in chunks of
`chunk_rows` rows, oldest first. One chunk is:

1. read the chunk from the main database (a read-only connection; the
   oldest rows by `seq`, all from one quarter, all older than the cutoff);
2. copy it into the quarter's file in one transaction (`INSERT OR REPLACE`:
   copying the same rows again is harmless), synchronous=FULL so the copy is
   on disk before anything is deleted;
3. read the copy back and compare it, row by row, with what was read;
4. on the writer (one write task, so it commits or vanishes with the index
   update): re-read the same seq range from the main database, and only if it
   still equals what was copied, delete it, update `archive_index` (which file
   holds which time and seq range) and raise `cursor_meta.history_floor_seq`.

A crash at any point loses nothing and duplicates nothing for good: before
step 4 commits, the rows are still in the main database (and perhaps also in
the archive, which the next run overwrites with the same values, and which
reads de-duplicate by seq); after it commits they are only in the archive.
Re-running finishes the job. `CURSOR_ARCHIVE_CRASH_AT=<point>[:<n>]` makes
the process exit at the n-th time it reaches a named point (`mid_copy`,
`after_copy`, `mid_delete`, `after_delete`): it exists for the crash tests.

The writer is blocked only for step 4 of one chunk at a time (a few
milliseconds for 500 rows; measured in tests/test_archive.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from cursor_grpc.clock import iso_from_ns, now_iso
from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.contract import Progress
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.files import summary_level

log = logging.getLogger("cursor.ops.archive")

TABLE = "interactions"
CRASH_ENV = "CURSOR_ARCHIVE_CRASH_AT"
CRASH_POINTS = ("mid_copy", "after_copy", "mid_delete", "after_delete")

SubmitSync = Callable[[Callable[[apsw.Connection], Any]], Any]


class ArchiveError(RuntimeError):
    """An archive run could not continue."""


@dataclass
class ArchiveStats:
    rows_moved: int = 0
    chunks: int = 0
    retried_chunks: int = 0
    files: set[str] = field(default_factory=set)
    seconds: float = 0.0
    # Time each chunk's write task held the writer (the stall it causes).
    chunk_write_seconds: list[float] = field(default_factory=list)

    @property
    def longest_write_seconds(self) -> float:
        return max(self.chunk_write_seconds, default=0.0)


def quarter_of(created_at: str) -> tuple[int, int]:
    return int(created_at[0:4]), (int(created_at[5:7]) - 1) // 3 + 1


def archive_file_name(year: int, quarter: int) -> str:
    return f"archive_{year:04d}_Q{quarter}.db"


class _Crash:
    """The test hook: `CURSOR_ARCHIVE_CRASH_AT=after_copy:2` exits at the
    second time `after_copy` is reached."""

    def __init__(self) -> None:
        raw = os.environ.get(CRASH_ENV, "")
        name, _, count = raw.partition(":")
        self.name = name if name in CRASH_POINTS else ""
        self.remaining = int(count) if count.isdigit() else 1

    def point(self, name: str) -> None:
        if name != self.name:
            return
        self.remaining -= 1
        if self.remaining <= 0:
            log.warning("crash injection at %s: exiting now", name)
            os._exit(86)


def _stored_path(db_path: Path, archive: Path) -> str:
    """How the index names a file: relative to the database's folder when
    inside it, so a database moved together with its archives still works."""
    base = Path(db_path).resolve().parent
    target = archive.resolve()
    try:
        return target.relative_to(base).as_posix()
    except ValueError:
        return str(target)


def resolve_archive(db_path: Path, stored: str) -> Path:
    path = Path(stored)
    return path if path.is_absolute() else Path(db_path).resolve().parent / path


def _table_schema(main: apsw.Connection) -> tuple[list[str], list[str]]:
    """Column names and the CREATE statements (table, indexes, triggers) of
    the interactions table in the main database."""
    columns = [str(r[1]) for r in fetch_all(main, f"PRAGMA table_info({TABLE})")]
    ddl = [
        str(r[0]) for r in fetch_all(main,
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
            "ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name",
            (TABLE,),
        )
    ]
    return columns, ddl


def open_archive(path: Path, columns: list[str], ddl: list[str], period: str) -> apsw.Connection:
    """The quarter's archive file, created with the main database's table
    definition when new. Rollback-journal mode: one self-contained file that
    read-only connections can ATTACH."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = apsw.Connection(str(path))
    conn.set_busy_timeout(5000)
    fetch_all(conn, "PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    exists = fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
    if not exists:
        conn.execute("BEGIN IMMEDIATE")
        for statement in ddl:
            conn.execute(statement)
        conn.execute("CREATE TABLE IF NOT EXISTS archive_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.executemany(
            "INSERT OR REPLACE INTO archive_meta(key, value) VALUES (?, ?)",
            [("format", "cursor-archive/1"), ("period", period), ("created_at", now_iso())],
        )
        conn.execute("COMMIT")
    have = [str(r[1]) for r in fetch_all(conn, f"PRAGMA table_info({TABLE})")]
    if "user_id" in have and "reader_id" in columns and "reader_id" not in have:
        # Made before migration 0006: rename the column as 0006 did in the
        # main database (only the schema text changes; indexes and the trigger
        # follow). Once renamed, it is not found again.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if "user_id" in {str(r[1]) for r in fetch_all(conn, f"PRAGMA table_info({TABLE})")}:
                conn.execute(f"ALTER TABLE {TABLE} RENAME COLUMN user_id TO reader_id")
            conn.execute("COMMIT")
        except BaseException:
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
            conn.close()
            raise
        log.info("%s: renamed %s.user_id to reader_id (migration 0006)", path.name, TABLE)
        have = [str(r[1]) for r in fetch_all(conn, f"PRAGMA table_info({TABLE})")]
    if have != columns:
        conn.close()
        raise ArchiveError(
            f"{path.name} holds {TABLE} with columns {have}, the database has {columns}; "
            "migrate the archive file before archiving into it"
        )
    return conn


def _upsert_index_sql() -> str:
    return """
INSERT INTO archive_index(file, period, min_seq, max_seq, min_created_at, max_created_at, row_count, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
ON CONFLICT(file) DO UPDATE SET
    min_seq = min(archive_index.min_seq, excluded.min_seq),
    max_seq = max(archive_index.max_seq, excluded.max_seq),
    min_created_at = min(archive_index.min_created_at, excluded.min_created_at),
    max_created_at = max(archive_index.max_created_at, excluded.max_created_at),
    row_count = archive_index.row_count + excluded.row_count,
    updated_at = excluded.updated_at
"""


_RAISE_FLOOR = """
INSERT INTO cursor_meta(key, value) VALUES ('history_floor_seq', CAST(?1 AS TEXT))
ON CONFLICT(key) DO UPDATE SET value = CAST(max(CAST(cursor_meta.value AS INTEGER), ?1) AS TEXT)
"""


def run_archive(
    storage: StorageSettings,
    submit_sync: SubmitSync,
    archive_dir: Path,
    *,
    retention_days: float = 90.0,
    chunk_rows: int = 500,
    now_ns: int | None = None,
    stop: threading.Event | None = None,
    pause_seconds: float = 0.0,
    progress: Progress | None = None,
) -> ArchiveStats:
    """Move every interaction older than `retention_days` into quarter files
    under `archive_dir`. `submit_sync` runs a write task on the writer (the
    server's, or the one the CLI opened) and returns its result. Idempotent:
    run it again after any failure. `progress` follows the rows moved."""
    crash = _Crash()
    stats = ArchiveStats()
    started = time.perf_counter()
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = iso_from_ns(now - int(retention_days * 86400 * 1_000_000_000))
    db_path = Path(storage.path)
    archive_dir = Path(archive_dir)
    main = open_connection(storage, readonly=True)
    archives: dict[Path, apsw.Connection] = {}
    try:
        columns, ddl = _table_schema(main)
        col_list = ", ".join(columns)
        seq_at, created_at_index = columns.index("seq"), columns.index("created_at")
        placeholders = ", ".join("?" * len(columns))
        select_oldest = f"SELECT {col_list} FROM {TABLE} ORDER BY seq LIMIT ?"
        select_range = f"SELECT {col_list} FROM {TABLE} WHERE seq BETWEEN ? AND ? ORDER BY seq"
        insert = f"INSERT OR REPLACE INTO {TABLE}({col_list}) VALUES ({placeholders})"
        same_chunk_retries = 0
        # Only for a progress bar: counting is a scan the server's schedule need not pay for.
        total = 0
        if progress is not None:
            total = int(fetch_all(main, f"SELECT count(*) FROM {TABLE} WHERE created_at < ?", (cutoff,))[0][0])
            progress(0, total)
        while True:
            if stop is not None and stop.is_set():
                log.info("archive run stopped early (shutdown)")
                break
            oldest = fetch_all(main, select_oldest, (chunk_rows,))
            if not oldest or oldest[0][created_at_index] >= cutoff:
                break
            period = quarter_of(oldest[0][created_at_index])
            chunk: list[tuple[Any, ...]] = []
            # The oldest rows by seq, stopping at the first one that is too
            # new or from another quarter (seq order is commit order, so a
            # clock step backwards can only make us keep a row a bit longer).
            for row in oldest:
                if row[created_at_index] >= cutoff or quarter_of(row[created_at_index]) != period:
                    break
                chunk.append(tuple(row))
            lo, hi = chunk[0][seq_at], chunk[-1][seq_at]
            path = archive_dir / archive_file_name(*period)
            period_text = f"{period[0]}-Q{period[1]}"
            arch = archives.get(path)
            if arch is None:
                arch = archives[path] = open_archive(path, columns, ddl, period_text)
            # 2. copy
            arch.execute("BEGIN IMMEDIATE")
            try:
                half = len(chunk) // 2
                arch.executemany(insert, chunk[:half])
                crash.point("mid_copy")
                arch.executemany(insert, chunk[half:])
                arch.execute("COMMIT")
            except BaseException:
                if not arch.getautocommit():
                    arch.execute("ROLLBACK")
                raise
            crash.point("after_copy")
            # 3. verify the copy
            copied = [tuple(r) for r in fetch_all(arch, select_range, (lo, hi))]
            if copied != chunk:
                raise ArchiveError(f"{path.name}: the copy of seq {lo}..{hi} does not read back equal; nothing deleted")
            # 4. delete from the main database, on the writer
            stored = _stored_path(db_path, path)
            entry = (stored, period_text, lo, hi, chunk[0][created_at_index],
                     max(r[created_at_index] for r in chunk), len(chunk), now_iso())

            def delete(conn: apsw.Connection, chunk: list[tuple[Any, ...]] = chunk,
                       lo: int = lo, hi: int = hi, entry: tuple[Any, ...] = entry) -> tuple[bool, float]:
                began = time.perf_counter()
                current = [tuple(r) for r in fetch_all(conn, select_range, (lo, hi))]
                if current != chunk:
                    return False, time.perf_counter() - began  # changed since it was copied: copy again
                conn.execute(f"DELETE FROM {TABLE} WHERE seq BETWEEN ? AND ?", (lo, hi))
                crash.point("mid_delete")
                conn.execute(_upsert_index_sql(), entry)
                conn.execute(_RAISE_FLOOR, (hi,))
                return True, time.perf_counter() - began

            deleted, write_seconds = submit_sync(delete)
            stats.chunk_write_seconds.append(write_seconds)
            if not deleted:
                stats.retried_chunks += 1
                same_chunk_retries += 1
                if same_chunk_retries > 5:
                    raise ArchiveError(f"seq {lo}..{hi} keeps changing while being archived; try again later")
                continue
            same_chunk_retries = 0
            crash.point("after_delete")
            stats.rows_moved += len(chunk)
            stats.chunks += 1
            stats.files.add(stored)
            if progress is not None:
                progress(stats.rows_moved, max(total, stats.rows_moved))
            if pause_seconds > 0:
                time.sleep(pause_seconds)
    finally:
        for conn in archives.values():
            conn.close()
        main.close()
    stats.seconds = time.perf_counter() - started
    level = summary_level(progress)
    if stats.rows_moved:
        log.log(
            level,
            "archived %d interactions older than %s in %d chunks into %s (%.2f s; longest write task %.1f ms)",
            stats.rows_moved, cutoff, stats.chunks, ", ".join(sorted(stats.files)), stats.seconds,
            stats.longest_write_seconds * 1000,
        )
    else:
        log.log(level, "nothing to archive (no interactions older than %s)", cutoff)
    return stats


@dataclass(frozen=True)
class ArchiveEntry:
    file: str
    period: str
    min_seq: int
    max_seq: int
    min_created_at: str
    max_created_at: str
    row_count: int


def archive_entries(conn: apsw.Connection, before_seq: int | None = None) -> list[ArchiveEntry]:
    """Archive files (newest history first) that may hold seqs below `before_seq`."""
    sql = ("SELECT file, period, min_seq, max_seq, min_created_at, max_created_at, row_count "
           "FROM archive_index")
    params: tuple[Any, ...] = ()
    if before_seq is not None:
        sql += " WHERE min_seq < ?"
        params = (before_seq,)
    rows = fetch_all(conn, sql + " ORDER BY max_seq DESC", params)
    return [ArchiveEntry(*r) for r in rows]


def count_archived(db_path: Path, entries: list[ArchiveEntry]) -> dict[str, int]:
    """Rows actually in each archive file (for operators and tests)."""
    counts = {}
    for entry in entries:
        conn = apsw.Connection(str(resolve_archive(db_path, entry.file)), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            counts[entry.file] = int(fetch_all(conn, f"SELECT count(*) FROM {TABLE}")[0][0])
        finally:
            conn.close()
    return counts

"""Interaction history that walks from the main database into archive files.

Most pages are served by the read pool from the main database alone. When a
page reaches below the oldest interaction still there (or the archive index
says an archive file may hold rows in the page's seq range), the page is
read on a `HistoryReader` connection: the archive files it needs are
ATTACHed (read-only, outside any transaction, as SQLite requires), then ONE
read transaction reads the main database first and the archives after, and
the rows are merged by seq, newest first, de-duplicated by seq.

Why main first: archival copies rows into the archive, and only later
deletes them from the main database. A snapshot of the main database taken
before the delete still has the rows; one taken after it is followed by an
archive snapshot that is later still, so it has them. Either way no row is
missed; a row seen in both places (between copy and delete, or after a crash
there) is returned once.

An archive file made before migration 0006 names the reader column
`user_id`: it is read under that name (the file may be read-only), and
renamed by the archiver when it next writes into the file.

Pages say which of their rows came from archives; `list_interactions_page`
turns that into `includes_archived` on the response.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import TypeVar

import apsw

from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import Unavailable
from cursor_grpc.storage.records import HistoryPage, InteractionRecord
from cursor_grpc.storage.sql import interactions
from cursor_grpc.storage.sql.engine import READING
from cursor_grpc.storage.sql.reads import ReadPool
from cursor_grpc.storage.sqlite.archive import ArchiveEntry, archive_entries, resolve_archive
from cursor_grpc.storage.sqlite.engine import SQLiteEngine
from cursor_grpc.storage.sqlite.errors import service_errors

T = TypeVar("T")

# SQLite allows up to SQLITE_MAX_ATTACHED (125 in APSW's build) attached
# files; keep well below and detach the least recently used.
MAX_ATTACHED = 64


def needs_archives(records: list[InteractionRecord], limit: int, entries: list[ArchiveEntry]) -> bool:
    """Whether archives could change a page the main database gave: it is short,
    or an archive holds seqs above its last row."""
    if not entries:
        return False
    if len(records) < limit:
        return True
    last = records[-1].seq
    return any(e.max_seq > last for e in entries)


def main_page(conn: apsw.Connection, reader_id: str | None, type_: str | None, before_seq: int | None,
              limit: int) -> tuple[list[InteractionRecord], list[ArchiveEntry]]:
    """The page from the main database and the archives that may matter,
    from one snapshot (runs on the read pool)."""
    records = interactions.list_interactions(conn, reader_id, type_, before_seq, limit)
    return records, archive_entries(conn, before_seq)


def _roll_back_hot_journal(path: Path) -> None:
    """An archive run that crashed mid-copy leaves a hot journal, which a
    read-only connection cannot roll back (ATTACH fails). Opening the file
    read-write and reading does it, and is safe: SQLite treats a journal as
    hot only when no process holds the file's write lock."""
    recover = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        recover.set_busy_timeout(5000)
        recover.execute("SELECT count(*) FROM sqlite_master").fetchall()
    finally:
        recover.close()


class _Attached:
    """Archive files attached to one connection, least recently used first."""

    def __init__(self) -> None:
        self.by_file: OrderedDict[str, str] = OrderedDict()
        self.counter = 0


class HistoryReader(ReadPool):
    """A small pool of read-only connections that ATTACH archive files."""

    def __init__(self, settings: StorageSettings, threads: int = 2) -> None:
        super().__init__(SQLiteEngine(settings), threads, name="cursor-history")
        self._settings = settings

    def _attached_connection(self) -> tuple[apsw.Connection, _Attached]:
        conn = self._connection()
        attached: _Attached = self._local.__dict__.setdefault("attached", _Attached())
        return conn, attached

    def _attach(self, conn: apsw.Connection, attached: _Attached, files: list[str]) -> dict[str, str]:
        """Attach `files` (autocommit mode only); return file -> schema alias."""
        for file in files:
            if file in attached.by_file:
                attached.by_file.move_to_end(file)
                continue
            while len(attached.by_file) >= MAX_ATTACHED:
                _, alias = attached.by_file.popitem(last=False)
                conn.execute("DETACH DATABASE ?", (alias,))
            path = resolve_archive(Path(self._settings.path), file)
            if not path.is_file():
                raise Unavailable(
                    f"part of this history is in archive file {file}, which is missing; ask an operator to restore it",
                    reason="ARCHIVE_UNAVAILABLE",
                )
            attached.counter += 1
            alias = f"archive_{attached.counter}"
            try:
                if path.with_name(path.name + "-journal").exists():
                    _roll_back_hot_journal(path)
                conn.execute("ATTACH DATABASE ? AS ?", (str(path), alias))
            except apsw.Error as error:
                raise Unavailable(
                    f"archive file {file} cannot be opened ({error}); retry shortly",
                    reason="ARCHIVE_UNAVAILABLE",
                ) from None
            attached.by_file[file] = alias
        return {f: attached.by_file[f] for f in files}

    def _merged(self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int) -> HistoryPage:
        with service_errors(READING):
            return self._merged_page(reader_id, type_, before_seq, limit)

    def _merged_page(self, reader_id: str | None, type_: str | None, before_seq: int | None,
                     limit: int) -> HistoryPage:
        conn, attached = self._attached_connection()
        for _ in range(5):
            wanted = [e.file for e in archive_entries(conn, before_seq)]
            aliases = self._attach(conn, attached, wanted)
            conn.execute("BEGIN")
            try:
                # The main database first: see the module docstring.
                found: dict[int, tuple[InteractionRecord, bool]] = {
                    r.seq: (r, False)
                    for r in interactions.list_interactions(conn, reader_id, type_, before_seq, limit)
                }
                entries = archive_entries(conn, before_seq)
                if any(e.file not in aliases for e in entries):
                    continue  # a new archive file appeared meanwhile: attach it, read again
                for entry in entries:  # newest history first
                    if len(found) >= limit and entry.max_seq < sorted(found, reverse=True)[limit - 1]:
                        break  # this file (and every later one) holds only older rows than the page needs
                    alias = aliases[entry.file]
                    # A file made before migration 0006 and not written since
                    # names the column user_id; read it as it is (files may be
                    # read-only), the archiver renames it when it writes.
                    for record in interactions.list_interactions(
                        conn, reader_id, type_, before_seq, limit, schema=alias,
                        reader_column=interactions.reader_column_of(conn, alias),
                    ):
                        found.setdefault(record.seq, (record, True))
            finally:
                conn.execute("COMMIT")
            page = sorted(found.values(), key=lambda item: item[0].seq, reverse=True)[:limit]
            return HistoryPage([r for r, _ in page], {r.seq for r, archived in page if archived})
        raise Unavailable("the archive index kept changing while reading history; retry", reason="ARCHIVE_BUSY")

    async def page(self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int) -> HistoryPage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._merged, reader_id, type_, before_seq, limit)

"""`SQLiteStore`: the storage contract (`cursor_grpc.storage.contract`) on
SQLite. It owns the writer and the read pool; every method is one read or
one write task (one transaction), so an action and its audit row commit
together. A write that stores events goes through `submit_evented`, so its
events reach `on_commit` listeners by type, never by inspection. The
module's functions are what `cursor_grpc.storage` calls for a SQLite
`CURSOR_DB` (migrate, check the schema)."""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import apsw

from cursor_grpc.config import OpsSettings, StorageSettings
from cursor_grpc.storage.contract import CommitListener, MigrationError, Progress, StorageStats
from cursor_grpc.storage.records import HistoryPage
from cursor_grpc.storage.sql import events
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sql.events import SequenceAllocator
from cursor_grpc.storage.sql.reads import ReadPool
from cursor_grpc.storage.sql.store import SqlStore
from cursor_grpc.storage.sql.writer import Writer
from cursor_grpc.storage.sqlite import history
from cursor_grpc.storage.sqlite.archive import ArchiveStats, run_archive
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.dblock import DatabaseLock
from cursor_grpc.storage.sqlite.engine import SQLiteEngine
from cursor_grpc.storage.sqlite.errors import REFUSAL_REASONS
from cursor_grpc.storage.sqlite.history import HistoryReader
from cursor_grpc.storage.sqlite.migrations import migrate, migrate_hint, verify_current

if TYPE_CHECKING:
    from cursor_grpc.storage.sqlite.housekeeping import Operations

log = logging.getLogger("cursor.storage")


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def max_seq(conn: apsw.Connection) -> int:
    """The highest seq this database has ever held (sqlite_sequence
    remembers archived interactions; the floor, archived events)."""
    row = fetch_all(
        conn,
        """SELECT max(
               coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'interactions'), 0),
               coalesce((SELECT max(seq) FROM interactions), 0),
               coalesce((SELECT max(seq) FROM events), 0),
               coalesce((SELECT CAST(value AS INTEGER) FROM cursor_meta WHERE key = 'history_floor_seq'), 0))""",
    )[0]
    return int(row[0])


def apply_migrations(settings: StorageSettings, progress: Progress | None = None) -> list[str]:
    """Apply pending migrations with a connection of our own (before the
    writer starts). Returns the names applied."""
    conn = open_connection(settings)
    try:
        return migrate(conn, progress=progress)
    finally:
        conn.close()


def migrate_database(settings: StorageSettings, purpose: str, progress: Progress | None = None) -> list[str]:
    """`apply_migrations` while holding the database for `purpose` (the
    lock file), so migrations never run beneath a server."""
    with DatabaseLock(settings.path).acquire_exclusive(purpose):
        return apply_migrations(settings, progress)


def require_current_schema(settings: StorageSettings) -> None:
    """Refuse, with a clear MigrationError, a database that is missing or not
    migrated, before anything opens (and so creates) it for writing. The
    store checks again when it opens; this check only reads."""
    path = settings.path
    hint = migrate_hint(path)
    if not Path(path).exists():
        raise MigrationError(f"{path} does not exist; {hint}")
    conn = open_connection(settings, readonly=True)
    try:
        if not fetch_all(conn, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
            raise MigrationError(f"{path} has no schema yet; {hint}")
        verify_current(conn, db=path)
    finally:
        conn.close()


class SQLiteStore(SqlStore):
    def __init__(self, settings: StorageSettings, *, owner: bool = False) -> None:
        """With `owner`, hold the database's lock file for as long as the
        store is open: a second server, or a restore, on this file is
        refused at once (DatabaseInUse) instead of writing beside this one."""
        self.settings = settings
        self._owner = DatabaseLock(settings.path).acquire_exclusive("serve") if owner else None
        self._maintenance: Operations | None = None
        log.info("SQLite %s (APSW %s) at %s", apsw.sqlite_lib_version(), apsw.apsw_version(), settings.path)
        try:
            engine = SQLiteEngine(settings)
            self.writer = Writer(settings, engine)
        except BaseException:
            self._release_owner()
            raise
        self.reads = ReadPool(engine, settings.read_connections)
        try:
            self.reads.run_sync(functools.partial(verify_current, db=settings.path))
            # Used only on the writer thread: every group commit resumes it
            # under the write lock (BEGIN IMMEDIATE).
            self.seqs = SequenceAllocator(self.writer.submit_sync(max_seq))
            self.writer.add_begin_hook(lambda conn, _stores_events: self.seqs.resume(max_seq(conn)))
            self.epoch: str = self.reads.run_sync(events.epoch)
        except BaseException:
            self.close()
            raise

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener(events)` on the writer thread after every commit
        that carried events, in commit order. Never before the commit."""
        self.writer.add_commit_hook(listener)

    @property
    def head(self) -> int:
        """The highest seq handed out (read from any thread)."""
        return self.seqs.last

    # --- maintenance (what metrics and the scheduler need) ---------------------

    def stats(self) -> StorageStats:
        path = Path(self.settings.path)
        return StorageStats(
            queue_depth=self.writer.queue_depth(),
            busy_retries=self.writer.busy_retries,
            refused_writes={**dict.fromkeys(REFUSAL_REASONS, 0), **self.writer.refused_writes},
            size_bytes=_file_size(path),
            log_bytes=_file_size(path.with_name(path.name + "-wal")),
        )


    async def start_maintenance(self, ops: OpsSettings) -> None:
        """Backups, archival, WAL housekeeping, `PRAGMA optimize` and VACUUM
        on the schedule `ops` gives (cursor_grpc/storage/sqlite/housekeeping.py)."""
        from cursor_grpc.storage.sqlite.housekeeping import Operations

        if self._maintenance is None:
            self._maintenance = Operations(self, ops)
            await self._maintenance.start()

    async def stop_maintenance(self) -> None:
        maintenance, self._maintenance = self._maintenance, None
        if maintenance is not None:
            await maintenance.stop()

    def archive(self, archive_dir: Path, *, retention_days: float, chunk_rows: int,
                stop: threading.Event | None = None, progress: Progress | None = None) -> ArchiveStats:
        """Move interactions older than `retention_days` into quarter files
        under `archive_dir` (cursor_grpc/storage/sqlite/archive.py), one write
        task of this store's writer per chunk. Blocks: call it off the loop."""
        return run_archive(self.settings, self.writer.submit_sync, archive_dir,
                           retention_days=retention_days, chunk_rows=chunk_rows, stop=stop, progress=progress)

    def close(self) -> None:
        """Commit what is queued, then close every connection. Idempotent.
        Read connections close first, so the writer's is the last one and
        SQLite checkpoints and removes the WAL file on a clean shutdown;
        the lock file is let go last."""
        self.reads.close()
        history = self.__dict__.pop("_history", None)
        if history is not None:
            history.close()
        self.writer.close()
        self._release_owner()

    def _release_owner(self) -> None:
        if self._owner is not None:
            self._owner.release()
            self._owner = None

    async def list_interaction_history(
        self, reader_id: str | None, type_: str | None, before_seq: int | None, limit: int
    ) -> HistoryPage:
        """Like `list_interactions`, walking into archive files when the page
        reaches archived history (cursor_grpc/storage/sqlite/history.py)."""
        records, entries = await self.reads.run(
            lambda conn: history.main_page(conn, reader_id, type_, before_seq, limit)
        )
        if not history.needs_archives(records, limit, entries):
            return HistoryPage(records, set())
        reader: HistoryReader | None = self.__dict__.get("_history")
        if reader is None:
            reader = self.__dict__.setdefault("_history", HistoryReader(self.settings))
        return await reader.page(reader_id, type_, before_seq, limit)


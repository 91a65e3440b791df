"""What `serve` runs on a schedule: backups, archival, WAL housekeeping,
`PRAGMA optimize` and (off by default) `VACUUM`, started and stopped by
`SQLiteStore.start_maintenance` / `stop_maintenance` (the `Maintenance`
contract). Failures are logged and counted in metrics; a job never takes the
server down.

WAL policy (docs/operations.md has the reasoning and the numbers):

* SQLite's automatic PASSIVE checkpoint (every 1000 pages) stays on. It
  never waits, so when readers overlap continuously it can never reach the
  end of the WAL, the WAL is never reset, and it grows without bound
  ("checkpoint starvation"; 300 MB in 10 s in our measurement).
* Every `wal_check_every` seconds (default 1 s; a stat call) the WAL file's size is
  checked. Above `wal_truncate_bytes` (default 64 MiB): first a PASSIVE
  checkpoint on a side connection copies what it can without blocking
  anyone, then `wal_checkpoint(TRUNCATE)` runs on the writer's own
  connection, between group commits, with the busy timeout lowered to
  `wal_reset_wait_ms` (default 200 ms): new writes wait while readers that
  still use the WAL finish, then the WAL is copied back and truncated to zero
  bytes. If readers hold on longer it gives up (counted as `busy`) and tries
  again at the next check (after three busy attempts in a row it backs off,
  doubling up to 30 s, so a long reader does not make the writer pause every
  second). So the WAL stays below the threshold plus what
  the writers add in one check interval, as long as no read transaction
  lives longer than the wait; the writer stalls at most the wait plus the
  copy of the remaining frames.
* `journal_size_limit` is set to the same threshold on the writer
  connection, so a WAL that SQLite resets on its own is also cut back.
* While a backup holds its snapshot the WAL cannot be reset; the check
  skips the TRUNCATE step until the backup ends.

Statistics: `PRAGMA optimize` (analysis_limit=400, so it stays bounded) once
at start and every `optimize_every` (default 1 h), on the writer, between
batches. `VACUUM` rewrites the whole file and blocks writes for its whole
duration, so it is off by default (`vacuum_every`), and even then runs only
when at least `vacuum_min_free_fraction` of the pages are free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import apsw

from cursor_grpc import metrics
from cursor_grpc.config import OpsSettings, StorageSettings
from cursor_grpc.storage.sql.connection import fetch_all
from cursor_grpc.storage.sqlite.backup import prune_backups, take_backup
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.files import default_dir

if TYPE_CHECKING:
    from cursor_grpc.storage.sqlite.store import SQLiteStore

log = logging.getLogger("cursor.ops")

T = TypeVar("T")


def wal_size(db_path: Path) -> int:
    try:
        return os.stat(Path(db_path).with_name(Path(db_path).name + "-wal")).st_size
    except OSError:
        return 0


def truncate_checkpoint(conn: apsw.Connection, wait_ms: int, busy_timeout_ms: int) -> tuple[int, int, int]:
    """`wal_checkpoint(TRUNCATE)` on the writer's connection, waiting at most
    `wait_ms` for readers. Returns SQLite's (busy, log frames, checkpointed)."""
    # One budget for every wait inside the checkpoint (it waits in several
    # phases, and SQLite's own handler would restart its timeout in each),
    # polling every 2 ms rather than SQLite's growing sleeps.
    deadline = time.monotonic() + wait_ms / 1000

    def busy(count: int) -> bool:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
        return True

    conn.set_busy_handler(busy)
    try:
        row = fetch_all(conn, "PRAGMA wal_checkpoint(TRUNCATE)")[0]
    finally:
        conn.set_busy_timeout(busy_timeout_ms)  # also removes the handler above
    return int(row[0]), int(row[1]), int(row[2])


def optimize(conn: apsw.Connection, first: bool = False) -> None:
    """Refresh planner statistics where they are stale, in bounded time."""
    conn.execute("PRAGMA analysis_limit=400")
    conn.execute("PRAGMA optimize=0x10002" if first else "PRAGMA optimize")


def free_fraction(conn: apsw.Connection) -> float:
    pages = int(fetch_all(conn, "PRAGMA page_count")[0][0])
    free = int(fetch_all(conn, "PRAGMA freelist_count")[0][0])
    return free / pages if pages else 0.0


class Operations:
    """The scheduled jobs of one server's store."""

    def __init__(self, store: SQLiteStore, ops: OpsSettings) -> None:
        self.ops = ops
        self.store = store
        self.storage: StorageSettings = store.settings
        self.db_path = Path(store.settings.path)
        self.backup_dir = default_dir(self.db_path, self.ops.backup_dir, "backups")
        self.archive_dir = default_dir(self.db_path, self.ops.archive_dir, "archive")
        self._stop = threading.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # One thread for file-heavy jobs, so a backup and an archive run never compete.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cursor-ops")
        self._running: set[asyncio.Future[Any]] = set()
        self._side: apsw.Connection | None = None
        self.backup_running = False
        # Backing off while a long read transaction (a backup in another
        # process, say) keeps every TRUNCATE attempt busy.
        self._wal_busy_streak = 0
        self._wal_retry_at = 0.0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        limit = int(self.ops.wal_truncate_bytes)
        await self.store.writer.submit(lambda c: fetch_all(c, f"PRAGMA journal_size_limit={limit}"),
                                       in_transaction=False)
        jobs: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            ("backup", self.ops.backup_every, self.backup_once),
            ("archive", self.ops.archive_every, self.archive_once),
            ("wal", self.ops.wal_check_every, self.wal_once),
            ("optimize", self.ops.optimize_every, self.optimize_once),
            ("vacuum", self.ops.vacuum_every, self.vacuum_once),
        ]
        for name, period, job in jobs:
            if period > 0:
                self._tasks.append(asyncio.create_task(self._loop(name, period, job), name=f"cursor-ops-{name}"))
        self._tasks.append(asyncio.create_task(self._first_optimize(), name="cursor-ops-optimize-first"))
        active = [f"{n} every {p:g} s" for n, p, _ in jobs if p > 0]
        log.info("scheduled: %s", ", ".join(active) if active else "nothing")

    async def stop(self, wait_seconds: float = 30.0) -> None:
        """Stop scheduling, ask running jobs to end at their next step, wait for them."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # each job logs its own failures
                await task
        self._tasks.clear()
        if self._running:
            await asyncio.wait(list(self._running), timeout=wait_seconds)
        await asyncio.get_running_loop().run_in_executor(None, self._close_side_thread)

    def _close_side_thread(self) -> None:
        def close_side() -> None:
            if self._side is not None:
                self._side.close()
                self._side = None

        self._executor.submit(close_side).result()
        self._executor.shutdown(wait=True)

    async def _loop(self, name: str, period: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(period)
            if self._stop.is_set():
                return
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled %s failed", name)

    async def _first_optimize(self) -> None:
        try:
            await self.store.writer.submit(lambda c: optimize(c, first=True), in_transaction=False)
        except Exception as error:
            log.warning("PRAGMA optimize at start failed: %s", error)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        self._running.add(future)
        try:
            return await asyncio.shield(future)
        finally:
            self._running.discard(future)

    # --- jobs --------------------------------------------------------------------------

    async def backup_once(self) -> None:
        metrics.BACKUP_RUNS.inc()
        self.backup_running = True
        try:
            result = await self._in_thread(lambda: take_backup(
                self.storage, self.backup_dir, method=self.ops.backup_method,
                step_pages=self.ops.backup_step_pages, stop=self._stop, reason="scheduled",
            ))
            removed = await self._in_thread(
                lambda: prune_backups(self.backup_dir, self.db_path.stem, max(1, self.ops.backup_keep)))
        except Exception as error:
            metrics.BACKUP_FAILURES.inc()
            log.error("scheduled backup failed: %s", error)
            return
        finally:
            self.backup_running = False
        metrics.BACKUP_LAST_SUCCESS.set(time.time())
        metrics.BACKUP_SECONDS.set(result.seconds)
        if removed:
            log.info("backup retention (keep %d): removed %s", self.ops.backup_keep, ", ".join(p.name for p in removed))

    async def archive_once(self) -> None:
        metrics.ARCHIVE_RUNS.inc()
        try:
            stats = await self._in_thread(lambda: self.store.archive(
                self.archive_dir, retention_days=self.ops.archive_retention_days,
                chunk_rows=self.ops.archive_chunk_rows, stop=self._stop,
            ))
        except Exception as error:
            metrics.ARCHIVE_FAILURES.inc()
            log.error("scheduled archive run failed: %s", error)
            return
        metrics.ARCHIVE_ROWS.inc(stats.rows_moved)

    def _passive_checkpoint(self) -> tuple[int, int, int]:
        if self._side is None:
            self._side = open_connection(self.storage)
        row = fetch_all(self._side, "PRAGMA wal_checkpoint(PASSIVE)")[0]
        return int(row[0]), int(row[1]), int(row[2])

    async def wal_once(self) -> None:
        size = wal_size(self.db_path)
        if size <= self.ops.wal_truncate_bytes:
            return
        if self.backup_running:
            log.info("WAL is %d bytes; a backup holds its snapshot, truncating after it ends", size)
            return
        if time.monotonic() < self._wal_retry_at:
            return
        try:
            await self._in_thread(self._passive_checkpoint)
            wait_ms, normal = int(self.ops.wal_reset_wait_ms), int(self.storage.busy_timeout_ms)
            started = time.perf_counter()
            busy, frames, done = await self.store.writer.submit(
                lambda c: truncate_checkpoint(c, wait_ms, normal), in_transaction=False)
            held = time.perf_counter() - started
        except Exception as error:
            metrics.WAL_CHECKPOINTS.labels("error").inc()
            log.error("WAL checkpoint failed: %s", error)
            return
        if busy:
            metrics.WAL_CHECKPOINTS.labels("busy").inc()
            self._wal_busy_streak += 1
            delay = self.ops.wal_check_every
            if self._wal_busy_streak >= 3:  # a long reader, not bad luck: stop pausing the writer so often
                delay = min(30.0, delay * 2 ** (self._wal_busy_streak - 2))
                self._wal_retry_at = time.monotonic() + delay
            log.warning("WAL is %d bytes and readers kept it busy for %d ms (%d/%d frames copied); retrying in %g s",
                        size, wait_ms, done, frames, delay)
        else:
            self._wal_busy_streak = 0
            self._wal_retry_at = 0.0
            metrics.WAL_CHECKPOINTS.labels("truncated").inc()
            log.info("WAL checkpointed and truncated from %d bytes (writer paused %.1f ms)", size, held * 1000)

    async def optimize_once(self) -> None:
        try:
            await self.store.writer.submit(optimize, in_transaction=False)
        except Exception as error:
            metrics.MAINTENANCE_RUNS.labels("optimize", "error").inc()
            log.error("PRAGMA optimize failed: %s", error)
            return
        metrics.MAINTENANCE_RUNS.labels("optimize", "ok").inc()

    async def vacuum_once(self) -> None:
        fraction = await self.store.reads.run(free_fraction)
        if fraction < self.ops.vacuum_min_free_fraction:
            log.info("VACUUM skipped: %.0f%% of pages free (threshold %.0f%%)", fraction * 100,
                     self.ops.vacuum_min_free_fraction * 100)
            return
        started = time.perf_counter()
        wait_ms, normal = int(self.ops.wal_reset_wait_ms), int(self.storage.busy_timeout_ms)

        def vacuum(conn: apsw.Connection) -> None:
            conn.execute("VACUUM")
            # The smaller file exists only in the WAL until a checkpoint copies it back.
            truncate_checkpoint(conn, wait_ms, normal)

        try:
            await self.store.writer.submit(vacuum, in_transaction=False)
        except Exception as error:
            metrics.MAINTENANCE_RUNS.labels("vacuum", "error").inc()
            log.error("VACUUM failed: %s", error)
            return
        metrics.MAINTENANCE_RUNS.labels("vacuum", "ok").inc()
        log.info("VACUUM done in %.2f s (%.0f%% of pages were free)", time.perf_counter() - started, fraction * 100)

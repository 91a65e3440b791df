"""The single writer: one thread, one connection, a queue of work.

As in Datasette's `execute_write_fn`, async callers put `(fn, loop, future)`
on a queue and await the future. Unlike Datasette, the thread drains
everything waiting and runs it in one transaction (group commit), so
throughput grows with concurrency; each task runs inside its own savepoint,
so a task that fails is rolled back alone and only its caller sees the error.
Results are handed back only after COMMIT succeeds, then post-commit hooks
run (the future event broadcaster hangs here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import apsw

from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import Unavailable
from cursor_grpc.storage.connection import open_connection, retry_busy

log = logging.getLogger("cursor.storage.writer")

T = TypeVar("T")
WriteFn = Callable[[apsw.Connection], T]
CommitHook = Callable[[list[Any]], None]
# Called on the writer thread after each batch: (tasks in the batch, seconds
# from BEGIN to COMMIT done). Metrics hang here.
BatchObserver = Callable[[int, float], None]


@dataclass(slots=True)
class _Task:
    fn: Callable[[apsw.Connection], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    done: threading.Event | None = None
    result: Any = None
    error: BaseException | None = None
    # False: run alone, outside any transaction (checkpoints, VACUUM, backups
    # that must use this connection).
    in_transaction: bool = True


_STOP = object()


class Writer:
    """Owner of the only write connection."""

    def __init__(self, settings: StorageSettings) -> None:
        self._settings = settings
        self._queue: queue.SimpleQueue[_Task | object] = queue.SimpleQueue()
        self._commit_hooks: list[CommitHook] = []
        self.batch_observers: list[BatchObserver] = []
        self.busy_retries = 0
        self._closed = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cursor-writer", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error
        self.batches = 0
        self.tasks = 0

    def add_commit_hook(self, hook: CommitHook) -> None:
        """Call `hook(results)` on the writer thread after each commit, with
        the results of the tasks that succeeded, in commit order."""
        self._commit_hooks.append(hook)

    async def submit(self, fn: WriteFn[T], *, in_transaction: bool = True) -> T:
        """Run `fn(connection)` inside the next group commit and return its
        result once the transaction is durable. With `in_transaction=False`
        it runs alone between batches, in autocommit mode."""
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another connection", reason="SHUTTING_DOWN")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Task(fn, loop, future, in_transaction=in_transaction))
        return await future

    def submit_sync(self, fn: WriteFn[T], *, in_transaction: bool = True) -> T:
        """Blocking form of `submit`, for command-line tools without a loop."""
        if self._closed:
            raise RuntimeError("writer is closed")
        task = _Task(fn, None, None, threading.Event(), in_transaction=in_transaction)
        self._queue.put(task)
        assert task.done is not None
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result  # type: ignore[no-any-return]

    def queue_depth(self) -> int:
        """Tasks waiting for the next group commit (approximate)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finish every queued task, then close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    # --- the writer thread -------------------------------------------------

    def _run(self) -> None:
        try:
            conn = open_connection(self._settings)
        except BaseException as exc:  # reported to the constructor
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        stopping = False
        try:
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch: list[_Task] = [first]  # type: ignore[list-item]
                while len(batch) < self._settings.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)  # type: ignore[arg-type]
                # Keep queue order: transactional runs go as group commits,
                # each non-transactional task alone between them.
                run: list[_Task] = []
                for task in batch:
                    if task.in_transaction:
                        run.append(task)
                        continue
                    if run:
                        self._run_batch(conn, run)
                        run = []
                    self._run_alone(conn, task)
                if run:
                    self._run_batch(conn, run)
        finally:
            conn.close()

    def _run_batch(self, conn: apsw.Connection, batch: list[_Task]) -> None:
        # Skip work whose caller already gave up (cancelled RPC).
        live = [t for t in batch if t.future is None or not t.future.done()]
        if not live:
            return
        started = time.perf_counter()
        try:
            self.busy_retries += retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"), self._settings)
        except BaseException as exc:  # the write thread must survive anything
            log.error("could not start a write transaction: %s", exc)
            self._fail_all(live, Unavailable("the database is locked; retry shortly", reason="DATABASE_LOCKED"))
            return
        single = len(live) == 1
        for task in live:
            try:
                if single:
                    task.result = task.fn(conn)
                else:
                    conn.execute("SAVEPOINT task")
                    try:
                        task.result = task.fn(conn)
                    except BaseException:
                        conn.execute("ROLLBACK TO task")
                        raise
                    finally:
                        conn.execute("RELEASE task")
            except BaseException as exc:
                task.error = exc
        if single and live[0].error is not None:
            conn.execute("ROLLBACK")
        else:
            try:
                self.busy_retries += retry_busy(lambda: conn.execute("COMMIT"), self._settings)
            except BaseException as exc:
                log.error("commit failed, rolling back %d tasks: %s", len(live), exc)
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                self._fail_all(live, Unavailable("the write could not be committed; retry", reason="COMMIT_FAILED"))
                return
        self.batches += 1
        self.tasks += len(live)
        elapsed = time.perf_counter() - started
        for observe in self.batch_observers:
            try:
                observe(len(live), elapsed)
            except Exception:
                log.exception("batch observer failed")
        committed = [t.result for t in live if t.error is None]
        for hook in self._commit_hooks:
            try:
                hook(committed)
            except Exception:
                log.exception("commit hook failed")
        self._deliver(live)

    def _run_alone(self, conn: apsw.Connection, task: _Task) -> None:
        if task.future is not None and task.future.done():
            return
        try:
            task.result = task.fn(conn)
        except BaseException as exc:
            task.error = exc
            if not conn.getautocommit():
                conn.execute("ROLLBACK")
        self._deliver([task])

    def _fail_all(self, tasks: list[_Task], error: BaseException) -> None:
        for task in tasks:
            task.error = error
            task.result = None
        self._deliver(tasks)

    @staticmethod
    def _deliver(tasks: list[_Task]) -> None:
        """Hand results back with one wake-up per event loop, not per task."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Task]] = defaultdict(list)
        for task in tasks:
            if task.loop is None:
                assert task.done is not None
                task.done.set()
            else:
                by_loop[task.loop].append(task)
        for loop, owned in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, owned)


def _resolve(tasks: list[_Task]) -> None:
    for task in tasks:
        future = task.future
        if future is None or future.done():
            continue
        if task.error is not None:
            future.set_exception(task.error)
        else:
            future.set_result(task.result)

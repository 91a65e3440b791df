"""The single writer: one thread, one connection, a queue of work.

As in Datasette's `execute_write_fn`, async callers put `(fn, loop, future)`
on a queue and await the future. Unlike Datasette, the thread drains
everything waiting and runs it in one transaction (group commit), so
throughput grows with concurrency; each task runs inside its own savepoint,
so a task that fails is rolled back alone and only its caller sees the error.
Results are handed back only after COMMIT succeeds; first the commit hooks
get the events the batch stored (the live broadcaster hangs here). A write
that stores events is submitted with `submit_evented`: its task returns
`Evented[T]`, the caller gets the value and the hooks the events.
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

from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import CursorError, Unavailable
from cursor_grpc.storage.records import Event, Evented
from cursor_grpc.storage.sql.engine import Engine

log = logging.getLogger("cursor.storage.writer")

T = TypeVar("T")
WriteFn = Callable[[Any], T]
EventedWriteFn = Callable[[Any], Evented[T]]
# Called on the writer thread after each commit that stored events, with
# them, in commit order.
CommitHook = Callable[[list[Event]], None]
# Called on the writer thread right after BEGIN, inside the transaction,
# with whether the batch will store events: the event sequence resumes
# here (under SQLite's write lock, or PostgreSQL's event counter row).
BeginHook = Callable[[Any, bool], None]
# Called on the writer thread just before COMMIT, after every task ran: a
# failure loses the batch (PostgreSQL stores the event counter here).
PrecommitHook = Callable[[Any], None]
# Called on the writer thread after each batch: (tasks in the batch, seconds
# from BEGIN to COMMIT done). Metrics hang here.
BatchObserver = Callable[[int, float], None]

@dataclass(slots=True)
class _Task:
    fn: Callable[[Any], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    done: threading.Event | None = None
    result: Any = None
    error: BaseException | None = None
    # False: run alone, outside any transaction (checkpoints, VACUUM, backups
    # that must use this connection).
    in_transaction: bool = True
    # Answered already: a later failure of the batch must not answer twice.
    delivered: bool = False
    # True: `fn` returns `Evented`; `result` gets its value, `events` its events.
    evented: bool = False
    events: list[Event] | None = None

    def run(self, conn: Any) -> None:
        outcome = self.fn(conn)
        if self.evented:
            self.result, self.events = outcome.value, outcome.events
        else:
            self.result = outcome


_STOP = object()


class Writer:
    """Owner of the only write connection."""

    def __init__(self, settings: StorageSettings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._queue: queue.SimpleQueue[_Task | object] = queue.SimpleQueue()
        self._commit_hooks: list[CommitHook] = []
        self._begin_hooks: list[BeginHook] = []
        self._precommit_hooks: list[PrecommitHook] = []
        self.batch_observers: list[BatchObserver] = []
        self.busy_retries = 0
        # Writes refused because their transaction was lost, by reason
        # (DATABASE_FULL, STORAGE_IO_ERROR, ...); read at scrape time.
        self.refused_writes: dict[str, int] = defaultdict(int)
        # Set if the writer thread ever stops other than by `close`.
        self.failure: BaseException | None = None
        self._failure_listeners: list[Callable[[BaseException], None]] = []
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
        """Call `hook(events)` on the writer thread after each commit that
        stored events (of tasks from `submit_evented` that succeeded), in
        commit order."""
        self._commit_hooks.append(hook)

    def add_begin_hook(self, hook: BeginHook) -> None:
        """Call `hook(connection, stores_events)` at the start of every group
        commit: with SQLite under the write lock, so what it reads no other
        writer can change until COMMIT."""
        self._begin_hooks.append(hook)

    def add_precommit_hook(self, hook: PrecommitHook) -> None:
        """Call `hook(connection)` as the last statement before each COMMIT."""
        self._precommit_hooks.append(hook)

    def on_failure(self, listener: Callable[[BaseException], None]) -> None:
        """Call `listener(error)` (on the writer thread) if the thread ever
        stops by itself; health turns NOT_SERVING there."""
        self._failure_listeners.append(listener)

    def _refuse_if_stopped(self) -> None:
        if self.failure is not None:
            raise Unavailable("the database writer has stopped; this server cannot store anything, use another",
                              reason="WRITER_STOPPED")
        if self._closed:
            raise Unavailable("the server is shutting down; retry on another connection", reason="SHUTTING_DOWN")

    async def submit(self, fn: WriteFn[T], *, in_transaction: bool = True) -> T:
        """Run `fn(connection)` inside the next group commit and return its
        result once the transaction is durable. With `in_transaction=False`
        it runs alone between batches, in autocommit mode."""
        self._refuse_if_stopped()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Task(fn, loop, future, in_transaction=in_transaction))
        return await future

    async def submit_evented(self, fn: EventedWriteFn[T]) -> T:
        """Like `submit`, for a write that stores events: the caller gets
        the value of the `Evented` that `fn` returns, the commit hooks its
        events, both only after COMMIT."""
        self._refuse_if_stopped()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Task(fn, loop, future, evented=True))
        return await future

    def submit_sync(self, fn: WriteFn[T], *, in_transaction: bool = True) -> T:
        """Blocking form of `submit`, for command-line tools without a loop."""
        self._refuse_if_stopped()
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
            conn = self._engine.connect()
        except BaseException as exc:  # reported to the constructor
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            self._serve(conn)
        except BaseException as exc:  # only a bug gets here; never wedge silently
            log.critical("the writer thread stopped: %r; this server can no longer store anything", exc)
            self.failure = exc
            self._drain(Unavailable("the database writer has stopped; retry on another server",
                                    reason="WRITER_STOPPED"))
            for listener in self._failure_listeners:
                with contextlib.suppress(Exception):
                    listener(exc)
        finally:
            with contextlib.suppress(Exception):
                self._engine.close(conn)

    def _serve(self, conn: Any) -> None:
        stopping = False
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
                    self._run_guarded(conn, run)
                    run = []
                self._run_guarded(conn, [task], alone=True)
            if run:
                self._run_guarded(conn, run)

    def _run_guarded(self, conn: Any, tasks: list[_Task], *, alone: bool = False) -> None:
        """Run a batch (or one task alone); whatever escapes fails its tasks
        and leaves the connection outside any transaction, so the next batch
        starts clean."""
        try:
            if alone:
                self._run_alone(conn, tasks[0])
            else:
                self._run_batch(conn, tasks)
        except BaseException as exc:  # the write thread must survive anything
            log.exception("write batch of %d tasks failed unexpectedly", len(tasks))
            self._end_transaction(conn)
            self._fail_all([t for t in tasks if not t.delivered],
                           self._engine.storage_error(exc)
                           or Unavailable("the write failed; retry", reason="WRITE_FAILED"))

    def _drain(self, error: BaseException) -> None:
        """Fail everything still queued (the thread is stopping for good)."""
        waiting: list[_Task] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                waiting.append(item)  # type: ignore[arg-type]
        self._fail_all(waiting, error)

    def _end_transaction(self, conn: Any) -> None:
        """Roll back whatever is open; the database may have done so already."""
        if self._engine.in_transaction(conn):
            with contextlib.suppress(self._engine.error):
                conn.execute("ROLLBACK")

    def _lose_batch(self, conn: Any, live: list[_Task], cause: BaseException,
                    culprit: _Task | None) -> None:
        """The transaction is gone (rolled back by SQLite, or it could not
        commit): no task of the batch is stored, so none may be answered OK
        and none of its events may be published."""
        self._end_transaction(conn)
        error = self._engine.storage_error(cause) or Unavailable(
            "the write could not be committed; retry", reason="COMMIT_FAILED")
        reason = error.reason if isinstance(error, CursorError) else "COMMIT_FAILED"
        self.refused_writes[reason] += len(live)
        log.error("a write transaction was lost (%s: %s); %d writes refused with %s, the writer carries on",
                  type(cause).__name__, cause, len(live), reason)
        for task in live:
            task.result = task.events = None
            if task is culprit:
                task.error = self._engine.to_cursor_error(cause)
            elif task.error is None:  # a task that failed by itself keeps its own error
                task.error = error
        self._deliver(live)

    def _run_batch(self, conn: Any, batch: list[_Task]) -> None:
        # Skip work whose caller already gave up (cancelled RPC).
        live = [t for t in batch if t.future is None or not t.future.done()]
        if not live:
            return
        started = time.perf_counter()
        try:
            self.busy_retries += self._engine.begin(conn)
            stores_events = any(t.evented for t in live)
            for begun in self._begin_hooks:
                begun(conn, stores_events)
        except self._engine.error as exc:
            log.error("could not start a write transaction: %s", exc)
            self._end_transaction(conn)
            self._fail_all(live, self._engine.storage_error(exc) or Unavailable("the database is locked; retry shortly",
                                                                    reason="DATABASE_LOCKED"))
            return
        # One task needs no savepoint: the transaction is its own.
        single = len(live) == 1
        for task in live:
            try:
                if not single:
                    conn.execute("SAVEPOINT task")
                task.run(conn)
                if not single:
                    conn.execute("RELEASE task")
            except BaseException as exc:  # a task's failure is its caller's, whatever it is
                if not self._engine.in_transaction(conn):
                    # The database rolled the whole transaction back: the
                    # tasks before this one are gone too.
                    self._lose_batch(conn, live, exc, task)
                    return
                task.error = self._engine.to_cursor_error(exc)
                try:
                    conn.execute("ROLLBACK" if single else "ROLLBACK TO task")
                    if not single:
                        conn.execute("RELEASE task")
                except self._engine.error as undo:
                    self._lose_batch(conn, live, undo, task)
                    return
        if single and live[0].error is not None:
            self._deliver(live)
            return
        try:
            for precommit in self._precommit_hooks:
                precommit(conn)
            self.busy_retries += self._engine.commit(conn)
        except self._engine.error as exc:
            self._lose_batch(conn, live, exc, None)
            return
        self.batches += 1
        self.tasks += len(live)
        elapsed = time.perf_counter() - started
        for observe in self.batch_observers:
            try:
                observe(len(live), elapsed)
            except Exception:
                log.exception("batch observer failed")
        committed = [event for t in live if t.events and t.error is None for event in t.events]
        if committed:
            for hook in self._commit_hooks:
                try:
                    hook(committed)
                except Exception:
                    log.exception("commit hook failed")
        self._deliver(live)

    def _run_alone(self, conn: Any, task: _Task) -> None:
        if task.future is not None and task.future.done():
            return
        try:
            task.run(conn)
        except BaseException as exc:  # a task's failure is its caller's, whatever it is
            task.error = self._engine.to_cursor_error(exc)
            self._end_transaction(conn)
        self._deliver([task])

    def _fail_all(self, tasks: list[_Task], error: BaseException) -> None:
        for task in tasks:
            if task.delivered:
                continue
            task.error = error
            task.result = task.events = None
        self._deliver(tasks)

    @staticmethod
    def _deliver(tasks: list[_Task]) -> None:
        """Hand results back with one wake-up per event loop, not per task."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Task]] = defaultdict(list)
        for task in tasks:
            task.delivered = True
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

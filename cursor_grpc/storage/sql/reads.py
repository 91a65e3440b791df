"""Reads run on a small thread pool; each thread keeps its own read
connection (`threading.local`), so no read ever waits for, or blocks, the
writer's connection or the event loop. Each read is one read transaction
(one snapshot). What a read raises leaves as the service's error (the
engine's `to_cursor_error`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cursor_grpc.storage.sql.engine import READING, Engine

T = TypeVar("T")


class ReadPool:
    def __init__(self, engine: Engine, threads: int, name: str = "cursor-read") -> None:
        self._engine = engine
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._engine.connect(readonly=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _forget(self, conn: Any) -> None:
        """Drop a connection that failed outside a statement (a lost
        PostgreSQL connection): the next read on this thread opens a new one."""
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with contextlib.suppress(Exception):  # already broken; nothing more to release
            self._engine.close(conn)

    def _call(self, fn: Callable[[Any], T]) -> T:
        engine = self._engine
        try:
            conn = self._connection()
            try:
                engine.begin_read(conn)
                return fn(conn)
            finally:
                if engine.in_transaction(conn):
                    engine.end_read(conn)
                else:
                    # Rolled back by the database, or the connection is gone
                    # (BEGIN itself can find that out): a new one next time.
                    self._forget(conn)
        except Exception as error:
            mapped = engine.to_cursor_error(error, READING)
            if mapped is error:
                raise
            raise mapped from error

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(read_connection)` on the pool and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def run_sync(self, fn: Callable[[Any], T]) -> T:
        return self._executor.submit(self._call, fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                self._engine.close(conn)
            self._connections.clear()

"""Reads run on a small thread pool; each thread keeps its own read-only
connection (`threading.local`), so no read ever waits for, or blocks, the
writer's connection or the event loop. What a read raises leaves as the
service's error (cursor_grpc/storage/sqlite/errors.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import apsw

from cursor_grpc.config import StorageSettings
from cursor_grpc.storage.sqlite.connection import open_connection
from cursor_grpc.storage.sqlite.errors import READING, service_errors

T = TypeVar("T")


class ReadPool:
    def __init__(self, settings: StorageSettings, threads: int | None = None, name: str = "cursor-read") -> None:
        self._settings = settings
        self._local = threading.local()
        self._connections: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=threads or settings.read_connections, thread_name_prefix=name
        )

    def _connection(self) -> apsw.Connection:
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = open_connection(self._settings, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _call(self, fn: Callable[[apsw.Connection], T]) -> T:
        with service_errors(READING):
            conn = self._connection()
            # One read transaction, so multi-statement reads see one snapshot.
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

    async def run(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run `fn(read_connection)` on the pool and await its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def run_sync(self, fn: Callable[[apsw.Connection], T]) -> T:
        return self._executor.submit(self._call, fn).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

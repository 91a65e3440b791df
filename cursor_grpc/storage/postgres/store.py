"""`PostgresStore`: the storage contract on PostgreSQL, for several Cursor
instances on one database.

Writes: each instance has one writer (one connection, group commit, a
savepoint per task: cursor_grpc/storage/sql/writer.py), as with SQLite.

One commit-ordered, gapless event sequence across instances: a group
commit that stores events first locks the single row of `event_sequence`
(`SELECT … FOR UPDATE`), numbers its events from it, and writes the new
value as its last statement before COMMIT. Transactions that store events
therefore commit one at a time, in seq order, and a seq is visible only
once every lower one is: a reader that has seen N never later finds a
committed N-1. Batching amortizes the lock; transactions that store no
events (sessions, audit) never take it. docs/live.md gives the cost.

The event log: every instance feeds its broadcaster from the database, in
seq order. Its own commits go straight to the listeners when nothing from
another instance came between; otherwise, and whenever the doorbell rings
(cursor_grpc/cluster/doorbell.py: NATS, Redis, or LISTEN/NOTIFY), on
reconnect and on a safety poll, the follower thread reads `seq > head`
from the database. The database is the record; the doorbell only says
"look now": a lost hint costs up to one poll interval, never an event.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from cursor_grpc.clock import new_id
from cursor_grpc.cluster.doorbell import Doorbell, Hint, open_doorbell
from cursor_grpc.config import OpsSettings, StorageSettings
from cursor_grpc.storage.contract import CommitListener, DatabaseUnreachable, MigrationError, Progress, StorageStats
from cursor_grpc.storage.postgres import migrations
from cursor_grpc.storage.postgres.connection import PgConnection, connect_raw
from cursor_grpc.storage.postgres.engine import PostgresEngine
from cursor_grpc.storage.postgres.errors import REFUSAL_REASONS
from cursor_grpc.storage.records import Event, EventFilter
from cursor_grpc.storage.sql import events
from cursor_grpc.storage.sql.connection import Connection, fetch_all
from cursor_grpc.storage.sql.events import SequenceAllocator
from cursor_grpc.storage.sql.reads import ReadPool
from cursor_grpc.storage.sql.store import SqlStore
from cursor_grpc.storage.sql.writer import Writer

log = logging.getLogger("cursor.storage")

# How often a follower reads the database when no hint came.
POLL_SECONDS = 1.0
# Most payload bytes one catch-up read takes before publishing them.
CATCH_UP_BYTES = 1 << 20
ALL_EVENTS = EventFilter()


def _url(settings: StorageSettings) -> str:
    if not settings.url:
        raise MigrationError("no PostgreSQL URL given")
    return settings.url


def connect_command(url: str) -> psycopg.Connection[Any]:
    """A connection for a command, or DatabaseUnreachable in one line that
    names the database without its credentials."""
    try:
        return connect_raw(url)
    except psycopg.OperationalError as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise DatabaseUnreachable(f"cannot reach {migrations.describe_url(url)}: {reason}") from None


def migrate_database(settings: StorageSettings, purpose: str, progress: Progress | None = None) -> list[str]:
    """Apply pending migrations; concurrent migrators serialize on an
    advisory lock, so `serve --migrate` on every instance at once is safe."""
    with connect_command(_url(settings)) as raw:
        return migrations.migrate(raw, progress=progress)


def require_current_schema(settings: StorageSettings) -> None:
    with connect_command(_url(settings)) as raw:
        migrations.verify_current(raw, db=_url(settings))


class _EventCounter:
    """The writer's side of the sequence: lock the counter row at the start
    of a group commit that stores events, store it before COMMIT. Used only
    on the writer thread."""

    def __init__(self, seqs: SequenceAllocator) -> None:
        self.seqs = seqs
        self.locked = False
        # The counter's value when this batch locked it: the batch's events
        # follow it directly.
        self.batch_from = 0

    def begun(self, conn: Connection, stores_events: bool) -> None:
        self.locked = stores_events
        if stores_events:
            self.batch_from = int(fetch_all(conn, "SELECT last_seq FROM event_sequence WHERE id = 1 FOR UPDATE")[0][0])
            self.seqs.resume(self.batch_from)

    def store(self, conn: Connection) -> None:
        if self.locked and self.seqs.last != self.batch_from:
            conn.execute("UPDATE event_sequence SET last_seq = ? WHERE id = 1", (self.seqs.last,))


def _epoch_and_last(conn: Connection) -> tuple[str, int]:
    return events.epoch(conn), _last_seq(conn)


def _last_seq(conn: Connection) -> int:
    return int(fetch_all(conn, "SELECT last_seq FROM event_sequence WHERE id = 1")[0][0])


class PostgresStore(SqlStore):
    def __init__(self, settings: StorageSettings, *, owner: bool = False) -> None:
        """`owner` is accepted for the contract's sake: several instances
        share one PostgreSQL database by design, so none holds it alone."""
        self.settings = settings
        url = _url(settings)
        self.origin = new_id()
        self._engine = PostgresEngine(url, settings.read_connections, settings.slow_query_ms)
        self._listeners: list[CommitListener] = []
        self._announcement_listeners: list[Callable[[str], None]] = []
        self._publish_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._doorbell: Doorbell | None = None
        self._size_bytes = 0
        # Catch-up passes the follower finished (read by `catch_up`).
        self._passes = 0
        require_current_schema(settings)
        self.writer = Writer(settings, self._engine)
        self.reads = ReadPool(self._engine, settings.read_connections)
        try:
            self.epoch, last = self.reads.run_sync(_epoch_and_last)
            self._head = last
            self.seqs = SequenceAllocator(last)
            self._counter = _EventCounter(self.seqs)
            self.writer.add_begin_hook(self._counter.begun)
            self.writer.add_precommit_hook(self._counter.store)
            self.writer.add_commit_hook(self._committed_here)
        except BaseException:
            self.close()
            raise
        log.info("PostgreSQL at %s, instance %s", migrations.describe_url(url), self.origin)

    # --- the event log ----------------------------------------------------------

    @property
    def head(self) -> int:
        """The highest seq given to the listeners (every lower one was too)."""
        return self._head

    def on_commit(self, listener: CommitListener) -> None:
        """Call `listener(events)` with every event any instance commits, in
        seq order, each once; the first listener starts following the
        database and the doorbell."""
        self._listeners.append(listener)
        if self._follower is None:
            self._start_following()

    def _start_following(self) -> None:
        self._follower = threading.Thread(target=self._follow, name="cursor-follower", daemon=True)
        self._follower.start()
        try:
            self._doorbell = open_doorbell(self.settings.broker, _url(self.settings))
            self._doorbell.start(self._heard, self._wake.set)
        except Exception:
            self._doorbell = None
            raise

    def _publish(self, found: list[Event], reached: int) -> None:
        """Under the publish lock: hand listeners the events above the head, move it."""
        fresh = [event for event in found if event.seq > self._head]
        if reached > self._head:
            self._head = reached
        if fresh:
            for listener in self._listeners:
                try:
                    listener(fresh)
                except Exception:
                    log.exception("commit listener failed")

    def _committed_here(self, committed: list[Event]) -> None:
        """On the writer thread, after COMMIT: when this batch follows the
        head directly, its events go out at once; otherwise another instance
        committed between, and the follower reads them all in order."""
        last = self.seqs.last
        with self._publish_lock:
            if self._listeners and self._counter.batch_from == self._head:
                self._publish(committed, last)
            else:
                self._wake.set()
        if self._doorbell is not None:
            self._doorbell.ring(Hint(self.epoch, last, origin=self.origin))

    async def catch_up(self) -> None:
        """Wake the follower and wait for a whole pass that began after the
        call (at most two passes: one may have been under way), up to 2 s."""
        if self._follower is None:
            return
        start = self._passes
        self._wake.set()
        deadline = time.monotonic() + 2.0
        while self._passes < start + 2 and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.002)

    def announce(self, note: str) -> None:
        if self._doorbell is not None:
            self._doorbell.ring(Hint(self.epoch, 0, origin=self.origin, notes=(note,)))

    def on_announcement(self, listener: Callable[[str], None]) -> None:
        self._announcement_listeners.append(listener)

    def _heard(self, hint: Hint) -> None:
        if hint.epoch != self.epoch or hint.origin == self.origin:
            return
        if hint.head > self._head:
            self._wake.set()
        for note in hint.notes:
            for listener in self._announcement_listeners:
                try:
                    listener(note)
                except Exception:
                    log.exception("announcement listener failed")

    def _follow(self) -> None:
        """Read `seq > head` on every hint, reconnect and poll, until closed."""
        conn: PgConnection | None = None
        failures = 0
        size_checked = 0.0
        while not self._stopping.is_set():
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                if conn is None or conn.broken:
                    if conn is not None:
                        conn.close()
                    conn = PgConnection(connect_raw(_url(self.settings)))
                self._catch_up(conn)
                self._passes += 1
                if time.monotonic() - size_checked > 10:
                    size_checked = time.monotonic()
                    self._size_bytes = int(fetch_all(conn, "SELECT pg_database_size(current_database())")[0][0])
                failures = 0
            except Exception as error:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("reading new events failed (%s); retrying", error)
                time.sleep(min(2.0, 0.1 * failures))
        if conn is not None:
            conn.close()

    def _catch_up(self, conn: PgConnection) -> None:
        while True:
            after = self._head
            self._engine.begin_read(conn)
            try:
                upto = _last_seq(conn)
                if upto <= after:
                    return
                found, reached = events.replay(conn, after, upto, ALL_EVENTS, CATCH_UP_BYTES)
            finally:
                if self._engine.in_transaction(conn):
                    self._engine.end_read(conn)
            with self._publish_lock:
                self._publish(found, reached)
            if reached >= upto:
                return

    # --- maintenance ------------------------------------------------------------

    def stats(self) -> StorageStats:
        return StorageStats(
            queue_depth=self.writer.queue_depth(),
            busy_retries=self.writer.busy_retries,
            refused_writes={**dict.fromkeys(REFUSAL_REASONS, 0), **self.writer.refused_writes},
            size_bytes=self._size_bytes,
        )


    async def start_maintenance(self, ops: OpsSettings) -> None:
        """Backups, archival and vacuuming of a PostgreSQL database belong to
        its own tools (pg_dump or base backups, autovacuum): nothing to schedule."""
        log.info("maintenance of PostgreSQL is PostgreSQL's own (backups, autovacuum); none scheduled here")

    async def stop_maintenance(self) -> None:
        return None

    def close(self) -> None:
        """Stop following, commit what is queued, close every connection. Idempotent."""
        self._stopping.set()
        self._wake.set()
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.join(timeout=5)
        doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None:
            doorbell.close()
        reads: Any = self.__dict__.get("reads")
        if reads is not None:
            reads.close()
        writer: Any = self.__dict__.get("writer")
        if writer is not None:
            writer.close()
        self._engine.close_pool()

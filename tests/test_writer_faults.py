"""The writer when SQLite loses a whole transaction (disk full): nothing is
acknowledged that is not stored, nothing is published, the writer survives
and recovers when space returns; and a writer that stops is reported.

The disk-full tests mount a small tmpfs, so they need root; elsewhere they
are skipped with that reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor_grpc import metrics
from cursor_grpc.config import StorageSettings
from cursor_grpc.errors import AlreadyExists, Unavailable
from cursor_grpc.storage import Event, Evented
from cursor_grpc.storage.sql.writer import Writer
from cursor_grpc.storage.sqlite.engine import SQLiteEngine
from tests.helpers import error_reason
from tests.streams import StreamReader

pytestmark = pytest.mark.sqlite_only  # the SQLite writer's faults, on a small real disk

DISK_BYTES = 8 * 1024 * 1024


def sqlite_writer(settings: StorageSettings) -> Writer:
    return Writer(settings, SQLiteEngine(settings))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs: a disk that fills up for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Take all but about `leave_bytes` of the disk with a file."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as out:
        out.write(b"\0" * max(0, free - leave_bytes))
    return filler


def insert(name: str, size: int) -> Callable[[apsw.Connection], Evented[str]]:
    """A write answered with `name` that publishes one event naming it."""

    def write(conn: apsw.Connection) -> Evented[str]:
        conn.execute("INSERT INTO t(name, data) VALUES (?, randomblob(?))", (name, size))
        return Evented(name, [Event(0, "test", name, "")])

    return write


def stored_names(path: Path) -> list[str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM t ORDER BY id")]
    finally:
        conn.close()


def run_batch(writer: Writer, tasks: list[Callable[[apsw.Connection], Evented[Any]]]) -> list[Any]:
    """Submit `tasks` so they form one group commit (the writer is held busy
    while they queue), and return each one's result or exception."""

    async def go() -> list[Any]:
        gate = threading.Event()
        hold = asyncio.ensure_future(writer.submit(lambda conn: gate.wait(10), in_transaction=False))
        await asyncio.sleep(0.05)  # the writer is now inside the holding task
        queued = [asyncio.ensure_future(writer.submit_evented(task)) for task in tasks]
        await asyncio.sleep(0)  # every submit has put its task on the queue
        gate.set()
        await hold
        return list(await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 20))

    return asyncio.run(go())


def new_writer(disk: Path) -> tuple[Writer, list[str]]:
    """A writer on the small disk with a 1 MiB page cache (so a large row
    spills to the WAL while it is written), and the names its commits published."""
    writer = sqlite_writer(StorageSettings(path=disk / "w.db", cache_size_kib=1024, lock_wait_seconds=1))
    writer.submit_sync(lambda conn: conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB)"))
    published: list[str] = []
    writer.add_commit_hook(lambda events: published.extend(event.reader_id for event in events))
    return writer, published


def test_a_batch_that_meets_a_full_disk_acknowledges_nothing_it_did_not_store(small_disk: Path) -> None:
    writer, published = new_writer(small_disk)
    try:
        filler = fill(small_disk, leave_bytes=2 * 1024 * 1024)

        def free_space_then_insert(conn: apsw.Connection) -> Evented[str]:
            filler.unlink()
            return insert("after", 10)(conn)

        outcomes = run_batch(writer, [insert("small", 10), insert("big", 3_000_000),
                                      insert("medium", 800_000), free_space_then_insert])
        names = stored_names(small_disk / "w.db")
        acknowledged = [o for o in outcomes if isinstance(o, str)]
        # Whatever was answered OK is stored, and only that was published.
        assert set(acknowledged) <= set(names), (outcomes, names)
        assert set(published) <= set(names), (published, names)
        # SQLite rolled the whole transaction back: every task is told to retry.
        assert names == [], names
        assert published == []
        assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
        assert {o.reason for o in outcomes} == {"DATABASE_FULL"}
        assert all("retry" in o.message for o in outcomes)
        assert writer.refused_writes["DATABASE_FULL"] == 4

        # The writer carries on, and stores again as soon as space returns.
        filler.unlink(missing_ok=True)
        assert run_batch(writer, [insert("again", 10), insert("later", 800_000)]) == ["again", "later"]
        assert stored_names(small_disk / "w.db") == ["again", "later"]
        assert published == ["again", "later"]
    finally:
        writer.close()


def test_a_lone_write_that_meets_a_full_disk_leaves_the_writer_working(small_disk: Path) -> None:
    writer, published = new_writer(small_disk)
    try:
        filler = fill(small_disk, leave_bytes=1024 * 1024)
        [outcome] = run_batch(writer, [insert("big", 3_000_000)])
        assert isinstance(outcome, Unavailable), outcome
        assert outcome.reason == "DATABASE_FULL"
        # Still full: refused again, promptly, not hung.
        [again] = run_batch(writer, [insert("big", 3_000_000)])
        assert isinstance(again, Unavailable)
        filler.unlink()
        assert run_batch(writer, [insert("small", 10)]) == ["small"]
        assert stored_names(small_disk / "w.db") == ["small"]
        assert published == ["small"]
        assert writer.failure is None
    finally:
        writer.close()


def test_a_failing_task_in_a_batch_stays_with_its_caller(tmp_path: Path) -> None:
    """The ordinary case still holds: a task's own error rolls back only its
    savepoint; its neighbours commit."""
    writer = sqlite_writer(StorageSettings(path=tmp_path / "w.db"))
    try:
        writer.submit_sync(lambda conn: conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE, "
                                                     "data BLOB)"))

        def duplicate(conn: apsw.Connection) -> Evented[str]:
            conn.execute("INSERT INTO t(name) VALUES ('three')")
            return insert("one", 0)(conn)  # violates UNIQUE after a write of its own

        outcomes = run_batch(writer, [insert("one", 0), duplicate, insert("two", 0)])
        assert outcomes[0] == "one"
        assert outcomes[2] == "two"
        # The constraint no domain check caught leaves the storage as the service's error.
        assert isinstance(outcomes[1], AlreadyExists), outcomes[1]
        assert outcomes[1].reason == "ALREADY_EXISTS"
        assert "UNIQUE constraint failed: t.name" in outcomes[1].message
        assert stored_names(tmp_path / "w.db") == ["one", "two"]
    finally:
        writer.close()


def test_a_writer_that_stops_refuses_writes_and_says_so(tmp_path: Path) -> None:
    writer = sqlite_writer(StorageSettings(path=tmp_path / "w.db"))
    stopped: list[BaseException] = []
    writer.on_failure(stopped.append)
    # A bug in the writer loop itself (not in a task): something that is not a task.
    writer._queue.put(object())
    writer._thread.join(10)
    assert not writer._thread.is_alive()
    assert writer.failure is not None
    assert stopped == [writer.failure]
    with pytest.raises(Unavailable) as refused:
        writer.submit_sync(insert("x", 0))
    assert refused.value.reason == "WRITER_STOPPED"
    writer.close()


def test_a_server_on_a_full_disk_answers_retry_publishes_nothing_and_recovers(
    small_disk: Path, make_harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real server: uploads on a full disk end UNAVAILABLE /
    DATABASE_FULL, a watching consultant sees none of them, the log and the
    metrics name the cause, health stays SERVING, and uploads work again
    once space is freed."""
    h = make_harness(small_disk / "cursor.db")
    reader = h.new_reader()
    watcher = StreamReader(h.admin().consultant.WatchActivity(cpb.WatchActivityRequest(), metadata=h.admin_md()))
    watcher.wait_for(lambda: bool(watcher.responses))
    filler = fill(small_disk, leave_bytes=1024 * 1024)
    payload = json.dumps({"f": "x" * 15_000})

    def upload(chunks: int) -> Any:  # 3 MB a chunk: more than the free space
        requests = [rpb.RecordInteractionsRequest(interactions=[
            rpb.NewInteraction(type="answer", payload_json=payload, summary="big") for _ in range(200)
        ]) for _ in range(chunks)]
        return reader.reader.RecordInteractions(iter(requests), metadata=reader.md, timeout=60)

    before = h.database.count("interactions")
    with caplog.at_level("ERROR", logger="cursor.storage.writer"), pytest.raises(grpc.RpcError) as refused:
        upload(1)  # one chunk, so no other is still in flight when the call ends
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(refused.value) == "DATABASE_FULL"
    assert "retry" in (refused.value.details() or "")
    assert any("FullError" in r.getMessage() and "DATABASE_FULL" in r.getMessage() for r in caplog.records)
    scraped = metrics.REGISTRY.get_sample_value("cursor_writer_refused_writes_total", {"reason": "DATABASE_FULL"})
    assert scraped is not None
    assert scraped >= 1
    health = health_pb2_grpc.HealthStub(h.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    filler.unlink()
    stored = upload(1)
    assert stored.stored_count == 200
    after = h.database.count("interactions")
    # Chunks that were refused left nothing behind; the last upload is all there.
    assert after - before == 200, (before, after)
    watcher.wait_for(lambda: sum(1 for e in watcher.events if e.HasField("interaction")) >= 200)
    delivered = [e for e in watcher.events if e.HasField("interaction")]
    assert len(delivered) == 200, "the watcher saw exactly what was stored, nothing refused"
    watcher.cancel()


def test_a_server_whose_writer_stopped_says_not_serving(h: Any) -> None:
    health = health_pb2_grpc.HealthStub(h.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    writer = h.server.app.store.writer
    writer._queue.put(object())  # a bug in the writer loop itself
    writer._thread.join(10)
    deadline = time.monotonic() + 10
    while health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "health still SERVING with a stopped writer"
        time.sleep(0.01)
    reader_error = None
    try:
        h.new_reader()
    except grpc.RpcError as error:
        reader_error = error
    assert reader_error is not None
    assert reader_error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(reader_error) == "WRITER_STOPPED"

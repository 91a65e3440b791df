"""The server going away under load: `cursor-grpc serve` processes on one
database (of each backend under test), writers that choose their interaction ids and keep a ledger of
what the server acknowledged, and a consultant watching the activity.

* SIGKILL at random moments, restarting on the same database each time:
  nothing acknowledged is lost or stored twice, the database passes
  its integrity check, and the watcher, resuming behind its last cursor after
  each kill, sees every committed interaction once, in order.
* SIGTERM: what callers see (docs/operations.md, "Shutdown").

`CURSOR_CHAOS_KILLS` sets how many kills (5; `make chaos` runs 50), and
`CURSOR_CHAOS_SEED` replays a run's random moments.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cursor.v1 import admin_service_pb2 as apb
from cursor.v1 import consultant_service_pb2 as cpb
from cursor.v1 import reader_service_pb2 as rpb
from cursor.v1 import resources_pb2
from tests.conftest import ADMIN_EMAIL, PASSWORD, Client, migrate_with_admin
from tests.databases import Backend, TestDatabase
from tests.ops_support import FAST_AUTH_ENV, new_reader
from tests.procs import ServerProcess

KILLS = int(os.environ.get("CURSOR_CHAOS_KILLS", "5"))
# Back within a fraction of a second of a restart (grpc's reconnect backoff starts at 1 s).
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# Client-side health checking: the channel stops sending once the server says NOT_SERVING.
HEALTH_CHECKED = [("grpc.service_config", json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}))]
# What a call may end with when the server goes away; it is then sent again, with the same ids.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT = 30.0
# Longest a batch may take to be acknowledged, kills included.
BATCH_DEADLINE = 120.0


class Ledger:
    """What the writers sent, what the server acknowledged, and how the
    attempts that got no acknowledgement ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acknowledged_event = threading.Condition(self._lock)
        self.attempted: set[str] = set()
        self.acknowledged: set[str] = set()
        self.failures: collections.Counter[str] = collections.Counter()
        # Ids a retry found stored already: the attempt that failed had committed.
        self.stored_before_answer = 0
        self.errors: list[str] = []

    def attempt(self, ids: list[str]) -> None:
        with self._lock:
            self.attempted.update(ids)

    def failed(self, code: grpc.StatusCode) -> None:
        with self._lock:
            self.failures[code.name] += 1

    def acknowledge(self, ids: list[str], stored_before: int, retried: bool) -> None:
        with self._lock:
            if stored_before and not retried:
                self.errors.append(f"a first attempt found {stored_before} of its new ids stored")
            self.acknowledged.update(ids)
            self.stored_before_answer += stored_before
            self._acknowledged_event.notify_all()

    def error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)
            self._acknowledged_event.notify_all()

    def count(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def wait_beyond(self, count: int, timeout: float = 60.0) -> None:
        """Until more than `count` ids are acknowledged: the load is running."""
        with self._acknowledged_event:
            assert self._acknowledged_event.wait_for(
                lambda: len(self.acknowledged) > count or bool(self.errors), timeout
            ), f"no write acknowledged within {timeout} s"


def new_interaction(interaction_id: str) -> rpb.NewInteraction:
    return rpb.NewInteraction(id=interaction_id, type="answer", payload_json='{"chaos": true}', summary="chaos")


class LedgerWriter(threading.Thread):
    """One reader sending `in_flight` calls at a time, each a unary
    RecordInteraction or a RecordInteractions upload, with ids it chose;
    a call that fails is sent again with the same ids until the server
    acknowledges it, also after being told to stop."""

    def __init__(self, client: Client, ledger: Ledger, stop: threading.Event, seed: int, in_flight: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.ledger = ledger
        self.stop = stop
        self.rng = random.Random(seed)
        self.in_flight = in_flight

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                units = [self._new_unit() for _ in range(self.in_flight)]
                self.ledger.attempt([i for unit in units for i in unit])
                self._until_acknowledged(units)
        except Exception as error:  # reported by the test, which sees no thread exception
            self.ledger.error(f"{type(error).__name__}: {error}")

    def _new_unit(self) -> list[str]:
        """One id for a unary call, or 10-150 for an upload."""
        count = 1 if self.rng.random() < 0.7 else self.rng.randint(10, 150)
        return [str(uuid.uuid4()) for _ in range(count)]

    def _until_acknowledged(self, units: list[list[str]]) -> None:
        deadline = time.monotonic() + BATCH_DEADLINE
        pending = [(unit, False) for unit in units]
        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} calls not acknowledged within {BATCH_DEADLINE} s")
            calls = [(unit, retried, self._start(unit)) for unit, retried in pending]
            pending = []
            for unit, retried, call in calls:
                try:
                    stored_before = self._stored_before(unit, call.result())
                except grpc.RpcError as error:
                    if error.code() not in RETRYABLE:
                        raise AssertionError(f"{error.code().name}: {error.details()}") from None
                    self.ledger.failed(error.code())
                    pending.append((unit, True))
                    continue
                self.ledger.acknowledge(unit, stored_before, retried)
            if pending:
                time.sleep(0.05)

    def _start(self, unit: list[str]) -> Any:
        if len(unit) == 1:
            request = rpb.RecordInteractionRequest(interaction=new_interaction(unit[0]))
            return self.client.reader.RecordInteraction.future(
                request, metadata=self.client.md, timeout=CALL_TIMEOUT, wait_for_ready=True)
        chunks = [rpb.RecordInteractionsRequest(interactions=[new_interaction(i) for i in unit[start:start + 50]])
                  for start in range(0, len(unit), 50)]
        return self.client.reader.RecordInteractions.future(
            iter(chunks), metadata=self.client.md, timeout=CALL_TIMEOUT, wait_for_ready=True)

    @staticmethod
    def _stored_before(unit: list[str], response: Any) -> int:
        """How many of the unit's ids the server had stored before this call."""
        if isinstance(response, rpb.RecordInteractionResponse):
            assert response.interaction.name.rsplit("/", 1)[-1] == unit[0]
            return int(response.duplicate)
        assert not response.rejected, response.rejected
        assert response.stored_count + response.duplicate_count == len(unit)
        return int(response.duplicate_count)


class ResumingWatcher(threading.Thread):
    """A consultant's WatchActivity (interactions only) that reconnects after
    every failure behind the last cursor it received."""

    def __init__(self, client: Client, snapshot: bool = False) -> None:
        super().__init__(daemon=True)
        self.client = client
        # With `snapshot`, the first stream starts with the readers' states.
        self.snapshot = snapshot
        self.snapshot_readers = 0
        self.snapshot_complete = False
        self.seqs: list[int] = []
        self.cursor = ""
        self.reconnects = 0
        self.errors: list[str] = []
        self.opened = threading.Event()
        self._closing = threading.Event()
        self._call: Any = None

    def run(self) -> None:
        request = cpb.WatchActivityRequest(kinds=[resources_pb2.EVENT_KIND_INTERACTION_RECORDED],
                                           include_snapshot=self.snapshot)
        while not self._closing.is_set():
            request.after = self.cursor
            if self.cursor:
                request.include_snapshot = False  # resuming: the cursor says where, not a snapshot
            self._call = self.client.consultant.WatchActivity(request, metadata=self.client.md, wait_for_ready=True)
            try:
                for response in self._call:
                    self.snapshot_readers += len(response.snapshot_readers)
                    self.snapshot_complete |= response.snapshot_complete
                    self.seqs.extend(event.event_id for event in response.events)
                    if response.cursor:
                        self.cursor = response.cursor
                    self.opened.set()
            except grpc.RpcError as error:
                if self._closing.is_set():
                    return
                if error.code() not in RETRYABLE:
                    self.errors.append(f"{error.code().name}: {error.details()}")
                    return
            self.reconnects += 1
            time.sleep(0.05)

    def wait_until_seen(self, seq: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.seqs or self.seqs[-1] < seq:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"the watcher reached {self.seqs[-1:]} of {seq}"
            time.sleep(0.05)

    def close(self) -> None:
        self._closing.set()
        if self._call is not None:
            self._call.cancel()
        self.join(10)


class Cluster:
    """The server process (restarted on the same database and port), the
    writers and the watcher, and what they leave behind."""

    def __init__(self, database: TestDatabase, monkeypatch: pytest.MonkeyPatch, writers: int, in_flight: int,
                 channel_options: list[tuple[str, Any]], seed: int, watch: bool = True) -> None:
        self.database = migrate_with_admin(database, monkeypatch)
        self.server = ServerProcess(database.url, env=FAST_AUTH_ENV)
        self.port = self.server.port
        self.ledger = Ledger()
        self.stopping = threading.Event()
        self.channels = [grpc.insecure_channel(self.server.address, options=FAST_RECONNECT + channel_options)
                         for _ in range(writers + 1)]
        self.watcher: ResumingWatcher | None = None
        self.writers: list[LedgerWriter] = []
        try:
            if watch:
                self.watcher = ResumingWatcher(self._consultant(Client(self.channels[-1])))
                self.watcher.start()
                assert self.watcher.opened.wait(30), "the watcher's stream did not open"
            self.writers = [LedgerWriter(new_reader(channel, "chaos"), self.ledger, self.stopping, seed + n,
                                         in_flight) for n, channel in enumerate(self.channels[:writers])]
        except BaseException:
            self.close()
            raise
        for writer in self.writers:
            writer.start()

    @staticmethod
    def _consultant(anonymous: Client) -> Client:
        admin = anonymous.login(ADMIN_EMAIL, kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)
        email = f"watcher-{uuid.uuid4().hex[:8]}@example.com"
        admin.admin.CreateConsultant(apb.CreateConsultantRequest(
            email=email, password=PASSWORD, display_name="Watcher",
            role=resources_pb2.CONSULTANT_ROLE_CONSULTANT), metadata=admin.md)
        return anonymous.login(email, kind=resources_pb2.ACCOUNT_KIND_CONSULTANT)

    def close(self) -> None:
        """Whatever happened: no process or thread left running."""
        self.stopping.set()
        if self.watcher is not None:
            self.watcher.close()
        self.server.kill()
        for channel in self.channels:
            channel.close()

    def restart(self) -> None:
        self.server = ServerProcess(self.database.url, listen=f"127.0.0.1:{self.port}", env=FAST_AUTH_ENV)

    def finish(self) -> dict[str, Any]:
        """Stop the load (every batch ends acknowledged), let the watcher catch
        up, stop the server, and compare the ledger and the watcher with the
        database."""
        self.ledger.wait_beyond(self.ledger.count())
        self.stopping.set()
        for writer in self.writers:
            writer.join(BATCH_DEADLINE + 30)
        assert not self.ledger.errors, self.ledger.errors[:5]
        [(head,)] = self.database.rows("SELECT coalesce(max(seq), 0) FROM interactions")
        if self.watcher is not None:
            self.watcher.wait_until_seen(head)
            self.watcher.close()
        exit_code = self.server.terminate()
        for channel in self.channels:
            channel.close()
        stored = dict(self.database.rows("SELECT id, count(*) FROM interactions GROUP BY id"))
        db_seqs = [seq for (seq,) in self.database.rows("SELECT seq FROM interactions ORDER BY seq")]
        seen = self.watcher.seqs if self.watcher is not None else db_seqs
        return {
            "exit_code": exit_code,
            "acknowledged": len(self.ledger.acknowledged),
            "unacknowledged": len(self.ledger.attempted - self.ledger.acknowledged),
            "lost": len(self.ledger.acknowledged - stored.keys()),
            "duplicated": sum(1 for n in stored.values() if n > 1),
            "not_sent": len(stored.keys() - self.ledger.attempted),
            "integrity_errors": self.database.integrity_errors(),
            "failed_calls": dict(self.ledger.failures),
            "stored_before_answer": self.ledger.stored_before_answer,
            "gaps": len(set(db_seqs) - set(seen)),
            "repeated": len(seen) - len(set(seen)),
            "out_of_order": sum(1 for a, b in itertools.pairwise(seen) if b <= a),
            "not_committed": len(set(seen) - set(db_seqs)),
            "reconnects": self.watcher.reconnects if self.watcher is not None else 0,
        }


def assert_exactly_once(result: dict[str, Any]) -> None:
    assert result["exit_code"] == 0
    assert result["integrity_errors"] == []
    assert result["acknowledged"] > 0
    for figure in ("unacknowledged", "lost", "duplicated", "not_sent",
                   "gaps", "repeated", "out_of_order", "not_committed"):
        assert result[figure] == 0, (figure, result)


@pytest.fixture
def seed() -> int:
    chosen = int(os.environ.get("CURSOR_CHAOS_SEED", str(random.randrange(1 << 32))))
    print(f"\nCURSOR_CHAOS_SEED={chosen}")
    return chosen


@pytest.fixture
def cluster(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> Iterator[Callable[..., Cluster]]:
    """Factory: a Cluster on a fresh database, closed at the end whatever happened."""
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        database = backend.fresh_database(tmp_path, f"chaos{len(made)}")
        made.append(Cluster(database, monkeypatch, seed=seed, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_kill_9_under_load_loses_nothing_acknowledged_and_repeats_nothing(
    cluster: Callable[..., Cluster], seed: int
) -> None:
    rng = random.Random(seed)
    running = cluster(writers=4, in_flight=4, channel_options=[])
    for _ in range(KILLS):
        running.ledger.wait_beyond(running.ledger.count())  # the load is back after the last restart
        time.sleep(rng.uniform(0.0, 1.5))
        running.server.kill()  # SIGKILL
        running.restart()
    result = running.finish()
    print(f"chaos: {KILLS} kills, {result['acknowledged']} acknowledged, {result['lost']} lost, "
          f"{result['duplicated']} duplicated, {result['gaps']} gaps "
          f"(watcher: {result['repeated']} repeated, {result['out_of_order']} out of order, "
          f"{result['reconnects']} reconnects); calls answered without an acknowledgement: "
          f"{result['failed_calls']}, ids their retry found stored already: {result['stored_before_answer']}")
    assert_exactly_once(result)


def sigterm_under_load(cluster: Cluster) -> dict[str, Any]:
    """SIGTERM while the load runs, then a restart so every batch ends acknowledged."""
    cluster.ledger.wait_beyond(cluster.ledger.count() + 200)
    assert cluster.server.terminate() == 0, cluster.server.stderr
    cluster.restart()
    return cluster.finish()


def test_sigterm_answers_only_retryable_statuses_and_retries_store_each_id_once(
    cluster: Callable[..., Cluster]
) -> None:
    result = sigterm_under_load(cluster(writers=8, in_flight=8, channel_options=[]))
    print(f"SIGTERM, callers not watching health: {result}")
    assert set(result["failed_calls"]) <= {"UNAVAILABLE", "CANCELLED"}
    assert_exactly_once(result)


def test_callers_that_watch_health_see_no_cancelled_call_at_sigterm(cluster: Callable[..., Cluster]) -> None:
    """grpc core ends a call it has queued but not handed to a handler with
    CANCELLED when it shuts down; the drain before that (RunningServer.stop)
    serves what channels that watch health queued before NOT_SERVING."""
    result = sigterm_under_load(cluster(writers=16, in_flight=16, channel_options=HEALTH_CHECKED, watch=False))
    print(f"SIGTERM, callers watching health: {result}")
    assert "CANCELLED" not in result["failed_calls"], result["failed_calls"]
    assert set(result["failed_calls"]) <= {"UNAVAILABLE"}
    assert_exactly_once(result)

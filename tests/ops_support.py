"""Shared by the operations tests (backup, archive, migrate, metrics, WAL):
the CLI as a subprocess, a server process with operations settings, readers
over a real channel, and a load of concurrent writers that records every
write's start and end so write stalls can be measured."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cursor.v1 import auth_service_pb2, resources_pb2
from cursor.v1 import reader_service_pb2 as rpb
from tests.conftest import PASSWORD, Client
from tests.databases import TestDatabase, as_database
from tests.procs import ServerProcess

# Cheaper password hashing for servers the operations tests start: these
# tests are about the database, and register many readers.
FAST_AUTH_ENV = {"CURSOR_ARGON2_MEMORY_KIB": "1024", "CURSOR_ARGON2_TIME_COST": "1"}
_emails = itertools.count()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`cursor-grpc ARGS` in a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "cursor_grpc", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def start_server(database: TestDatabase | Path, **env: str) -> ServerProcess:
    """`cursor-grpc serve --migrate` on the database, with cheap hashing."""
    return ServerProcess(as_database(database).url, env={**FAST_AUTH_ENV, **env})


def new_reader(channel: grpc.Channel, name: str = "reader") -> Client:
    client = Client(channel)
    email = f"{name}{next(_emails)}-{uuid.uuid4().hex[:6]}@example.com"
    client.auth.RegisterReader(
        auth_service_pb2.RegisterReaderRequest(email=email, password=PASSWORD, display_name=name)
    )
    return client.login(email, kind=resources_pb2.ACCOUNT_KIND_READER)


def record(client: Client, payload: dict[str, object] | None = None, type_: str = "answer") -> int:
    response = client.reader.RecordInteraction(
        rpb.RecordInteractionRequest(interaction=rpb.NewInteraction(
            type=type_, payload_json=json.dumps(payload or {"a": 1}), summary="s")),
        metadata=client.md,
    )
    return int(response.interaction.sequence)


def bulk_record(client: Client, count: int, payload_bytes: int = 600, chunk: int = 500) -> None:
    """`count` interactions through the client-streaming upload."""
    filler = "x" * payload_bytes

    def chunks() -> Iterator[rpb.RecordInteractionsRequest]:
        left = count
        while left > 0:
            n = min(chunk, left)
            yield rpb.RecordInteractionsRequest(interactions=[
                rpb.NewInteraction(type="answer", payload_json=json.dumps({"f": filler, "i": i}), summary="bulk")
                for i in range(n)
            ])
            left -= n

    response = client.reader.RecordInteractions(chunks(), metadata=client.md, timeout=120)
    assert response.stored_count == count


@dataclass
class Write:
    started: float
    ended: float
    ok: bool


@dataclass
class WriteLoad:
    """`writers` threads, each with its own reader and channel, recording
    interactions back to back until stopped."""

    address: str
    writers: int = 20
    payload_bytes: int = 200
    writes: list[Write] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._channels = [grpc.insecure_channel(self.address) for _ in range(self.writers)]
        self._clients = [new_reader(ch, "writer") for ch in self._channels]
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self._clients]

    def start(self) -> WriteLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, client: Client) -> None:
        payload = {"p": "y" * self.payload_bytes}
        while not self._stop.is_set():
            started = time.monotonic()
            ok = True
            try:
                record(client, payload)
            except grpc.RpcError as error:
                ok = False
                with self._lock:
                    self.errors.append(str(error.code()))
            with self._lock:
                self.writes.append(Write(started, time.monotonic(), ok))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        for channel in self._channels:
            channel.close()

    def stall(self, start: float, end: float) -> tuple[float, float, int]:
        """Over writes that overlap [start, end]: the longest single write, the
        longest time no write completed, and how many writes completed."""
        with self._lock:
            writes = list(self.writes)
        overlapping = [w for w in writes if w.ended >= start and w.started <= end]
        longest = max((w.ended - w.started for w in overlapping), default=0.0)
        done = sorted(w.ended for w in writes if start <= w.ended <= end)
        marks = [start, *done, end]
        gap = max((b - a for a, b in itertools.pairwise(marks)), default=end - start)
        return longest, gap, len(done)

    def completed(self) -> int:
        with self._lock:
            return len(self.writes)
